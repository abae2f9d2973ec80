"""Dense-prediction models (``outputs="dense"`` in the model registry): parameter counts of the reference, the tap
contract for dense outputs, and the reference (CIRKD / DIST_KD) checkpoint layout.

The parameter counts are the reference's: its ``DeepLabV3`` / ``PSPNet`` built with ``aux=True`` and 19 classes
(as its Cityscapes training scripts do), counted with ``sum(p.numel() for p in model.parameters())``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.models import MODELS, count_parameters, create, model_names
from kdlab.models.checkpoints import load_state_dict_flexible
from kdlab.models.segmentation.nets import convert_reference_state, reference_key

PARAMS_19 = {"deeplabv3_r101": 61_118_950, "deeplabv3_r18": 13_607_974, "pspnet_r18": 12_919_334}
PARAMS_19_NO_AUX = {"deeplabv3_r101": 58_754_259, "deeplabv3_r18": 13_459_155, "pspnet_r18": 12_770_515}
TINY_19 = {"deeplabv3_tiny": 116_166, "pspnet_tiny": 105_350}  # kdlab's own test models (not in the reference)
DENSE = [n for n in model_names() if MODELS.meta(n).get("outputs") == "dense"]


def test_every_dense_model_has_a_count() -> None:
    assert sorted(DENSE) == sorted({**PARAMS_19, **TINY_19})
    for name, count in TINY_19.items():
        assert count_parameters(create(name, num_classes=19)) == count


@pytest.mark.parametrize("name", sorted(PARAMS_19))
def test_parameter_counts_match_the_reference(name: str) -> None:
    with torch.device("meta"):  # ResNet-101 without allocating its weights
        assert count_parameters(create(name, num_classes=19)) == PARAMS_19[name]
        assert count_parameters(create(name, num_classes=19, aux=False)) == PARAMS_19_NO_AUX[name]


@pytest.mark.parametrize("name", DENSE)
def test_dense_tap_contract(name: str) -> None:
    torch.manual_seed(0)
    if name in PARAMS_19:  # the full models run the same code as the tiny ones; counts and layout are tested above
        pytest.skip("full-size model: its tiny sibling runs the same code")
    model = create(name, num_classes=5).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        plain = model(x)
        logits, taps = model.forward_taps(x, model.tap_names())
        again, head = model.forward_taps(x, ["head"])
    assert plain.shape == (2, 5, 6, 8)  # stride 8
    assert torch.equal(logits, plain) and torch.equal(again, plain)
    assert torch.equal(head["head"], taps["head"])
    for t in model.tap_info():
        assert taps[t.name].shape == (2, t.channels, 48 // t.stride, 64 // t.stride), t.name
    assert torch.equal(model.classifier(taps["head"]), plain)  # the head tap is the classifier's input
    assert "pool" not in model.tap_names()


def test_dilation_keeps_output_stride_8_with_dilated_convs() -> None:
    model = create("deeplabv3_r18", num_classes=3)
    bb = model.backbone
    # the reference's rule: first block of layer3 (1, 2), others (2, 2); layer4 (2, 4) then (4, 4)
    assert (bb.layer3[0].conv1.dilation, bb.layer3[0].conv2.dilation) == ((1, 1), (2, 2))
    assert (bb.layer3[1].conv1.dilation, bb.layer3[1].conv2.dilation) == ((2, 2), (2, 2))
    assert (bb.layer4[0].conv1.dilation, bb.layer4[0].conv2.dilation) == ((2, 2), (4, 4))
    assert (bb.layer4[1].conv1.dilation, bb.layer4[1].conv2.dilation) == ((4, 4), (4, 4))
    with torch.device("meta"):
        big = create("deeplabv3_r101", num_classes=3)
    assert [b.conv2.dilation for b in big.backbone.layer4] == [(2, 2), (4, 4), (4, 4)]
    assert big.backbone.layer3[0].conv2.dilation == (1, 1) and big.backbone.layer3[5].conv2.dilation == (2, 2)


# Keys and shapes of the reference DeepLabV3-ResNet101 Cityscapes checkpoint (CIRKD / DIST_KD layout, 688 entries).
REFERENCE_R101 = {
    "pretrained.conv3.weight": (128, 64, 3, 3),
    "pretrained.layer1.0.downsample.0.weight": (256, 128, 1, 1),
    "pretrained.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "head.aspp.b0.0.weight": (256, 2048, 1, 1),
    "head.aspp.b1.block.0.weight": (256, 2048, 3, 3),
    "head.aspp.b4.gap.1.weight": (256, 2048, 1, 1),
    "head.aspp.b4.gap.2.running_var": (256,),
    "head.aspp.project.0.weight": (256, 1280, 1, 1),
    "head.block.0.weight": (256, 256, 3, 3),
    "head.block.4.weight": (19, 256, 1, 1),
    "auxlayer.block.0.weight": (256, 1024, 3, 3),
    "auxlayer.block.4.bias": (19,),
}


def _reference_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict in the reference's layout, built independently of :func:`reference_key` from the reference's
    module names (pretrained / head.aspp.b0..b4 / head.block / auxlayer.block)."""
    out = {}
    aspp_names = ["b0.", "b1.block.", "b2.block.", "b3.block.", "b4.gap."]
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            ref = "pretrained." + key.removeprefix("backbone.")
        elif key.startswith("head.0.convs."):
            branch, rest = key.removeprefix("head.0.convs.").split(".", 1)
            ref = "head.aspp." + aspp_names[int(branch)] + rest
        elif key.startswith("head.0.project."):
            ref = "head.aspp." + key.removeprefix("head.0.")
        elif key.startswith("head.0."):
            ref = "head.psp." + key.removeprefix("head.0.")
        elif key.startswith("head.1."):
            ref = "head.block." + key.removeprefix("head.1.")
        elif key.startswith("classifier."):
            ref = "head.block.4." + key.removeprefix("classifier.")
        else:
            ref = "auxlayer.block." + key.removeprefix("aux_head.")
        out[ref] = torch.randn_like(value.float()).to(value.dtype) if value.is_floating_point() else value.clone()
    return out


