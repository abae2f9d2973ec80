"""Model zoo part 2: reference layouts of the ResNets, semantics of the MobileNet/ShuffleNet/ResNet taps, the
third-party adapters (timm through a stand-in with timm's feature API, any module through hooks) and
``count_flops``. Registry-wide checks (parameter counts, tap shapes, forward consistency) live in
``test_models_contract.py``.
"""

from __future__ import annotations

import copy
import math
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models import TapError, count_parameters, create
from kdlab.models.adapters import HookTapModel, TimmTapModel
from kdlab.models.cifar.shufflenetv1 import channel_shuffle
from kdlab.models.flops import count_flops

BATCH = 2

# ---- reference state-dict layouts, written from the architecture description ---------------------------------


def _bn(keys: dict[str, tuple[int, ...]], prefix: str, channels: int) -> None:
    for field in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.{field}"] = (channels,)
    keys[f"{prefix}.num_batches_tracked"] = ()


def resnet_layout(
    bottleneck: bool,
    depths: tuple[int, ...],
    num_classes: int,
    imagenet: bool = True,
    shortcut: str = "downsample",
    head: str = "fc",
) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of a ResNet as torchvision lays it out (``imagenet=True``: 7x7 stem,
    ``layerK.i.downsample.{0,1}``, ``fc``) or as RepDistiller's CIFAR ``resnetv2`` does (3x3 stem,
    ``shortcut``, ``linear``). Stage ``K`` has width ``64 * 2**(K-1)`` (x4 out for bottlenecks); the first
    block of stages 2-4 has stride 2; a 1x1 conv + BN projects the shortcut when the shape changes."""
    keys: dict[str, tuple[int, ...]] = {}
    k = 7 if imagenet else 3
    keys["conv1.weight"] = (64, 3, k, k)
    _bn(keys, "bn1", 64)
    c_in, expansion = 64, 4 if bottleneck else 1
    for stage, depth in enumerate(depths, start=1):
        planes = 64 * 2 ** (stage - 1)
        c_out = planes * expansion
        for i in range(depth):
            prefix = f"layer{stage}.{i}"
            stride = 2 if (i == 0 and stage > 1) else 1
            if bottleneck:
                convs = [(planes, c_in, 1), (planes, planes, 3), (c_out, planes, 1)]
            else:
                convs = [(planes, c_in, 3), (planes, planes, 3)]
            for j, (o, c, kk) in enumerate(convs, start=1):
                keys[f"{prefix}.conv{j}.weight"] = (o, c, kk, kk)
                _bn(keys, f"{prefix}.bn{j}", o)
            if stride != 1 or c_in != c_out:
                keys[f"{prefix}.{shortcut}.0.weight"] = (c_out, c_in, 1, 1)
                _bn(keys, f"{prefix}.{shortcut}.1", c_out)
            c_in = c_out
    keys[f"{head}.weight"] = (num_classes, c_in)
    keys[f"{head}.bias"] = (num_classes,)
    return keys


def _fake_state(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A state dict with the layout's shapes; entry ``i`` is filled with ``i`` so misplaced tensors show."""
    state = {}
    for i, (key, shape) in enumerate(layout.items()):
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        state[key] = torch.full(shape, i, dtype=dtype)
    return state


def _trainable(layout: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for k, s in layout.items() if k.endswith(("weight", "bias")))


_RESNETS = {
    # name: (bottleneck, depths, imagenet, published trainable parameters)
    "resnet18": (False, (2, 2, 2, 2), True, 11_689_512),
    "resnet34": (False, (3, 4, 6, 3), True, 21_797_672),
    "resnet50": (True, (3, 4, 6, 3), True, 25_557_032),
    "resnet18_cifar": (False, (2, 2, 2, 2), False, 11_220_132),
    "resnet50_cifar": (True, (3, 4, 6, 3), False, 23_705_252),
}


@pytest.mark.parametrize("name", sorted(_RESNETS))
def test_resnet_loads_reference_state_dict(name: str) -> None:
    """torchvision-format (ImageNet) and RepDistiller-format (CIFAR) ResNet state dicts load with strict=True."""
    bottleneck, depths, imagenet, published = _RESNETS[name]
    num_classes = 1000 if imagenet else 100
    names = {} if imagenet else {"shortcut": "shortcut", "head": "linear"}
    layout = resnet_layout(bottleneck, depths, num_classes, imagenet=imagenet, **names)
    assert _trainable(layout) == published  # the layout written above is itself right

    model = create(name, num_classes=num_classes)
    own = model.state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == layout
    assert not any(k.startswith("classifier.") for k in own)
    model.load_state_dict(_fake_state(layout), strict=True)
    head = model.fc if imagenet else model.linear
    assert model.classifier is head
    assert torch.equal(head.bias, torch.full((num_classes,), len(layout) - 1.0))
    assert torch.equal(model.layer2[0].bn1.running_var, _fake_state(layout)["layer2.0.bn1.running_var"])
    assert count_parameters(model) == published


