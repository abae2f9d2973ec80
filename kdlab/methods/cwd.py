"""``cwd``: Shu, Liu, Gao, Yan, Shen, "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021,
arXiv:2011.13256.

Objective: ``ce_weight * CE(z_s, y) + cwd_weight * CWD(z_s, z_t) + feature_weight * CWD(conv(f_s), f_t)`` with
``CWD(a, b) = tau^2 / (N C) * sum_{n,c} KL(softmax_{hw}(b_{n,c} / tau) || softmax_{hw}(a_{n,c} / tau))``: every channel
of a map is a distribution over spatial positions (:func:`kdlab.losses.channel_wise_divergence`), on the logits
``[B, K, h, w]`` and optionally on a feature tap (a learnable 1x1 convolution maps the student's channels to the
teacher's when they differ).

Reference: winycg/CIRKD ``losses/cwd.py`` (``CriterionCWD`` with ``norm_type='channel'``, ``divergence='kl'``,
``temperature=4``: the sum of KLs divided by ``N * C``, times ``T^2``) and its Cityscapes script
``train_scripts/train_kd/train_cwd.sh`` (commit 60f4425: ``--lambda-cwd-logit 3``, ``--lambda-cwd-fea 50`` on the
backbone's last stage, DeepLabV3-ResNet101 -> DeepLabV3-ResNet18); the same loss as open-mmlab/mmrazor
``ChannelWiseDivergence`` (whose Cityscapes PSPNet config uses ``tau=1``, ``loss_weight=5`` on the logits).
``aux_weight`` adds the cross-entropy of the auxiliary head (the CIRKD recipe's 0.4).

Kinds of outputs: on dense logits both terms apply. Classification logits ``[B, K]`` have no spatial extent, so the
logit term is absent there and ``cwd`` is CWD on the feature maps alone (the paper's feature variant), which the
registry-generated classification tests exercise.

Detection outputs (issue 20; open-mmlab/mmrazor ``configs/distill/mmdet/cwd/cwd_fpn_retina_r101_retina_r50_1x_coco.py``
and ``cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py``: ``ChannelWiseDivergence(tau=1, loss_weight=10)`` on each of the five
FPN outputs): CWD on every FPN level, one term per level named ``cwd.fpn.<l>`` (``feature_weight`` each; a 1x1
convolution per level when the widths differ, none at equal widths as in the reference), next to the detector's own
losses as the task term (``ce``). ``student_tap``/``teacher_tap`` are ``last`` or ``fpn`` (every level) there; the
logit term (``cwd_weight``) needs dense class maps and is absent, as for classification; ``aux_weight`` is refused.
Recipes: ``configs/coco/cwd/`` (``tau: 1``, ``feature_weight: 10``).

Deviations:
- Pixels labelled 255 (at the logits' resolution, nearest) are left out of each channel's spatial softmax of the
  logit term; the reference keeps every position. The feature term keeps every position (features describe the
  image, not the labels).
- The CIRKD script adds pixel-wise KD and an adversarial term to CWD; kdlab's ``cwd`` is CWD alone (combine it with
  ``kd`` through the ``sum`` method for the script's mix minus the adversarial part).
"""

from __future__ import annotations

from torch import nn

from kdlab import losses
from kdlab.method_configs.cwd import CWDConfig
from kdlab.methods import register_method
from kdlab.methods._dense import AUX_TAP, DenseOutputError, is_dense
from kdlab.methods._detection import DetectionOutputError, DetectionPair, check_fpn_pair, refuse
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.types import LossOut, Needs, StepIO


