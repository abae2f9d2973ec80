"""MobileNetV2 and EfficientNet-B0 for ImageNet, built by torchvision, behind the tap contract.

Papers: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018, arXiv:1801.04381; M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019, arXiv:1905.11946. They are students of DIST's Table 4 (strategy B2,
from a ResNet-50 teacher).

Built by: torchvision ``models/mobilenetv2.py`` and ``models/efficientnet.py`` (``torchvision.models.mobilenet_v2``
/ ``efficientnet_b0`` with ``weights=None``): the ``features`` blocks are torchvision's own modules, so the computed
function is torchvision's. Trainable parameters for 1000 classes, as torchvision documents them: 3,504,872
(MobileNetV2) and 5,288,548 (EfficientNet-B0).

Taps (224x224 input): ``stem`` is the stem convolution's output (32 channels, stride 2); ``stage1`` .. ``stage5``
end at the last block of each resolution, the feature list of timm's ``features_only`` for the same networks
(MobileNetV2: 16/24/32/96/320 channels at strides 2/4/8/16/32; EfficientNet-B0: 16/24/40/112/320); ``pool`` is the
global average of the final 1x1 convolution (1280). There are no ``.pre`` taps: the blocks end in a linear
bottleneck (no activation after the last BN), so a pre-activation map would equal the post one.

Checkpoints: a torchvision ``.pth`` (``features.*``, ``classifier.1.*``) loads with
:func:`kdlab.models.checkpoints.load_state_dict_flexible`, through the reference layout that renames
``classifier.1.`` to ``classifier.``.

Deviations:
    - ``classifier`` is the final ``nn.Linear`` itself (the tap contract); torchvision's
      ``Sequential(Dropout, Linear)`` is split into ``dropout`` and ``classifier`` (same function, renamed keys).
    - ``in_channels != 3`` replaces the stem convolution by one with that many input channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.base import TapModel
from kdlab.types import TapInfo


class TorchvisionFeatureNet(TapModel):
    """A torchvision network made of ``features`` (a sequence of blocks), global average pooling, dropout and a
    linear head: ``[B, C, H, W] -> [B, K]`` (any ``H, W >= 32``; native 224).

    Args:
        features: torchvision's ``features`` (``features[0]`` the stem, the last entry the 1x1 head convolution).
        stage_ends: index in ``features`` of the block ending each stage (``stage1`` .. ``stageN``).
        stage_info: ``(channels, stride)`` of each stage's output.
        stem_channels: output channels of ``features[0]`` (stride 2).
        num_features: channels of the last feature map (the pooled embedding ``D``).
        dropout: dropout probability before the classifier.
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.

    Taps: ``stem``, ``stage1`` .. ``stageN``, ``pool`` ``[B, D]``.
    """

    input_size = (3, 224, 224)

    def __init__(
        self,
        features: nn.Sequential,
        stage_ends: Sequence[int],
        stage_info: Sequence[tuple[int, int]],
        stem_channels: int,
        num_features: int,
        dropout: float,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(stage_ends) != len(stage_info):
            raise ValueError(f"{len(stage_ends)} stage ends but {len(stage_info)} stage shapes")
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)
        self.input_size = (in_channels, 224, 224)
        self.stage_ends = tuple(stage_ends)
        self._info = (
            TapInfo("stem", stem_channels, 2),
            *(TapInfo(f"stage{k}", c, s) for k, (c, s) in enumerate(stage_info, start=1)),
            TapInfo("pool", num_features, 1, "pool"),
        )

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        names = {0: "stem", **{end: f"stage{k}" for k, end in enumerate(self.stage_ends, start=1)}}
        h = x
        for i, block in enumerate(self.features):
            h = block(h)
            name = names.get(i)
            if name is not None and name in taps:
                out[name] = h
        pooled = torch.flatten(self.avgpool(h), 1)
        if "pool" in taps:
            out["pool"] = pooled
        return self.classifier(self.dropout(pooled)), out


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    from kdlab.compat import import_torchvision

    return getattr(import_torchvision().models, name)


def _replace_stem(features: nn.Sequential, in_channels: int) -> None:
    """Give the stem convolution ``features[0][0]`` ``in_channels`` inputs (a no-op for 3)."""
    conv = features[0][0]
    if in_channels == conv.in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")
    features[0][0] = new


def _from_torchvision(
    builder: str,
    stage_ends: Sequence[int],
    stage_info: Sequence[tuple[int, int]],
    num_classes: int,
    in_channels: int,
    **options: float,
) -> TorchvisionFeatureNet:
    """torchvision's ``builder`` (``weights=None``; ``options`` such as ``dropout`` or ``stochastic_depth_prob`` go to
    its constructor) behind the tap contract."""
    tv = _torchvision_builder(builder)(weights=None, num_classes=num_classes, **options)
    _replace_stem(tv.features, in_channels)
    linear = tv.classifier[-1]
    dropout = next(m.p for m in tv.classifier if isinstance(m, nn.Dropout))
    model = TorchvisionFeatureNet(
        tv.features,
        stage_ends,
        stage_info,
        stem_channels=tv.features[0][0].out_channels,
        num_features=linear.in_features,
        dropout=dropout,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    model.classifier = linear  # torchvision's initialisation of the head
    return model


@register_model("mobilenet_v2", family="imagenet", input_size=(3, 224, 224))
def mobilenet_v2(
    num_classes: int = 1000, in_channels: int = 3, classifier_dropout: float = 0.2
) -> TorchvisionFeatureNet:
    """torchvision MobileNetV2 (width 1.0; 3,504,872 parameters for 1000 classes). Not the CIFAR ``mobilenetv2``.
    ``classifier_dropout``: before the classifier (torchvision's default 0.2; ``model.student_dropout``)."""
    return _from_torchvision(
        "mobilenet_v2",
        stage_ends=(1, 3, 6, 13, 17),
        stage_info=((16, 2), (24, 4), (32, 8), (96, 16), (320, 32)),
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=classifier_dropout,
    )


@register_model("efficientnet_b0", family="imagenet", input_size=(3, 224, 224))
def efficientnet_b0(
    num_classes: int = 1000, in_channels: int = 3, classifier_dropout: float = 0.2, drop_path: float = 0.2
) -> TorchvisionFeatureNet:
    """torchvision EfficientNet-B0 (5,288,548 parameters for 1000 classes). ``classifier_dropout``: before the
    classifier;
    ``drop_path``: stochastic depth of the last block, torchvision's ``stochastic_depth_prob`` (block ``i`` of ``n``
    (0-based) drops its residual branch with probability ``drop_path * i / n``); both torchvision's default 0.2
    (``model.student_dropout``, ``model.student_drop_path``)."""
    return _from_torchvision(
        "efficientnet_b0",
        stage_ends=(1, 2, 3, 5, 7),
        stage_info=((16, 2), (24, 4), (40, 8), (112, 16), (320, 32)),
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=classifier_dropout,
        stochastic_depth_prob=drop_path,
    )
