"""ShuffleNet (v1) for 32x32 inputs, as used in the CIFAR-100 KD benchmark ("ShuffleV1").

Paper: X. Zhang, X. Zhou, M. Lin, J. Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018, arXiv:1707.01083.

Checked against: HobbitLong/RepDistiller ``models/ShuffleNetv1.py`` (commit b84f547; ``ShuffleV1``: 3 groups,
stage widths 240/480/960, 4/8/4 units). Trainable parameters for 100 classes: 949,258.

Layout: a 1x1 conv-BN-ReLU stem to 24 channels (no downsampling), three stages of ShuffleNet units (the first
of each has stride 2 and concatenates a 3x3/2 average-pooled shortcut, the others add the identity), global
average pooling and a linear layer. Parameter names follow the reference (``conv1``, ``bn1``,
``layerK.i.{conv,bn}N``, ``linear``), so its checkpoints load as is.

Taps (32x32 input): ``stem`` 24x32x32, ``stage1`` 240x16x16, ``stage2`` 480x8x8, ``stage3`` 960x4x4 (and
``stageK.pre``, the last unit's sum before the final ReLU, as the reference's ``preact`` list), ``pool`` 960.

Deviations:
    - Global average pooling is adaptive (the reference's ``avg_pool2d(out, 4)`` is the same at 32x32 input).
    - The first unit's ungrouped 1x1 convolution is set by position (the unit fed by the stem) instead of the
      reference's test ``in_planes == 24``; identical for this configuration.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdlab.models import register_model
from kdlab.models.alias import ClassifierAlias
from kdlab.models.base import TapModel, pre_tap_stage
from kdlab.types import TapInfo


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave ``groups`` channel groups: ``[B, g * n, H, W]`` viewed as ``[B, g, n, H, W]``, transposed to
    ``[B, n, g, H, W]`` and flattened back to ``[B, g * n, H, W]``."""
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 conv, channel shuffle, 3x3 depthwise conv (strided), grouped 1x1 conv, plus a shortcut.

    ``forward`` returns the pre-activation: the sum with the identity (stride 1) or the concatenation with a
    3x3/2 average-pooled input (stride 2). ``[B, c_in, H, W] -> [B, c_branch (+ c_in if stride 2), H/s, W/s]``.

    Args:
        c_in: input channels.
        c_branch: output channels of the convolutional branch.
        stride: 1 (residual add) or 2 (concatenation).
        groups: groups of the 1x1 convolutions.
        first_groups: groups of the first 1x1 convolution (1 for the unit fed by the 24-channel stem).
    """

    def __init__(self, c_in: int, c_branch: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        mid = c_branch // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_branch)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W]`` -> pre-activation ``[B, c_out, H', W']``."""
        h = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), self.first_groups)
        h = torch.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        if self.stride == 2:
            return torch.cat([h, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1)
        return h + x


class ShuffleNetV1(ClassifierAlias, TapModel):
    """CIFAR ShuffleNet v1: ``[B, C, 32, 32] -> [B, K]``.

    Taps: ``stem`` ``[B, 24, 32, 32]``; ``stageK`` and ``stageK.pre`` ``[B, widths[K-1], 32 / 2**K, ...]``;
    ``pool`` ``[B, widths[-1]]``.

    Args:
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
        widths: output channels of the three stages.
        depths: units per stage.
        groups: groups of the 1x1 convolutions.
    """

    _classifier_attr = "linear"

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, ...] = (240, 480, 960),
        depths: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.input_size = (in_channels, 32, 32)
        c = 24
        self.conv1 = nn.Conv2d(in_channels, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        info = [TapInfo("stem", c, 1)]
        for k, (width, depth) in enumerate(zip(widths, depths), start=1):
            units = []
            for i in range(depth):
                stride = 2 if i == 0 else 1
                c_branch = width - c if stride == 2 else width
                first_groups = 1 if (k == 1 and i == 0) else groups
                units.append(ShuffleUnit(c, c_branch, stride, groups, first_groups))
                c = width
            self.add_module(f"layer{k}", nn.Sequential(*units))
            info += [TapInfo(f"stage{k}.pre", c, 2**k, "pre"), TapInfo(f"stage{k}", c, 2**k)]
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)
        self._info = (*info, TapInfo("pool", c, 1, "pool"))

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BN before the ReLU at ``stageK.pre`` (None for other taps), for OFD's margins.

        It is the last unit's ``bn3`` (its residual branch; None if that unit concatenates)."""
        k = pre_tap_stage(tap)
        if k is None or not 1 <= k <= self.num_stages:
            return None
        last = getattr(self, f"layer{k}")[-1]
        return last.bn3 if last.stride == 1 else None

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        h = torch.relu(self.bn1(self.conv1(x)))
        if "stem" in taps:
            out["stem"] = h
        for k in range(1, self.num_stages + 1):
            for unit in getattr(self, f"layer{k}"):
                pre = unit(h)
                h = torch.relu(pre)
            if f"stage{k}.pre" in taps:
                out[f"stage{k}.pre"] = pre
            if f"stage{k}" in taps:
                out[f"stage{k}"] = h
        pooled = torch.flatten(self.avgpool(h), 1)
        if "pool" in taps:
            out["pool"] = pooled
        return self.linear(pooled), out


@register_model("shufflenetv1", family="cifar", input_size=(3, 32, 32))
def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNet v1, 3 groups (RepDistiller ``ShuffleV1``; 949,258 parameters for 100 classes)."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)
