"""``mimic``: feature mimicking, an adapter and the mean squared error between the student's and the teacher's
feature maps: on a detector every FPN level, elsewhere the paired stage maps (the last stage by default).

Papers: Li, Jin, Yan, "Mimicking Very Efficient Networks for Object Detection", CVPR 2017 (the student's feature map,
through a learnable transform, regresses the teacher's with an L2 loss); the "DIST + mimic" rows of Huang, You, Wang,
Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (RetinaNet-R50 40.1, Faster R-CNN-R50 41.8
box mAP on COCO).

Objective: ``ce_weight * task + mimic_weight * sum_l MSE(a_l(f_s^l), f_t^l)`` with ``a_l`` a 1x1 convolution with
bias per level (``adapter: true``) and ``MSE`` the mean over all elements (:func:`kdlab.losses.detection.mimic_mse`);
``task`` is the detector's own losses (``io.task_loss``), or the cross-entropy on a classifier; both reported as
``ce``.

Reference: the DIST authors' mimic setting, hunto/MasKD ``mmrazor/configs/distill/dist/dist+mimic_retinanet_x101-
retinanet-r50_coco.py`` and ``dist+mimic_cascade_mask_rcnn_x101-fpn_x50_coco.py``: ``MSELoss(loss_weight=1)`` on the
five ``neck`` outputs (``mmrazor/mmrazor/models/losses/mse.py``: ``nn.MSELoss()`` per level, summed), after an
``align_module`` of five ``nn.Conv2d(256, 256, 1)`` (with bias, although the widths are equal). "DIST + mimic" is the
``sum`` method over ``dist`` and ``mimic`` (``configs/coco/dist_mimic/``); the teacher-free ``ce`` is kept once.

Mask (``mask: boxes``, off by default as in the authors' setting): Li et al. imitate only the features inside region
proposals, since the background dominates a detector's maps. kdlab's form keeps the positions of each level whose cell
centre (at the level's stride, the padded image's height over the map's) lies inside a ground-truth box of the batch
(``batch.x["boxes"]``, labels ``>= 0``; crowd and padding rows excluded), and averages the squared errors over the
kept positions and channels (:func:`kdlab.losses.detection.box_mask`).

Deviations:
- ``mask: boxes`` masks by ground-truth boxes, not by the student's RPN proposals as Li et al. (whose transform is
  sampled per proposal); a one-stage detector has no proposals, and the boxes are the regions the proposals target.
- On a classifier (no FPN) the default pairs the last stage maps, equal spatial sizes required; ``fitnet`` is the
  classification method of this kind.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from kdlab.losses.detection import box_mask, mimic_mse
from kdlab.method_configs.mimic import MimicConfig
from kdlab.methods import register_method
from kdlab.methods._detection import DetectionPair, check_fpn_pair, refuse
from kdlab.methods._feature import FeatureMethod, PairError
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, Needs, StepIO


@register_method("mimic", description="feature mimicking: 1x1 adapter + MSE per FPN level (DIST + mimic on COCO)")
class Mimic(FeatureMethod):
    """MSE between adapted student maps and the teacher's maps, level by level."""

    detection_outputs = True

    Config = MimicConfig

    def __init__(self, cfg: MimicConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.detection = DetectionPair.build("mimic", ctx, class_scores=False)  # None unless a detector
        if self.detection is not None and cfg.label_smoothing > 0:
            refuse("mimic", {"label_smoothing": True})
        if self.detection is not None and not cfg.student_taps and not cfg.teacher_taps:
            pairs = check_fpn_pair("mimic", self.s_shapes, self.t_shapes)
            s_taps, t_taps = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            if self.detection is None and cfg.mask != "none":
                raise PairError(
                    f"method 'mimic': mask: {cfg.mask} needs ground-truth boxes, which only detection batches have; "
                    "set method.mask=none"
                )
            last = [] if cfg.student_taps else [self.resolve_tap("student", "last")]
            last_t = [] if cfg.teacher_taps else [self.resolve_tap("teacher", "last")]
            s_taps, t_taps = self.resolve_stage_taps(cfg.student_taps or last, cfg.teacher_taps or last_t)
        self.student_tap_names, self.teacher_tap_names = s_taps, t_taps
        self.keys = [f"level{i}" for i in range(len(s_taps))]
        for key, s, t in zip(self.keys, s_taps, t_taps):
            s_shape, t_shape = tuple(self.s_shapes[s]), tuple(self.t_shapes[t])
            if len(s_shape) != 3 or len(t_shape) != 3 or s_shape[1:] != t_shape[1:]:
                raise self.pair_error("the paired maps must be [C, H, W] of the same spatial size", [s], [t])
            if cfg.adapter:
                self.adapters[key] = nn.Conv2d(s_shape[0], t_shape[0], 1)
            elif s_shape[0] != t_shape[0]:
                raise self.pair_error("the widths differ; set method.adapter=true for a 1x1 convolution", [s], [t])

    def needs(self) -> Needs:  # det-followup: teacher taps only, never its logits (a detector skips its detections)
        return dataclasses.replace(super().needs(), teacher_logits=False)

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        boxes = cfg.mask == "boxes"
        total = 0.0
        for key, s, t in zip(self.keys, self.student_tap_names, self.teacher_tap_names):
            f_s, f_t = io.s.taps[s], io.t.taps[t]
            if key in self.adapters:
                f_s = self.adapters[key](f_s)
            mask = None
            if boxes:
                images = io.batch.x["images"]
                stride = images.shape[-2] / f_t.shape[-2]
                mask = box_mask(io.batch.x["boxes"], io.batch.x["labels"], tuple(f_t.shape[-2:]), stride)
            total = total + mimic_mse(f_s, f_t, mask)
        task = cfg.ce_weight * io.task_loss(io.s.logits) if self.detection is not None else self.ce(io)
        return LossOut({"ce": task, "mimic": cfg.mimic_weight * total})
