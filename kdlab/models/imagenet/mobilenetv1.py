"""MobileNet (v1) for ImageNet, the student of the KD papers' ResNet-50 -> MobileNet pair.

Paper: A. G. Howard, M. Zhu, B. Chen, D. Kalenichenko, W. Wang, T. Weyand, M. Andreetto, H. Adam,
"MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861 (2017).

Checked against: megvii-research/mdistiller ``mdistiller/models/imagenet/mobilenetv1.py`` (width 1.0: a 3x3/2
conv-BN-ReLU stem to 32 channels, 13 depthwise-separable units, global average pooling, linear). Trainable
parameters for 1000 classes: 4,231,976. Parameter names follow mdistiller (``model.0`` the stem,
``model.1`` .. ``model.13`` the units, ``fc``), so its checkpoints load as is.

Taps (224x224 input): ``stem`` 32x112x112 (stride 2); ``stage1`` 128x56x56 (after unit 3), ``stage2`` 256x28x28
(unit 5), ``stage3`` 512x14x14 (unit 11), ``stage4`` 1024x7x7 (unit 13), each with ``stageK.pre`` (the unit's
last BN output before its ReLU), as mdistiller's ``feats`` / ``preact_feats``; ``pool`` 1024.

Deviations:
    - mdistiller's feature list has no stem map: its four maps are ``stage1..4`` here (strides 4 to 32, aligned
      with the ResNet stages they are distilled from), and ``stem`` is the stem convolution's output.
    - Global average pooling is adaptive (mdistiller's ``AvgPool2d(7)`` is the same at 224x224 input and fails
      below 193 pixels).
    - ReLUs are not in-place (no parameters or outputs change).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.alias import ClassifierAlias
from kdlab.models.base import TapModel, pre_tap_stage
from kdlab.types import TapInfo

# (output channels, stride) of the 13 depthwise-separable units.
_UNITS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# Index in ``model`` (0 = stem) of the unit that ends each stage.
_STAGE_ENDS = (3, 5, 11, 13)


def _separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (strided) + BN + ReLU, pointwise 1x1 + BN + ReLU: ``[B, c_in, H, W] -> [B, c_out, H/s, W/s]``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class MobileNetV1(ClassifierAlias, TapModel):
    """ImageNet MobileNet v1 (width 1.0): ``[B, C, H, W] -> [B, K]`` (native 224x224; any ``H, W >= 32``).

    Taps: ``stem`` ``[B, 32, H/2, W/2]``; ``stage1..4`` and ``stageK.pre`` with 128/256/512/1024 channels at
    strides 4/8/16/32; ``pool`` ``[B, 1024]``.

    Args:
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
    """

    _classifier_attr = "fc"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.input_size = (in_channels, 224, 224)
        layers = [
            nn.Sequential(nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        ]
        info = [TapInfo("stem", 32, 2)]
        c, stride = 32, 2
        for i, (c_out, s) in enumerate(_UNITS, start=1):
            layers.append(_separable(c, c_out, s))
            c, stride = c_out, stride * s
            if i in _STAGE_ENDS:
                k = _STAGE_ENDS.index(i) + 1
                info += [TapInfo(f"stage{k}.pre", c, stride, "pre"), TapInfo(f"stage{k}", c, stride)]
        self.model = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self._info = (*info, TapInfo("pool", c, 1, "pool"))

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BN before the ReLU at ``stageK.pre`` (None for other taps), for OFD's margins.

        ``stageK.pre`` is the output of the stage's last pointwise BN."""
        k = pre_tap_stage(tap)
        if k is None or not 1 <= k <= len(_STAGE_ENDS):
            return None
        return self.model[_STAGE_ENDS[k - 1]][-2]

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        h = self.model[0](x)
        if "stem" in taps:
            out["stem"] = h
        start = 1
        for k, end in enumerate(_STAGE_ENDS, start=1):
            for unit in self.model[start:end]:
                h = unit(h)
            last = self.model[end]
            pre = last[:-1](h)
            h = torch.relu(pre)
            if f"stage{k}.pre" in taps:
                out[f"stage{k}.pre"] = pre
            if f"stage{k}" in taps:
                out[f"stage{k}"] = h
            start = end + 1
        pooled = torch.flatten(self.avgpool(h), 1)
        if "pool" in taps:
            out["pool"] = pooled
        return self.fc(pooled), out


@register_model("mobilenetv1", family="imagenet", input_size=(3, 224, 224))
def mobilenetv1(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV1:
    """MobileNet v1, width 1.0 (mdistiller ``MobileNetV1``; 4,231,976 parameters for 1000 classes)."""
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels)
