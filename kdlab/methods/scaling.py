"""Loss-weight scaling: one rule, applied to every method alike, that keeps the balance its published weights had.

A method's published weights (AT's 1000, FitNet's 100, DIST's 1 and 2, ...) were chosen on CIFAR ResNet pairs. What
they fix there is how hard each distillation term pulls on the student compared with the cross-entropy. On another
pair the same weight can mean a very different pull: on the ``kdlab demo`` pair (8x8 digits, a 4-channel student
with near-uniform initial outputs) the terms that normalise the student's own representation (attention maps,
Gram and similarity matrices, Pearson correlations, contrastive embeddings) pull 10-150 times harder relative to
the cross-entropy than on the CIFAR pair, and the student matches maps instead of learning labels
(``benchmarks/loss_scales.py`` measures it; README, "The demo's verdicts").

The rule (``train.weight_scaling: gradient``): on the run's first training batch, with the student's initial
weights, each loss term ``t`` of the method at its registered defaults has the gradient ratio ``r_run(t) = |d t / d
theta| / |d CE / d theta|`` over the student's parameters ``theta``, with every weight schedule at mid-run (after
any warm-up: the term at the full weight the paper publishes). On the reference setting (:data:`REFERENCE_SETTING`)
the same term had ``r_ref(t)`` (:func:`reference_ratios`, measured the same way by ``benchmarks/loss_scales.py
--write-reference``). Every term of the run is multiplied by ``s(t) = min(1, r_ref(t) / r_run(t))`` for the whole
run, so no term starts stronger relative to the cross-entropy than its published weight makes it on the reference (a
term is weakened, never strengthened: see :func:`scale_factors`). The factor is measured at the registered defaults
and applied to the run's method: a weight changed from its default keeps its ratio to the default (``at_weight=500``
is half the pull of the default). Terms without a reference (a method or term not measured on the reference setting,
or whose reference gradient is zero) and the cross-entropy itself keep the factor 1. The measurement is one extra
forward/backward per term before training; the factors are logged, and the unscaled values of scaled terms are
logged as ``<term>_unscaled``. With ``train.weight_scaling: none`` (the default) the weights are the published ones,
unchanged: the scaling is for settings far from the reference (tiny students, tiny inputs), where it is the
documented alternative to re-tuning methods one by one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from kdlab.types import LossOut

log = logging.getLogger("kdlab")

REFERENCE_SETTING = (
    "CIFAR-10, pretrained resnet56_a (akamaster) -> randomly initialised resnet20_a, batch 64, the first training "
    "batch of seed 0, each method at its registered defaults with its weight schedules at mid-run of 240 epochs"
)
"""The setting the reference ratios were measured on (a CIFAR ResNet pair, where the published weights were tuned)."""
BASELINE_TERM = "ce"
"""The term every ratio is relative to: the cross-entropy with the labels."""


def gradient_norms(terms: Mapping[str, Tensor], params: Iterable[Tensor]) -> dict[str, float]:
    """The L2 norm of each term's gradient over ``params`` (all of them together), without touching ``.grad``.

    Args:
        terms: scalar loss terms (one graph; it is retained between terms).
        params: the parameters (e.g. the student's), each ``requires_grad``.

    Returns:
        ``{term: ||d term / d params||_2}`` (0 for a term that does not depend on ``params``).
    """
    params = [p for p in params if p.requires_grad]
    out = {}
    for name, value in terms.items():
        if not value.requires_grad:
            out[name] = 0.0
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        out[name] = math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))
    return out


def gradient_ratios(norms: Mapping[str, float], baseline: str = BASELINE_TERM) -> dict[str, float]:
    """``{term: norms[term] / norms[baseline]}`` for every term but ``baseline``; empty when ``baseline`` is missing
    or its gradient is zero (nothing to be relative to)."""
    base = norms.get(baseline, 0.0)
    if not base > 0:
        return {}
    return {k: v / base for k, v in norms.items() if k != baseline}


def scale_factors(measured: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """The rule's factor per term: ``min(1, reference[t] / measured[t])``; 1 where either ratio is missing, zero or
    not finite (the term is left as it is).

    The rule only weakens a term that pulls harder than on the reference; it never strengthens one. A term that is
    weak at the initial weights need not stay weak: MLKD's batch-level term (similarities of near-uniform
    predictions) measures 62 times below its reference balance on the demo pair, and raising it by that factor
    collapsed the student (test top-1 10-30 % in ``kdlab demo --all``).

    Args:
        measured: ``r_run``, the run's ratios to the cross-entropy's gradient (:func:`gradient_ratios`).
        reference: ``r_ref``, the same method's ratios on the reference setting.
    """
    out = {}
    for term, r in measured.items():
        ref = reference.get(term)
        ok = ref is not None and math.isfinite(ref) and ref > 0 and math.isfinite(r) and r > 0
        out[term] = min(1.0, ref / r) if ok else 1.0
    return out


def reference_ratios(method: str) -> dict[str, float]:
    """``r_ref``: ``{term: |grad term| / |grad CE|}`` of ``method`` at its registered defaults on
    :data:`REFERENCE_SETTING` (:mod:`kdlab.methods.gradient_reference`; empty for a method not measured there)."""
    from kdlab.methods.gradient_reference import RATIOS

    return dict(RATIOS.get(method, {}))


def apply_scales(out: LossOut, scales: Mapping[str, float]) -> LossOut:
    """``out`` with each term multiplied by its factor (terms without one unchanged); the unscaled values are added
    to the metrics as ``<term>_unscaled`` so logs stay comparable with unscaled runs."""
    if not scales:
        return out
    terms, metrics = {}, dict(out.metrics)
    for name, value in out.terms.items():
        s = scales.get(name, 1.0)
        if s != 1.0:
            metrics[f"{name}_unscaled"] = value.detach()
            value = value * s
        terms[name] = value
    return LossOut(terms, metrics)
