"""``sum``: a weighted sum of distillation methods (no paper of its own; it composes the others).

Objective, for children ``m_1 .. m_n`` with weights ``w_i``::

    L = sum_i w_i * (teacher-dependent terms of m_i) + w_j * (teacher-free terms of m_j, j the first child with them)

Uses: RepDistiller's "CRD + KD" (``-r 1 -a 1 -b 0.8``) is ``sum`` of ``crd`` (its CE weight 1, CRD weight 0.8) and
``kd`` with ``kd_weight: 1``; TeKAP(F+L) is ``tekap`` over a ``sum`` of ``crd`` and ``kd`` with ``perturb: both``. The
released TeKAP code uses different noise for its feature and logit parts (one view, std 0.1, weight 1 against three
views, std 1, weight 0.8); that exact recipe is a ``sum`` of two ``tekap`` methods, one wrapping ``crd`` and one
wrapping ``kd``.

Rules:
- Terms: every teacher-dependent term ``t`` of child ``i`` is reported as ``"<prefix_i>.t"`` where the prefix is the
  child's registry name (``crd.crd``, ``kd.kd``), or the name followed by its index when two children share a name
  (``kd0.kd``, ``kd1.kd``). Metrics are prefixed the same way.
- Teacher-free terms (a child's ``teacher_free_terms``, e.g. the cross-entropy) are kept once, unprefixed: the first
  child (in ``terms`` order) that returns a term of that name provides it (times its weight) and the same term of
  later children is dropped. So the CE weight of a sum is its first child's CE weight. This keeps wrappers such as
  ``tekap`` correct (they count teacher-free terms once) and makes ``sum`` of one method that method exactly: the same
  values under the same names except for the prefix, and the same total, bit for bit (a weight of 1 is not applied).
- Needs are the union of the children's (:meth:`kdlab.types.Needs.union`); adapters are the children's
  ``adapters`` under ``adapters[<prefix>]`` (the children are registered submodules, so their buffers, e.g. CRD's
  memory, are in the state dict); aux objectives are concatenated; generator states are prefixed; ``export`` is the
  first child's export that differs from the student.
- Training stages (AB/FT/FSP initialisation): the children's stages run in order, each named
  ``"<prefix>.<stage>"`` (``ab.init``, ``fsp.init``) so two children may both have an ``init`` stage; during a stage
  only the child that declared it is evaluated, and it sees its own stage name (``io.progress.stage == "init"``).

Reference: none (RepDistiller's ``train_student.py`` adds ``gamma * CE + alpha * KD + beta * other`` by hand).

Deviations: none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor, nn

from kdlab.config import MethodConfig
from kdlab.method_configs.combine import SumConfig
from kdlab.methods import register_method
from kdlab.methods.base import (
    MAIN_STAGE,
    AuxObjective,
    BuildContext,
    DistillMethod,
    PrepareContext,
    Stage,
    strictest_mixed_labels,
)
from kdlab.types import LossOut, Needs, StepIO


@register_method("sum", description="weighted sum of methods (CRD + KD, TeKAP(F+L)); teacher-free terms kept once")
class Sum(DistillMethod):
    """A weighted sum of methods.

    Args:
        cfg: :class:`Sum.Config` (``terms``: the children's configs; ``weights``: one per child, default all 1).
        ctx: handed to every child.
    """

    Config = SumConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not cfg.terms:
            raise ValueError("sum: 'terms' is empty; list at least one method, e.g. terms: [{name: kd}]")
        weights = list(cfg.weights) if cfg.weights else [1.0] * len(cfg.terms)
        if len(weights) != len(cfg.terms):
            raise ValueError(f"sum: {len(cfg.weights)} weights for {len(cfg.terms)} terms; give one per term")
        from kdlab.methods import build_method  # defined after the registry imports this module

        self.methods = nn.ModuleList(build_method(c, ctx) for c in cfg.terms)
        names = [c.name for c in cfg.terms]
        self.prefixes = [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]
        self.weights = weights
        for prefix, method in zip(self.prefixes, self.methods):
            self.adapters[prefix] = method.adapters
        self.teacher_free_terms = frozenset().union(*(m.teacher_free_terms for m in self.methods))
        self.averages_teachers = all(m.averages_teachers for m in self.methods)
        self.mixed_labels = strictest_mixed_labels(m.mixed_labels for m in self.methods)  # Mixup/CutMix
        self.mixed_labels_reason = "; ".join(m.mixed_labels_reason for m in self.methods if m.mixed_labels_reason)
        # "<prefix>.<stage>" -> (child index, the child's own stage name)
        self._stage_owner: dict[str, tuple[int, str]] = {}
        for i, (prefix, method) in enumerate(zip(self.prefixes, self.methods)):
            for stage in method.stages():
                if stage.name == MAIN_STAGE:
                    raise ValueError(f"sum: term {prefix!r} declares a stage named {MAIN_STAGE!r}, which is reserved")
                self._stage_owner[f"{prefix}.{stage.name}"] = (i, stage.name)

    # ------------------------------------------------------------------------------------------ contract

    def needs(self) -> Needs:
        needs = self.methods[0].needs()
        for method in self.methods[1:]:
            needs = needs.union(method.needs())
        return needs

    def prepare(self, ctx: PrepareContext) -> None:
        for method in self.methods:
            method.prepare(ctx)

    def stages(self) -> Sequence[Stage]:
        return [
            dataclasses.replace(stage, name=f"{prefix}.{stage.name}")
            for prefix, method in zip(self.prefixes, self.methods)
            for stage in method.stages()
        ]

    def aux_objectives(self) -> Sequence[AuxObjective]:
        return [aux for method in self.methods for aux in method.aux_objectives()]

    def sample_weights(self, io: StepIO) -> Tensor | None:
        """The first child's per-sample weights that are not None."""
        for method in self.methods:
            weights = method.sample_weights(io)
            if weights is not None:
                return weights
        return None

    def export(self, student: nn.Module) -> nn.Module:
        for method in self.methods:
            model = method.export(student)
            if model is not student:
                return model
        return student

    def generator_state(self) -> dict[str, Tensor]:
        return {
            f"{prefix}.{k}": v
            for prefix, method in zip(self.prefixes, self.methods)
            for k, v in method.generator_state().items()
        }

    def set_generator_state(self, state: dict[str, Tensor]) -> None:
        for prefix, method in zip(self.prefixes, self.methods):
            head = f"{prefix}."
            method.set_generator_state({k[len(head) :]: v for k, v in state.items() if k.startswith(head)})

    # ------------------------------------------------------------------------------------------ loss

    def loss(self, io: StepIO) -> LossOut:
        stage = io.progress.stage
        if stage == MAIN_STAGE:
            active: Sequence[int] = range(len(self.methods))
        elif stage in self._stage_owner:
            owner, own_name = self._stage_owner[stage]
            active = [owner]
            io = dataclasses.replace(io, progress=dataclasses.replace(io.progress, stage=own_name))
        else:
            active = []
        terms: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        for i in active:
            method, prefix, weight = self.methods[i], self.prefixes[i], self.weights[i]
            out = method.loss(io)
            for name, value in out.terms.items():
                if weight != 1.0:
                    value = weight * value
                if name in method.teacher_free_terms:
                    terms.setdefault(name, value)
                else:
                    terms[f"{prefix}.{name}"] = value
            metrics.update({f"{prefix}.{k}": v for k, v in out.metrics.items()})
        if not terms:
            raise ValueError(f"sum: no term is active in training stage {stage!r}")
        return LossOut(terms, metrics)

    def extra_repr(self) -> str:
        return ", ".join(f"{p}: {w:g}" for p, w in zip(self.prefixes, self.weights))