# ---- tap semantics ---------------------------------------------------------------------------------------------

# Buffer elements (BN running mean/var + one num_batches_tracked per BN), methods.md "Model ground truth".
_BUFFERS = {
    "mobilenetv2": 18_421,
    "shufflenetv1": 23_785,
    "shufflenetv2": 16_236,
    "resnet18_cifar": 9_620,
    "resnet34_cifar": 17_060,
    "resnet50_cifar": 53_173,
}


@pytest.mark.parametrize("name", sorted(_BUFFERS))
def test_cifar_buffers_and_pre_taps(name: str) -> None:
    """Buffer counts match the reference; ``stageK == relu(stageK.pre)`` wherever ``.pre`` exists."""
    model = create(name).eval()
    assert sum(b.numel() for b in model.buffers()) == _BUFFERS[name]
    pre = [n for n in model.tap_names() if n.endswith(".pre")]
    if name.startswith("mobilenetv2"):
        assert pre == []
        return
    assert pre == ["stage1.pre", "stage2.pre", "stage3.pre"] + (["stage4.pre"] if "resnet" in name else [])
    with torch.no_grad():
        _, taps = model.forward_taps(torch.randn(BATCH, 3, 32, 32), pre + [p.removesuffix(".pre") for p in pre])
    for p in pre:
        post = taps[p.removesuffix(".pre")]
        if name.startswith("shufflenetv2"):  # the reference's preact is taken before the last channel shuffle
            assert torch.equal(channel_shuffle(F.relu(taps[p]), 2), post)
            assert not torch.equal(F.relu(taps[p]), post)
        else:
            assert torch.equal(F.relu(taps[p]), post)
        assert (taps[p] < 0).any()


def test_mobilenetv2_1_0_maps() -> None:
    """Width 1.0: SimKD's MobileNetV2_1_0 (twice the channels of ``mobile_half``, same 1280-d embedding)."""
    model = create("mobilenetv2_1_0").eval()
    with torch.no_grad():
        _, taps = model.forward_taps(torch.randn(BATCH, 3, 32, 32), model.tap_names())
    shapes = {k: tuple(v.shape[1:]) for k, v in taps.items()}
    assert shapes == {
        "stem": (32, 16, 16),
        "stage1": (24, 16, 16),
        "stage2": (32, 8, 8),
        "stage3": (96, 4, 4),
        "stage4": (320, 2, 2),
        "pool": (1280,),
    }


def test_shufflenetv2_1_5_maps() -> None:
    model = create("shufflenetv2_1_5").eval()
    with torch.no_grad():
        _, taps = model.forward_taps(torch.randn(BATCH, 3, 32, 32), ["stage1", "stage2", "stage3", "pool"])
    assert [tuple(v.shape[1:]) for v in taps.values()] == [(176, 16, 16), (352, 8, 8), (704, 4, 4), (1024,)]


_IMAGENET_64 = {
    "resnet18": ((64, 32, 32), (64, 128, 256, 512)),
    "resnet34": ((64, 32, 32), (64, 128, 256, 512)),
    "resnet50": ((64, 32, 32), (256, 512, 1024, 2048)),
    "mobilenetv1": ((32, 32, 32), (128, 256, 512, 1024)),
}


@pytest.mark.parametrize("name", sorted(_IMAGENET_64))
def test_imagenet_taps_at_64(name: str) -> None:
    """Stem at stride 2 (before the max-pool for ResNets), stages at strides 4..32, ``relu(pre) == post``."""
    stem, widths = _IMAGENET_64[name]
    model = create(name, num_classes=1000).eval()
    info = {t.name: t for t in model.tap_info()}
    assert info["stem"].stride == 2
    assert [info[f"stage{k}"].stride for k in range(1, 5)] == [4, 8, 16, 32]
    with torch.no_grad():
        logits, taps = model.forward_taps(torch.randn(BATCH, 3, 64, 64), model.tap_names())
    assert logits.shape == (BATCH, 1000)
    assert tuple(taps["stem"].shape[1:]) == stem
    for k, width in enumerate(widths, start=1):
        side = 64 // 2 ** (k + 1)
        assert tuple(taps[f"stage{k}"].shape[1:]) == (width, side, side)
        assert torch.equal(F.relu(taps[f"stage{k}.pre"]), taps[f"stage{k}"])
    assert taps["pool"].shape == (BATCH, widths[-1])


