"""``ca_mkd``: Zhang, Chen, Wang, "Confidence-Aware Multi-Teacher Knowledge Distillation", ICASSP 2022,
arXiv 2201.00007.

Objective, for M teachers with logits ``z_m``, last stage maps ``f_m`` and classifiers ``g_m``::

    w_m = (1 - softmax_m(CE(z_m, y))) / (M - 1)                                   per sample, sum_m w_m = 1
    L_kd = 1/(B M) sum_{b,m} w_{m,b} T^2 KL(softmax(z_m/T) || softmax(z_s/T))_b
    h_m = E_m(resize(f_s))   (a learnable 1x1 conv + BN + ReLU to f_m's channels; one per teacher)
    v_m = (1 - softmax_m(CE(g_m(avgpool(h_m)), y))) / (M - 1)
    L_feat = 1/(B M) sum_{b,m} v_{m,b} mean_{chw} (h_m - f_m)^2_b
    L = ce_weight * CE(z_s, y) + kd_weight * L_kd + feature_weight * L_feat

(:func:`kdlab.losses.logit.confidence_weights`). A teacher whose prediction is close to the one-hot label gets a
large weight for that sample; the feature weights judge how well each teacher's classifier reads the student's
adapted feature. One teacher has weight 1 everywhere: ``kd`` plus a FitNet-style hint through the 1x1 adapter.

Reference: Rorozhl/CA-MKD@acc8c2b (the authors' code): ``helper/loops.py`` (``ensemble_method == 'CAMKD'``, KL per
sample, ``sum(w * KL) / (bsz * teacher_num)``), ``distiller_zoo/CAMKD.py`` (feature term), ``models/util.py``
(``CalWeight``, ``Embed`` without ``--convs``: student ``feat[-2]`` average-pooled or bilinearly resized to each
teacher's spatial size, then 1x1 conv + BN + ReLU; the teacher's ``distill_seq()[-1]`` = avgpool + fc),
``scripts/run.sh`` (``--distill inter -r 1 -a 1 -b 50``, T 4, Nesterov SGD; three resnet32x4 teachers trained with
different seeds, ``setting.py``). The feature term is off during the first epoch (``epoch == 1`` in the loop).

Teachers: ``model.teachers`` lists them; each gets its own adapter, built when the run is built from the tap shapes.
Gradients reach the student through both the feature term and its weights ``v`` (as in the reference: the teacher
classifier is frozen, the adapted student feature is not).

Deviations:
- The reference divides both weighted sums by ``M`` once more although the weights already sum to 1 over teachers
  (so the effective KD weight is ``kd_weight / M``); kdlab does the same by default (``divide_by_teachers: true``)
  and makes it switchable.
- With one teacher the reference's formula is 0/0 (it falls back to plain averaging); kdlab uses weight 1.
- The reference skips incomplete last batches; kdlab leaves that to ``data.drop_last``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.losses.logit import confidence_weights
from kdlab.method_configs.ca_mkd import CAMKDConfig
from kdlab.methods import register_method
from kdlab.methods._feature import LAST_STAGE, PairError, stage_taps
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.types import DEFAULT_VIEW, LossOut, Needs, StepIO


class FeatureEmbed(nn.Module):
    """CA-MKD's per-teacher adapter: resize the student map to the teacher's spatial size (adaptive average pooling
    when larger, bilinear interpolation when smaller), then 1x1 conv + BN + ReLU to the teacher's channels.

    Args:
        s_channels: ``C_s``.
        t_shape: ``(C_t, H_t, W_t)`` of the teacher map.

    Shapes:
        ``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``.
    """

    def __init__(self, s_channels: int, t_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.size = tuple(t_shape[1:])
        self.conv = nn.Conv2d(s_channels, t_shape[0], kernel_size=1)
        self.bn = nn.BatchNorm2d(t_shape[0])

    def forward(self, s_feat: Tensor) -> Tensor:
        """``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``."""
        if tuple(s_feat.shape[-2:]) != self.size:
            if s_feat.shape[-2] >= self.size[0]:
                s_feat = F.adaptive_avg_pool2d(s_feat, self.size)
            else:
                s_feat = F.interpolate(s_feat, size=self.size, mode="bilinear")
        return F.relu(self.bn(self.conv(s_feat)))


@register_method(
    "ca_mkd", description="CA-MKD: KD and feature terms weighted per sample by each teacher's CE on the label"
)
class CAMKD(DistillMethod):
    """Confidence-aware multi-teacher KD.

    Args:
        cfg: :class:`CAMKD.Config`.
        ctx: the build context: the student's and every teacher's tap shapes (one adapter per teacher is built from
            them) and the teachers' frozen classifiers.
    """

    #: Mixup/CutMix: each teacher's confidence weight is its cross-entropy with the dominant label.
    mixed_labels = "dominant"

    logit_free_terms = frozenset({"feature"})

    Config = CAMKDConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not ctx.teacher_shapes:
            raise PairError("method 'ca_mkd' distils from teachers, but model.teachers is empty")
        self.num_teachers = len(ctx.teacher_shapes)
        self.student_tap = ""
        self.teacher_taps: list[str] = []
        # the teachers' frozen classifiers judge the adapted student features; a plain tuple keeps them out of the
        # method's parameters and state (they belong to the teachers)
        self._heads: tuple[nn.Module, ...] = tuple(ctx.teacher_classifiers)
        if cfg.feature_weight == 0:
            return
        self.student_tap = self._resolve("student", ctx.student_shapes, cfg.student_tap)
        s_shape = ctx.student_shapes[self.student_tap]
        for m, shapes in enumerate(ctx.teacher_shapes):
            tap = self._resolve(f"teacher {m}", shapes, cfg.teacher_tap)
            t_shape = shapes[tap]
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise PairError(
                    f"method 'ca_mkd' needs spatial maps [C, H, W]; student tap {self.student_tap!r} is {list(s_shape)}"
                    f" and teacher {m} tap {tap!r} is {list(t_shape)}"
                )
            pool = shapes.get("pool")
            if pool is not None and pool[0] != t_shape[0]:
                raise PairError(
                    f"method 'ca_mkd': teacher {m}'s classifier reads {pool[0]} features but its tap {tap!r} has "
                    f"{t_shape[0]} channels; choose method.teacher_tap whose channels feed the classifier (its last "
                    "stage map)"
                )
            self.teacher_taps.append(tap)
            self.adapters[f"embed{m}"] = FeatureEmbed(s_shape[0], t_shape)

    @staticmethod
    def _resolve(who: str, shapes, tap: str) -> str:
        if tap == LAST_STAGE:
            stages = stage_taps(shapes)
            if not stages:
                raise PairError(f"method 'ca_mkd': the {who} has no stage taps (stage1..stageN)")
            return stages[-1]
        if tap not in shapes or tap == "logits":
            available = ", ".join(n for n in shapes if n != "logits")
            raise PairError(f"method 'ca_mkd': the {who} cannot provide tap {tap!r}; it provides: {available}")
        return tap

    def needs(self) -> Needs:
        if not self.student_tap:
            return Needs()
        return Needs(student_taps=frozenset({self.student_tap}), teacher_taps=frozenset(self.teacher_taps))

    # ------------------------------------------------------------------------------------------ terms

    def _check_teachers(self, io: StepIO) -> None:
        if len(io.teachers) != self.num_teachers:
            raise ValueError(f"ca_mkd was built for {self.num_teachers} teacher(s) but the step has {len(io.teachers)}")

    def kd_weights(self, io: StepIO) -> Tensor:
        """``[M, B]`` confidence weights of the teachers' logits (no gradient: the teachers are frozen)."""
        return confidence_weights(io.teacher_logits(), io.y)

    def kd_term(self, io: StepIO) -> Tensor:
        """``1/(B M') sum w * KD`` with ``M' = M`` (``divide_by_teachers``) or 1."""
        per_sample = losses.kd(io.s.logits, io.teacher_logits(), self.cfg.temperature, reduction="none")  # [M, B]
        weighted = (self.kd_weights(io) * per_sample).sum(dim=0).mean()
        return weighted / len(io.teachers) if self.cfg.divide_by_teachers and len(io.teachers) > 1 else weighted

    def feature_term(self, io: StepIO) -> tuple[Tensor, Tensor]:
        """``(L_feat, [M, B] feature weights)``."""
        s_feat = io.s.taps[self.student_tap]
        mse, head_logits = [], []
        for m, (teacher, tap) in enumerate(zip(io.teachers, self.teacher_taps)):
            h = self.adapters[f"embed{m}"](s_feat)
            t_feat = teacher[DEFAULT_VIEW].taps[tap]
            mse.append((h - t_feat).pow(2).flatten(1).mean(dim=1))
            head_logits.append(self._heads[m](h.mean(dim=(2, 3))))
        weights = confidence_weights(torch.stack(head_logits), io.y)  # [M, B]
        weighted = (weights * torch.stack(mse)).sum(dim=0).mean()
        if self.cfg.divide_by_teachers and len(io.teachers) > 1:
            weighted = weighted / len(io.teachers)
        return weighted, weights

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        self._check_teachers(io)
        s = io.s.logits
        terms = {
            "ce": cfg.ce_weight * io.cross_entropy(s),
            "kd": cfg.kd_weight * self.kd_term(io),
        }
        if self.student_tap:
            if io.progress.epoch >= cfg.feature_start_epoch:
                feat, _ = self.feature_term(io)
                terms["feature"] = cfg.feature_weight * feat
            else:
                terms["feature"] = s.new_zeros(())
        return LossOut(terms)
