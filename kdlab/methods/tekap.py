"""``tekap``: Hossain, Akhter, Hong, Huh, "Single Teacher, Multiple Perspectives: Teacher Knowledge Augmentation
for Enhanced Knowledge Distillation", ICLR 2025 (OpenReview DmEHmZ89iB; no arXiv version). A wrapper over any method.

Objective: with the teacher's logits (and/or feature taps) ``z_t`` and N perturbed views
``z_t^(i) = (1 - a) * z_t + a * eta_i``, ``eta_i ~ N(0, noise_std^2)`` drawn fresh every step,
``L = clean_weight * L_inner(z_t) + view_weight * sum_{i=1..N} L_inner(z_t^(i))`` applied to the inner method's
teacher-dependent terms; its teacher-free terms (the cross-entropy, ``teacher_free_terms``) count once. For the inner
``kd`` this is ``ce_weight * CE + kd_weight * tekap_kd`` (:func:`kdlab.losses.tekap_kd`).

Reference: mdimtiazh/TeKAP@279d380 ``distiller_zoo/Ours_TeKAP_L.py`` (logit level: N = 3, a = 0.1, N(0, 1) noise,
weights 1 and 0.8, the 0.8 on a sum of KD terms; README run ``-r 0.1 -a 0.9 -b 0``, T = 4, i.e. the default inner
``kd``) and ``crd/criterion.py`` (feature level: one view of the pooled teacher feature with a = 0.1 and noise
std 0.1, i.e. ``perturb: features, num_views: 1, noise_std: 0.1, view_weight: 1``). The paper's convex form is
``clean_weight = lambda, view_weight = 1 - lambda``. Combined with DKD / MLKD as in the paper's camera-ready
tables: the inner method's distillation terms see the perturbed teachers; with several real teachers, each is
perturbed. With several real teachers (``dgkd``, ``ca_mkd``, ``mt_kd``) view ``i`` perturbs every teacher, and the
inner method sees the M perturbed teachers of view ``i`` together, with the weights of single-teacher TeKAP. With
``perturb: logits`` an inner term that reads no teacher logits (``logit_free_terms``, e.g. CA-MKD's feature term) is
not re-evaluated on the views: like the cross-entropy it counts once.

Terms: the inner terms keep their names (teacher-dependent ones times ``clean_weight``); the views' contribution to
a teacher-dependent term ``name`` is the extra term ``"<name>.views"`` (``view_weight`` times the sum over views),
so logs show the clean and perturbed parts apart and the total is their sum. With ``view_weight: 0`` no view is
drawn or evaluated and the terms are the inner method's exactly.

Batching: the noise of all views is drawn as one ``[N, B, ...]`` tensor per teacher output. When the inner method
``averages_teachers`` (kd, dkd, dist, mlkd), all N views of all teachers go to the inner method as one teacher list
in a single extra ``loss`` call (which stacks them into one batched computation), and the sum over views is N times
its mean; otherwise the inner ``loss`` runs once per view (exact for any method, N extra calls).

Adapters: the inner method is a registered submodule (``self.inner``: its buffers and state follow ``.to()`` and the
checkpoints) and ``self.adapters`` *is* the inner method's ``adapters`` ModuleDict, so the trainer optimises exactly
the inner method's parameters under the inner method's names (its state dict also lists them under ``inner.``).

Randomness: a ``torch.Generator`` on the training device, seeded from the run's seed, checkpointed through
:meth:`generator_state`; a resumed run draws the same noise. Draw order per step: teachers in order, views of each
teacher in mapping order, logits before taps, taps by name.

Deviations:
- The released code draws the noise with the global RNG (``torch.randn(...).cuda()``); kdlab uses its own seeded
  generator so that runs are reproducible and resumable.
- Feature-level TeKAP is the same mixing applied to the teacher taps an inner feature method reads (the released
  code perturbs CRD's pooled teacher feature and also momentum-updates CRD's memory bank twice per step; that
  side effect is not reproduced).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.method_configs.tekap import TeKAPConfig
from kdlab.methods import register_method
from kdlab.methods.base import MAIN_STAGE, AuxObjective, BuildContext, DistillMethod, PrepareContext, Stage
from kdlab.seeding import derive_seed, make_generator
from kdlab.types import LossOut, Needs, Outputs, StepIO

#: Mixed into the run's seed so that TeKAP's noise stream differs from the data pipeline's.
_SEED_TAG = 0x7E4A9


@register_method("tekap", description="TeKAP: wraps a method; adds N noise-perturbed views of the teacher")
class TeKAP(DistillMethod):
    """Teacher knowledge augmentation: the inner method also distils from N perturbed copies of the teacher."""

    Config = TeKAPConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.num_views < 0:
            raise ValueError(f"tekap: num_views must be >= 0, got {cfg.num_views}")
        from kdlab.methods import build_method  # defined after the registry imports this module

        self.inner = build_method(cfg.inner, ctx)
        if not self.inner.needs().teacher:
            raise ValueError(f"tekap perturbs the teacher, but the inner method {cfg.inner.name!r} reads none")
        self.adapters = self.inner.adapters
        self.teacher_free_terms = self.inner.teacher_free_terms
        self.dense_outputs = self.inner.dense_outputs  # kind-agnostic: dense exactly when the inner method is
        self.logit_free_terms = self.inner.logit_free_terms
        self.mixed_labels = self.inner.mixed_labels  # Mixup/CutMix: as the inner method
        self.mixed_labels_reason = self.inner.mixed_labels_reason
        self.generator = make_generator(ctx.device, derive_seed(ctx.seed, _SEED_TAG))

    # ------------------------------------------------------------------------------------------ contract

    def needs(self) -> Needs:
        needs = self.inner.needs()
        if self.cfg.perturb != "logits" and self.cfg.feature_taps:
            needs = needs.union(Needs(teacher_taps=frozenset(self.cfg.feature_taps), views=needs.views))
        return needs

    def prepare(self, ctx: PrepareContext) -> None:
        self.inner.prepare(ctx)

    def aux_objectives(self) -> Sequence[AuxObjective]:
        return self.inner.aux_objectives()

    def stages(self) -> Sequence[Stage]:
        """The inner method's stages (e.g. an initialisation); they run unperturbed."""
        return self.inner.stages()

    def export(self, student: torch.nn.Module) -> torch.nn.Module:
        return self.inner.export(student)

    def sample_weights(self, io: StepIO) -> Tensor | None:
        """The inner method's per-sample weights on the clean teacher (the views do not change them)."""
        return self.inner.sample_weights(io)

    def generator_state(self) -> dict[str, Tensor]:
        state = {"tekap": self.generator.get_state()}
        state.update({f"inner.{k}": v for k, v in self.inner.generator_state().items()})
        return state

    def set_generator_state(self, state: dict[str, Tensor]) -> None:
        if "tekap" in state:
            self.generator.set_state(state["tekap"].to(device="cpu", dtype=torch.uint8))
        self.inner.set_generator_state({k[len("inner.") :]: v for k, v in state.items() if k.startswith("inner.")})

    # ------------------------------------------------------------------------------------------ views

    def _perturbed_taps(self) -> frozenset[str]:
        if self.cfg.perturb == "logits":
            return frozenset()
        return frozenset(self.cfg.feature_taps) or self.inner.needs().teacher_taps

    def _noise(self, like: Tensor) -> Tensor:
        n = self.cfg.num_views
        eps = torch.randn((n, *like.shape), generator=self.generator, device=like.device, dtype=like.dtype)
        return eps if self.cfg.noise_std == 1.0 else self.cfg.noise_std * eps

    def _views_of(self, teacher: Mapping[str, Outputs]) -> list[dict[str, Outputs]]:
        """N perturbed copies of one teacher's outputs (all image views), each tensor drawn as one batch."""
        cfg = self.cfg
        taps = sorted(self._perturbed_taps())
        per_view: list[dict[str, Outputs]] = [{} for _ in range(cfg.num_views)]
        for view_name, out in teacher.items():
            logits = out.logits
            if cfg.perturb != "features":
                logits = losses.tekap_views(out.logits, self._noise(out.logits), cfg.noise_weight)
            mixed = {}
            for tap in taps:
                if tap not in out.taps:
                    raise KeyError(f"tekap: teacher tap {tap!r} is not in the teacher's outputs ({sorted(out.taps)})")
                mixed[tap] = losses.tekap_views(out.taps[tap], self._noise(out.taps[tap]), cfg.noise_weight)
            for i in range(cfg.num_views):
                view_logits = logits if cfg.perturb == "features" else logits[i]
                view_taps = {**out.taps, **{k: v[i] for k, v in mixed.items()}}
                per_view[i][view_name] = Outputs(view_logits, view_taps)
        return per_view

    # ------------------------------------------------------------------------------------------ loss

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        if io.progress.stage != MAIN_STAGE:  # an inner method's initialisation stage sees the clean teacher
            return self.inner.loss(io)
        free = self.inner.teacher_free_terms
        if cfg.perturb == "logits":  # terms that read no teacher logits see no perturbation: counted once
            free = free | self.inner.logit_free_terms
        clean = self.inner.loss(io)
        terms = {k: (v if k in free else cfg.clean_weight * v) for k, v in clean.terms.items()}
        if cfg.view_weight == 0.0 or cfg.num_views == 0:
            return LossOut(terms, dict(clean.metrics))

        views_by_teacher = [self._views_of(t) for t in io.teachers]  # [M][N] mappings
        view_sums: dict[str, Tensor] = {}
        if self.inner.averages_teachers:
            flat = tuple(v for views in views_by_teacher for v in views)
            out = self.inner.loss(io.replace(teachers=flat))
            scale = cfg.view_weight * cfg.num_views
            view_sums = {k: scale * v for k, v in out.terms.items() if k not in free}
        else:
            for i in range(cfg.num_views):
                out = self.inner.loss(io.replace(teachers=tuple(views[i] for views in views_by_teacher)))
                for k, v in out.terms.items():
                    if k not in free:
                        view_sums[k] = view_sums[k] + v if k in view_sums else v
            view_sums = {k: cfg.view_weight * v for k, v in view_sums.items()}
        terms.update({f"{k}.views": v for k, v in view_sums.items()})
        return LossOut(terms, dict(clean.metrics))
