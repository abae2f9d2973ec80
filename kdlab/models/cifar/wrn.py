"""Wide Residual Networks for CIFAR (``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``).

Paper: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016, arXiv:1605.07146. The depths and widths
are those of the CRD distillation benchmark (Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation
Distillation", ICLR 2020, arXiv:1910.10699).

Checked against: HobbitLong/RepDistiller ``models/wrn.py`` (commit b84f547c5db6a35318d4671d7d5c4de74c822403):
same layers, parameter counts, feature maps and pre-activation maps. Parameter names match that file
(``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``), so its checkpoints
load with :func:`kdlab.models.checkpoints.load_state_dict_flexible`.

Architecture (WRN-d-k, ``n = (d - 4) / 6`` blocks per stage): a 3x3 conv stem with 16 channels (no BN, no ReLU),
three stages of pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut) with 16k, 32k, 64k
channels and strides 1, 2, 2, then BN-ReLU, global average pooling and a linear classifier. The shortcut is the
identity when the channel count is unchanged, otherwise a 1x1 conv applied to the block's activated input.

Taps. This is a pre-activation network: the stage outputs are raw residual sums, and the BN + ReLU that
follows a stage belongs to the next layer. Following the reference's ``is_feat`` / ``preact`` lists:

- ``stem``: the stem conv output, ``[B, 16, H, W]``.
- ``stageK``: the raw output (residual sum) of stage K, e.g. wrn_40_2: 32x32x32, 64x16x16, 128x8x8. These are
  *not* ReLU outputs (``kind`` is still ``"post"``, meaning "the stage output").
- ``stageK.pre``: ``BN(stageK)``, the input of the ReLU that consumes stage K, i.e. the first BN of the next
  stage's first block for K = 1, 2 and the final BN for K = 3 (the reference's ``get_bn_before_relu``). It is
  taken from the forward pass itself, so it costs nothing extra.
- ``pool``: ``mean_{H,W} ReLU(stage3.pre)``, ``[B, 64k]``.

Deviations:
- ``stageK.pre`` is the value computed in the forward pass; the reference recomputes ``BN(stageK)`` after the
  forward when ``preact=True``, which in training mode updates the BN running statistics a second time.
  Values are the same.
- Global average pooling is adaptive (mean over H, W) instead of a fixed 8x8 ``avg_pool2d``: identical at
  32x32, and other input sizes work.
- ``classifier`` is an alias of ``fc`` (the tap contract's name); the state dict holds ``fc.*`` only.
- ``in_channels`` is configurable (the reference hard-codes 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.alias import ClassifierAlias
from kdlab.models.base import TapModel, pre_tap_stage
from kdlab.types import TapInfo

__all__ = ["WideResNet"]


class _WideBlock(nn.Module):
    """Pre-activation block ``BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3`` plus shortcut.

    ``forward(x)`` returns ``(out, pre)``: ``out`` ``[B, c_out, H / stride, W / stride]`` (the residual sum) and
    ``pre = bn1(x)`` ``[B, c_in, H, W]`` (the pre-activation of the block's input).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.dropout = dropout
        # Attribute name kept from the reference implementation so that its checkpoints load.
        self.convShortcut: nn.Conv2d | None = None
        if c_in != c_out or stride != 1:
            self.convShortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.bn1(x)
        act = F.relu(pre)
        h = F.relu(self.bn2(self.conv1(act)), inplace=True)
        if self.dropout > 0:
            h = F.dropout(h, p=self.dropout, training=self.training)
        h = self.conv2(h)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return h + shortcut, pre


class _WideStage(nn.Module):
    """``n`` wide blocks, the first with stride ``stride``; holds them in ``layer`` (reference naming)."""

    def __init__(self, n: int, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(_WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, dropout) for i in range(n))
        )


class WideResNet(ClassifierAlias, TapModel):
    """WRN-depth-widen for CIFAR.

    Args:
        depth: total depth ``6n + 4``.
        widen: width multiplier ``k`` (stage widths ``16k, 32k, 64k``).
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
        dropout: dropout probability inside each block (0 in the benchmark).

    Shapes: ``[B, C, 32, 32] -> [B, K]``; taps as in the module docstring.
    """

    _classifier_attr = "fc"

    def __init__(
        self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.input_size = (in_channels, 32, 32)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = _WideStage(n, widths[0], widths[1], 1, dropout)
        self.block2 = _WideStage(n, widths[1], widths[2], 2, dropout)
        self.block3 = _WideStage(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

        info = [TapInfo("stem", widths[0], 1)]
        for k, (c, s) in enumerate(zip(widths[1:], (1, 2, 4)), start=1):
            info += [TapInfo(f"stage{k}.pre", c, s, "pre"), TapInfo(f"stage{k}", c, s)]
        info.append(TapInfo("pool", widths[3], 1, "pool"))
        self._info = tuple(info)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BN before the ReLU at ``stageK.pre`` (None for other taps), for OFD's margins.

        ``stageK.pre`` is that BN's output: the next stage's first ``bn1``, or the final ``bn1``."""
        k = pre_tap_stage(tap)
        if k is None or not 1 <= k <= 3:
            return None
        return self.bn1 if k == 3 else getattr(self, f"block{k + 1}").layer[0].bn1

    def tap_info(self) -> tuple[TapInfo, ...]:
        """``stem``, ``stage{1,2,3}.pre``, ``stage{1,2,3}``, ``pool`` (strides 1, 1, 2, 4)."""
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        feats: dict[str, Tensor] = {}
        h = self.conv1(x)
        feats["stem"] = h
        for k, stage in enumerate((self.block1, self.block2, self.block3), start=1):
            for i, block in enumerate(stage.layer):
                h, pre = block(h)
                if i == 0 and k > 1:
                    feats[f"stage{k - 1}.pre"] = pre  # BN of the previous stage's output
            feats[f"stage{k}"] = h
        pre = self.bn1(h)
        feats["stage3.pre"] = pre
        pooled = torch.flatten(F.adaptive_avg_pool2d(F.relu(pre), 1), 1)
        feats["pool"] = pooled
        return self.fc(pooled), {k: feats[k] for k in taps}


def _builder(name: str, depth: int, widen: int):
    def build(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen, num_classes=num_classes, in_channels=in_channels, dropout=dropout)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"WRN-{depth}-{widen} for CIFAR: ``[B, C, 32, 32] -> [B, num_classes]``."
    return build


for _name, _depth, _widen in (("wrn_16_1", 16, 1), ("wrn_16_2", 16, 2), ("wrn_40_1", 40, 1), ("wrn_40_2", 40, 2)):
    register_model(_name, family="cifar", input_size=(3, 32, 32))(_builder(_name, _depth, _widen))
