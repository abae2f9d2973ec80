"""ResNet / ResNeXt FPN backbones of the detection models, built from torchvision's parts with frozen BatchNorm.

As torchvision's detectors (``torchvision/models/detection/backbone_utils.py``: ``_resnet_fpn_extractor``):

- every BatchNorm of the ResNet trunk is torchvision's ``FrozenBatchNorm2d`` (fixed statistics and affine parameters:
  buffers, never trained, identical in train and eval mode). mmdetection's configs, which the DIST paper's COCO
  numbers come from, freeze the statistics too (``norm_eval=True``) but train the affine weights of stages 2-4
  (``requires_grad=True``): a deviation of a few thousand parameters;
- the stem (``conv1``) and ``layer1`` are frozen (``requires_grad=False``): ``trainable_layers=3`` trains
  ``layer2`` .. ``layer4``, torchvision's default for a pretrained backbone (mmdetection's ``frozen_stages=1``);
- an FPN (torchvision ``FeaturePyramidNetwork``) on the returned stages, with torchvision's extra levels
  (``LastLevelP6P7`` for RetinaNet, ``LastLevelMaxPool`` for Faster R-CNN).

The trunk's parameter names are torchvision's ResNet names under ``backbone.body.`` (``conv1``, ``bn1``,
``layer1`` ..), so an ImageNet ``.pth`` of torchvision's ``resnet50`` / ``resnext101_32x8d`` loads into
:attr:`~kdlab.models.detection.retinanet.RetinaNetDetector.imagenet_trunk` (``model.student_backbone``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, resnet50, resnext101_32x8d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import FrozenBatchNorm2d

#: Trunk names in the order torchvision unfreezes them (``_resnet_fpn_extractor``).
_TRAIN_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


class TinyResNet(nn.Module):
    """A width-``width`` ResNet-10-like trunk for tests (one torchvision ``BasicBlock`` per stage, frozen BN).

    Same module names as torchvision's ``ResNet`` (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ..
    ``layer4``); stage ``k`` has ``width * 2**(k-1)`` channels at stride ``2**(k+1)``. ``inplanes`` is the last
    stage's channels (torchvision's convention, read by FPN builders).
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        norm = FrozenBatchNorm2d
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = width
        for k in range(1, 5):
            planes = width * 2 ** (k - 1)
            stride = 1 if k == 1 else 2
            down = None
            if stride != 1 or c_in != planes:
                down = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False), norm(planes))
            self.add_module(f"layer{k}", nn.Sequential(BasicBlock(c_in, planes, stride, down, norm_layer=norm)))
            c_in = planes
        self.inplanes = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def resnet_trunk(depth: str, width: int = 8) -> nn.Module:
    """A ResNet trunk with ``FrozenBatchNorm2d``: ``"r50"`` (torchvision ``resnet50``), ``"x101"``
    (``resnext101_32x8d``) or ``"tiny"`` (:class:`TinyResNet` of base width ``width``). Random weights."""
    if depth == "r50":
        return resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    if depth == "x101":
        return resnext101_32x8d(weights=None, norm_layer=FrozenBatchNorm2d)
    if depth == "tiny":
        return TinyResNet(width)
    raise ValueError(f"unknown detection trunk {depth!r}; use r50, x101 or tiny")


def fpn_backbone(
    trunk: nn.Module,
    returned_layers: Sequence[int],
    out_channels: int,
    extra_blocks: ExtraFPNBlock,
    trainable_layers: int = 3,
) -> BackboneWithFPN:
    """torchvision's ``BackboneWithFPN`` on ``trunk`` (``_resnet_fpn_extractor``'s rule, any FPN width).

    Args:
        trunk: a torchvision-style ResNet (``ResNet`` or :class:`TinyResNet`; ``inplanes`` = last stage's channels).
        returned_layers: stages fed to the FPN (``[2, 3, 4]`` RetinaNet, ``[1, 2, 3, 4]`` Faster R-CNN).
        out_channels: FPN channels (256 in the papers; fewer for the tiny models).
        extra_blocks: the extra levels (``LastLevelP6P7`` / ``LastLevelMaxPool``).
        trainable_layers: trunk stages trained, counted from ``layer4`` (3: the stem and ``layer1`` are frozen).

    Returns:
        ``BackboneWithFPN``: ``[B, 3, H, W] -> OrderedDict`` of ``[B, out_channels, h_l, w_l]``, finest first.
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    train = list(_TRAIN_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, p in trunk.named_parameters():
        if not any(name.startswith(t) for t in train):
            p.requires_grad_(False)
    stage2 = trunk.inplanes // 8
    in_channels = [stage2 * 2 ** (i - 1) for i in returned_layers]
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    return BackboneWithFPN(trunk, return_layers, in_channels, out_channels, extra_blocks=extra_blocks)


__all__ = ["TinyResNet", "fpn_backbone", "resnet_trunk"]
