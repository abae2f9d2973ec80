"""ResNet-18/34/50 for 32x32 inputs (the KD tables' "ResNet50" CIFAR teacher).

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385.

Checked against: HobbitLong/RepDistiller ``models/resnetv2.py`` (commit b84f547; ``ResNet18``, ``ResNet34``,
``ResNet50``; the name "v2" there is not the pre-activation ResNet). It is the ImageNet ResNet with a 3x3/1
stem convolution and no max-pool. Parameter names follow RepDistiller (``conv1``, ``bn1``,
``layerK.i.{conv,bn}N``, ``layerK.i.shortcut.{0,1}``, ``linear``), so its CIFAR checkpoints (and mdistiller's,
which use the same file) load as is. Trainable parameters for 100 classes: 11,220,132 / 21,328,292 /
23,705,252.

Taps (32x32 input): ``stem`` 64x32x32; ``stage1..4`` (and ``.pre``, the last block's sum before the final ReLU,
RepDistiller's ``preact`` list) with 64/128/256/512 channels (x4 for ResNet-50) at 32, 16, 8, 4 pixels;
``pool`` 512 (2048 for ResNet-50).

Deviations:
    - Blocks are shared with :mod:`kdlab.models.imagenet.resnet`; they return the pre-activation sum and the
      stage loop applies the final ReLU. Same function, same parameters.
    - The identity shortcut is ``None`` instead of an empty ``nn.Sequential`` (no parameters either way).
    - ``zero_init_residual`` (off by default in the reference) is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kdlab.models import register_model
from kdlab.models.alias import ClassifierAlias
from kdlab.models.imagenet.resnet import BasicBlock, Bottleneck, ResNetBase


class CifarBasicBlock(BasicBlock):
    """:class:`~kdlab.models.imagenet.resnet.BasicBlock` with the projection named ``shortcut`` (RepDistiller)."""

    shortcut_attr = "shortcut"


class CifarBottleneck(Bottleneck):
    """:class:`~kdlab.models.imagenet.resnet.Bottleneck` with the projection named ``shortcut`` (RepDistiller)."""

    shortcut_attr = "shortcut"


class CifarResNetV2(ClassifierAlias, ResNetBase):
    """ResNet with a 3x3/1 stem for 32x32 images: ``[B, C, 32, 32] -> [B, K]``.

    Taps: ``stem`` ``[B, 64, 32, 32]``; ``stageK``, ``stageK.pre`` ``[B, 64 * 2**(K-1) * e, 32 / 2**(K-1), ...]``
    (``e`` = 1 for basic blocks, 4 for bottlenecks); ``pool`` ``[B, 512 * e]``.

    Args:
        block: :class:`CifarBasicBlock` or :class:`CifarBottleneck`.
        depths: blocks per stage.
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
    """

    _classifier_attr = "linear"

    def __init__(
        self, block: type[nn.Module], depths: Sequence[int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__(block, depths, in_channels=in_channels, imagenet_stem=False)
        self.input_size = (in_channels, 32, 32)
        self.linear = nn.Linear(self.num_features, num_classes)
        self._init_weights()


@register_model("resnet18_cifar", family="cifar", input_size=(3, 32, 32))
def resnet18_cifar(num_classes: int = 100, in_channels: int = 3) -> CifarResNetV2:
    """ResNet-18 for CIFAR (RepDistiller ``ResNet18``; 11,220,132 parameters for 100 classes)."""
    return CifarResNetV2(CifarBasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


@register_model("resnet34_cifar", family="cifar", input_size=(3, 32, 32))
def resnet34_cifar(num_classes: int = 100, in_channels: int = 3) -> CifarResNetV2:
    """ResNet-34 for CIFAR (RepDistiller ``ResNet34``; 21,328,292 parameters for 100 classes)."""
    return CifarResNetV2(CifarBasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


@register_model("resnet50_cifar", family="cifar", input_size=(3, 32, 32))
def resnet50_cifar(num_classes: int = 100, in_channels: int = 3) -> CifarResNetV2:
    """ResNet-50 for CIFAR (RepDistiller ``ResNet50``, the KD tables' "ResNet50" teacher; 23,705,252 parameters
    for 100 classes)."""
    return CifarResNetV2(CifarBottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
