"""He et al. (2016) option-A CIFAR ResNets and the checkpoint loader: the akamaster key layout, strict loading with
clear mismatch errors, and (with the project's shared data) the public checkpoints' accuracy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.models import count_parameters, create
from kdlab.models.checkpoints import CheckpointMismatchError, extract_state_dict, load_state_dict_flexible
from kdlab.models.cifar.resnet_option_a import option_a_shortcut

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CKPT_DIR = SHARED_DATA / "cifar10_resnets_akamaster"
TEST_NPZ = SHARED_DATA / "cifar10_jpg" / "test.npz"

# 10-class parameter counts; resnet20 and resnet56 are stated by the checkpoints' README.
PARAMS_10 = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}

_AKAMASTER_KEY = re.compile(
    r"^(conv1\.weight|linear\.(weight|bias)"
    r"|(layer[123]\.\d+\.)?bn[12]?\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|layer[123]\.\d+\.conv[12]\.weight)$"
)


def _trained_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move BN running statistics away from their initial values with one train-mode forward; return eval model."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _akamaster_checkpoint(model: nn.Module, with_counters: bool = True) -> dict:
    """A checkpoint laid out like the public files: DataParallel ``module.`` keys under ``state_dict``."""
    state = {
        f"module.{k}": v.clone()
        for k, v in model.state_dict().items()
        if with_counters or not k.endswith("num_batches_tracked")
    }
    return {"state_dict": state, "best_prec1": 91.0}


@pytest.mark.parametrize("depth", sorted(PARAMS_10))
def test_parameter_counts_and_key_layout(depth: int) -> None:
    model = create(f"resnet{depth}_a", num_classes=10)
    assert count_parameters(model) == PARAMS_10[depth]
    keys = list(model.state_dict())
    bad = [k for k in keys if not _AKAMASTER_KEY.match(k)]
    assert not bad, f"keys outside the akamaster layout: {bad}"
    n = (depth - 2) // 6
    for layer in (1, 2, 3):
        blocks = {int(k.split(".")[1]) for k in keys if k.startswith(f"layer{layer}.")}
        assert blocks == set(range(n))
    assert model.classifier is model.linear
    assert not any(k.startswith("classifier.") for k in keys)


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = option_a_shortcut(x, 32, 2)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    assert option_a_shortcut(x, 16, 1) is x
    model = create("resnet20_a")
    assert not any("shortcut" in k or "downsample" in k for k in model.state_dict())


@pytest.mark.parametrize("with_counters", [True, False], ids=["modern", "pre-0.4.1"])
def test_akamaster_layout_round_trip(with_counters: bool) -> None:
    torch.manual_seed(0)
    src = _trained_stats(create("resnet20_a", num_classes=10))
    ckpt = _akamaster_checkpoint(src, with_counters)
    torch.manual_seed(1)
    dst = load_state_dict_flexible(create("resnet20_a", num_classes=10), ckpt).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_loader_accepts_common_wrappings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _trained_stats(create("resnet8", num_classes=10))
    state = src.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = src(x)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    for obj in (state, {"state_dict": state}, {"model": state}, {"model_state_dict": state}, path, str(path)):
        torch.manual_seed(5)
        dst = load_state_dict_flexible(create("resnet8", num_classes=10), obj).eval()
        with torch.no_grad():
            assert torch.equal(dst(x), want), type(obj).__name__


def test_mismatch_names_keys_and_shapes() -> None:
    ckpt20 = _akamaster_checkpoint(create("resnet20_a", num_classes=10))
    target = create("resnet32_a", num_classes=10)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys.*layer1\.3\.conv1\.weight") as err:
        load_state_dict_flexible(target, ckpt20, model_name="resnet32_a")
    assert "resnet32_a" in str(err.value)
    assert "layer3.4.bn2.running_var" in err.value.missing and not err.value.unexpected
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items()), "a failed load changed the model"

    ckpt32 = _akamaster_checkpoint(create("resnet32_a", num_classes=10))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(72\): layer1\.3\.conv1\.weight") as err:
        load_state_dict_flexible(create("resnet20_a", num_classes=10), ckpt32)
    assert "layer2.4.conv2.weight" in err.value.unexpected and not err.value.missing

    with pytest.raises(CheckpointMismatchError, match=r"linear\.weight \(checkpoint \[10, 64\] vs model \[100, 64\]\)"):
        load_state_dict_flexible(create("resnet20_a", num_classes=100), ckpt20)

    wrong_arch = {"state_dict": {f"module.{k}": v for k, v in create("resnet20").state_dict().items()}}
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_flexible(create("resnet20_a"), wrong_arch)
    assert "fc.weight" in err.value.unexpected and "linear.weight" in err.value.missing
    assert "layer2.0.downsample.0.weight" in str(err.value)


def test_extract_rejects_non_tensor_entries() -> None:
    with pytest.raises(TypeError, match="not a tensor"):
        extract_state_dict({"conv1.weight": torch.zeros(1), "epoch": 3})


def _cifar10_test_set() -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(TEST_NPZ)
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(data["y"]).long()


AKAMASTER = (("resnet20_a", "resnet20-12fca82f.th", 81.03), ("resnet56_a", "resnet56-4bfd9763.th", 83.20))
"""(model, file, test top-1 on the JPEG CIFAR-10 test copy) of the two public checkpoints."""


def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), 500):
            correct += int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum())
    return 100.0 * correct / len(y)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not (CKPT_DIR.is_dir() and TEST_NPZ.is_file()), reason="shared data (../shared/data) not present")
def test_akamaster_checkpoints_reproduce_accuracy() -> None:
    """Both public checkpoints load strictly and score 81.03 % / 83.20 % on the JPEG CIFAR-10 test copy (the full
    10,000 images through ResNet-56: a minute of CPU; the fast sibling below scores a part)."""
    x, y = _cifar10_test_set()
    for arch, file, acc in AKAMASTER:
        model = load_state_dict_flexible(create(arch, num_classes=10), CKPT_DIR / file, model_name=arch).eval()
        measured = _top1(model, x, y)
        assert abs(measured - acc) <= 0.05, f"{arch}: {measured:.2f} %, expected {acc:.2f} %"


@pytest.mark.shared
@pytest.mark.skipif(not (CKPT_DIR.is_dir() and TEST_NPZ.is_file()), reason="shared data (../shared/data) not present")
def test_akamaster_checkpoints_load_strictly_and_score_near_their_accuracy_on_a_part() -> None:
    """Both public checkpoints load strictly; on every 10th test image (1,000, 100 per class: the file is sorted by
    class) each scores its full-set accuracy within 4 binomial standard errors (4 x 1.2 points; a wrong
    normalisation or key layout lands near 10 %)."""
    x, y = _cifar10_test_set()
    x, y = x[::10], y[::10]
    for arch, file, acc in AKAMASTER:
        model = load_state_dict_flexible(create(arch, num_classes=10), CKPT_DIR / file, model_name=arch).eval()
        measured = _top1(model, x, y)
        se = 100.0 * (acc / 100 * (1 - acc / 100) / len(y)) ** 0.5
        assert abs(measured - acc) <= 4 * se, f"{arch}: {measured:.2f} % on 1,000 images, expected about {acc:.2f} %"
