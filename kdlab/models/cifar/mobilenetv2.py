"""MobileNetV2 for 32x32 inputs, as used in the CIFAR-100 KD benchmark.

Paper: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018, arXiv:1801.04381.

Checked against: HobbitLong/RepDistiller ``models/mobilenetv2.py`` (commit b84f547; ``mobile_half`` = expansion 6,
width 0.5, the KD tables' "MobileNetV2") and DefangChen/SimKD ``models/mobilenetv2.py`` (``mobile_half_double``
= width 1.0, SimKD's "MobileNetV2_1_0" / "MobileNetV2x2"). Trainable parameters for 100 classes: 812,836
(width 0.5) and 2,353,060 (width 1.0).

Layout: a 3x3/2 conv-BN-ReLU stem, seven groups of inverted residual blocks (expansion t, channels c x width,
repeats n, first stride s: (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2),
(6,320,1,1)), a 1x1 conv-BN-ReLU to 1280 channels, global average pooling and a linear layer. Every block keeps
its 1x1 expansion convolution, also with expansion 1 (unlike torchvision).

Taps (32x32 input, width 0.5): ``stem`` 16x16x16, ``stage1`` 12x16x16 (after group 2), ``stage2`` 16x8x8
(group 3), ``stage3`` 48x4x4 (group 5), ``stage4`` 160x2x2 (group 7), ``pool`` 1280. There are no ``.pre``
taps: the blocks end in a linear (ReLU-free) projection.

Deviations:
    - Global average pooling is adaptive (the reference uses a fixed ``AvgPool2d(input_size // 16)``, which is the
      same at 32x32 input); the reference's ``input_size % 32 == 0`` assertion is dropped.
    - ``classifier`` is the ``nn.Linear`` itself; the reference wraps it in ``nn.Sequential``, so its checkpoints
      load after renaming ``classifier.0.*`` to ``classifier.*``. All other parameter names match.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.base import TapModel
from kdlab.types import TapInfo

# (expansion t, channels c, repeats n, first stride s) of the seven block groups (paper, Table 2).
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Index of the block group after which each stage tap is read (RepDistiller's f1..f4).
_STAGE_ENDS = (1, 2, 4, 6)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU, ``padding = kernel // 2``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion (x ``expansion``), 3x3 depthwise (strided), 1x1 linear projection; residual when shapes match.

    ``[B, c_in, H, W] -> [B, c_out, H / stride, W / stride]``.

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: stride of the depthwise convolution (1 or 2).
        expansion: hidden width multiplier.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.use_residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W] -> [B, c_out, H', W']``."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(TapModel):
    """CIFAR MobileNetV2: ``[B, C, 32, 32] -> [B, K]``.

    Taps: ``stem`` ``[B, 32w, 16, 16]``, ``stage1`` ``[B, 24w, 16, 16]``, ``stage2`` ``[B, 32w, 8, 8]``,
    ``stage3`` ``[B, 96w, 4, 4]``, ``stage4`` ``[B, 320w, 2, 2]`` (``w`` = width, channels truncated to int),
    ``pool`` ``[B, 1280]`` (``1280 w`` when ``w > 1``).

    Args:
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
        width: channel multiplier (0.5 for the benchmark's MobileNetV2).
        expansion: expansion ratio of all groups but the first.
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width: float = 0.5, expansion: int = 6) -> None:
        super().__init__()
        self.input_size = (in_channels, 32, 32)
        c = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, c, 3, 2)
        info = [TapInfo("stem", c, 2)]
        groups = []
        stride = 2
        for g, (t, channels, repeats, first_stride) in enumerate(_SETTING):
            c_out = int(channels * width)
            blocks = []
            for i in range(repeats):
                blocks.append(InvertedResidual(c, c_out, first_stride if i == 0 else 1, expansion if t != 1 else 1))
                c = c_out
            groups.append(nn.Sequential(*blocks))
            stride *= first_stride
            if g in _STAGE_ENDS:
                info.append(TapInfo(f"stage{_STAGE_ENDS.index(g) + 1}", c, stride))
        self.blocks = nn.ModuleList(groups)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(c, last, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        self._info = (*info, TapInfo("pool", last, 1, "pool"))
        self._init_weights()

    def _init_weights(self) -> None:
        """As the reference: He-normal (fan-out) convolutions, BN 1/0, linear N(0, 0.01) with zero bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        h = self.conv1(x)
        if "stem" in taps:
            out["stem"] = h
        for g, group in enumerate(self.blocks):
            h = group(h)
            if g in _STAGE_ENDS:
                name = f"stage{_STAGE_ENDS.index(g) + 1}"
                if name in taps:
                    out[name] = h
        pooled = torch.flatten(self.avgpool(self.conv2(h)), 1)
        if "pool" in taps:
            out["pool"] = pooled
        return self.classifier(pooled), out


@register_model("mobilenetv2", family="cifar", input_size=(3, 32, 32))
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2:
    """MobileNetV2 of the KD tables (RepDistiller ``mobile_half``: width 0.5; 812,836 parameters for 100 classes)."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width=0.5)


@register_model("mobilenetv2_1_0", family="cifar", input_size=(3, 32, 32))
def mobilenetv2_1_0(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2:
    """MobileNetV2 at width 1.0 (SimKD ``MobileNetV2_1_0``; 2,353,060 parameters for 100 classes)."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width=1.0)