@register_method("cwd", description="channel-wise distillation (dense): KL of per-channel spatial softmaxes")
class CWD(DistillMethod):
    """Channel-wise distillation of segmentation logits (and optionally of one feature tap)."""

    mixed_labels = "refuse"
    mixed_labels_reason = "it distils dense (segmentation) outputs, whose labels are per pixel"

    dense_outputs = True
    detection_outputs = True

    Config = CWDConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.detection = DetectionPair.build("cwd", ctx, class_scores=False)  # None unless the student is a detector
        if self.detection is not None:
            self._init_detection(cfg, ctx)
            return
        self.student_tap = _resolve(cfg.student_tap, ctx.student_taps)
        self.teacher_tap = _resolve(cfg.teacher_tap, ctx.teacher_taps[0] if ctx.teacher_taps else {})
        if cfg.feature_weight > 0 and ctx.student_shapes and ctx.teacher_shapes:
            s_shape = ctx.student_shapes.get(self.student_tap, ())
            t_shape = ctx.teacher_shapes[0].get(self.teacher_tap, ())
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise DenseOutputError(
                    f"cwd: the feature term needs [C, H, W] maps, got student {self.student_tap} {list(s_shape)} and "
                    f"teacher {self.teacher_tap} {list(t_shape)}; choose stage taps or set feature_weight: 0"
                )
            if s_shape[1:] != t_shape[1:]:
                raise DenseOutputError(
                    f"cwd: student {self.student_tap} is {list(s_shape[1:])} and teacher {self.teacher_tap} "
                    f"{list(t_shape[1:])} in (H, W); the spatial softmaxes need equal sizes: choose taps of one stride"
                )
            if s_shape[0] != t_shape[0]:
                self.adapters["proj"] = nn.Conv2d(s_shape[0], t_shape[0], 1, bias=False)

    def _init_detection(self, cfg: Config, ctx: BuildContext) -> None:
        refuse("cwd", {"aux_weight": cfg.aux_weight > 0})
        for name, tap in (("student_tap", cfg.student_tap), ("teacher_tap", cfg.teacher_tap)):
            if tap not in ("last", "fpn"):
                raise DetectionOutputError(
                    f"cwd: on a detection pair the feature term runs on every FPN level; set method.{name} to fpn "
                    f"(got {tap!r})"
                )
        self.levels = check_fpn_pair("cwd", ctx.student_shapes, ctx.teacher_shapes[0])  # (s, t, C_s, C_t)
        for s_tap, _, c_s, c_t in self.levels:
            if c_s != c_t:
                self.adapters[s_tap.replace(".", "")] = nn.Conv2d(c_s, c_t, 1, bias=False)

    def _detection_loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        terms = {"ce": cfg.ce_weight * io.task_loss(io.s.logits)}
        if cfg.feature_weight > 0:
            t_out = io.t
            for s_tap, t_tap, _, _ in self.levels:
                f_s = io.s.taps[s_tap]
                key = s_tap.replace(".", "")
                if key in self.adapters:
                    f_s = self.adapters[key](f_s)
                terms[f"cwd.{s_tap}"] = cfg.feature_weight * losses.channel_wise_divergence(
                    f_s, t_out.taps[t_tap], cfg.tau
                )
        return LossOut(terms)

    def needs(self) -> Needs:
        cfg = self.cfg
        if self.detection is not None:
            on = cfg.feature_weight > 0
            return Needs(
                student_taps=frozenset(s for s, _, _, _ in self.levels) if on else frozenset(),
                teacher_taps=frozenset(t for _, t, _, _ in self.levels) if on else frozenset(),
                teacher_logits=False,  # FPN taps only (det-followup: the teacher skips its detections)
            )
        s_taps, t_taps = set(), set()
        if cfg.feature_weight > 0:
            s_taps.add(self.student_tap)
            t_taps.add(self.teacher_tap)
        if cfg.aux_weight > 0:
            s_taps.add(AUX_TAP)
        return Needs(student_taps=frozenset(s_taps), teacher_taps=frozenset(t_taps))

    def loss(self, io: StepIO) -> LossOut:
        if self.detection is not None:
            return self._detection_loss(io)
        cfg = self.cfg
        s = io.s.logits
        terms = {"ce": cfg.ce_weight * io.cross_entropy(s)}
        if is_dense(s):
            mask = losses.valid_mask(io.y, tuple(s.shape[-2:]))
            cwd = losses.channel_wise_divergence(s, io.teacher_logits(), cfg.tau, mask).mean()
            terms["cwd"] = cfg.cwd_weight * cwd
        if cfg.feature_weight > 0:
            f_s = io.s.taps[self.student_tap]
            if "proj" in self.adapters:
                f_s = self.adapters["proj"](f_s)
            f_t = io.t.taps[self.teacher_tap]
            terms["cwd_feature"] = cfg.feature_weight * losses.channel_wise_divergence(f_s, f_t, cfg.tau)
        if cfg.aux_weight > 0:
            terms["ce.aux"] = cfg.aux_weight * cfg.ce_weight * io.cross_entropy(io.s.taps[AUX_TAP])
        return LossOut(terms)


def _resolve(tap: str, taps: object) -> str:
    """``last`` -> the last ``stageK`` tap (by ``K``); any other name unchanged (checked when the run is built)."""
    if tap != "last":
        return tap
    stages = [n for n in taps if n.startswith("stage") and n[5:].isdigit()]
    return max(stages, key=lambda n: int(n[5:])) if stages else "stage4"
