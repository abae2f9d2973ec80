"""Sample-wise knowledge fusion: a wrapper that re-weights, per sample, the distillation and the label terms of an
inner method, and the fusion policies of the baselines TGeo-KD compares with (``anl_kd``, ``ada_kd``, ``wls_kd``,
``rw_kd``). ``tgeo_kd`` (:mod:`kdlab.methods.tgeo_kd`) is a learned policy built on the same classes.

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

Policies:

- ``anl_kd``: teacher annealing (Clark et al., "BAM! Born-Again Multi-Task Networks for Natural Language
  Understanding", ACL 2019, arXiv 1907.04829): ``alpha = alpha_start + (alpha_end - alpha_start) * progress``, 1 -> 0.
- ``ada_kd``: Lukasik et al., "Teacher's pet: understanding and mitigating biases in distillation", TMLR 2022,
  arXiv 2106.10494, in TGeo-KD's re-implementation: ``alpha_i = max(0, p_t(y_i) - mean_{j != y_i} p_t(j))``.
- ``wls_kd``: Zhou et al., "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective",
  ICLR 2021, arXiv 2102.00650: ``a_i = w_kd * (1 - exp(-CE_s,i / CE_t,i))`` on detached logits at T = 1,
  ``b_i = w_gt`` (the label term is not re-weighted).
- ``rw_kd``: Lu et al., "RW-KD: Sample-wise Loss Terms Re-Weighting for Knowledge Distillation", Findings of EMNLP
  2021: ``alpha_i = f_omega([G_i, K_i])``, a meta-learner over the two per-sample losses trained on a held-out split
  with the one-step-unrolled hypergradient of :class:`HypergradientStep` (the TGeo-KD solver).

Learned policies (``rw_kd``, ``tgeo_kd``; :class:`LearnedFusion`): ``alpha_i = sigmoid(MLP_omega(features_i))``.
The student minimises the fused training loss with ``alpha`` fixed (detached); ``omega`` minimises the label loss of
the *updated* student on a held-out split (``holdout_fraction`` of the training set, stratified, never the test set):
every ``meta_every`` steps, after the student's step, :class:`HypergradientStep` takes the training batch again,
makes a virtual SGD step ``theta' = theta - eta * grad_theta L_train(theta, omega)`` with
``torch.func.functional_call``, evaluates ``CE(f(x_val; theta'), y_val)`` on the next held-out mini-batch (as many
samples as the training batch) and steps ``omega``'s own optimiser along its gradient (exact, by forward mode: see
:class:`HypergradientStep`). ``omega``
lives in the method (its state dict, hence the checkpoint); the optimiser state and the held-out position are the aux
objective's state. The features read the student's predictions detached, so the student cannot move ``alpha``.

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

Reference: the formulas of the papers above; TGeo-KD's public code (Chengming0501/TGeo-KD@5a69cbe ``src/``,
``HIL/baseline_*.py``) for ADA's margin and ANL's linear schedule; open-mmlab/mmrazor
``models/losses/weighted_soft_label_distillation.py`` for WSL's weight.

Deviations:
- ANL anneals per step (``progress.fraction``), not per epoch as TGeo-KD's CIFAR code (``(200 - epoch) / 199``).
- ADA's ratio is computed every step from the teacher's logits of the batch (the same value as TGeo-KD's code, which
  precomputes it once, when the inputs are not augmented).
- WSL's distillation term is ``T^2 KL`` where mmrazor uses the soft cross-entropy ``-T^2 sum p_t log p_s``: they
  differ by the teacher's entropy, a constant of the student, so the gradients are identical.
- RW-KD's meta-learner input is the pair of per-sample losses and its output the convex ratio: the paper's exact
  meta-learner is not available to us; TGeo-KD's code replaces it with a free per-sample parameter trained on the
  training loss, which is not the method (no held-out data).
- The hypergradient's virtual step is plain SGD at the main optimiser's current learning rate (no momentum or weight
  decay), as in learning-to-reweight and Meta-Weight-Net; BatchNorm statistics of both functional forwards are
  computed on copies of the student's buffers, which are left untouched. Under torchrun every process computes the
  hypergradient of its own part of the batch against the same held-out mini-batch, and omega's gradient is averaged
  over processes before its step, so all processes keep one omega.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import distributed, losses
from kdlab.config import ConfigError, MethodConfig
from kdlab.losses import fusion as fusion_losses
from kdlab.methods import register_method
from kdlab.methods.base import MAIN_STAGE, AuxObjective, BuildContext, DistillMethod, PrepareContext, Stage
from kdlab.methods.dist import DIST
from kdlab.methods.dkd import DKD, dkd_warmup_factor
from kdlab.methods.heldout import HeldoutStream
from kdlab.methods.kd import KD
from kdlab.ranges import rng
from kdlab.types import Batch, LossOut, Needs, StepIO

log = logging.getLogger("kdlab")


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

    @dataclass(kw_only=True)
    class Config(MethodConfig):
        name: str = ""
        inner: MethodConfig = field(default_factory=KD.Config)
        """The wrapped method: ``kd`` (default), ``dkd`` or ``dist`` (any method with a per-sample form)."""
        histogram_bins: int = field(default=10, metadata=rng(ge=1))
        """Bins of the logged ratio histogram over [0, 1] (per step, split by teacher correctness); 0 for none."""

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
        ratio = self.ratio(io, terms).detach()
        kd_w, gt_w = self.weights(io, terms, ratio)
        out = {terms.gt_name: (gt_w * terms.gt).mean(), terms.kd_name: (kd_w * terms.kd).mean()}
        metrics = _ratio_metrics(ratio, io, self.cfg.histogram_bins, num_classes=self.num_classes)
        return LossOut(out, {**metrics, **self.diagnostics(io, terms)})

    def diagnostics(self, io: StepIO, terms: SampleTerms) -> dict[str, Tensor]:
        """More logged scalars of the policy on this batch (none by default; learned policies log their inputs)."""
        return {}


def _check_unit(name: str, value: float, open_interval: bool = False) -> None:
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        span = "(0, 1)" if open_interval else "[0, 1]"
        raise ConfigError(f"method.{name} must be in {span}, got {value}")


@register_method("anl_kd", description="ANL-KD: the KD/CE ratio anneals linearly from 1 to 0 (teacher annealing)")
class AnnealedFusion(SampleFusion):
    """Teacher annealing: one ratio for all samples, moving linearly over training."""

    @dataclass(kw_only=True)
    class Config(SampleFusion.Config):
        name: str = "anl_kd"
        alpha_start: float = field(default=1.0, metadata=rng(ge=0, le=1))
        """Ratio of the distillation term at the start of training."""
        alpha_end: float = field(default=0.0, metadata=rng(ge=0, le=1))
        """Ratio at the end of training."""

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        _check_unit("alpha_start", cfg.alpha_start)
        _check_unit("alpha_end", cfg.alpha_end)

    def _alpha(self, io: StepIO) -> float:
        return fusion_losses.anneal_ratio(io.progress.fraction, self.cfg.alpha_start, self.cfg.alpha_end)

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return terms.kd.new_full(terms.kd.shape, self._alpha(io))

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        if io.progress.stage == MAIN_STAGE and cfg.alpha_start == cfg.alpha_end:
            # a constant ratio equal to the inner method's own (w_kd / (w_kd + w_gt)) is the inner method, exactly
            terms = self.sample_terms(io)
            if cfg.alpha_start == terms.kd_weight / (terms.kd_weight + terms.gt_weight):
                out = self.inner.loss(io)
                ratio = terms.kd.new_full(terms.kd.shape, cfg.alpha_start)
                metrics = _ratio_metrics(ratio, io, cfg.histogram_bins, num_classes=self.num_classes)
                return LossOut(out.terms, {**out.metrics, **metrics})
        return super().loss(io)


@register_method("ada_kd", description="ADA-KD: per-sample KD/CE ratio from the teacher's margin on the label")
class MarginFusion(SampleFusion):
    """Per-sample ratio from the teacher's confidence on the true class against the mean of the others."""

    @dataclass(kw_only=True)
    class Config(SampleFusion.Config):
        name: str = "ada_kd"
        margin_temperature: float = field(default=1.0, metadata=rng(gt=0))
        """Softmax temperature of the teacher probabilities the margin reads."""

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.margin_temperature <= 0:
            raise ConfigError(f"method.margin_temperature must be > 0, got {cfg.margin_temperature}")

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return fusion_losses.teacher_margin_ratio(io.teacher_logits(), io.y, self.cfg.margin_temperature)


