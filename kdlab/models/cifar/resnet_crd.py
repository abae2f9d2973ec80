"""CIFAR ResNets of the CRD distillation benchmark (``resnet8`` .. ``resnet110``, ``resnet8x4``, ``resnet32x4``).

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385 (the 6n+2-layer CIFAR networks of section 4.2). The widths, the projection shortcuts and the
``x4`` variants are those of the CRD benchmark: Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation
Distillation", ICLR 2020, arXiv:1910.10699.

Checked against: HobbitLong/RepDistiller ``models/resnet.py`` (commit b84f547c5db6a35318d4671d7d5c4de74c822403):
same layers, parameter counts, feature maps and pre-activation maps. Parameter names match that file too
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``, ``fc``), so its
checkpoints load with :func:`kdlab.models.checkpoints.load_state_dict_flexible`.

Architecture: conv3x3-BN-ReLU stem with ``widths[0]`` channels, three stages of ``n = (depth - 2) / 6`` basic
blocks (conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU) with ``widths[1..3]`` channels and strides 1, 2, 2,
global average pooling and a linear classifier. A block's shortcut is a 1x1 conv + BN ("option B") whenever the
stride or the channel count changes, the identity otherwise.

Taps (32x32 input, e.g. ``resnet8x4``): ``stem`` 32x32x32, ``stage1`` 64x32x32, ``stage2`` 128x16x16,
``stage3`` 256x8x8, ``stageK.pre`` (the last block's residual sum before its ReLU) with the shape of ``stageK``,
``pool`` 256.

Deviations:
- Global average pooling is adaptive (mean over H, W) instead of a fixed 8x8 ``AvgPool2d``: identical at 32x32,
  and other input sizes work.
- ``classifier`` is an alias of ``fc`` (the tap contract's name); the state dict holds ``fc.*`` only.
- The Bottleneck variant of the reference file is not registered (no benchmark model uses it).
- ``in_channels`` is configurable (the reference hard-codes 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.alias import ClassifierAlias
from kdlab.models.base import TapModel, pre_tap_stage
from kdlab.types import TapInfo

__all__ = ["CifarResNet"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut; returns the sum *before* the final ReLU.

    ``[B, c_in, H, W] -> [B, c_out, H / stride, W / stride]``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.bn2(self.conv2(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        # in place on the BN output (its backward does not read it), as the references' ``out += residual``: one
        # block-sized buffer and pass fewer per block
        return h.add_(shortcut)


class CifarResNet(ClassifierAlias, TapModel):
    """CRD-benchmark CIFAR ResNet with basic blocks and three stages.

    Args:
        depth: total depth ``6n + 2`` (``n`` blocks per stage).
        widths: channels of the stem and the three stages, e.g. ``(16, 16, 32, 64)``.
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.

    Shapes: ``[B, C, 32, 32] -> [B, K]``; taps as in the module docstring.
    """

    _classifier_attr = "fc"

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 100,
        in_channels: int = 3,
        block: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        block = block or _BasicBlock
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.input_size = (in_channels, 32, 32)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        stages = []
        for c_out, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.classifier = nn.Linear(widths[3], num_classes)  # stored under `_classifier_attr`

        info = [TapInfo("stem", widths[0], 1)]
        for k, (c, s) in enumerate(zip(widths[1:], (1, 2, 4)), start=1):
            info += [TapInfo(f"stage{k}.pre", c, s, "pre"), TapInfo(f"stage{k}", c, s)]
        info.append(TapInfo("pool", widths[3], 1, "pool"))
        self._info = tuple(info)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal (fan-out) convolutions, unit BN scales, as the reference."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BN before the ReLU at ``stageK.pre`` (None for other taps), for OFD's margins.

        It is the last block's ``bn2`` of the stage (mdistiller's ``get_bn_before_relu``)."""
        k = pre_tap_stage(tap)
        if k is None or not 1 <= k <= 3:
            return None
        return getattr(self, f"layer{k}")[-1].bn2

    def tap_info(self) -> tuple[TapInfo, ...]:
        """``stem``, ``stage{1,2,3}.pre``, ``stage{1,2,3}``, ``pool`` (strides 1, 1, 2, 4)."""
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        feats: dict[str, Tensor] = {}
        h = F.relu(self.bn1(self.conv1(x)))
        feats["stem"] = h
        for k, stage in enumerate((self.layer1, self.layer2, self.layer3), start=1):
            for block in stage:
                pre = block(h)
                h = F.relu(pre)
            feats[f"stage{k}.pre"] = pre
            feats[f"stage{k}"] = h
        pooled = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        feats["pool"] = pooled
        return self.classifier(pooled), {k: feats[k] for k in taps}


_SPECS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _builder(name: str, depth: int, widths: tuple[int, int, int, int]):
    def build(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes=num_classes, in_channels=in_channels)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"CRD-benchmark CIFAR ResNet-{depth}, stem/stage widths {widths}: ``[B, C, 32, 32] -> [B, num_classes]``."
    )
    return build


for _name, (_depth, _widths) in _SPECS.items():
    register_model(_name, family="cifar", input_size=(3, 32, 32))(_builder(_name, _depth, _widths))
