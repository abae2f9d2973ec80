"""``review_kd``: Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021, arXiv 2104.09044.

Objective: the student's stage outputs and pooled embedding, from the deepest to the shallowest, pass through
attention-based fusion (ABF) modules, each fusing its level with the fused result of the level below; every fused
map is compared with the teacher's map of the same level by the hierarchical context loss (:func:`kdlab.losses.hcl`)::

    L = ce_weight * CE + review_weight * min((epoch + 1) / E, 1) * hcl(ABF(f_s), f_t)

(``epoch`` 0-based, so with ``E = 20`` the factor is ``1/20`` during the first epoch, as mdistiller's ``epoch / 20``
with 1-based epochs). ``E = warmup_epochs`` when set, else 1/12 of the run (the reference's 20 of 240 epochs;
:mod:`kdlab.schedule`).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/ReviewKD.py`` (``ReviewKD``, ``ABF``,
``hcl_loss``) with ``configs/cifar100/reviewkd.yaml`` (REVIEWKD_WEIGHT 5.0 on CIFAR-100, CE 1, warm-up 20 epochs).

- Student inputs: ``stage1 .. stageN`` (post-activation; ``student_preact: true`` takes ``stageK.pre``, the reference's
  ``STU_PREACT``) and ``pool`` as a ``1 x 1`` map. Teacher targets: ``stage1.pre .. stageN.pre`` (post-activation
  maps with ``teacher_preact: false`` or when the teacher has no ``.pre`` taps) and ``pool``. When the two models
  have different numbers of stages, the deepest ``min(N_s, N_t)`` are paired.
- ABF of a level (``in`` student channels, ``out`` teacher channels, ``mid = min(max_mid_channels, D_s)`` with ``D_s``
  the student's embedding width): ``conv1x1(in -> mid) + BN``; except for the deepest level (the embedding), the
  fused result of the level below is nearest-upsampled to this level's size and the two are mixed by two sigmoid
  attention maps from ``conv1x1(2 mid -> 2)`` (with bias); the mix is nearest-resized to the teacher's spatial size and
  ``conv3x3(mid -> out) + BN`` gives the output. Convolutions without bias use ``kaiming_uniform_(a=1)``. All shapes
  come from the taps, so the reference's CIFAR ``SHAPES``/``OUT_SHAPES``/``IN_CHANNELS``/``OUT_CHANNELS`` for
  resnet32x4 -> resnet8x4 (``[1, 8, 16, 32]``, ``[64, 128, 256, 256]``, mid 256) are what the build derives:
  1,808,774 parameters, in ``adapters["abfs"]`` (shallowest first).

Deviations:
- Sizes are (H, W) pairs taken from the models' taps instead of square sizes from the config.
- The default warm-up is a fraction of the run (:mod:`kdlab.schedule`'s rule, as DKD's: 20 / 240 of ``train.epochs``),
  not a fixed 20 epochs: a 240-epoch run gets the reference's 20, a 20-epoch run 1.67 (factor 0.6, then 1), where a
  fixed 20 epochs would keep the HCL term below full weight for the whole run. The CIFAR-100 recipes set 20 and the
  ImageNet ones 1 explicitly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.method_configs.review_kd import ReviewKDConfig
from kdlab.methods import register_method
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.methods.vid import stage_taps
from kdlab.schedule import REFERENCE_EPOCHS, reference_fraction, scaled_epochs, warmup_factor
from kdlab.types import LossOut, Needs, StepIO

#: ReviewKD's default warm-up as a share of the run: the reference's 20 of 240 epochs.
WARMUP_FRACTION = reference_fraction(20)


class ABF(nn.Module):
    """Attention-based fusion of one level.

    Args:
        c_in: channels of the student's map at this level.
        c_mid: width of the fused representation.
        c_out: channels of the teacher's map at this level.
        fuse: whether a residual from the level below is fused in (all levels but the deepest).

    Shapes: ``x [B, c_in, H, W]``, ``residual [B, c_mid, h, w]`` ->
    ``(out [B, c_out, H', W'], fused [B, c_mid, H', W'])`` with ``(H', W') = out_size``.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_mid, kernel_size=1, bias=False), nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(nn.Conv2d(c_mid, c_out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * c_mid, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None = None, out_size: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """See the class docstring; ``out_size`` None keeps the input's size."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("ABF: a fusing level needs the residual of the level below")
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


@register_method(
    "review_kd",
    description="ReviewKD: attention-based fusion of student stages + hierarchical context loss (HCL)",
)
class ReviewKD(DistillMethod):
    """Knowledge review: cross-level fusion of the student's features, matched to the teacher's by HCL."""

    mixed_labels = "soft"

    Config = ReviewKDConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not ctx.teacher_shapes:
            raise ValueError("review_kd distils from a teacher, but the run has none: set model.teachers")
        s_shapes, t_shapes = ctx.student_shapes, ctx.teacher_shapes[0]
        s_stages, t_stages = stage_taps(s_shapes), stage_taps(t_shapes)
        n = min(len(s_stages), len(t_stages))
        if n == 0:
            raise ValueError("review_kd: the student or the teacher has no stage taps (stage1 .. stageN)")
        s_stages, t_stages = s_stages[-n:], t_stages[-n:]
        if cfg.student_preact:
            s_stages = [f"{s}.pre" for s in s_stages]
        if cfg.teacher_preact and all(f"{t}.pre" in t_shapes for t in t_stages):
            t_stages = [f"{t}.pre" for t in t_stages]
        self.student_inputs = [*s_stages, "pool"]
        self.teacher_targets = [*t_stages, "pool"]
        for tap in self.student_inputs:
            if tap not in s_shapes:
                raise ValueError(f"review_kd: the student has no tap {tap!r}")
        mid = min(cfg.max_mid_channels, s_shapes["pool"][0])
        self.out_sizes: list[tuple[int, int]] = []
        abfs = nn.ModuleList()
        last = len(self.student_inputs) - 1
        for i, (s_tap, t_tap) in enumerate(zip(self.student_inputs, self.teacher_targets)):
            t_shape = t_shapes[t_tap]
            self.out_sizes.append(tuple(t_shape[1:3]) if len(t_shape) == 3 else (1, 1))
            abfs.append(ABF(s_shapes[s_tap][0], mid, t_shape[0], fuse=i < last))
        self.adapters["abfs"] = abfs.to(ctx.device)

    def needs(self) -> Needs:
        return Needs(student_taps=frozenset(self.student_inputs), teacher_taps=frozenset(self.teacher_targets))

    @staticmethod
    def _as_map(x: Tensor) -> Tensor:
        return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)

    def warmup_factor(self, epoch: int, total_epochs: int = REFERENCE_EPOCHS) -> float:
        """``min((epoch + 1) / E, 1)`` for a 0-based epoch of a ``total_epochs`` run (``E``: see ``warmup_epochs``)."""
        return warmup_factor(epoch, scaled_epochs(self.cfg.warmup_epochs, WARMUP_FRACTION, total_epochs))

    def fuse(self, s_feats: list[Tensor]) -> list[Tensor]:
        """Student maps (shallowest first, the embedding last as ``[B, D, 1, 1]``) -> fused maps of the teacher's
        shapes, shallowest first."""
        abfs = self.adapters["abfs"]
        results: list[Tensor] = []
        residual: Tensor | None = None
        for i in reversed(range(len(s_feats))):
            out, residual = abfs[i](s_feats[i], residual, self.out_sizes[i])
            results.insert(0, out)
        return results

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        fused = self.fuse([self._as_map(io.s.taps[t]) for t in self.student_inputs])
        targets = [self._as_map(io.t.taps[t]) for t in self.teacher_targets]
        hcl = losses.hcl(fused, targets, tuple(cfg.levels))
        factor = self.warmup_factor(io.progress.epoch, io.progress.total_epochs)
        return LossOut(
            {
                "ce": cfg.ce_weight * io.cross_entropy(io.s.logits),
                "review_kd": cfg.review_weight * factor * hcl,
            }
        )
