"""VGG with BatchNorm for CIFAR (``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``).

Paper: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, arXiv:1409.1556; with batch normalisation (S. Ioffe, C. Szegedy, ICML 2015, arXiv:1502.03167) and the
fully connected head replaced by global average pooling + one linear layer, as in the CRD distillation benchmark
(Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020, arXiv:1910.10699), which
also adds the 8-layer ``vgg8``.

Checked against: HobbitLong/RepDistiller ``models/vgg.py`` (commit b84f547c5db6a35318d4671d7d5c4de74c822403),
its ``vgg*_bn`` builders (the CRD benchmark trains those): same layers, parameter counts, feature maps and
pre-activation maps. Parameter names match that file (``block{0..4}.{j}`` with conv/BN/ReLU at consecutive
indices, ``classifier``), so its checkpoints load with :func:`kdlab.models.checkpoints.load_state_dict_flexible`.

Architecture: five blocks of conv3x3(bias)-BN-ReLU layers (widths per configuration below), max-pooling 2x2
between blocks, global average pooling and ``Linear(512, K)``. At 32x32 the pooling after block 3 is skipped,
so blocks 3 and 4 both work at 4x4 (the reference pools there only for 64x64 inputs).

Taps (32x32 input): ``stem`` = block 0 after its ReLU (64x32x32), ``stage1`` .. ``stage4`` = blocks 1-4 after
their last ReLU (128x16x16, 256x8x8, 512x4x4, 512x4x4), ``stageK.pre`` = the BN output of block K's last conv
(before its ReLU), ``pool`` 512.

Deviations:
- Whether the pooling after block 3 is used is fixed at construction from ``input_size`` (used when the input is
  at least 64x64) instead of testing ``x.shape[2] == 64`` at every forward, so ``tap_info`` strides are static.
- Max-pooling and average pooling are functional calls (they have no parameters; names of parameters are
  unaffected).
- Only the BatchNorm variants are registered; ``in_channels`` is configurable (the reference hard-codes 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.base import TapModel, pre_tap_stage
from kdlab.types import TapInfo

__all__ = ["VGG"]

#: Conv widths of the five blocks of each configuration.
_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(c_in: int, widths: tuple[int, ...]) -> nn.Sequential:
    """``conv3x3-BN-ReLU`` per width, without the final ReLU: ``[B, c_in, H, W] -> [B, widths[-1], H, W]``."""
    layers: list[nn.Module] = []
    for i, c_out in enumerate(widths):
        if i > 0:
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out)]
        c_in = c_out
    return nn.Sequential(*layers)


class VGG(TapModel):
    """VGG-BN with a global-average-pooling head for CIFAR-size images.

    Args:
        config: conv widths of the five blocks, e.g. ``((64,), (128,), (256,), (512,), (512,))`` for VGG-8.
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
        input_size: native ``(H, W)``; at 64x64 and above a fourth max-pooling follows block 3.

    Shapes: ``[B, C, H, W] -> [B, K]``; taps as in the module docstring.
    """

    def __init__(
        self,
        config: tuple[tuple[int, ...], ...],
        num_classes: int = 100,
        in_channels: int = 3,
        input_size: tuple[int, int] = (32, 32),
    ) -> None:
        super().__init__()
        if len(config) != 5:
            raise ValueError(f"a VGG configuration has 5 blocks, got {len(config)}")
        self.input_size = (in_channels, *input_size)
        self._pool_after_block3 = min(input_size) >= 64
        c_in = in_channels
        for k, widths in enumerate(config):
            setattr(self, f"block{k}", _block(c_in, widths))
            c_in = widths[-1]
        self.classifier = nn.Linear(c_in, num_classes)

        strides = (1, 2, 4, 8, 16 if self._pool_after_block3 else 8)
        info = [TapInfo("stem", config[0][-1], 1)]
        for k in range(1, 5):
            c = config[k][-1]
            info += [TapInfo(f"stage{k}.pre", c, strides[k], "pre"), TapInfo(f"stage{k}", c, strides[k])]
        info.append(TapInfo("pool", c_in, 1, "pool"))
        self._info = tuple(info)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BN before the ReLU at ``stageK.pre`` (None for other taps), for OFD's margins.

        ``stageK.pre`` is the output of block K's last BN."""
        k = pre_tap_stage(tap)
        if k is None or not 1 <= k <= 4:
            return None
        return getattr(self, f"block{k}")[-1]

    def tap_info(self) -> tuple[TapInfo, ...]:
        """``stem``, ``stage{1..4}.pre``, ``stage{1..4}``, ``pool`` (strides 1, 2, 4, 8, 8 at 32x32)."""
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        feats: dict[str, Tensor] = {}
        h = F.relu(self.block0(x))
        feats["stem"] = h
        for k, block in enumerate((self.block1, self.block2, self.block3, self.block4), start=1):
            if k < 4 or self._pool_after_block3:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            pre = block(h)
            h = F.relu(pre)
            feats[f"stage{k}.pre"] = pre
            feats[f"stage{k}"] = h
        pooled = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        feats["pool"] = pooled
        return self.classifier(pooled), {k: feats[k] for k in taps}


def _builder(name: str, config: tuple[tuple[int, ...], ...]):
    def build(num_classes: int = 100, in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> VGG:
        return VGG(config, num_classes=num_classes, in_channels=in_channels, input_size=input_size)

    depth = sum(len(w) for w in config) + 1
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"VGG-{depth} with BatchNorm for CIFAR: ``[B, C, 32, 32] -> [B, num_classes]``."
    return build


for _name, _config in _CONFIGS.items():
    register_model(_name, family="cifar", input_size=(3, 32, 32))(_builder(_name, _config))
