"""The tap contract, generated from the model registry: every registered model is tested, none is listed by hand
(DESIGN.md principle 5). The ground-truth tables below are the only hand-written part: trainable parameter counts
and the reference feature maps (shared/reference/methods.md, "Model ground truth"). A registered model missing
from the parameter table fails, and so does a table entry nobody registered.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models import MODELS, TapError, count_parameters, create, model_names


def _convnet_params(width: int, num_classes: int = 100) -> int:
    """Trainable parameters of ``kdlab.models.simple.ConvNet``: stem conv+BN, 2 convs+BNs per stage, linear."""
    w1, w2 = width, 2 * width
    stem = 3 * w1 * 9 + 2 * w1
    stage1 = 2 * (w1 * w1 * 9 + 2 * w1)
    stage2 = w1 * w2 * 9 + w2 * w2 * 9 + 4 * w2
    return stem + stage1 + stage2 + w2 * num_classes + num_classes


# Trainable parameters; 100 classes, except the ImageNet family (1000 classes).
PARAMS: dict[str, int] = {
    # CRD-benchmark CIFAR ResNets (RepDistiller models/resnet.py)
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    # Wide ResNets
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    # VGG with BatchNorm
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    # He et al. (2016) option-A ResNets: 97,216 n - 16,076 for 100 classes (n blocks per stage);
    # for 10 classes these are the akamaster checkpoints' 269,722 (resnet20) and 853,018 (resnet56).
    "resnet20_a": 275_572,
    "resnet32_a": 470_004,
    "resnet44_a": 664_436,
    "resnet56_a": 858_868,
    "resnet110_a": 1_733_812,
    # MobileNetV2 / ShuffleNets / ResNet-18/34/50 for CIFAR
    "mobilenetv2": 812_836,
    "mobilenetv2_1_0": 2_353_060,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
    "shufflenetv2_1_5": 2_580_548,
    "resnet18_cifar": 11_220_132,
    "resnet34_cifar": 21_328_292,
    "resnet50_cifar": 23_705_252,
    # ImageNet (1000 classes, torchvision-identical)
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "mobilenetv1": 4_231_976,
    # torchvision builders (kdlab.models.imagenet.torchvision_nets)
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548,
    # small demo ConvNets (kdlab.models.simple)
    **{
        name: _convnet_params(w)
        for name, w in (("convnet_xs", 4), ("convnet_s", 8), ("convnet_m", 16), ("convnet_l", 32))
    },
}


def _maps(*shapes: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    return list(shapes)


_R16 = _maps((16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8))
_R64 = _maps((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8))
_WRN2 = _maps((16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8))
_VGG = _maps((64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4))
_R18 = _maps((64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4))

# The reference feature list at 32x32 (stem, stage1, ...) and the pooled dimension, in network order: the
# model's "post" taps (neither ``.pre`` nor ``pool``) must have exactly these shapes.
REFERENCE_MAPS: dict[str, tuple[list[tuple[int, int, int]], int]] = {
    **{f"resnet{d}": (_R16, 64) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (_R64, 256),
    "resnet32x4": (_R64, 256),
    "wrn_16_1": (_R16, 64),
    "wrn_40_1": (_R16, 64),
    "wrn_16_2": (_WRN2, 128),
    "wrn_40_2": (_WRN2, 128),
    **{f"vgg{d}": (_VGG, 512) for d in (8, 11, 13, 16, 19)},
    **{f"resnet{d}_a": (_R16, 64) for d in (20, 32, 44, 56, 110)},
    "mobilenetv2": (_maps((16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)), 1280),
    "shufflenetv1": (_maps((24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)), 960),
    "shufflenetv2": (_maps((24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)), 1024),
    "resnet18_cifar": (_R18, 512),
    "resnet34_cifar": (_R18, 512),
    "resnet50_cifar": (_maps((64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)), 2048),
    **{
        f"convnet_{s}": (_maps((w, 32, 32), (w, 32, 32), (2 * w, 16, 16)), 2 * w)
        for s, w in (("xs", 4), ("s", 8), ("m", 16), ("l", 32))
    },
}

# Models whose ``stageK`` is exactly ``relu(stageK.pre)`` (post-activation residual / plain nets).
RELU_OF_PRE = {
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
    *(f"resnet{d}_a" for d in (20, 32, 44, 56, 110)),
    "convnet_xs",
    "convnet_s",
    "convnet_m",
    "convnet_l",
}

# Models that must declare ``stageK.pre`` for every stage.
PRE_EVERY_STAGE = RELU_OF_PRE | {"wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"}

_TAP_NAME = re.compile(r"^(stem|pool|stage[1-9][0-9]*(\.pre)?)$")
# Test-time spatial size per family (ImageNet models run at 64x64 to keep the suite fast).
_TEST_HW = {"imagenet": (64, 64)}
BATCH = 2


def _family(name: str) -> str:
    return str(MODELS.meta(name).get("family", ""))


def _num_classes(name: str) -> int:
    return 1000 if _family(name) == "imagenet" else 100


def _input_shape(name: str, model: nn.Module) -> tuple[int, int, int]:
    c, h, w = model.input_size
    h, w = _TEST_HW.get(_family(name), (h, w))
    return c, h, w


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create(name, num_classes=_num_classes(name))


def _batch(name: str, model: nn.Module, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, *_input_shape(name, model), generator=gen)


# Image classifiers; token models (``inputs="tokens"``, the BERTs) have their own contract in tests/test_bert.py,
# dense-prediction models (``outputs="dense"``) theirs in tests/test_segmentation_models.py and detection models
# (``outputs="detection"``) theirs in tests/test_detection_models.py.
IMAGE_MODELS = [
    n
    for n in model_names()
    if MODELS.meta(n).get("inputs", "images") == "images"
    and MODELS.meta(n).get("outputs") not in ("dense", "detection")
]


# Models registered with ``heavy=True`` (ResNet-101/152: 45-60 M parameters, tens of seconds per model here) run
# their contract in the slow suite; tests/test_zoo_big.py checks their layout and counts on the meta device.
_CONTRACT_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if MODELS.meta(n).get("heavy") else n for n in IMAGE_MODELS]


@pytest.fixture(scope="module", params=_CONTRACT_PARAMS)
def name(request: pytest.FixtureRequest) -> str:
    """A registered model name (module scope, so pytest groups every test of one model together)."""
    return request.param


@pytest.fixture(scope="module")
def model(name: str) -> nn.Module:
    """The model ``name`` in eval mode (shared by the read-only tests of that model)."""
    return _build(name).eval()


@pytest.fixture(scope="module")
def all_taps(name: str, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(x, logits, taps)`` from one eval-mode forward asking for every tap."""
    x = _batch(name, model)
    with torch.no_grad():
        logits, taps = model.forward_taps(x, model.tap_names())
    return x, logits, taps