# ---- timm adapter through a stand-in ----------------------------------------------------------------------------


class FakeTimmNet(nn.Module):
    """Stand-in for a timm>=1.0 model: the same feature-API names and signatures (``feature_info`` entries with
    ``num_chs``/``reduction``/``module``, ``forward_intermediates``, ``forward_features``, ``forward_head``,
    ``num_features``, ``get_classifier``, ``pretrained_cfg``). ``[B, C, 32, 32] -> [B, K]``."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, stride=2, padding=1), nn.ReLU())
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.num_features = 32
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)
        self.feature_info = [
            {"num_chs": 8, "reduction": 2, "module": "stem"},
            {"num_chs": 16, "reduction": 4, "module": "stages.0"},
            {"num_chs": 32, "reduction": 8, "module": "stages.1"},
        ]
        self.pretrained_cfg = {"input_size": (3, 32, 32)}
        self.taken: list[list[int]] = []

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        n = len(self.feature_info)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [n + i if i < 0 else i for i in indices]
        self.taken.append(take)
        intermediates = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Install a ``timm`` module whose ``create_model`` builds :class:`FakeTimmNet`; returns the call log."""
    calls: list[dict] = []
    module = types.ModuleType("timm")

    def create_model(model_name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        calls.append({"model_name": model_name, "pretrained": pretrained, **kwargs})
        return FakeTimmNet(**kwargs)

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def test_timm_adapter_feature_api(fake_timm: list[dict]) -> None:
    model = create("timm:fake_net", num_classes=5, in_channels=1)
    assert isinstance(model, TimmTapModel)
    assert fake_timm == [{"model_name": "fake_net", "pretrained": False, "num_classes": 5, "in_chans": 1}]
    assert model.input_size == (1, 32, 32)
    assert [(t.name, t.channels, t.stride, t.kind) for t in model.tap_info()] == [
        ("stage1", 8, 2, "post"),
        ("stage2", 16, 4, "post"),
        ("stage3", 32, 8, "post"),
        ("pool", 32, 1, "pool"),
    ]
    assert model.stage_modules == {"stage1": "stem", "stage2": "stages.0", "stage3": "stages.1"}
    assert model.classifier is model.model.fc
    net = model.model.eval()
    x = torch.randn(BATCH, 1, 32, 32)
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(plain, net(x))
        assert torch.equal(model.forward_taps(x, ())[0], plain)
        assert net.taken == []  # no taps: the plain forward
        logits, taps = model.forward_taps(x, ["stage3", "pool", "stage1"])
        assert net.taken == [[0, 2]]  # only the asked intermediates, in network order
        assert list(taps) == ["stage3", "pool", "stage1"]
        assert torch.equal(logits, plain)
        assert torch.equal(taps["stage1"], net.stem(x))
        assert torch.equal(taps["stage3"], net.forward_features(x))
        assert torch.equal(taps["pool"], net.forward_head(net.forward_features(x), pre_logits=True))
        assert torch.equal(model.classifier(taps["pool"]), plain)
        _, pool_only = model.forward_taps(x, ["pool"])
        assert net.taken == [[0, 2]] and torch.equal(pool_only["pool"], taps["pool"])
    with pytest.raises(TapError, match=r"timm:fake_net.*stage1\.pre"):
        model.forward_taps(x, ["stage1.pre"])
    with pytest.raises(TapError, match=r"timm:fake_net.*stem"):
        model.forward_taps(x, ["stem"])


def test_timm_adapter_rejects_model_without_feature_api() -> None:
    with pytest.raises(TypeError, match="forward_intermediates"):
        TimmTapModel(nn.Linear(2, 2), name="old")


def test_timm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r"pip install kdlab\[timm\]"):
        create("timm:resnet18")


# ---- HookTapModel ------------------------------------------------------------------------------------------------


