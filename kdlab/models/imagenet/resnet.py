"""ResNet-18/34/50/101/152 for ImageNet, parameter-for-parameter identical to torchvision's.

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385.

Checked against: torchvision ``models/resnet.py`` (parameter names and shapes, so a torchvision state dict loads
with ``strict=True``) and megvii-research/mdistiller ``mdistiller/models/imagenet/resnet.py`` (feature list:
``stem`` is the stem's map after its ReLU and before the max-pool, then one map per stage; the pre-activation of
each stage is the sum of its last block before the final ReLU). Parameter counts for 1000 classes:
11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808 (torchvision's documented numbers). ResNet-101/152 are
the larger teachers of DIST's Table 3.

The residual blocks defined here (ResNet v1.5: the stride sits on the 3x3 convolution of the bottleneck) are
shared with the CIFAR ResNet-18/34/50 (:mod:`kdlab.models.cifar.resnet_large`), which differ only in the stem
and in the names of the shortcut and the classifier.

Deviations:
    - The blocks return the pre-activation sum and the stage loop applies the final ReLU, so ``stageK.pre``
      costs nothing; the computed function is unchanged.
    - ``classifier`` is an alias of ``fc`` (reading and assigning; no duplicate state-dict keys).
    - An optional dropout before ``fc`` (``dropout``, default 0: torchvision's function), for the strategies that
      regularise the classifier (``model.student_dropout``); it has no parameters, so state dicts are unchanged.
    - mdistiller's extra ``stem`` pre-activation (the stem's BN output) is not exposed: ``stem.pre`` is not a
      canonical tap name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.alias import ClassifierAlias
from kdlab.models.base import TapModel, pre_tap_stage
from kdlab.types import TapInfo


def _projection(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    """1x1 convolution + BN on the shortcut when the block changes shape, else ``None`` (identity)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; ``forward`` returns the sum *before* the final ReLU.

    ``[B, c_in, H, W] -> [B, planes, H / stride, W / stride]``.

    Args:
        c_in: input channels.
        planes: output channels (``expansion = 1``).
        stride: stride of the first convolution and of the shortcut projection.

    The shortcut projection is stored under the attribute named by ``shortcut_attr`` (``"downsample"`` as in
    torchvision; the CIFAR variant uses ``"shortcut"`` as RepDistiller does), ``None`` for the identity.
    """

    expansion = 1
    shortcut_attr = "downsample"

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        setattr(self, self.shortcut_attr, _projection(c_in, planes * self.expansion, stride))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W]`` (post-ReLU) -> ``[B, planes, H', W']`` pre-activation sum."""
        proj = getattr(self, self.shortcut_attr)
        identity = x if proj is None else proj(x)
        h = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(h)) + identity


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN, plus a residual connection.

    ``forward`` returns the sum *before* the final ReLU: ``[B, c_in, H, W] -> [B, 4 * planes, H / s, W / s]``.

    Args:
        c_in: input channels.
        planes: bottleneck width; the block outputs ``4 * planes`` channels.
        stride: stride of the 3x3 convolution and of the shortcut projection.
    """

    expansion = 4
    shortcut_attr = "downsample"

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        setattr(self, self.shortcut_attr, _projection(c_in, c_out, stride))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W]`` (post-ReLU) -> ``[B, 4 * planes, H', W']`` pre-activation sum."""
        proj = getattr(self, self.shortcut_attr)
        identity = x if proj is None else proj(x)
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.bn3(self.conv3(h)) + identity


def run_stage(stage: nn.Sequential, h: Tensor) -> tuple[Tensor, Tensor]:
    """Run the blocks of one stage (each returning its pre-activation sum).

    Returns:
        ``(post, pre)``: the stage output after the final ReLU and the last block's sum before it,
        both ``[B, C, H, W]``.
    """
    pre = h
    for block in stage:
        pre = block(h)
        h = torch.relu(pre)
    return h, pre


