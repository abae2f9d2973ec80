"""DeepLabV3 and PSPNet on dilated ResNets (output stride 8), as in the CIRKD / DIST segmentation code.

Papers: L.-C. Chen, G. Papandreou, F. Schroff, H. Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv:1706.05587 (DeepLabV3); H. Zhao, J. Shi, X. Qi, X. Wang, J. Jia, "Pyramid Scene Parsing
Network", CVPR 2017, arXiv:1612.01105 (PSPNet).

Checked against: winycg/CIRKD ``models/deeplabv3.py``, ``models/pspnet.py``, ``models/segbase.py`` (identical to
hunto/DIST_KD ``segmentation/models/``), which the DIST Cityscapes numbers come from. Read to learn the
architecture; the code is kdlab's, built on torchvision's ``ASPP`` and ``FCNHead`` where they fit.

======================  ==========================  ==============  =============  ================
name                    backbone                    head            aux FCN head   parameters (K=19)
======================  ==========================  ==============  =============  ================
``deeplabv3_r101``      dilated ResNet-101 (v1s)    ASPP 256 ch.    on stage3      61,118,950
``deeplabv3_r18``       dilated ResNet-18 (v1s)     ASPP 128 ch.    on stage3      13,607,974
``pspnet_r18``          dilated ResNet-18 (v1s)     PPM, 128 ch.    on stage3      12,919,334
``deeplabv3_tiny``      width-8 ResNet-10 (v1s)     ASPP 16 ch.     on stage3      116,166
``pspnet_tiny``         width-8 ResNet-10 (v1s)     PPM, 16 ch.     on stage3      105,350
======================  ==========================  ==============  =============  ================

The first three counts are the reference's (its models built with ``aux=True``, as its training scripts do for ResNet
backbones, counted with ``sum(p.numel())``); ``aux=False`` removes the auxiliary head (58,754,259 / 13,459,155 /
12,770,515). Tested in ``tests/test_segmentation_models.py``.

Heads:

- DeepLabV3: torchvision's ``ASPP`` (1x1 branch, three 3x3 branches with atrous rates 12, 24, 36, image pooling,
  1x1 projection + dropout 0.5) with the reference's widths (256 for a 2048-channel input, 128 for 512), then
  ``conv3x3 -> BN -> ReLU -> dropout 0.1`` (the ``head`` tap) and the 1x1 ``classifier``.
- PSPNet: pyramid pooling over bins 1, 2, 3, 6 (each a 1x1 conv to C/4 + BN + ReLU, upsampled bilinearly with
  ``align_corners=True`` and concatenated with the input), then ``conv3x3 (2C -> 128) -> BN -> ReLU -> dropout 0.1``
  (the ``head`` tap) and the 1x1 ``classifier``. torchvision has no PSP head; this one is written here.
- Auxiliary head: torchvision's ``FCNHead`` (``conv3x3 C -> C/4, BN, ReLU, dropout 0.1, conv1x1 -> K``) on stage3,
  exactly the reference's ``_FCNHead``. Its logits are the ``aux`` tap; methods with ``aux_weight > 0`` read it
  (the reference's ``0.4`` weights).

Output: ``forward(x)`` returns logits at stride 8, ``[B, K, ceil(H/8), ceil(W/8)]``, as the reference; losses and
metrics upsample them to the label size (bilinear, ``align_corners=True``) where they compare with labels.

Taps (canonical names; strides relative to the input): ``stem`` (128 ch., stride 2, the deep stem before the
max-pool), ``stage1`` (stride 4), ``stage2`` .. ``stage4`` (stride 8; 64/128/256/512 channels times 4 for
ResNet-101), ``head`` (the feature before the classifier, stride 8) and ``aux`` (auxiliary logits, ``K`` channels,
stride 8). There is no ``pool`` and no pre-activation tap: methods that need them are refused when the run is built.

Reference checkpoint layout (``deeplabv3_resnet101_citys_best_model.pth`` of the DIST/CIRKD READMEs): see
:func:`reference_key`; :func:`convert_reference_state` maps a whole state dict, and checkpoint loading
(:func:`kdlab.models.checkpoints.load_state_dict_flexible`, e.g. ``model.teachers.0.checkpoint``) applies it by itself.

Deviations:
    - ``classifier`` is the final 1x1 convolution (``[B, D, h, w] -> [B, K, h, w]``), not an ``nn.Linear``.
    - torchvision's ``ASPPPooling`` upsamples its 1x1 map with ``align_corners=False``; the reference uses ``True``.
      Upsampling a 1x1 map gives the same constant either way, so the function is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

from kdlab.models import register_model
from kdlab.models.base import TapModel
from kdlab.models.segmentation.backbone import DilatedResNet
from kdlab.types import TapInfo

#: Atrous rates of the ASPP branches (output stride 8).
ATROUS_RATES = (12, 24, 36)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: ``[B, C, h, w] -> [B, 2C, h, w]`` (input + four pooled branches of C/4)."""

    bins = (1, 2, 3, 6)

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        out = in_channels // 4
        for i, _ in enumerate(self.bins, start=1):
            self.add_module(f"conv{i}", _conv_bn_relu(in_channels, out, 1))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        feats = [x]
        for i, b in enumerate(self.bins, start=1):
            pooled = getattr(self, f"conv{i}")(F.adaptive_avg_pool2d(x, b))
            feats.append(F.interpolate(pooled, size, mode="bilinear", align_corners=True))
        return torch.cat(feats, dim=1)


