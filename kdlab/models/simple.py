"""Small convolutional networks for tiny images (the ``digits`` demo, tests and quick experiments).

Not from any paper: a plain conv-BN-ReLU stack with two stages, sized by ``width``. They follow the tap
contract so every method can run on them: ``stem``, ``stage1``, ``stage1.pre``, ``stage2``, ``stage2.pre``,
``pool``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.base import TapModel, pre_tap_stage
from kdlab.types import TapInfo


class ConvNet(TapModel):
    """conv-BN-ReLU stem, two stages of (conv-BN-ReLU, conv-BN[-ReLU]), stride 2 at stage 2, avgpool, linear.

    Args:
        num_classes: output classes ``K``.
        in_channels: input channels.
        width: channels of the stem and stage 1; stage 2 has ``2 * width``.
        input_size: native ``(C, H, W)``.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width: int = 16, input_size: tuple[int, int] = (32, 32)
    ) -> None:
        super().__init__()
        self.input_size = (in_channels, *input_size)
        w1, w2 = width, 2 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.stage1 = _Stage(w1, w1, stride=1)
        self.stage2 = _Stage(w1, w2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w2, num_classes)
        self._info = (
            TapInfo("stem", w1, 1),
            TapInfo("stage1.pre", w1, 1, "pre"),
            TapInfo("stage1", w1, 1),
            TapInfo("stage2.pre", w2, 2, "pre"),
            TapInfo("stage2", w2, 2),
            TapInfo("pool", w2, 1, "pool"),
        )

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BN before the ReLU at ``stageK.pre`` (None for other taps), for OFD's margins.

        ``stageK.pre`` is the output of the stage's last BN."""
        k = pre_tap_stage(tap)
        if k not in (1, 2):
            return None
        return getattr(self, f"stage{k}").body[-1]

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        h = self.stem(x)
        out["stem"] = h
        for name, stage in (("stage1", self.stage1), ("stage2", self.stage2)):
            pre = stage(h)
            h = torch.relu(pre)
            out[f"{name}.pre"] = pre
            out[name] = h
        pooled = torch.flatten(self.avgpool(h), 1)
        out["pool"] = pooled
        return self.classifier(pooled), {k: out[k] for k in taps}


class _Stage(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN; returns the pre-activation map."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _builder(width: int):
    def build(num_classes: int = 10, in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> ConvNet:
        return ConvNet(num_classes=num_classes, in_channels=in_channels, width=width, input_size=input_size)

    build.__doc__ = f"Small ConvNet with width {width} (for tiny images, tests and the demo)."
    return build


for _name, _width in (("convnet_xs", 4), ("convnet_s", 8), ("convnet_m", 16), ("convnet_l", 32)):
    register_model(_name, family="small", input_size=(3, 32, 32))(_builder(_width))
