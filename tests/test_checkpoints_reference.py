"""One loader for reference checkpoints: every CIFAR model RepDistiller/mdistiller publish loads their layout strictly
(MobileNetV2's ``classifier.0.*`` included), and torchvision/timm ImageNet ResNet state dicts load into the ImageNet
zoo.

The reference layouts are written down here, independently of the loader: a test renames kdlab's keys to the
reference's names with :data:`TO_REFERENCE`, then checks the result against a digest of the reference model's own
``state_dict()`` (sorted ``(key, shape)`` list, 100 classes) taken from HobbitLong/RepDistiller ``models/`` and
megvii-research/mdistiller ``mdistiller/models/cifar/`` (the two agree on every model they share).
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from torch import nn

from kdlab.models import create
from kdlab.models.checkpoints import CheckpointMismatchError, load_state_dict_flexible
from kdlab.train.checkpoint import CheckpointError, load_model_file

# reference builder -> (kdlab name, state-dict entries, trainable parameters, digest of sorted (key, shape))
REFERENCE = {
    "resnet8": ("resnet8", 56, 83_892, "39c6acc1ba29ecf6"),
    "resnet14": ("resnet14", 92, 181_108, "7454acde5e53f392"),
    "resnet20": ("resnet20", 128, 278_324, "cf710a76243f2b8c"),
    "resnet32": ("resnet32", 200, 472_756, "4c790dcab5eb9028"),
    "resnet44": ("resnet44", 272, 667_188, "5f33431aeb46da76"),
    "resnet56": ("resnet56", 344, 861_620, "5d442f2912af2aaf"),
    "resnet110": ("resnet110", 668, 1_736_564, "8f50cd07f82e75cb"),
    "resnet8x4": ("resnet8x4", 62, 1_233_540, "6cfd514df58b28af"),
    "resnet32x4": ("resnet32x4", 206, 7_433_860, "86c2084be49fc2a3"),
    "ResNet18": ("resnet18_cifar", 122, 11_220_132, "691c4b32b04b1a42"),
    "ResNet50": ("resnet50_cifar", 320, 23_705_252, "13bb09321c5b6498"),
    "wrn_16_1": ("wrn_16_1", 82, 180_916, "65c1b36538de17ed"),
    "wrn_16_2": ("wrn_16_2", 83, 703_284, "26f9310b77cb672d"),
    "wrn_40_1": ("wrn_40_1", 226, 569_780, "80b07f9efab3be01"),
    "wrn_40_2": ("wrn_40_2", 227, 2_255_156, "961658504d5ec9da"),
    "vgg8_bn": ("vgg8", 37, 3_965_028, "0a387e34dd845714"),
    "vgg11_bn": ("vgg11", 58, 9_277_284, "88383b98d4479b4b"),
    "vgg13_bn": ("vgg13", 72, 9_462_180, "86b9c338b9dbc6c7"),
    "vgg16_bn": ("vgg16", 93, 14_774_436, "817ffe596a8f2690"),
    "vgg19_bn": ("vgg19", 114, 20_086_692, "5a8e42f17ae643c5"),
    "mobile_half": ("mobilenetv2", 320, 812_836, "4f50e9ebb8f90a54"),
    "ShuffleV1": ("shufflenetv1", 296, 949_258, "0d87b45d0a9e89ab"),
    "ShuffleV2": ("shufflenetv2", 338, 1_355_528, "d2c6860f03cc1a5d"),
}

# kdlab key prefix -> reference key prefix, where they differ (read from the reference model code: MobileNetV2's
# classifier is ``nn.Sequential(nn.Linear(...))``); every other family uses kdlab's names as they are.
TO_REFERENCE = {"mobilenetv2": {"classifier.": "classifier.0."}}

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _reference_state(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    renames = TO_REFERENCE.get(name, {})
    out = {}
    for key, value in model.state_dict().items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value.clone()
    return out


def _digest(state: dict[str, torch.Tensor]) -> str:
    items = sorted((k, tuple(v.shape)) for k, v in state.items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def _with_statistics(model: nn.Module, size: int = 32) -> nn.Module:
    """BN running statistics moved off their initial values (so a load that skipped them would show)."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1)))
    return model.eval()