@register_method("wls_kd", description="WSL/WLS-KD: KD term weighted per sample by 1 - exp(-CE_s / CE_t)")
class WeightedSoftLabelFusion(SampleFusion):
    """Weighted soft labels: the distillation term of each sample is scaled by how much worse the student fits the
    label than the teacher; the label term keeps the inner method's weight."""

    @dataclass(kw_only=True)
    class Config(SampleFusion.Config):
        name: str = "wls_kd"
        inner: MethodConfig = field(default_factory=lambda: KD.Config(temperature=2.0, ce_weight=1.0, kd_weight=2.5))
        """The wrapped method; default ``kd`` at mmrazor's WSLD setting (tau 2, weight 2.5, CE 1)."""

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return fusion_losses.weighted_soft_label_weight(io.s.logits, io.teacher_logits(), io.y)

    def weights(self, io: StepIO, terms: SampleTerms, ratio: Tensor) -> tuple[Tensor, Tensor]:
        return terms.kd_weight * ratio, terms.gt.new_full(terms.gt.shape, terms.gt_weight)


# ----------------------------------------------------------------------------------------------------------------
# Learned policies: a ratio network trained on a held-out split through a one-step-unrolled hypergradient


class RatioNet(nn.Module):
    """``f_omega``: an MLP ending in a sigmoid, ``[B, D] -> [B]`` ratios in (0, 1).

    The last layer starts with zero weights and the bias ``logit(init_ratio)``, so every sample starts at
    ``init_ratio`` and the network departs from it only as ``omega`` learns.

    Args:
        in_features: ``D``.
        hidden: widths of the hidden layers (ReLU), e.g. ``[128]``; empty for a logistic regression.
        init_ratio: the initial ratio, in (0, 1).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], init_ratio: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        last = nn.Linear(width, 1)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(math.log(init_ratio / (1.0 - init_ratio)))
        self.net = nn.Sequential(*layers, last)

    def forward(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.net(features)).squeeze(-1)


class LearnedFusion(SampleFusion):
    """A convex policy ``alpha_i = f_omega(features_i)`` learned on a held-out split (:class:`HypergradientStep`).

    Subclasses define :attr:`feature_dim` and :meth:`features` (``[B, D]``, detached from the student).
    """

    @dataclass(kw_only=True)
    class Config(SampleFusion.Config):
        hidden: list[int] = field(default_factory=lambda: [128], metadata=rng(ge=1))
        """Hidden widths of f_omega (ReLU MLP ending in a sigmoid)."""
        init_ratio: float = field(default=0.5, metadata=rng(gt=0, lt=1))
        """The ratio every sample starts at (f_omega's last layer starts at zero weights and this bias)."""
        holdout_fraction: float = field(default=0.1, metadata=rng(gt=0, lt=1))
        """Share of the training set held out for omega (stratified; used when data.val_fraction is 0)."""
        meta_every: int = field(default=1, metadata=rng(ge=1))
        """Update omega every this many student steps (k)."""
        meta_lr: float = field(default=1e-3, metadata=rng(gt=0))
        """Learning rate of omega's Adam optimiser."""
        meta_weight_decay: float = field(default=0.0, metadata=rng(ge=0))
        """Weight decay of omega's optimiser."""
        virtual_lr: float | None = field(default=None, metadata=rng(gt=0))
        """Step size of the virtual student step; None: the main optimiser's current learning rate."""

    feature_dim: int = 0

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        _check_unit("init_ratio", cfg.init_ratio, open_interval=True)
        _check_unit("holdout_fraction", cfg.holdout_fraction, open_interval=True)
        if cfg.meta_every < 1:
            raise ConfigError(f"method.meta_every must be >= 1, got {cfg.meta_every}")
        if any(h < 1 for h in cfg.hidden):
            raise ConfigError(f"method.hidden must list positive widths, got {cfg.hidden}")
        if cfg.meta_lr <= 0 or (cfg.virtual_lr is not None and cfg.virtual_lr <= 0):
            raise ConfigError("method.meta_lr and method.virtual_lr must be > 0")
        self.ratio_net = RatioNet(self.feature_dim_for(cfg, ctx), cfg.hidden, cfg.init_ratio)
        self.meta = HypergradientStep(self)

    def feature_dim_for(self, cfg: MethodConfig, ctx: BuildContext) -> int:
        """``D``, the width of :meth:`features`."""
        raise NotImplementedError

    def features(self, io: StepIO, terms: SampleTerms) -> Tensor:
        """``[B, D]`` inputs of f_omega (detached from the student)."""
        raise NotImplementedError

    def feature_names(self) -> tuple[str, ...]:
        """Names of the equal-width blocks :meth:`features` concatenates (e.g. TGeo-KD's ``e_sg`` .. ``tbar``)."""
        raise NotImplementedError

    def diagnostics(self, io: StepIO, terms: SampleTerms) -> dict[str, Tensor]:
        """``feature.<name>.mean`` / ``.std``: batch mean and spread of each input block's L2 norm per sample (for a
        one-wide block, its absolute value)."""
        with torch.no_grad():
            feats = self.features(io, terms).float()
            names = self.feature_names()
            norms = feats.view(feats.shape[0], len(names), -1).norm(dim=-1)  # [B, blocks]
            mean, std = norms.mean(0), norms.std(0, unbiased=False)
        out = {}
        for i, name in enumerate(names):
            out[f"feature.{name}.mean"] = mean[i]
            out[f"feature.{name}.std"] = std[i]
        return out

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        features = self.features(io, terms)
        return self.ratio_net(features.to(self.ratio_net.net[-1].weight.dtype))

    def needs(self) -> Needs:
        return self.inner.needs().union(Needs(holdout_fraction=self.cfg.holdout_fraction))

    def aux_objectives(self) -> Sequence[AuxObjective]:
        return (*self.inner.aux_objectives(), self.meta)


def _tangent(dual: Any) -> Tensor:
    """The forward-mode derivative of an unpacked dual tensor (zeros when it does not depend on the tangents)."""
    return torch.zeros_like(dual.primal) if dual.tangent is None else dual.tangent


class HypergradientStep(AuxObjective):
    """The outer step of a learned fusion policy: one-step-unrolled hypergradient of the held-out label loss.

    ``theta' = theta - eta * grad_theta mean_i(a_i(omega) K_i(theta) + b_i(omega) G_i(theta))`` on the training
    batch just used, then ``omega <- Adam(omega, grad_omega CE(f(x_val; theta'), y_val))``.

    The training loss is linear in the weights ``a_i``, ``b_i`` (and they do not depend on ``theta``: the policy reads
    the student detached), so with ``v = grad_theta' CE(f(x_val; theta'), y_val)`` the chain rule gives, exactly,
    ``d CE_val / d a_i = -eta / B <v, grad_theta K_i(theta)>`` (likewise ``b_i`` with ``G_i``). The inner products of
    all ``B`` samples are one forward-mode derivative of ``[K_i(theta)]_i`` along ``v`` (dual numbers), so the
    step costs three passes of the student (training batch forward and backward; held-out batch forward and
    backward; one forward-mode pass of the training batch) and no second-order backward. The teachers' outputs of
    the training batch are the main step's (``ctx.teachers``). The result equals the double-backward hypergradient
    through ``create_graph`` (tested to 1e-6 in float64).

    Args:
        method: the learned policy that owns ``omega`` (``method.ratio_net``).
    """

    def __init__(self, method: LearnedFusion) -> None:
        cfg = method.cfg
        self.method = method
        self.every = cfg.meta_every
        self.virtual_lr = cfg.virtual_lr
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay)
        self.heldout = HeldoutStream()  # held-out mini-batches in order, tracked in samples (resumable)

    def parameters(self) -> list[nn.Parameter]:
        """``omega``: the parameters this objective trains."""
        return list(self.method.ratio_net.parameters())

    def due(self, progress) -> bool:
        return progress.step % self.every == 0

    def _next_heldout(self, ctx: Any, size: int) -> Batch:
        return self.heldout.take(ctx.heldout_batches, size)

    def hypergradient(self, ctx: Any, heldout: Batch) -> tuple[list[Tensor], Tensor]:
        """``(d CE_val / d omega per parameter of omega, CE_val)`` for the training batch ``ctx.batch``."""
        method, student = self.method, ctx.student
        teachers = tuple(ctx.teachers) or ctx.teacher_outputs(ctx.batch)
        lr = self.virtual_lr if self.virtual_lr is not None else ctx.lr
        named = dict(student.named_parameters())
        names = [n for n, p in named.items() if p.requires_grad]
        frozen = {n: p.detach() for n, p in named.items() if not p.requires_grad}

        def buffers() -> dict[str, Tensor]:  # BN statistics go to copies: the student's stay untouched
            return {n: b.clone() for n, b in student.named_buffers()}

        def train_terms(*params: Tensor) -> tuple[StepIO, SampleTerms]:
            out = ctx.student_outputs(ctx.batch, {**dict(zip(names, params)), **frozen, **buffers()})
            io = StepIO(out, teachers, ctx.batch, ctx.progress)
            return io, method.sample_terms(io)

        omega = self.parameters()
        theta = [named[n].detach().requires_grad_(True) for n in names]
        with torch.enable_grad():
            # 1. the training loss at theta, the weights as constants: its gradient makes the virtual step
            io, terms = train_terms(*theta)
            kd_w, gt_w = method.weights(io, terms, method.ratio(io, terms))  # a graph to omega only
            inner = fusion_losses.fused_loss(terms.kd, terms.gt, kd_w.detach(), gt_w.detach())
            grads = torch.autograd.grad(inner, theta, allow_unused=True)
            updated = [(p if g is None else p - lr * g).detach().requires_grad_(True) for p, g in zip(theta, grads)]
            # 2. the held-out loss at theta' and its gradient v
            logits = ctx.student_outputs(heldout, {**dict(zip(names, updated)), **frozen, **buffers()})["x"].logits
            outer = F.cross_entropy(logits, heldout.y)
            v = torch.autograd.grad(outer, updated, allow_unused=True)
        del io, terms, inner, grads, logits
        # 3. <v, grad_theta K_i> and <v, grad_theta G_i> for every sample: one forward-mode pass along v (dual
        # numbers; no_grad keeps autograd from recording the pass, forward-mode derivatives still flow)
        with torch.no_grad(), fwad.dual_level():
            duals = [p.detach() if t is None else fwad.make_dual(p.detach(), t) for p, t in zip(theta, v)]
            _, along = train_terms(*duals)
            d_kd, d_gt = (_tangent(fwad.unpack_dual(term)) for term in (along.kd, along.gt))
        # 4. d outer / d kd_w_i = -lr * d inner / d kd_w_i with K_i replaced by its derivative along v (linearity)
        with torch.enable_grad():
            along_v = fusion_losses.fused_loss(d_kd.detach(), d_gt.detach(), kd_w, gt_w)
            hyper = torch.autograd.grad(-lr * along_v, omega, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(omega, hyper)], outer.detach()

    def step(self, ctx: Any) -> dict[str, float]:
        return self.step_with(ctx, self._next_heldout(ctx, ctx.batch.size))

    def step_with(self, ctx: Any, heldout: Batch) -> dict[str, float]:
        """One update of ``omega`` against the held-out mini-batch ``heldout``; returns the logged scalars."""
        grads, outer = self.hypergradient(ctx, heldout)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.parameters(), grads):
            p.grad = g
        distributed.average_gradients(self.parameters())  # under torchrun: one omega, moved by the global batch
        self.optimizer.step()
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
        values = torch.stack([outer.float(), norm]).tolist()
        return {"meta.heldout_ce": values[0], "meta.hypergrad_norm": values[1]}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), **self.heldout.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.heldout.load_state_dict(state)


@register_method(
    "rw_kd", description="RW-KD: per-sample KD/CE ratio from a meta-learner over both losses, trained on held-out data"
)
class ReweightFusion(LearnedFusion):
    """RW-KD: ``alpha_i = f_omega([G_i, K_i])`` meta-learned against a held-out split."""

    @dataclass(kw_only=True)
    class Config(LearnedFusion.Config):
        name: str = "rw_kd"
        hidden: list[int] = field(default_factory=lambda: [64], metadata=rng(ge=1))
        """Hidden widths of the meta-learner."""

    def feature_dim_for(self, cfg: MethodConfig, ctx: BuildContext) -> int:
        return 2

    def features(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return torch.stack([terms.gt.detach(), terms.kd.detach()], dim=-1)

    def feature_names(self) -> tuple[str, ...]:
        return ("gt_loss", "kd_loss")