def test_reference_r101_layout_loads() -> None:
    with torch.device("meta"):
        model = create("deeplabv3_r101", num_classes=19)
    ref = _reference_layout(model)
    assert len(ref) == 688
    for key, shape in REFERENCE_R101.items():
        assert tuple(ref[key].shape) == shape, key
    converted = convert_reference_state(ref)
    assert set(converted) == set(model.state_dict())
    assert reference_key("head.block.4.weight") == "classifier.weight"
    assert reference_key("head.aspp.b4.gap.1.weight") == "head.0.convs.4.1.weight"
    assert reference_key("classifier.weight") == "classifier.weight"  # kdlab keys pass unchanged


def test_reference_layout_loads_values_into_the_right_modules() -> None:
    torch.manual_seed(0)
    model = create("deeplabv3_tiny", num_classes=4)  # same module layout as deeplabv3_r18
    ref = _reference_layout(model)
    load_state_dict_flexible(model, ref, "deeplabv3_tiny")  # what checkpoint loading does with such a file
    assert torch.equal(model.classifier.weight, ref["head.block.4.weight"])
    assert torch.equal(model.head[0].convs[4][1].weight, ref["head.aspp.b4.gap.1.weight"])
    assert torch.equal(model.aux_head[4].bias, ref["auxlayer.block.4.bias"])
    assert torch.equal(
        model.backbone.layer2[0].downsample[1].running_var, ref["pretrained.layer2.0.downsample.1.running_var"]
    )
    psp = create("pspnet_tiny", num_classes=4)
    ref = _reference_layout(psp)
    ref["head.classifier.weight"] = ref.pop("head.block.4.weight")  # PSPNet's classifier is head.classifier
    ref["head.classifier.bias"] = ref.pop("head.block.4.bias")
    psp.load_state_dict(convert_reference_state(ref), strict=True)
    assert torch.equal(psp.head[0].conv4[0].weight, ref["head.psp.conv4.0.weight"])


def test_backbone_file_loads_into_the_backbone_only(tmp_path) -> None:
    """An ImageNet classifier's file in the reference's deep-stem layout (``conv1``.. ``layer4`` and an ``fc``, no
    BatchNorm step counters) initialises ``backbone``; the heads keep their initialisation."""
    from kdlab.models.backbone_init import load_backbone_file

    torch.manual_seed(0)
    model = create("deeplabv3_tiny", num_classes=5)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    file = {k: torch.randn_like(v.float()) for k, v in model.backbone.state_dict().items() if "num_batches" not in k}
    file["fc.weight"], file["fc.bias"] = torch.randn(1000, 64), torch.randn(1000)
    torch.save(file, tmp_path / "resnet-imagenet.pth")
    load_backbone_file(model, tmp_path / "resnet-imagenet.pth", "deeplabv3_tiny")
    state = model.state_dict()
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in file.items() if not k.startswith("fc."))
    assert all(torch.equal(state[k], v) for k, v in head_before.items())


def test_backbone_file_mismatches_are_named(tmp_path) -> None:
    from kdlab.config import ConfigError
    from kdlab.models.backbone_init import load_backbone_file
    from kdlab.models.checkpoints import CheckpointMismatchError

    model = create("deeplabv3_tiny", num_classes=5)
    file = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    file["conv1.weight"] = torch.zeros(8, 3, 7, 7)  # a torchvision-style 7x7 stem
    del file["conv2.weight"]
    torch.save(file, tmp_path / "tv.pth")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)conv1\.weight.*deep stem"):
        load_backbone_file(model, tmp_path / "tv.pth", "deeplabv3_tiny")
    with pytest.raises(ConfigError, match="no separate backbone"):
        load_backbone_file(create("resnet8"), tmp_path / "tv.pth", "resnet8")
