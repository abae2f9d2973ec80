"""RetinaNet (one-stage, sigmoid focal loss) behind kdlab's tap contract, built from torchvision's own modules.

Paper: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss for Dense Object Detection", ICCV 2017,
arXiv:1708.02002. Reference implementation: torchvision ``models/detection/retinanet.py`` (``RetinaNet``,
``retinanet_resnet50_fpn``); :class:`RetinaNetDetector` *is* a torchvision ``RetinaNet`` (subclass), so the anchor
matching, the focal and L1 losses, the box coder and the post-processing are torchvision's code, and its parameter
names are torchvision's (a torchvision RetinaNet state dict with the same class count loads as it is).

Deviations from torchvision's ``RetinaNet.forward``:
    - ``GeneralizedRCNNTransform`` is bypassed: kdlab's detection data path resizes, normalises and pads
      (``batch.x["images"]``, ``image_sizes``); boxes are mapped back to ``original_sizes`` with torchvision's
      ``resize_boxes``, as its transform's ``postprocess`` does.
    - ``detections_per_img`` is 100 (torchvision's default is 300; mmdetection's ``max_per_img`` and COCO's ``maxDets``
      are 100).
    - Labels are kdlab's contiguous ``0..K-1`` with ``num_classes = K`` (torchvision's COCO weights use the 91 COCO
      ids); the sigmoid classifier has no background column either way.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead

from kdlab.models.base import TapModel
from kdlab.models.detection._inputs import detection_inputs, pack_detections, require_targets
from kdlab.types import TapInfo


def retinanet_anchors(base_sizes: Sequence[int]) -> AnchorGenerator:
    """torchvision's RetinaNet anchors (``_default_anchorgen``): per level base size ``s``, octave scales
    ``s, int(s * 2**(1/3)), int(s * 2**(2/3))`` and aspect ratios 0.5, 1, 2 (9 anchors per location)."""
    sizes = tuple((s, int(s * 2.0 ** (1.0 / 3.0)), int(s * 2.0 ** (2.0 / 3.0))) for s in base_sizes)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class RetinaNetDetector(TapModel, RetinaNet):
    """torchvision's RetinaNet with the detection contract's ``forward_taps``.

    Args:
        backbone: an FPN backbone (``BackboneWithFPN``; ``out_channels`` attribute) with 5 levels P3-P7.
        num_classes: ``K`` (contiguous labels ``0..K-1``).
        anchor_base_sizes: the anchor base size of each level (``32, 64, 128, 256, 512`` in the paper).
        strides: each level's stride (``8 .. 128``), for :meth:`tap_info`.
        input_size: ``(C, H, W)`` of the build-time probe.
        detections_per_img: ``D``, rows of the eval-mode output.

    ``forward_taps(x, taps)`` with ``x`` the detection batch dict (:mod:`kdlab.models.detection._inputs`):

    - training mode: ``([B, A, K] per-anchor class logits, taps)``; ``taps`` always holds ``loss.classification``
      (sigmoid focal loss) and ``loss.bbox_regression`` (L1), torchvision's losses;
    - eval mode: ``([B, D, 6] detections (x1, y1, x2, y2 in original pixels, score, label; padding label -1), taps)``.

    Taps: ``fpn.0`` .. ``fpn.4`` (``[B, C_fpn, h_l, w_l]``, P3 first), ``cls`` (``[B, A, K]`` logits in torchvision's
    anchor order, both modes), ``anchors`` (``[B, A, 4]`` xyxy resized pixels).
    """

    fpn_names = ("0", "1", "2", "p6", "p7")
    #: ``forward_taps(..., logits=False)`` is understood (:class:`kdlab.train.teacher.FrozenTeacher` passes it)
    optional_logits = True

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        anchor_base_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        input_size: tuple[int, int, int] = (3, 800, 1344),
        detections_per_img: int = 100,
    ) -> None:
        anchors = retinanet_anchors(anchor_base_sizes)
        head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes)
        RetinaNet.__init__(
            self, backbone, num_classes, anchor_generator=anchors, head=head, detections_per_img=detections_per_img
        )
        del self.transform  # bypassed: the data path resizes, normalises and pads
        self.num_classes = num_classes
        self.input_size = input_size
        c = backbone.out_channels
        self._info = (
            *(TapInfo(f"fpn.{i}", c, s) for i, s in enumerate(strides)),
            TapInfo("cls", num_classes, strides[0], "logits"),
            TapInfo("anchors", 4, strides[0], "boxes"),
        )

    @property
    def classifier(self) -> nn.Conv2d:
        """The final classification convolution (``[B, C, h, w] -> [B, A * K, h, w]``), shared by every level."""
        return self.head.classification_head.cls_logits

    @property
    def imagenet_trunk(self) -> nn.Module:
        """The ResNet trunk (``conv1`` .. ``layer4``, torchvision names) an ImageNet ``.pth`` initialises."""
        return self.backbone.body

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor:
        """Training mode: ``[B, A, K]`` per-anchor logits; eval mode: ``[B, D, 6]`` detections."""
        return self.forward_taps(x)[0]

    def forward_taps(
        self, x: Tensor | dict[str, Tensor], taps: Collection[str] = (), logits: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """See the class docstring. ``logits=False`` (eval mode only; a frozen teacher whose method reads no teacher
        logits, ``Needs.teacher_logits``) skips what only the detections need: the head when no ``cls`` tap is
        asked for, and the post-processing; the logits are then ``[B, 0, 6]`` (no detections computed)."""
        wanted = self.check_taps(taps)
        inputs = detection_inputs(x)
        images = inputs.images
        features = list(self.backbone(images.tensors).values())
        out: dict[str, Tensor] = {}
        for i, f in enumerate(features):
            if f"fpn.{i}" in wanted:
                out[f"fpn.{i}"] = f
        skip = not logits and not self.training
        head_outputs = self.head(features) if not skip or "cls" in wanted else {}
        if "cls" in wanted:
            out["cls"] = head_outputs["cls_logits"]
        anchors = self.anchor_generator(images, features) if not skip or "anchors" in wanted else []
        if "anchors" in wanted:
            out["anchors"] = torch.stack(anchors)
        if skip:
            return images.tensors.new_zeros(len(images.image_sizes), 0, 6), out
        if images.tensors.device.type == "meta":  # shapes only (build-time checks): no data-dependent selection
            return images.tensors.new_zeros(len(images.image_sizes), self.detections_per_img, 6), out
        if self.training:
            losses = self.compute_loss(require_targets(inputs, type(self).__name__), head_outputs, anchors)
            out.update({f"loss.{k}": v for k, v in losses.items()})
            return head_outputs["cls_logits"], out
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        a = head_outputs["cls_logits"].shape[1] // sum(per_level)
        split = [n * a for n in per_level]
        split_outputs = {k: list(v.split(split, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(t.split(split)) for t in anchors]
        detections = self.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
        packed = pack_detections(detections, images.image_sizes, inputs.original_sizes, self.detections_per_img)
        return packed, out


__all__ = ["RetinaNetDetector", "retinanet_anchors"]
