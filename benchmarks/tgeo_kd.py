"""Step time of ``tgeo_kd`` relative to ``kd`` with the outer (hypergradient) step every step and every 10 steps
(issue 21; targets: at most 2.0x ``kd`` every step, at most 1.2x with k = 10; issue 7 had 2.5x and 1.3x).

Teacher resnet32x4 -> student resnet8x4 (random weights: the weights do not change the cost), synthetic CIFAR-shaped
data (3x32x32, 100 classes), batch 64, on CPU. Variants: ``kd``; ``tgeo_kd`` with ``meta_every`` 1 and 10;
``tgeo_kd(k=1, clipped)``, the same under ``train.clip_grad_norm`` (1e9: the clipping's work, no change of the step),
where the outer step runs before the clipping and is still handed the main step's gradient; and
``tgeo_kd(k=1, recomputed)``, the outer step told the gradient is not the loss's own (``before_step(False)``, as under
fp16 loss scaling or several processes), so it computes the virtual step's gradient itself, one more forward and
backward of the training batch: the cost of the solver before the gradient was handed over.

Every variant is a real :class:`~kdlab.train.trainer.Trainer` (built, ``prepare``d and warmed up by ``fit`` over
``--warmup`` steps). The timed steps are then driven one at a time, variants interleaved step by step (kd, k=1, k=10,
recomputed, kd, ...), so that a shared machine's changing load affects all alike: each is the trainer loop's body
(``_step`` below: next batch from the loader, teachers, the step module, the one host sync, backward with the outer
step before the optimiser step, the other aux objectives) without its logging. A variant's step time is the mean
step estimated robustly: the median of its steps with an outer step and the median of those without, weighted by
their shares (1 in ``meta_every``); the ratio is that over ``kd``'s median step. ``--rounds`` rounds of 10 steps per
variant are timed (each round holds exactly one outer step of ``meta_every: 10``).

Usage: ``python benchmarks/tgeo_kd.py [--rounds 3] [--threads 2] [--out FILE]``; prints JSON. The stepper also
drives a tree from before the outer step moved before the optimiser step (e.g. ``git archive e8e2ab1^`` unpacked and
put first on ``PYTHONPATH``), for before/after figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from kdlab.bench import _context, bench_config
from kdlab.types import Progress

#: label -> (method fields, train fields, target ratio to kd or None, whether the outer step may be handed the gradient)
VARIANTS = {
    "kd": ({"name": "kd"}, {}, None, True),
    "tgeo_kd(k=1)": ({"name": "tgeo_kd", "meta_every": 1}, {}, 2.0, True),
    "tgeo_kd(k=10)": ({"name": "tgeo_kd", "meta_every": 10}, {}, 1.2, True),
    "tgeo_kd(k=1, clipped)": ({"name": "tgeo_kd", "meta_every": 1}, {"clip_grad_norm": 1e9}, None, True),
    "tgeo_kd(k=1, recomputed)": ({"name": "tgeo_kd", "meta_every": 1}, {}, None, False),
}
STEPS_PER_ROUND = 10


def _not_handed(run: Callable[[bool], dict], plain: bool) -> dict:
    """``run`` (the trainer's before-step objectives) told that the gradients are not the loss's own."""
    return run(False)


def _stepper(trainer, handed: bool = True) -> Callable[[], bool]:
    """One training step of ``trainer`` as its loop takes it (``Trainer._loop``), without logging; returns whether an
    outer step ran. ``handed=False``: the outer step is never handed the main step's gradient."""
    batches = itertools.chain.from_iterable(trainer.run.data.train_batches(e) for e in itertools.count(1))
    spe = trainer.steps_per_epoch
    state = {"step": trainer.global_step}

    def step() -> bool:
        s = state["step"]
        progress = Progress(step=s, epoch=s // spe, step_in_epoch=s % spe, steps_per_epoch=spe, total_epochs=10**6)
        batch = trainer.precision.prepare_batch(next(batches))
        lr = trainer._lr(progress)
        teachers = trainer._step_teachers(batch, progress)
        out = trainer.step_call(batch, teachers, progress)
        named = {**out.terms, **out.metrics}
        torch.stack([out.total.detach().float(), *(v.detach().float().reshape(()) for v in named.values())]).tolist()
        trainer.optimizer.zero_grad(set_to_none=True)
        done = dataclasses.replace(progress, step=s + 1, step_in_epoch=progress.step_in_epoch + 1)
        before_step = getattr(trainer, "_aux_before_step", None)  # absent in trees older than issue 21
        early = before_step(batch, progress, done, lr, teachers) if before_step else None
        if early is not None and not handed:
            early = functools.partial(_not_handed, early)
        if early is None:
            trainer._backward_step(out.total)
        else:
            trainer._backward_step(out.total, early)
        for aux in trainer.aux:
            if aux.due(progress) and not getattr(aux, "before_optimizer_step", False):
                aux.step(trainer._aux_context(batch, done, lr, teachers))
        state["step"] = s + 1
        return any(aux.due(progress) for aux in trainer.aux)

    return step


def _mean_step(times: list[tuple[float, bool]]) -> float:
    """The mean step time estimated from medians: steps with and without an outer step, weighted by their shares."""
    groups = [[t for t, outer in times if outer == flag] for flag in (True, False)]
    return sum(len(g) / len(times) * statistics.median(g) for g in groups if g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant (through Trainer.fit)")
    p.add_argument("--rounds", type=int, default=2, help=f"timed rounds of {STEPS_PER_ROUND} steps per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if args.rounds < 1 or args.warmup < 1:
        p.error("--rounds and --warmup must be >= 1")
    logging.basicConfig(level=logging.ERROR)  # silence the "teacher is randomly initialised" warning per run
    from kdlab.train.trainer import Trainer

    bs = args.batch_size
    times: dict[str, list[tuple[float, bool]]] = {label: [] for label in VARIANTS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        steppers = {}
        for label, (method, train, _, handed) in VARIANTS.items():
            cfg = bench_config(
                method,
                teacher=args.teacher,
                student=args.student,
                batch_size=bs,
                steps=STEPS_PER_ROUND,
                epochs=10**6,
                threads=args.threads,
                train={"max_steps": args.warmup, **train},
                run_dir=tmp,
                name="".join(c if c.isalnum() else "_" for c in label),
            )
            trainer = Trainer(cfg, force=True)
            trainer.fit()  # prepare (Tbar), warm-up steps
            steppers[label] = _stepper(trainer, handed)
        for _ in range(args.rounds * STEPS_PER_ROUND):
            for label, step in steppers.items():
                s0 = time.perf_counter()
                outer = step()
                times[label].append((time.perf_counter() - s0, outer))
    kd = _mean_step(times["kd"])
    rows = []
    for label, (method, train, target, _) in VARIANTS.items():
        mean = _mean_step(times[label])
        row = {
            "variant": label,
            "method": method,
            "train": train,
            "step_s": mean,
            "outer_steps": sum(outer for _, outer in times[label]),
            "steps": len(times[label]),
            "step_times_s": [round(t, 4) for t, _ in times[label]],
            "ratio_to_kd": mean / kd,
        }
        if target is not None:
            row["target_ratio"] = target
            row["within_target"] = mean / kd <= target
        rows.append(row)
    result = {
        "benchmark": "tgeo_kd step time relative to kd (steps interleaved across variants)",
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": bs,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "steps_per_round": STEPS_PER_ROUND,
        "wall_s": time.perf_counter() - t0,
        **_context(args.threads),
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