def _toy_net(inplace: bool = False) -> nn.Sequential:
    def unit(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=inplace))

    return nn.Sequential(
        OrderedDict(
            stem=unit(3, 4, 1),
            block1=unit(4, 8, 2),
            block2=unit(8, 16, 2),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(16, 5),
        )
    )


_TOY_TAPS = {"stage2": "block2", "stem": "stem", "stage2.pre": "block2.1", "stage1": "block1"}


def _no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_hook_tap_model_on_sequential() -> None:
    net = _toy_net().eval()
    model = HookTapModel(net, _TOY_TAPS, classifier_path="fc", input_size=(3, 16, 16), name="toy")
    assert [(t.name, t.channels, t.stride, t.kind) for t in model.tap_info()] == [
        ("stem", 4, 1, "post"),
        ("stage1", 8, 2, "post"),
        ("stage2.pre", 16, 4, "pre"),
        ("stage2", 16, 4, "post"),
        ("pool", 16, 1, "pool"),
    ]
    assert model.classifier is net.fc
    x = torch.randn(BATCH, 3, 16, 16)
    with torch.no_grad():
        plain = net(x)
        assert torch.equal(model(x), plain)
        assert torch.equal(model.forward_taps(x, ())[0], plain)
        logits, taps = model.forward_taps(x, ["pool", "stage2.pre", "stage1", "stage2"])
    assert _no_hooks(net)
    assert list(taps) == ["pool", "stage2.pre", "stage1", "stage2"]
    assert torch.equal(logits, plain)
    assert torch.equal(taps["stage1"], net.block1(net.stem(x)))
    assert torch.equal(F.relu(taps["stage2.pre"]), taps["stage2"])
    assert torch.equal(taps["pool"], taps["stage2"].mean((2, 3)))
    assert torch.equal(model.classifier(taps["pool"]), plain)
    with pytest.raises(TapError, match=r"'toy'.*stage3"):
        model.forward_taps(x, ["stage3"])

    clone = copy.deepcopy(model)  # hooks live only during a forward, so copies are independent
    with torch.no_grad():
        _, again = clone.forward_taps(x, ["stage1"])
    assert torch.equal(again["stage1"], taps["stage1"]) and _no_hooks(net)

    model.classifier = nn.Linear(16, 3)
    assert net.fc.out_features == 3 and model(x).shape == (BATCH, 3)
    assert not any(k.startswith("classifier.") for k in model.state_dict())


def test_hook_tap_model_rejects_bad_names_and_paths() -> None:
    with pytest.raises(ValueError, match="canonical"):
        HookTapModel(_toy_net(), {"layer1": "block1"})
    with pytest.raises(ValueError, match="block9"):
        HookTapModel(_toy_net(), {"stage1": "block9"})
    model = HookTapModel(_toy_net(), {"stage1": "block1"}, input_size=(3, 16, 16))
    assert model.tap_names() == ("stage1",)
    with pytest.raises(AttributeError):
        _ = model.classifier


def test_hook_tap_model_inplace_outputs() -> None:
    """A hooked output changed in place later (inplace ReLU after a BN) is an error under autograd/no_grad, and
    is copied at capture time under inference_mode (where tensors carry no version counter)."""
    net = _toy_net(inplace=True).eval()
    model = HookTapModel(net, {"stage1.pre": "block1.1", "stage1": "block1"}, input_size=(3, 16, 16))
    x = torch.randn(BATCH, 3, 16, 16)
    with pytest.raises(TapError, match="in place"), torch.no_grad():
        model.forward_taps(x, ["stage1.pre"])
    with torch.inference_mode():
        _, taps = model.forward_taps(x, ["stage1.pre", "stage1"])
    assert (taps["stage1.pre"] < 0).any()
    assert torch.equal(F.relu(taps["stage1.pre"]), taps["stage1"])


# ---- count_flops ---------------------------------------------------------------------------------------------------


def test_count_flops_hand_count() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 4*8*8 outputs x 3*9 = 6912
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False),  # 6*4*4 outputs x (4/2)*9 = 1728
        nn.Flatten(),
        nn.Linear(96, 10),  # 10 x 96 = 960
    )
    net.train()
    assert count_flops(net, (3, 8, 8)) == 6912 + 1728 + 960
    assert net.training and _no_hooks(net)


def test_count_flops_resnet18_imagenet() -> None:
    """torchvision lists ResNet-18 at 1.81 GFLOPS (multiply-accumulates) for a 224x224 image."""
    macs = count_flops(create("resnet18", num_classes=1000))
    assert round(macs / 1e9, 2) == 1.81