class ResNetBase(TapModel):
    """Shared body of the ImageNet and CIFAR ResNets: stem, four stages, global average pool, linear head.

    Taps: ``stem``, ``stage1.pre``, ``stage1``, ..., ``stage4.pre``, ``stage4``, ``pool``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck` (or a subclass renaming the shortcut).
        depths: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        in_channels: input channels ``C``.
        imagenet_stem: 7x7/2 convolution + 3x3/2 max-pool (ImageNet) instead of a 3x3/1 convolution (CIFAR).
        dropout: dropout probability on the pooled embedding before the classifier (0: none, as torchvision's).

    Subclasses create the final linear layer and expose it as ``classifier`` (see
    :class:`~kdlab.models.alias.ClassifierAlias`).
    """

    def __init__(
        self,
        block: type[nn.Module],
        depths: Sequence[int],
        in_channels: int = 3,
        imagenet_stem: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        c_in = 64
        info = [TapInfo("stem", 64, 2 if imagenet_stem else 1)]
        stage1_stride = 4 if imagenet_stem else 1
        for k, depth in enumerate(depths, start=1):
            planes = 64 * 2 ** (k - 1)
            blocks = []
            for i in range(depth):
                blocks.append(block(c_in, planes, 2 if (i == 0 and k > 1) else 1))
                c_in = planes * block.expansion
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
            stride = stage1_stride * 2 ** (k - 1)
            info += [TapInfo(f"stage{k}.pre", c_in, stride, "pre"), TapInfo(f"stage{k}", c_in, stride)]
        self.num_stages = len(depths)
        self.num_features = c_in
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)  # p = 0 returns its input unchanged (no random draw)
        self._info = (*info, TapInfo("pool", c_in, 1, "pool"))

    def _init_weights(self) -> None:
        """He-normal (fan-out) convolutions, unit BN scale, zero BN shift, as torchvision and RepDistiller."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BN before the ReLU at ``stageK.pre`` (None for other taps), for OFD's margins.

        It is the last block's final BN (``bn2`` basic, ``bn3`` bottleneck; mdistiller's ``get_bn_before_relu``)."""
        k = pre_tap_stage(tap)
        stage = getattr(self, f"layer{k}", None) if k is not None else None
        if stage is None:
            return None
        last = stage[-1]
        return last.bn3 if hasattr(last, "bn3") else last.bn2

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        h = torch.relu(self.bn1(self.conv1(x)))
        if "stem" in taps:
            out["stem"] = h
        h = self.maxpool(h)
        for k in range(1, self.num_stages + 1):
            h, pre = run_stage(getattr(self, f"layer{k}"), h)
            if f"stage{k}.pre" in taps:
                out[f"stage{k}.pre"] = pre
            if f"stage{k}" in taps:
                out[f"stage{k}"] = h
        pooled = torch.flatten(self.avgpool(h), 1)
        if "pool" in taps:
            out["pool"] = pooled
        return self.classifier(self.dropout(pooled)), out


class ResNet(ClassifierAlias, ResNetBase):
    """torchvision-layout ImageNet ResNet: ``[B, C, H, W] -> [B, K]`` (any ``H, W >= 32``; native 224).

    Taps (for a 224x224 input): ``stem`` ``[B, 64, 112, 112]`` (stride 2, before the max-pool),
    ``stageK`` / ``stageK.pre`` with ``64 * 2**(K-1) * expansion`` channels at stride ``2**(K+1)``,
    ``pool`` ``[B, 512 * expansion]``.

    Args:
        block: :class:`BasicBlock` (ResNet-18/34) or :class:`Bottleneck` (ResNet-50/101/152).
        depths: blocks per stage.
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
        dropout: dropout before the classifier (``model.student_dropout``; 0 as torchvision's ResNets).
    """

    input_size = (3, 224, 224)
    _classifier_attr = "fc"

    def __init__(
        self,
        block: type[nn.Module],
        depths: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(block, depths, in_channels=in_channels, imagenet_stem=True, dropout=dropout)
        self.input_size = (in_channels, 224, 224)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights()


@register_model("resnet18", family="imagenet", input_size=(3, 224, 224))
def resnet18(num_classes: int = 1000, in_channels: int = 3, classifier_dropout: float = 0.0) -> ResNet:
    """ResNet-18 (torchvision layout, 11,689,512 parameters for 1000 classes)."""
    return ResNet(
        BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, dropout=classifier_dropout
    )


@register_model("resnet34", family="imagenet", input_size=(3, 224, 224))
def resnet34(num_classes: int = 1000, in_channels: int = 3, classifier_dropout: float = 0.0) -> ResNet:
    """ResNet-34 (torchvision layout, 21,797,672 parameters for 1000 classes)."""
    return ResNet(
        BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, dropout=classifier_dropout
    )


@register_model("resnet50", family="imagenet", input_size=(3, 224, 224))
def resnet50(num_classes: int = 1000, in_channels: int = 3, classifier_dropout: float = 0.0) -> ResNet:
    """ResNet-50 v1.5 (torchvision layout, 25,557,032 parameters for 1000 classes)."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, dropout=classifier_dropout
    )


@register_model("resnet101", family="imagenet", input_size=(3, 224, 224), heavy=True)
def resnet101(num_classes: int = 1000, in_channels: int = 3, classifier_dropout: float = 0.0) -> ResNet:
    """ResNet-101 v1.5 (torchvision layout, 44,549,160 parameters for 1000 classes)."""
    return ResNet(
        Bottleneck, (3, 4, 23, 3), num_classes=num_classes, in_channels=in_channels, dropout=classifier_dropout
    )


@register_model("resnet152", family="imagenet", input_size=(3, 224, 224), heavy=True)
def resnet152(num_classes: int = 1000, in_channels: int = 3, classifier_dropout: float = 0.0) -> ResNet:
    """ResNet-152 v1.5 (torchvision layout, 60,192,808 parameters for 1000 classes)."""
    return ResNet(
        Bottleneck, (3, 8, 36, 3), num_classes=num_classes, in_channels=in_channels, dropout=classifier_dropout
    )
