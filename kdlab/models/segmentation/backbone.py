"""Dilated ResNet-v1s backbones (output stride 8) of the CIRKD / DIST segmentation code.

Reference: winycg/CIRKD ``models/base_models/resnetv1b.py`` (``resnet18_v1s``, ``resnet101_v1s`` with
``dilated=True``), the same file as hunto/DIST_KD ``segmentation/models/base_models/resnetv1b.py``. Read to learn the
architecture; the code here is written for kdlab.

Architecture (ResNet "v1s"):

- deep stem: three 3x3 convolutions (``3 -> 64``, stride 2; ``64 -> 64``; ``64 -> 128``), each with BN and ReLU,
  then a 3x3/2 max-pool: stride 4, 128 channels (so ``layer1``'s first block has a projection shortcut even for
  ResNet-18);
- ``layer1`` stride 4, ``layer2`` stride 8, then ``layer3`` and ``layer4`` keep stride 8 and dilate instead:
  ``layer3``'s first block has dilation 1 and the others 2, ``layer4``'s first block 2 and the others 4
  (the reference's ``previous_dilation`` rule).

Bottleneck blocks (ResNet-101) are torchvision's ``Bottleneck``, which accepts a dilation. Basic blocks (ResNet-18)
are :class:`DilatedBasicBlock` here, because torchvision's ``BasicBlock`` raises ``NotImplementedError`` for
``dilation > 1``. In the reference's basic block the two 3x3 convolutions have *different* dilations (the first
``dilation``, the second ``previous_dilation``), which no torchvision block expresses either.

Deviations: none in the computed function. Parameter and buffer names follow the reference (``conv1``, ``bn1``, ...,
``layerK.i.downsample.{0,1}``), so its backbone state dicts load under the prefix mapping of
:func:`kdlab.models.segmentation.nets.reference_key`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck


class DilatedBasicBlock(nn.Module):
    """The reference's ``BasicBlockV1b``: two 3x3 conv-BN layers with their own dilations and a residual sum.

    ``[B, c_in, H, W] -> [B, planes, H / stride, W / stride]`` (post-ReLU).

    Args:
        c_in: input channels.
        planes: output channels (``expansion = 1``).
        stride: stride of the first convolution.
        dilation: dilation (and padding) of the first convolution.
        previous_dilation: dilation (and padding) of the second convolution.
        downsample: projection shortcut, or None for the identity.
    """

    expansion = 1

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        previous_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, previous_dilation, previous_dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W]`` -> ``[B, planes, H', W']``."""
        identity = x if self.downsample is None else self.downsample(x)
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + identity)


def _block_dilations(dilation: int, depth: int) -> list[tuple[int, int]]:
    """``(dilation, previous_dilation)`` of each block of a stage dilated by ``dilation`` (the reference's rule)."""
    first = {1: (1, 1), 2: (1, 2), 4: (2, 4)}[dilation]
    return [first] + [(dilation, dilation)] * (depth - 1)


class DilatedResNet(nn.Module):
    """Deep-stem ResNet with output stride 8 (see the module docstring).

    ``forward_stages(x)`` returns ``(stem, [c1, c2, c3, c4])`` with strides ``(2, [4, 8, 8, 8])``; ``stem`` is the
    third stem convolution's post-ReLU map before the max-pool.

    Args:
        block: ``"basic"`` (:class:`DilatedBasicBlock`) or ``"bottleneck"`` (torchvision ``Bottleneck``).
        depths: blocks per stage, e.g. ``(2, 2, 2, 2)`` (ResNet-18) or ``(3, 4, 23, 3)`` (ResNet-101).
        in_channels: input channels.
        width: base width (64 in the reference; the stem ends with ``2 * width`` channels, stage ``k`` has
            ``width * 2**(k-1)`` planes). Smaller widths are for the tiny test models only.
    """

    def __init__(self, block: str, depths: Sequence[int], in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        expansion = 4 if block == "bottleneck" else 1
        c_in = 2 * width
        self.stem_channels = 2 * width
        self.channels: list[int] = []
        for k, (depth, stride, dilation) in enumerate(zip(depths, (1, 2, 1, 1), (1, 1, 2, 4)), start=1):
            planes = width * 2 ** (k - 1)
            c_out = planes * expansion
            blocks: list[nn.Module] = []
            for i, (d, prev) in enumerate(_block_dilations(dilation, depth)):
                s = stride if i == 0 else 1
                down = None
                if i == 0 and (s != 1 or c_in != c_out):
                    down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, s, bias=False), nn.BatchNorm2d(c_out))
                if block == "bottleneck":
                    blocks.append(Bottleneck(c_in, planes, s, down, dilation=d))
                else:
                    blocks.append(DilatedBasicBlock(c_in, planes, s, d, prev, down))
                c_in = c_out
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
            self.channels.append(c_out)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: Tensor, upto: int = 4) -> tuple[Tensor, list[Tensor]]:
        """``[B, C, H, W]`` -> ``(stem [B, 2 * width, H/2, W/2], [stage1 .. stage<upto>])`` (strides 4, 8, 8, 8)."""
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        stem = torch.relu(self.bn3(self.conv3(h)))
        h = self.maxpool(stem)
        stages = []
        for k in range(1, upto + 1):
            h = getattr(self, f"layer{k}")(h)
            stages.append(h)
        return stem, stages
