"""The bigger ImageNet zoo (issue 18, "Big teachers and more students"): torchvision ResNet-101/152, MobileNetV2,
EfficientNet-B0 and timm models by name, with weights from local files only.

Parameter counts are torchvision's and timm's documented numbers; checkpoints are state dicts each test builds and
saves (a freshly built torchvision / timm model), loaded back by path. Big models are built on the meta device
(shapes and counts without memory or initialisation cost).
"""

from __future__ import annotations

import pytest
import torch

from kdlab.models import count_parameters, create
from kdlab.models.checkpoints import CheckpointMismatchError, load_state_dict_flexible
from kdlab.train.checkpoint import CheckpointError, load_model_file

torchvision = pytest.importorskip("torchvision")

# torchvision's documented parameter counts (the ``num_params`` of each weights enum's meta, 1000 classes).
TORCHVISION_PARAMS = {
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_documented_parameter_counts(name: str) -> None:
    """The documented count, and the same state-dict keys and shapes as torchvision's builder (up to the head's
    reference layout), so a torchvision ``.pth`` fits; both built on the meta device."""
    with torch.device("meta"):
        model = create(name, num_classes=1000)
        reference = getattr(torchvision.models, name)(weights=None)
    assert count_parameters(model) == TORCHVISION_PARAMS[name]
    assert sum(p.numel() for p in reference.parameters()) == TORCHVISION_PARAMS[name]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k.replace("classifier.1.", "classifier."): tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs


@pytest.mark.parametrize(
    ("name", "taps"),
    [
        ("mobilenet_v2", [(32, 2), (16, 2), (24, 4), (32, 8), (96, 16), (320, 32)]),
        ("efficientnet_b0", [(32, 2), (16, 2), (24, 4), (40, 8), (112, 16), (320, 32)]),
    ],
)
def test_torchvision_students_load_torchvision_weights(name: str, taps: list, tmp_path) -> None:
    """A torchvision state dict saved as ``.pth`` loads by path; logits equal torchvision's model on the same input,
    ``pool`` feeds the classifier, and the stage taps have timm's ``features_only`` channels and strides."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    with torch.no_grad():  # move BN statistics off their initial values, so a missed buffer would show
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = create(name, num_classes=10)
    load_model_file(model, path, name)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = reference(x)
        logits, feats = model.forward_taps(x, model.tap_names())
    torch.testing.assert_close(logits, want, rtol=0, atol=0)
    torch.testing.assert_close(model.classifier(feats["pool"]), want, rtol=0, atol=0)
    post = [t for t in model.tap_info() if t.kind == "post"]
    assert [(t.channels, t.stride) for t in post] == taps
    for t in post:
        assert feats[t.name].shape == (2, t.channels, 64 // t.stride, 64 // t.stride)


def test_torchvision_student_in_channels_and_bad_checkpoint(tmp_path) -> None:
    """``in_channels`` replaces the stem; a checkpoint with another head size names the mismatching keys."""
    model = create("mobilenet_v2", num_classes=5, in_channels=1).eval()
    assert model.input_size == (1, 224, 224)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None, num_classes=7).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"classifier\.weight"):
        load_model_file(create("mobilenet_v2", num_classes=5), path, "mobilenet_v2")


def _tiny_swin_kwargs() -> dict:
    return {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_local_file(suffix: str, tmp_path) -> None:
    """A timm model's own state dict (as timm saves it: no ``model.`` prefix), as ``.safetensors`` or ``.pth``, loads
    into ``timm:<name>`` by path; logits and taps equal the timm model's. A tiny Swin config keeps it fast."""
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    name = "swin_tiny_patch4_window7_224"
    torch.manual_seed(0)
    reference = timm.create_model(name, num_classes=10, **_tiny_swin_kwargs()).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors_torch.save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)
    torch.manual_seed(1)
    model = create(f"timm:{name}", num_classes=10, **_tiny_swin_kwargs())
    load_model_file(model, path, f"timm:{name}")
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = reference(x)
        logits, feats = model.forward_taps(x, ["stage2", "stage4", "pool"])
        _, ref_stages = reference.forward_intermediates(x, indices=[1, 3], intermediates_only=False)
    torch.testing.assert_close(logits, want, rtol=0, atol=0)
    torch.testing.assert_close(feats["stage2"], ref_stages[0], rtol=0, atol=0)
    torch.testing.assert_close(feats["stage4"], ref_stages[1], rtol=0, atol=0)
    assert feats["stage2"].shape == (2, 32, 28, 28) and feats["pool"].shape == (2, 128)