def test_tap_info_is_canonical(name: str, model: nn.Module) -> None:
    info = model.tap_info()
    names = [t.name for t in info]
    assert len(names) == len(set(names)), f"{name}: duplicate tap names {names}"
    assert "pool" in names and "stem" in names, f"{name}: taps {names}"
    for t in info:
        assert _TAP_NAME.match(t.name), f"{name}: non-canonical tap name {t.name!r}"
        expected_kind = "pre" if t.name.endswith(".pre") else "pool" if t.name == "pool" else "post"
        assert t.kind == expected_kind, f"{name}: tap {t.name} has kind {t.kind!r}"
        assert t.channels > 0 and t.stride >= 1
    stages = [int(n[5:]) for n in names if re.fullmatch(r"stage\d+", n)]
    assert stages == list(range(1, len(stages) + 1)), f"{name}: stages must be stage1..stageN in order: {names}"
    assert isinstance(model.classifier, nn.Linear), f"{name}: classifier must be the final nn.Linear"
    meta_size = MODELS.meta(name).get("input_size")
    if meta_size is not None:
        assert tuple(model.input_size) == tuple(meta_size), f"{name}: registry says {meta_size}"


def test_tap_shapes(name: str, model: nn.Module, all_taps) -> None:
    x, logits, taps = all_taps
    _, h, w = x.shape[1:]
    assert logits.shape == (BATCH, _num_classes(name))
    assert list(taps) == list(model.tap_names())
    for t in model.tap_info():
        got = tuple(taps[t.name].shape)
        want = (BATCH, t.channels) if t.kind == "pool" else (BATCH, t.channels, h // t.stride, w // t.stride)
        assert got == want, f"{name}: tap {t.name} has shape {got}, tap_info says {want}"
    if name in REFERENCE_MAPS:
        maps, pooled = REFERENCE_MAPS[name]
        posts = [tuple(taps[t.name].shape[1:]) for t in model.tap_info() if t.kind == "post"]
        assert posts == maps, f"{name}: feature maps {posts}, reference {maps}"
        assert taps["pool"].shape[1] == pooled


def test_forward_taps_matches_forward(name: str, model: nn.Module, all_taps) -> None:
    x, logits_all, taps_all = all_taps
    with torch.no_grad():
        plain = model(x)
        logits_none, none = model.forward_taps(x, ())
        assert none == {}
        assert torch.equal(logits_none, plain), f"{name}: forward_taps(x, ())[0] != forward(x)"
        assert torch.equal(logits_all, plain), f"{name}: asking for taps changed the logits"
        assert torch.equal(model.classifier(taps_all["pool"]), plain), f"{name}: logits != classifier(pool)"
        names = model.tap_names()
        for subset in (names[0::2], names[1::2]):
            logits, taps = model.forward_taps(x, subset)
            assert list(taps) == list(subset), f"{name}: asked for {subset}, got {list(taps)}"
            assert torch.equal(logits, plain)
            for k in subset:
                assert torch.equal(taps[k], taps_all[k]), f"{name}: tap {k} depends on what else was asked"


def test_pre_taps_where_declared(name: str, model: nn.Module, all_taps) -> None:
    _, _, taps = all_taps
    info = {t.name: t for t in model.tap_info()}
    stages = [n for n in info if re.fullmatch(r"stage\d+", n)]
    for n, t in info.items():
        if t.kind == "pre":
            post = n.removesuffix(".pre")
            assert post in info, f"{name}: {n} declared without {post}"
            assert (info[post].channels, info[post].stride) == (t.channels, t.stride)
            assert n in taps
    if name in PRE_EVERY_STAGE:
        assert all(f"{s}.pre" in info for s in stages), f"{name}: every stage must declare .pre"
    if name in RELU_OF_PRE:
        for s in stages:
            assert torch.equal(taps[s], F.relu(taps[f"{s}.pre"])), f"{name}: {s} != relu({s}.pre)"
    undeclared = next(f"{s}.pre" for s in [*stages, "stage99"] if f"{s}.pre" not in info)
    with pytest.raises(TapError, match=re.escape(undeclared)):
        model.forward_taps(torch.zeros(1), [undeclared])


def test_state_dict_round_trip(name: str) -> None:
    src = _build(name, seed=1)
    x = _batch(name, src, seed=2)
    src.train()
    with torch.no_grad():
        src(x)  # moves the BN running statistics away from their initial values
    src.eval()
    state = src.state_dict()
    ptrs = {v.data_ptr() for v in state.values() if v.numel()}
    assert len(ptrs) == sum(1 for v in state.values() if v.numel()), f"{name}: a tensor is stored under two keys"
    dst = _build(name, seed=3)
    dst.load_state_dict(copy.deepcopy(state), strict=True)
    dst.eval()
    with torch.no_grad():
        want = src(x)
        got_logits, got = dst.forward_taps(x, dst.tap_names())
        _, ref = src.forward_taps(x, src.tap_names())
    assert torch.equal(got_logits, want)
    for k in ref:
        assert torch.equal(got[k], ref[k]), f"{name}: tap {k} differs after a state-dict round trip"


def test_parameter_count(name: str, model: nn.Module) -> None:
    assert name in PARAMS, f"{name} is registered but missing from the ground-truth table PARAMS"
    assert count_parameters(model) == PARAMS[name]


@pytest.mark.parametrize("table_name", sorted(PARAMS))
def test_table_entry_is_registered(table_name: str) -> None:
    assert table_name in model_names(), f"{table_name} is in the ground-truth table but not registered"


# ---- family-specific semantics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wrn", ["wrn_16_1", "wrn_40_2"])
def test_wrn_pre_is_bn_of_next_consumer(wrn: str) -> None:
    """WRN is pre-activation: ``stageK`` is a raw residual sum and ``stageK.pre`` the BN that the next ReLU reads."""
    model = _build(wrn)
    x = _batch(wrn, model)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        _, t = model.forward_taps(x, model.tap_names())
        assert torch.equal(t["stage1.pre"], model.block2.layer[0].bn1(t["stage1"]))
        assert torch.equal(t["stage2.pre"], model.block3.layer[0].bn1(t["stage2"]))
        assert torch.equal(t["stage3.pre"], model.bn1(t["stage3"]))
        torch.testing.assert_close(t["pool"], F.relu(t["stage3.pre"]).mean((2, 3)))
    assert (t["stage1"] < 0).any(), "WRN stage outputs are not ReLU outputs"


def test_vgg_fourth_pool_at_64() -> None:
    """At 64x64 the pooling after block 3 is used (as in the reference), and tap_info strides follow."""
    model = create("vgg8", input_size=(64, 64)).eval()
    info = {t.name: t for t in model.tap_info()}
    assert info["stage3"].stride == 8 and info["stage4"].stride == 16
    with torch.no_grad():
        _, t = model.forward_taps(torch.randn(1, 3, 64, 64), ["stage3", "stage4"])
    assert t["stage3"].shape == (1, 512, 8, 8) and t["stage4"].shape == (1, 512, 4, 4)


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_1"])
def test_classifier_alias_has_one_home(arch: str) -> None:
    """``classifier`` aliases the reference-named ``fc``: one state-dict entry, and assignment replaces ``fc``."""
    model = create(arch, num_classes=7)
    assert model.classifier is model.fc
    assert not any(k.startswith("classifier.") for k in model.state_dict())
    model.classifier = nn.Linear(model.fc.in_features, 3)
    assert model.fc.out_features == 3 and model.classifier is model.fc
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert not any(k.startswith("classifier.") for k in model.state_dict())
