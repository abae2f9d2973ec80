"""ShuffleNet V2 for 32x32 inputs, as used in the CIFAR-100 KD benchmark ("ShuffleV2", "ShuffleV2_1_5").

Paper: N. Ma, X. Zhang, H.-T. Zheng, J. Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018, arXiv:1807.11164.

Checked against: HobbitLong/RepDistiller ``models/ShuffleNetv2.py`` (commit b84f547; ``ShuffleV2``, net size 1:
stage widths 116/232/464, 1024 head channels) and DefangChen/SimKD ``models/ShuffleNetv2.py``
(``ShuffleV2_1_5``, net size 1.5: 176/352/704, 1024). Trainable parameters for 100 classes: 1,355,528 and
2,580,548.

Layout: a 1x1 conv-BN-ReLU stem to 24 channels (no downsampling), three stages (a stride-2 down-sampling unit
followed by 3/7/3 basic units that split the channels in halves, transform the second half and shuffle), a
1x1 conv-BN-ReLU to the head width, global average pooling and a linear layer. Parameter names follow the
reference (``conv1``, ``bn1``, ``layerK.i.{conv,bn}N``, ``conv2``, ``bn2``, ``linear``), so its checkpoints
load as is.

Taps (32x32 input, ``shufflenetv2``): ``stem`` 24x32x32, ``stage1`` 116x16x16, ``stage2`` 232x8x8, ``stage3``
464x4x4 (all before the head convolution), ``stageK.pre``, ``pool`` 1024.

``stageK.pre`` is the reference's ``preact`` (``feats["preact_feats"]`` in mdistiller, ``is_preact=True`` in
RepDistiller): the last unit's concatenation ``[kept half, bn3 output]`` with the final ReLU left out and *before*
the channel shuffle. So it is not ``stageK`` without its ReLU channel by channel: ``stageK ==
channel_shuffle(relu(stageK.pre), 2)`` (the kept half is already non-negative). Methods reading ``stageK.pre``
(OFD's student features, for example) see the reference's tensor in the reference's channel order.

Deviations:
    - Global average pooling is adaptive (the reference's ``avg_pool2d(out, 4)`` is the same at 32x32 input).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.alias import ClassifierAlias
from kdlab.models.base import TapModel
from kdlab.models.cifar.shufflenetv1 import channel_shuffle
from kdlab.types import TapInfo


class DownUnit(nn.Module):
    """Stride-2 unit: two branches (depthwise 3x3/2 + 1x1; 1x1 + depthwise 3x3/2 + 1x1) concatenated and shuffled.

    ``[B, c_in, H, W] -> [B, c_out, H / 2, W / 2]`` (post-ReLU).

    Args:
        c_in: input channels.
        c_out: output channels (each branch gives half).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_out // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W] -> [B, c_out, H / 2, W / 2]``."""
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class BasicUnit(nn.Module):
    """Channel split; the second half goes through 1x1, depthwise 3x3, 1x1 (BN each); concatenate; shuffle.

    ``forward(x, preact)`` returns ``(out, pre)``: ``out [B, C, H, W]`` and, when ``preact``, the concatenation
    before the final ReLU and before the shuffle, as the reference's ``preact`` (else ``None``):
    ``out == channel_shuffle(relu(pre), 2)``.

    Args:
        channels: input and output channels ``C`` (even).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor, preact: bool = False) -> tuple[Tensor, Tensor | None]:
        """``[B, C, H, W] -> ([B, C, H, W], [B, C, H, W] or None)``."""
        keep, work = x.chunk(2, dim=1)
        h = torch.relu(self.bn1(self.conv1(work)))
        h = self.bn3(self.conv3(self.bn2(self.conv2(h))))
        out = channel_shuffle(torch.cat([keep, torch.relu(h)], dim=1), 2)
        pre = torch.cat([keep, h], dim=1) if preact else None  # the reference's preact: before the shuffle
        return out, pre


class ShuffleNetV2(ClassifierAlias, TapModel):
    """CIFAR ShuffleNet V2: ``[B, C, 32, 32] -> [B, K]``.

    Taps: ``stem`` ``[B, 24, 32, 32]``; ``stageK`` and ``stageK.pre`` ``[B, widths[K-1], 32 / 2**K, ...]``
    (``stageK.pre`` before the last channel shuffle, as the reference; see the module docstring); ``pool``
    ``[B, head_channels]``.

    Args:
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
        widths: output channels of the three stages.
        depths: basic units per stage (after the down-sampling unit).
        head_channels: channels of the final 1x1 convolution.
    """

    _classifier_attr = "linear"

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, ...] = (116, 232, 464),
        depths: tuple[int, ...] = (3, 7, 3),
        head_channels: int = 1024,
    ) -> None:
        super().__init__()
        self.input_size = (in_channels, 32, 32)
        c = 24
        self.conv1 = nn.Conv2d(in_channels, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        info = [TapInfo("stem", c, 1)]
        for k, (width, depth) in enumerate(zip(widths, depths), start=1):
            units = [DownUnit(c, width), *(BasicUnit(width) for _ in range(depth))]
            self.add_module(f"layer{k}", nn.Sequential(*units))
            c = width
            info += [TapInfo(f"stage{k}.pre", c, 2**k, "pre"), TapInfo(f"stage{k}", c, 2**k)]
        self.num_stages = len(widths)
        self.conv2 = nn.Conv2d(c, head_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(head_channels, num_classes)
        self._info = (*info, TapInfo("pool", head_channels, 1, "pool"))

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        h = torch.relu(self.bn1(self.conv1(x)))
        if "stem" in taps:
            out["stem"] = h
        for k in range(1, self.num_stages + 1):
            down, *units = getattr(self, f"layer{k}")
            h = down(h)
            want_pre = f"stage{k}.pre" in taps
            for i, unit in enumerate(units):
                h, pre = unit(h, preact=want_pre and i == len(units) - 1)
            if want_pre:
                out[f"stage{k}.pre"] = pre
            if f"stage{k}" in taps:
                out[f"stage{k}"] = h
        pooled = torch.flatten(self.avgpool(torch.relu(self.bn2(self.conv2(h)))), 1)
        if "pool" in taps:
            out["pool"] = pooled
        return self.linear(pooled), out


@register_model("shufflenetv2", family="cifar", input_size=(3, 32, 32))
def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNet V2 1.0x (RepDistiller ``ShuffleV2``; 1,355,528 parameters for 100 classes)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)


@register_model("shufflenetv2_1_5", family="cifar", input_size=(3, 32, 32))
def shufflenetv2_1_5(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNet V2 1.5x (SimKD ``ShuffleV2_1_5``; 2,580,548 parameters for 100 classes)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels, widths=(176, 352, 704))
