"""``train.weight_scaling``: measure a run's step-0 gradient ratios and turn them into per-term factors (the rule is
:mod:`kdlab.methods.scaling`; this module only runs it on a built run, without changing the run)."""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn

from kdlab import distributed
from kdlab.methods.scaling import gradient_norms, gradient_ratios, reference_ratios, scale_factors
from kdlab.train.build import Run, build_context
from kdlab.train.step import TrainStep
from kdlab.types import Progress

log = logging.getLogger("kdlab")


def default_method(run: Run) -> nn.Module:
    """The run's method at its registered defaults, built on the run's models (the run's own method when its config
    is the default one, or when the defaults cannot be built on this pair, e.g. taps that must be named)."""
    from kdlab.methods import METHODS, build_method

    cfg = run.cfg.method
    default = METHODS.get(cfg.name).Config()
    if dataclasses.asdict(default) == dataclasses.asdict(cfg):
        return run.method
    splits, data = run.splits, run.data
    try:
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            ctx = build_context(
                run.student,
                [t.model for t in run.teachers],
                splits.num_classes,
                splits.input_size,
                run.device,
                run.cfg.train.seed,
                data.num_train,
                data.train_labels,
            )
            return build_method(default, ctx).to(run.device)
    except (ValueError, TypeError) as err:
        log.warning(
            "train.weight_scaling: %s at its registered defaults cannot be built on this pair (%s); the factors are "
            "measured on the run's own settings instead, so changed weights do not change the step-0 balance",
            cfg.name,
            err,
        )
        return run.method


def probe_progress(steps_per_epoch: int, total_epochs: int) -> Progress:
    """Where the terms are measured: the first step of the middle epoch of the run, so that every warm-up or ramp
    of a term's weight (DKD's 1/12 of the run, ...) has ended and the term counts at its full weight, as the
    published weight means it (the student's weights are still the initial ones)."""
    epoch = total_epochs // 2
    return Progress(
        step=epoch * steps_per_epoch,
        epoch=epoch,
        step_in_epoch=0,
        steps_per_epoch=steps_per_epoch,
        total_epochs=total_epochs,
    )


def measure_terms(run: Run, method: nn.Module, total_epochs: int | None = None) -> dict[str, tuple[float, float]]:
    """``{term: (value, |grad term| over the student's parameters)}`` of ``method`` on the run's first training
    batch, with the student's initial weights and the terms' weights at :func:`probe_progress` (``total_epochs``:
    default ``train.epochs``). Nothing of the run changes: the student and method are copies (batch-norm
    statistics stay as they are) and the global random state is restored."""
    needs = method.needs()
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        student = copy.deepcopy(run.student)
        step = TrainStep(student, copy.deepcopy(method), needs)
        step.train()
        batch = next(iter(run.data.train_batches(0)))
        teachers = tuple(t.outputs(batch, needs.views, needs.teacher_taps) for t in run.teachers)
        progress = probe_progress(run.data.steps_per_epoch(), total_epochs or run.cfg.train.epochs)
        out = step(batch, teachers, progress)
        norms = gradient_norms(out.terms, student.parameters())
    return {name: (float(value.detach()), norms[name]) for name, value in out.terms.items()}


def measure_ratios(run: Run, method: nn.Module) -> dict[str, float]:
    """``{term: |grad term| / |grad CE|}`` of ``method`` (:func:`measure_terms`)."""
    return gradient_ratios({k: g for k, (_, g) in measure_terms(run, method).items()})


def calibrate(run: Run) -> dict[str, float]:
    """The run's per-term factors under ``train.weight_scaling`` (``{}`` for ``none``): see
    :mod:`kdlab.methods.scaling`. Logs the measured and reference ratios and the factors."""
    if run.cfg.train.weight_scaling == "none" or not run.teachers:
        return {}
    name = run.cfg.method.name
    reference = reference_ratios(name)
    measured = measure_ratios(run, default_method(run))
    factors = scale_factors(measured, reference)
    factors = _agree(factors, run.device)
    for term, f in factors.items():
        log.info(
            "train.weight_scaling=gradient: %s term %r: |grad|/|grad CE| at the initial weights %.3g here, %s on "
            "the reference pair -> factor %.3g",
            name,
            term,
            measured.get(term, float("nan")),
            f"{reference[term]:.3g}" if term in reference else "not measured",
            f,
        )
    if not reference:
        log.warning(
            "train.weight_scaling=gradient: %s has no reference ratios (benchmarks/loss_scales.py --write-reference); "
            "its weights are used as they are",
            name,
        )
    return {k: v for k, v in factors.items() if v != 1.0}


def _agree(factors: dict[str, float], device: torch.device) -> dict[str, float]:
    """Several processes: every rank uses the mean of the ranks' factors (each measured on its own batch)."""
    if not factors or distributed.world_size() < 2:
        return factors
    names = sorted(factors)
    values = torch.tensor([factors[n] for n in names], dtype=torch.float64, device=device)
    values = distributed.reduce_sum(values) / distributed.world_size()
    return dict(zip(names, values.tolist()))
