"""Faster R-CNN (two-stage: RPN + RoI head) behind kdlab's tap contract, built from torchvision's own modules.

Paper: S. Ren, K. He, R. Girshick, J. Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
Networks", NeurIPS 2015, arXiv:1506.01497; FPN: T.-Y. Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017, arXiv:1612.03144. Reference implementation: torchvision ``models/detection/faster_rcnn.py``,
``generalized_rcnn.py``, ``rpn.py``, ``roi_heads.py``. :class:`FasterRCNNDetector` *is* a torchvision ``FasterRCNN``
(subclass): the RPN (anchors, matching, sampling, NMS, losses), the RoI sampler, ``MultiScaleRoIAlign``, the two-layer
box head, ``fastrcnn_loss`` and ``postprocess_detections`` are torchvision's code and parameter names.

Deviations from torchvision's ``GeneralizedRCNN.forward`` / ``RoIHeads.forward``:
    - ``GeneralizedRCNNTransform`` is bypassed (kdlab's data path resizes, normalises and pads); detections are mapped
      back to ``original_sizes`` with torchvision's ``resize_boxes``, as its transform's ``postprocess`` does.
    - The box branch of ``RoIHeads.forward`` is run step by step here (the same calls in the same order: RoI sampling,
      RoI-Align, box head, predictor, ``fastrcnn_loss`` / ``postprocess_detections``) so that the sampled proposals
      (``rois``) and their class logits (``roi_logits``) are returned, which KD on RoI logits needs and torchvision's
      ``forward`` discards.
    - Labels: kdlab's contiguous ``0..K-1`` become torchvision's ``1..K`` inside (class 0 is the background, so the
      classifier has ``K + 1`` columns); detections carry ``0..K-1`` again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import fastrcnn_loss

from kdlab.models.base import TapModel
from kdlab.models.detection._inputs import detection_inputs, pack_detections, require_targets
from kdlab.types import TapInfo


class FasterRCNNDetector(TapModel, FasterRCNN):
    """torchvision's Faster R-CNN with the detection contract's ``forward_taps``.

    Args:
        backbone: an FPN backbone (``BackboneWithFPN``) with 5 levels P2-P6 (``"0"`` .. ``"3"``, ``"pool"``).
        num_classes: ``K`` object classes (the predictor has ``K + 1`` outputs, background first).
        anchor_sizes: the RPN anchor size of each level (``32 .. 512``), aspect ratios 0.5, 1, 2.
        strides: each level's stride (``4 .. 64``), for :meth:`tap_info`.
        representation_size: width of the two-layer box head (1024).
        input_size: ``(C, H, W)`` of the build-time probe.
        detections_per_img: ``D``, rows of the eval-mode output.
        **kwargs: further torchvision ``FasterRCNN`` settings (e.g. ``rpn_batch_size_per_image``).

    ``forward_taps(x, taps)`` with ``x`` the detection batch dict:

    - training mode: ``([R, K + 1] RoI class logits of the sampled proposals, taps)``; ``taps`` always holds
      ``loss.objectness``, ``loss.rpn_box_reg`` (RPN) and ``loss.classifier``, ``loss.box_reg`` (RoI head);
    - eval mode: ``([B, D, 6] detections in original-image pixels, taps)``.

    Taps: ``fpn.0`` .. ``fpn.4`` (``[B, C_fpn, h_l, w_l]``, P2 first), ``rois`` (``[R, 5]``: batch index, xyxy in
    resized pixels; the sampled proposals in training mode, all post-NMS proposals in eval mode; rows grouped by image
    in order), ``roi_logits`` (``[R, K + 1]`` on those rows).
    """

    fpn_names = ("0", "1", "2", "3", "pool")
    #: ``forward_taps(..., logits=False)`` is understood (:class:`kdlab.train.teacher.FrozenTeacher` passes it)
    optional_logits = True

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        representation_size: int = 1024,
        input_size: tuple[int, int, int] = (3, 800, 1344),
        detections_per_img: int = 100,
        **kwargs: object,
    ) -> None:
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
        c = backbone.out_channels
        FasterRCNN.__init__(
            self,
            backbone,
            num_classes=None,
            rpn_anchor_generator=anchors,
            box_head=TwoMLPHead(c * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            box_detections_per_img=detections_per_img,
            **kwargs,
        )
        del self.transform  # bypassed: the data path resizes, normalises and pads
        self.num_classes = num_classes
        self.detections_per_img = detections_per_img
        self.input_size = input_size
        self._info = (
            *(TapInfo(f"fpn.{i}", c, s) for i, s in enumerate(strides)),
            TapInfo("rois", 5, strides[0], "boxes"),
            TapInfo("roi_logits", num_classes + 1, strides[0], "logits"),
        )

    @property
    def classifier(self) -> nn.Linear:
        """The RoI classifier (``[R, representation_size] -> [R, K + 1]``)."""
        return self.roi_heads.box_predictor.cls_score

    @property
    def imagenet_trunk(self) -> nn.Module:
        """The ResNet trunk (``conv1`` .. ``layer4``, torchvision names) an ImageNet ``.pth`` initialises."""
        return self.backbone.body

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor:
        """Training mode: ``[R, K + 1]`` RoI class logits; eval mode: ``[B, D, 6]`` detections."""
        return self.forward_taps(x)[0]

    def _box_branch(
        self, features: Mapping[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """RoI-Align, box head and predictor: ``([R, K + 1] class logits, [R, 4 (K + 1)] box regression)``."""
        heads = self.roi_heads
        pooled = heads.box_roi_pool(features, proposals, image_sizes)
        return heads.box_predictor(heads.box_head(pooled))

    def forward_taps(
        self, x: Tensor | dict[str, Tensor], taps: Collection[str] = (), logits: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """See the class docstring. ``logits=False`` (eval mode only; a frozen teacher whose method reads no teacher
        logits, ``Needs.teacher_logits``) skips what only the detections need: the RPN unless ``rois`` or
        ``roi_logits`` is asked for, the RoI head unless ``roi_logits`` is, and the post-processing; the logits are
        then ``[B, 0, 6]`` (no detections computed)."""
        wanted = self.check_taps(taps)
        inputs = detection_inputs(x, label_offset=1)
        images = inputs.images
        targets = require_targets(inputs, type(self).__name__) if self.training else None
        features = self.backbone(images.tensors)
        skip = not logits and not self.training
        if skip and not wanted & {"rois", "roi_logits"}:  # FPN taps only: no RPN, no RoI head
            out = {f"fpn.{i}": f for i, f in enumerate(features.values()) if f"fpn.{i}" in wanted}
            return images.tensors.new_zeros(len(images.image_sizes), 0, 6), out
        if images.tensors.device.type == "meta":
            return self._meta_outputs(features, len(images.image_sizes), wanted)
        proposals, rpn_losses = self.rpn(images, features, targets)
        if self.training:
            proposals, _, labels, regression_targets = self.roi_heads.select_training_samples(proposals, targets)
        if not skip or "roi_logits" in wanted:
            class_logits, box_regression = self._box_branch(features, proposals, images.image_sizes)
        out: dict[str, Tensor] = {}
        for i, f in enumerate(features.values()):
            if f"fpn.{i}" in wanted:
                out[f"fpn.{i}"] = f
        if "rois" in wanted:
            out["rois"] = torch.cat(
                [torch.cat([p.new_full((p.shape[0], 1), float(i)), p], dim=1) for i, p in enumerate(proposals)]
            )
        if "roi_logits" in wanted:
            out["roi_logits"] = class_logits
        if skip:
            return images.tensors.new_zeros(len(images.image_sizes), 0, 6), out
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {**rpn_losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            out.update({f"loss.{k.removeprefix('loss_')}": v for k, v in losses.items()})
            return class_logits, out
        boxes, scores, labels = self.roi_heads.postprocess_detections(
            class_logits, box_regression, proposals, images.image_sizes
        )
        detections = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, scores, labels)]
        packed = pack_detections(detections, images.image_sizes, inputs.original_sizes, self.detections_per_img, 1)
        return packed, out

    def _meta_outputs(
        self, features: Mapping[str, Tensor], batch: int, wanted: frozenset[str]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Eval-mode outputs on the meta device (build-time shape checks): the RPN's proposal selection depends on
        the data, so the proposals are ``post_nms_top_n`` placeholder rows per image, and the detections empty."""
        ref = next(iter(features.values()))
        out: dict[str, Tensor] = {f"fpn.{i}": f for i, f in enumerate(features.values()) if f"fpn.{i}" in wanted}
        rows = batch * self.rpn.post_nms_top_n()
        if "rois" in wanted:
            out["rois"] = ref.new_zeros(rows, 5)
        if "roi_logits" in wanted:
            c = ref.shape[1]
            out["roi_logits"] = self.roi_heads.box_predictor(self.roi_heads.box_head(ref.new_zeros(rows, c, 7, 7)))[0]
        return ref.new_zeros(batch, self.detections_per_img, 6), out

    def roi_class_logits(self, fpn_features: Mapping[str, Tensor], rois: Tensor, image_sizes: Tensor) -> Tensor:
        """This model's RoI class logits on given boxes and FPN features (e.g. a teacher on a student's proposals).

        Args:
            fpn_features: this model's FPN levels, by tap name (``fpn.0`` .. ``fpn.4``) or torchvision name
                (``"0"`` .. ``"3"``, ``"pool"``), each ``[B, C, h_l, w_l]``.
            rois: ``[R, 5]`` (batch index, x1, y1, x2, y2 in resized pixels), rows grouped by image in order (the
                ``rois`` tap).
            image_sizes: ``[B, 2]`` (h, w) of the resized images (``batch.x["image_sizes"]``).

        Returns:
            ``[R, K + 1]`` class logits (background first), row ``r`` for ``rois[r]``: RoI-Align, box head and
            classifier, exactly the RoI head's computation.
        """
        feats = OrderedDict(
            (name, fpn_features[f"fpn.{i}"] if f"fpn.{i}" in fpn_features else fpn_features[name])
            for i, name in enumerate(self.fpn_names)
        )
        sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
        index = rois[:, 0].long()
        if rois.shape[0] > 1 and bool((index[1:] < index[:-1]).any()):
            raise ValueError("roi_class_logits: rois must be grouped by image in increasing batch index (the rois tap)")
        boxes = [rois[index == i, 1:] for i in range(len(sizes))]
        return self._box_branch(feats, boxes, sizes)[0]


__all__ = ["FasterRCNNDetector"]