def test_timm_kdlab_checkpoint_still_loads_and_corrupt_safetensors(tmp_path) -> None:
    """kdlab's own timm state dicts (``model.``-prefixed) load unchanged; a corrupt ``.safetensors`` is a
    :class:`CheckpointError` naming the file, not a traceback from safetensors."""
    pytest.importorskip("timm")
    name = "timm:swin_tiny_patch4_window7_224"
    src = create(name, num_classes=4, **_tiny_swin_kwargs())
    dst = create(name, num_classes=4, **_tiny_swin_kwargs())
    load_state_dict_flexible(dst, src.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))
    other = create(name, num_classes=5, **_tiny_swin_kwargs())
    head = r"model\.head\.fc\.weight \(checkpoint \[5, 128\] vs model \[4, 128\]\)"
    with pytest.raises(CheckpointMismatchError, match=head):
        load_state_dict_flexible(dst, other.model.state_dict())
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors"):
        load_model_file(dst, bad, name)


@pytest.mark.parametrize(
    ("name", "params", "taps"),
    [
        # timm's model cards: Swin-L 196.5 M, Swin-T 28.3 M, ResNet-50 25.6 M (torchvision-identical).
        ("swin_large_patch4_window7_224", 196_532_476, [(192, 4), (384, 8), (768, 16), (1536, 32), (1536, 1)]),
        ("swin_tiny_patch4_window7_224", 28_288_354, [(96, 4), (192, 8), (384, 16), (768, 32), (768, 1)]),
        ("resnet50", 25_557_032, [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32), (2048, 1)]),
    ],
)
def test_timm_table4_models_on_meta(name: str, params: int, taps: list) -> None:
    """DIST Table 4's timm models (Swin-L teacher, Swin-T student, strong ResNet-50 teacher) build by name without a
    download (``pretrained=False``), with timm's ``feature_info`` as stage taps plus ``pool``."""
    pytest.importorskip("timm")
    with torch.device("meta"):
        model = create(f"timm:{name}", num_classes=1000)
    assert count_parameters(model) == params
    assert [(t.channels, t.stride) for t in model.tap_info()] == taps
    assert model.input_size == (3, 224, 224)


@pytest.mark.slow  # about 15 s on the loaded 2-core machine; fast siblings: test_timm_weights_from_local_file and
# tests/test_teacher_cache_views.py
def test_table4_recipe_with_a_local_timm_teacher_through_the_cli(tmp_path) -> None:
    """DIST Table 4's KD recipe (strategy B2: RandAugment, random erasing, RMSpropTF, EMA) distils from a timm teacher
    whose weights are a local ``.safetensors`` file (timm's own key names), in bf16 autocast and channels-last, on
    synthetic 32-pixel data; ``train.teacher_cache=auto`` explains that B2's random views rule the cache out."""
    import json

    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from kdlab.cli.main import main

    from conftest import REPO

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file(timm.create_model("resnet18", num_classes=4).state_dict(), str(weights))
    recipe = REPO / "configs" / "imagenet" / "kd" / "timm-resnet50__resnet18.yaml"
    args = [
        "train",
        str(recipe),
        "data.name=synthetic",
        "data.image_size=32",
        "data.num_classes=4",
        "data.train_size=32",
        "data.test_size=16",
        "data.batch_size=16",
        "data.eval_batch_size=16",
        "model.student=convnet_xs",
        "model.teachers.0.name=timm:resnet18",  # the recipe's timm:resnet50, smaller for a test
        f"model.teachers.0.checkpoint={weights}",
        "train.teacher_precision=bf16",
        "train.channels_last=true",
        "train.teacher_cache=auto",
        "train.epochs=1",
        "train.device=cpu",
        "train.threads=1",
        f"train.run_dir={tmp_path / 'runs'}",
        "train.name=t4",
        "log.progress=off",
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "runs" / "t4" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["finished"]
    speed = summary["speed"]
    assert speed["teacher_precision"] == "bf16" and speed["channels_last"] is True
    assert speed["teacher_cache"]["kind"] == "off"
    assert "data.rand_augment" in speed["teacher_cache"]["reason"]
    assert main([*args[:-2], "train.name=t4_bad", "train.teacher_cache=on", "log.progress=off"]) == 2
    assert not (tmp_path / "runs" / "t4_bad").exists()