@pytest.mark.parametrize("reference", sorted(REFERENCE))
def test_reference_layout_matches_and_loads_strictly(reference: str) -> None:
    """Every model: the written mapping gives exactly the reference's names and shapes, and that state dict loads
    strictly (on the meta device: shapes and names only, so the big models cost nothing)."""
    name, entries, params, digest = REFERENCE[reference]
    with torch.device("meta"):
        source, target = create(name, num_classes=100), create(name, num_classes=100)
    state = _reference_state(name, source)
    assert len(state) == entries
    assert sum(math.prod(v.shape) for k, v in state.items() if not k.endswith(_BUFFERS)) == params
    assert _digest(state) == digest
    load_state_dict_flexible(target, {"model": {f"module.{k}": v for k, v in state.items()}}, name)


# one model per family, with real weights: the file a reference training script writes loads into the same function
FAMILIES = ("resnet8", "resnet18_cifar", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2")


@pytest.mark.parametrize("name", FAMILIES)
def test_reference_checkpoint_file_reproduces_the_model(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    source = _with_statistics(create(name, num_classes=100))
    state = _reference_state(name, source)
    # saved as RepDistiller/mdistiller do: {"model": state_dict, ...}, from DataParallel for good measure
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": {f"module.{k}": v for k, v in state.items()}, "best_acc": 70.0}, path)
    torch.manual_seed(1)
    target = create(name, num_classes=100)
    load_model_file(target, path, name)
    target.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_mobilenetv2_reference_layout_and_kdlab_layout_both_load() -> None:
    model = create("mobilenetv2", num_classes=10)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    assert "classifier.weight" in own and "classifier.0.weight" not in own
    load_state_dict_flexible(create("mobilenetv2", num_classes=10), own)  # kdlab's own names
    ref = _reference_state("mobilenetv2", model)
    loaded = load_state_dict_flexible(create("mobilenetv2", num_classes=10), {"state_dict": ref})
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_a_partial_rename_is_still_a_mismatch_naming_the_original_keys() -> None:
    ref = _reference_state("mobilenetv2", create("mobilenetv2", num_classes=10))
    del ref["conv2.0.weight"]
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_flexible(create("mobilenetv2", num_classes=10), ref, "mobilenetv2")
    assert "conv2.0.weight" in info.value.missing and "classifier.0.weight" in info.value.unexpected


def test_wrong_class_count_names_the_fix(tmp_path) -> None:
    path = tmp_path / "t.pth"
    torch.save({"model": create("resnet8x4", num_classes=100).state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"fc\.weight \(checkpoint \[100, 256\] vs model \[10, 256\]\).*class count"
    ):
        load_model_file(create("resnet8x4", num_classes=10), path, "resnet8x4")


def test_net_nesting_key_is_unwrapped() -> None:
    model = create("resnet8", num_classes=10)
    loaded = load_state_dict_flexible(create("resnet8", num_classes=10), {"net": model.state_dict(), "acc": 90.0})
    assert torch.equal(loaded.fc.weight, model.fc.weight)


# ---- ImageNet zoo: torchvision and timm state dicts ------------------------------------------------------------


def test_torchvision_resnet_state_dicts_load() -> None:
    """torchvision ResNet-18 (weights=None, built here) loads and computes the same function; ResNet-34/50 load
    strictly (meta device: names and shapes)."""
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    tv = _with_statistics(tv_models.resnet18(weights=None), 32)
    ours = load_state_dict_flexible(create("resnet18", num_classes=1000), tv.state_dict(), "resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-5)
    for arch in ("resnet34", "resnet50"):
        with torch.device("meta"):
            state = getattr(tv_models, arch)(weights=None).state_dict()
            load_state_dict_flexible(create(arch, num_classes=1000), state, arch)


def test_timm_resnet18_state_dict_loads() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = _with_statistics(timm.create_model("resnet18", pretrained=False, num_classes=1000), 32)
    ours = load_state_dict_flexible(create("resnet18", num_classes=1000), net.state_dict(), "resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), net(x), rtol=0, atol=1e-5)
