"""The shared base of sample-wise knowledge fusion (:mod:`kdlab.methods.fusion`): a wrapper that re-weights, per
sample, the distillation and the label terms of an inner method. The policies ``anl_kd``, ``ada_kd``, ``wls_kd``,
``rw_kd`` and ``tgeo_kd`` (:mod:`kdlab.methods.tgeo_kd`) are built on it.

Objective, per batch, with the inner method's per-sample, unweighted distillation loss ``K_i`` and label loss
``G_i`` and its term weights ``w_kd``, ``w_gt``::

    L = mean_i(a_i * K_i + b_i * G_i)          convex policies: a_i = s * alpha_i, b_i = s * (1 - alpha_i)

with ``s = w_kd + w_gt`` (1 for the CRD-recipe ``kd``: 0.9 + 0.1), so a constant ``alpha = w_kd / s`` is the inner
method itself (``anl_kd`` with ``alpha_start = alpha_end = w_kd / s`` returns the inner method's terms exactly).

Per-sample forms (``SAMPLE_FORMS``): ``kd`` (``K_i = T^2 KL_i``, averaged over teachers; ``G_i`` the
cross-entropy with the inner's label smoothing), ``dkd`` (``K_i`` = warm-up factor times ``alpha TCKD_i + beta
NCKD_i``, weight 1 against ``ce_weight``) and ``dist`` (``K_i = tau^2 (beta inter_i + gamma intra)``: DIST's
intra-class term couples the batch and enters every sample's value, so a per-sample weighting weights it by the batch's
mean weight; :func:`kdlab.losses.dist` with ``reduction="none"``). Another method can join by defining
``sample_terms(io) -> SampleTerms``.

The policies (one file each, :mod:`kdlab.methods.fusion`) define the ratio ``alpha_i`` (or, when not convex, the
weights ``a_i``, ``b_i``).

Logged metrics (per step, averaged per epoch by the trainer): ``alpha.mean``, ``alpha.q10/q50/q90`` (batch
quantiles), ``alpha.teacher_wrong`` (share of the batch the teacher gets wrong), ``alpha.mass_right`` /
``alpha.mass_wrong`` (``mean_i alpha_i * [teacher right / wrong]``; the epoch's mean ``alpha`` of each group is
``mass / share``), and with ``histogram_bins > 0`` ``alpha.hist.right.<b>`` / ``alpha.hist.wrong.<b>``: the share of
the batch in bin ``b`` of ``[0, 1]`` (``wls_kd`` logs its weight ``w_i``); ``alpha.std`` (batch spread) and, up to
:data:`CLASS_STATS_MAX` classes, ``alpha.class_mass.<c>`` / ``alpha.class_share.<c>`` (the epoch's mean ratio of class
``c`` is ``mass / share``). The learned policies add ``meta.heldout_ce`` and ``meta.hypergrad_norm`` on the steps
where ``omega`` moves, and ``feature.<name>.mean/.std``: the batch mean and spread of the per-sample L2 norm of each
input block of ``f_omega`` (TGeo-KD's ``e_sg`` .. ``tbar``, RW-KD's ``gt_loss`` and ``kd_loss``).
``kdlab analyze fusion RUN`` (:mod:`kdlab.analysis.fusion`) tabulates and plots all of them per epoch.


Reference: the formulas of the papers of each policy (their files); TGeo-KD's public code (Chengming0501/TGeo-KD@5a69cbe
``src/``, ``HIL/baseline_*.py``) for the per-sample forms' weighting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import losses
from kdlab.config import ConfigError, MethodConfig
from kdlab.method_configs.fusion import SampleFusionConfig
from kdlab.methods.base import MAIN_STAGE, AuxObjective, BuildContext, DistillMethod, PrepareContext, Stage
from kdlab.methods.dist import DIST
from kdlab.methods.dkd import DKD, dkd_warmup_factor
from kdlab.methods.kd import KD
from kdlab.types import LossOut, Needs, StepIO


@dataclass
class SampleTerms:
    """An inner method's loss split per sample.

    Attributes:
        kd: ``[B]`` distillation loss per sample, unweighted (averaged over teachers).
        gt: ``[B]`` label loss per sample, unweighted.
        kd_weight: the inner method's weight of ``kd`` (its batch-mean term is ``kd_weight * kd.mean()``).
        gt_weight: the inner method's weight of ``gt``.
        kd_name: name of the inner method's distillation term (``"kd"``, ``"dkd"``, ``"dist"``).
        gt_name: name of its label term (``"ce"``).
    """

    kd: Tensor
    gt: Tensor
    kd_weight: float
    gt_weight: float
    kd_name: str = "kd"
    gt_name: str = "ce"


def _kd_terms(m: KD, io: StepIO) -> SampleTerms:
    c, s = m.cfg, io.s.logits
    kd = losses.kd(s, io.teacher_logits(), c.temperature, standardize=c.standardize, reduction="none").mean(dim=0)
    gt = io.cross_entropy(s, c.label_smoothing, reduction="none")
    return SampleTerms(kd, gt, c.kd_weight, c.ce_weight, "kd")


def _dkd_terms(m: DKD, io: StepIO) -> SampleTerms:
    c, s = m.cfg, io.s.logits
    per = losses.dkd(
        s, io.teacher_logits(), io.y, c.alpha, c.beta, c.temperature, standardize=c.standardize, reduction="none"
    )
    kd = dkd_warmup_factor(io.progress, c.warmup_epochs) * per.mean(dim=0)
    gt = io.cross_entropy(s, c.label_smoothing, reduction="none")
    return SampleTerms(kd, gt, 1.0, c.ce_weight, "dkd")


def _dist_terms(m: DIST, io: StepIO) -> SampleTerms:
    c, s = m.cfg, io.s.logits
    kd = losses.dist(s, io.teacher_logits(), c.beta, c.gamma, c.tau, reduction="none").mean(dim=0)
    gt = io.cross_entropy(s, c.label_smoothing, reduction="none")
    return SampleTerms(kd, gt, c.dist_weight, c.ce_weight, "dist")


#: Per-sample forms of the registered methods whose terms are per sample (method class -> function).
SAMPLE_FORMS: dict[type, Callable[[Any, StepIO], SampleTerms]] = {KD: _kd_terms, DKD: _dkd_terms, DIST: _dist_terms}


#: Per-class ratio statistics (``alpha.class_mass.<c>``, ``alpha.class_share.<c>``) are logged up to this many classes.
CLASS_STATS_MAX = 32


def _ratio_metrics(
    ratio: Tensor, io: StepIO, bins: int, prefix: str = "alpha", num_classes: int = 0
) -> dict[str, Tensor]:
    """Batch statistics of a ``[B]`` ratio, split by whether the teacher (mean of the teachers) is right, and by
    class when ``0 < num_classes <= CLASS_STATS_MAX``."""
    r = ratio.detach().float()
    t_probs = io.teacher_logits().detach().float().softmax(-1).mean(0)  # [M, B, K] -> [B, K]
    wrong = (t_probs.argmax(-1) != io.y).float()
    q = torch.quantile(r, torch.tensor([0.1, 0.5, 0.9], device=r.device, dtype=r.dtype))
    out = {
        f"{prefix}.mean": r.mean(),
        f"{prefix}.q10": q[0],
        f"{prefix}.q50": q[1],
        f"{prefix}.q90": q[2],
        f"{prefix}.teacher_wrong": wrong.mean(),
        f"{prefix}.mass_right": (r * (1.0 - wrong)).mean(),
        f"{prefix}.mass_wrong": (r * wrong).mean(),
        f"{prefix}.std": r.std(unbiased=False),
    }
    if 0 < num_classes <= CLASS_STATS_MAX:  # the epoch's mean ratio of class c is class_mass.c / class_share.c
        onehot = F.one_hot(io.y.long(), num_classes).float()  # [B, K]
        mass, share = (onehot * r[:, None]).mean(0), onehot.mean(0)
        for c in range(num_classes):
            out[f"{prefix}.class_mass.{c}"] = mass[c]
            out[f"{prefix}.class_share.{c}"] = share[c]
    if bins > 0:
        b = (r.clamp(0.0, 1.0) * bins).long().clamp_max(bins - 1)
        onehot = F.one_hot(b, bins).float()  # [B, bins]
        right_hist = (onehot * (1.0 - wrong)[:, None]).mean(0)
        wrong_hist = (onehot * wrong[:, None]).mean(0)
        for i in range(bins):
            out[f"{prefix}.hist.right.{i}"] = right_hist[i]
            out[f"{prefix}.hist.wrong.{i}"] = wrong_hist[i]
    return out


class SampleFusion(DistillMethod):
    """Base of the sample-weighting wrappers: re-weights an inner method's per-sample terms.

    Subclasses define :meth:`ratio` (the policy's ``[B]`` ratio) and, when not convex, :meth:`weights`.
    """

    #: Mixup/CutMix: the per-sample task term is the mixed-target cross-entropy; the policies' label inputs
    #: (WLS's weight, ADA's teacher margin, DKD's target mask, the logged teacher-right split) use the
    #: dominant label of each mixed image.
    mixed_labels = "dominant"

    Config = SampleFusionConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        from kdlab.methods import METHODS, build_method  # defined after the registry imports this module

        inner_cls = METHODS.get(cfg.inner.name)
        if inner_cls not in SAMPLE_FORMS and not hasattr(inner_cls, "sample_terms"):
            known = ", ".join(sorted(f"{k.Config().name!r}" for k in SAMPLE_FORMS))
            raise ConfigError(
                f"method.inner.name={cfg.inner.name!r}: {cfg.name} weights the inner method's terms per sample, and "
                f"{cfg.inner.name!r} has no per-sample form; use one of {known}"
            )
        if getattr(cfg.inner, "gather_logits", False):
            raise ConfigError(f"method.inner.gather_logits=true is not supported inside {cfg.name}; set it to false")
        self.inner = build_method(cfg.inner, ctx)
        if cfg.histogram_bins < 0:
            raise ConfigError(f"method.histogram_bins must be >= 0, got {cfg.histogram_bins}")
        self.adapters = self.inner.adapters
        self.num_classes = ctx.num_classes

    # ------------------------------------------------------------------------------------------ contract

    def needs(self) -> Needs:
        return self.inner.needs()

    def prepare(self, ctx: PrepareContext) -> None:
        self.inner.prepare(ctx)

    def stages(self) -> Sequence[Stage]:
        """The inner method's stages (they run unweighted)."""
        return self.inner.stages()

    def aux_objectives(self) -> Sequence[AuxObjective]:
        return self.inner.aux_objectives()

    def export(self, student: nn.Module) -> nn.Module:
        return self.inner.export(student)

    def generator_state(self) -> dict[str, Tensor]:
        return {f"inner.{k}": v for k, v in self.inner.generator_state().items()}

    def set_generator_state(self, state: dict[str, Tensor]) -> None:
        self.inner.set_generator_state({k[len("inner.") :]: v for k, v in state.items() if k.startswith("inner.")})

    # ------------------------------------------------------------------------------------------ fusion

    def sample_terms(self, io: StepIO) -> SampleTerms:
        """The inner method's per-sample, unweighted terms on this batch."""
        form = SAMPLE_FORMS.get(type(self.inner))
        return form(self.inner, io) if form is not None else self.inner.sample_terms(io)

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        """``[B]`` ratio ``alpha_i`` of the distillation term (detached unless a learned policy asks otherwise)."""
        raise NotImplementedError

    def weights(self, io: StepIO, terms: SampleTerms, ratio: Tensor) -> tuple[Tensor, Tensor]:
        """``([B], [B])`` weights of the distillation and the label term; convex by default:
        ``s * alpha`` and ``s * (1 - alpha)`` with ``s = w_kd + w_gt``."""
        scale = terms.kd_weight + terms.gt_weight
        return scale * ratio, scale * (1.0 - ratio)

    def sample_weights(self, io: StepIO) -> Tensor:
        """``[B]`` the policy's ratio on this batch (no side effects)."""
        with torch.no_grad():
            return self.ratio(io, self.sample_terms(io)).detach()

    def loss(self, io: StepIO) -> LossOut:
        if io.progress.stage != MAIN_STAGE:  # an inner method's own stage runs unweighted
            return self.inner.loss(io)
        terms = self.sample_terms(io)
        ratio, diagnostics = self.ratio_and_diagnostics(io, terms)
        ratio = ratio.detach()
        kd_w, gt_w = self.weights(io, terms, ratio)
        out = {terms.gt_name: (gt_w * terms.gt).mean(), terms.kd_name: (kd_w * terms.kd).mean()}
        metrics = _ratio_metrics(ratio, io, self.cfg.histogram_bins, num_classes=self.num_classes)
        return LossOut(out, {**metrics, **diagnostics})

    def diagnostics(self, io: StepIO, terms: SampleTerms) -> dict[str, Tensor]:
        """More logged scalars of the policy on this batch (none by default; learned policies log their inputs)."""
        return {}

    def ratio_and_diagnostics(self, io: StepIO, terms: SampleTerms) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`ratio` and :meth:`diagnostics` of one batch (a policy whose two share work computes it once)."""
        return self.ratio(io, terms), self.diagnostics(io, terms)


def _check_unit(name: str, value: float, open_interval: bool = False) -> None:
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        span = "(0, 1)" if open_interval else "[0, 1]"
        raise ConfigError(f"method.{name} must be in {span}, got {value}")