class SegmentationNet(TapModel):
    """A dilated-ResNet segmentation model: backbone, head, 1x1 classifier, optional auxiliary FCN head.

    ``forward(x)``: ``[B, C, H, W]`` -> ``[B, K, ceil(H/8), ceil(W/8)]`` logits (see the module docstring).

    Args:
        block: ``"basic"`` (ResNet-18) or ``"bottleneck"`` (ResNet-101).
        depths: blocks per backbone stage.
        head: ``"aspp"`` (DeepLabV3) or ``"psp"`` (PSPNet).
        num_classes: ``K``.
        in_channels: input channels.
        head_width: channels of the head's feature (the reference: ASPP 256 for ResNet-101, 128 for ResNet-18;
            PSP 128 for ResNet-18).
        num_classes: ``K``.
        in_channels: input channels.
        aux: build the auxiliary FCN head on stage3 (the ``aux`` tap).
        width: the backbone's base width (64; smaller only for the tiny test models).
    """

    input_size = (3, 64, 64)

    def __init__(
        self,
        block: str,
        depths: tuple[int, ...],
        head: str,
        head_width: int,
        num_classes: int = 19,
        in_channels: int = 3,
        aux: bool = True,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.backbone = DilatedResNet(block, depths, in_channels, width)
        c3, c4 = self.backbone.channels[2], self.backbone.channels[3]
        hw = head_width
        if head == "aspp":
            self.head = nn.Sequential(ASPP(c4, list(ATROUS_RATES), hw), _conv_bn_relu(hw, hw, 3), nn.Dropout(0.1))
        else:
            self.head = nn.Sequential(PyramidPooling(c4), _conv_bn_relu(2 * c4, hw, 3), nn.Dropout(0.1))
        self.head_kind = head
        self.classifier = nn.Conv2d(hw, num_classes, 1)
        self.aux_head = FCNHead(c3, num_classes) if aux else None
        self.input_size = (in_channels, 64, 64)
        chans = self.backbone.channels
        info = [TapInfo("stem", self.backbone.stem_channels, 2)]
        info += [TapInfo(f"stage{k}", c, 4 if k == 1 else 8) for k, c in enumerate(chans, start=1)]
        info.append(TapInfo("head", hw, 8))
        if aux:
            info.append(TapInfo("aux", num_classes, 8, "logits"))
        self._info = tuple(info)

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        stem, stages = self.backbone.forward_stages(x)
        out: dict[str, Tensor] = {}
        if "stem" in taps:
            out["stem"] = stem
        for k, h in enumerate(stages, start=1):
            if f"stage{k}" in taps:
                out[f"stage{k}"] = h
        feat = self.head(stages[3])
        if "head" in taps:
            out["head"] = feat
        if "aux" in taps:
            out["aux"] = self.aux_head(stages[2])
        return self.classifier(feat), out


def _layout():
    from kdlab.models.checkpoints import REFERENCE_LAYOUTS

    return next(layout for layout in REFERENCE_LAYOUTS if layout.model_class == "SegmentationNet")


def reference_key(key: str) -> str:
    """The kdlab name of parameter/buffer ``key`` of a reference (CIRKD / DIST_KD) segmentation checkpoint.

    The mapping is the ``SegmentationNet`` entry of :data:`kdlab.models.checkpoints.REFERENCE_LAYOUTS` (prefix
    renames, first match wins), which checkpoint loading applies by itself when a state dict does not match:

    ==================================  ==========================================
    reference (CIRKD / DIST_KD)         kdlab
    ==================================  ==========================================
    ``pretrained.<rest>``               ``backbone.<rest>`` (same block names)
    ``head.aspp.b0.<i>.*``              ``head.0.convs.0.<i>.*``
    ``head.aspp.b{1,2,3}.block.<i>.*``  ``head.0.convs.{1,2,3}.<i>.*``
    ``head.aspp.b4.gap.<i>.*``          ``head.0.convs.4.<i>.*`` (torchvision ``ASPPPooling``)
    ``head.aspp.project.*``             ``head.0.project.*``
    ``head.psp.conv<j>.<i>.*``          ``head.0.conv<j>.<i>.*``
    ``head.block.4.*`` (DeepLabV3)      ``classifier.*``
    ``head.classifier.*`` (PSPNet)      ``classifier.*``
    ``head.block.{0,1}.*``              ``head.1.{0,1}.*`` (conv3x3, BN)
    ``auxlayer.block.<i>.*``            ``aux_head.<i>.*``
    ==================================  ==========================================

    A key already in kdlab's layout is returned unchanged.
    """
    return next(iter(convert_reference_state({key: None})))


def convert_reference_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map every key of a reference-layout state dict with :func:`reference_key` (kdlab keys pass unchanged)."""
    return _layout().to_kdlab(state)


def _register(name: str, arch: tuple, params: int, doc: str) -> None:
    block, depths, head, head_width, width = arch

    def build(num_classes: int = 19, in_channels: int = 3, aux: bool = True, **_: object) -> SegmentationNet:
        return SegmentationNet(block, depths, head, head_width, num_classes, in_channels, aux, width)

    build.__doc__ = f"``{name}``: {doc} ({params:,} parameters for 19 classes with the auxiliary head)."
    register_model(name, family="segmentation", outputs="dense", description=doc)(build)


_register("deeplabv3_r101", ("bottleneck", (3, 4, 23, 3), "aspp", 256, 64), 61_118_950, "DeepLabV3, dilated ResNet-101")
_register("deeplabv3_r18", ("basic", (2, 2, 2, 2), "aspp", 128, 64), 13_607_974, "DeepLabV3, dilated ResNet-18")
_register("pspnet_r18", ("basic", (2, 2, 2, 2), "psp", 128, 64), 12_919_334, "PSPNet, dilated ResNet-18")
# Tiny CPU models for tests and smoke runs (not in the reference): one block per stage, base width 8.
_register("deeplabv3_tiny", ("basic", (1, 1, 1, 1), "aspp", 16, 8), 116_166, "tiny DeepLabV3 for tests (width 8)")
_register("pspnet_tiny", ("basic", (1, 1, 1, 1), "psp", 16, 8), 105_350, "tiny PSPNet for tests (width 8)")

__all__ = ["ATROUS_RATES", "PyramidPooling", "SegmentationNet", "convert_reference_state", "reference_key"]
