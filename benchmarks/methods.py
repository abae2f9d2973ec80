"""Step time of each logit method relative to ``kd``, through the real trainer (issue 4, "Efficiency").

Teacher resnet32x4 -> student resnet8x4 (random weights: the weights do not change the cost), synthetic
CIFAR-shaped data (3x32x32, 100 classes), batch 64, on CPU. Every measurement is a real ``Trainer.fit`` whose
epochs are one step long, so the trainer's per-epoch ``images_per_s`` gives the time of single steps, each including
producing the batch (gather, crop, flip, normalise; for ``mlkd`` also the RandAugment view), the teacher forward, the
loss, the backward and the optimiser step. The first ``--warmup`` steps of a run are dropped and the next ``--steps``
timed. ``--rounds`` runs every method once per round, interleaved, so that a change of machine load affects all
methods alike; the reported step time is the median over all timed steps of all rounds, and ``ratio_to_kd`` is its
ratio to ``kd``'s median.

Method specs: a registered name (``kd``, ``dkd``, ...) or ``tekap(<inner>)`` for TeKAP over ``<inner>``, each at its
registered defaults. Issue targets: ``dist``, ``dkd`` and ``tekap(kd)`` within 5% of ``kd``; ``mlkd`` within 2.2x.

Usage: ``python benchmarks/methods.py [--methods "kd,dkd,dist,mlkd,tekap(kd),tekap(dkd)"] [--steps 20]``; prints JSON
(``--out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import tempfile
import time

import torch

from kdlab.config import build_config
from kdlab.methods import METHODS
from kdlab.train.trainer import Trainer

DEFAULT_METHODS = "kd,dkd,dist,mlkd,tekap(kd),tekap(dkd)"
TARGETS = {"dist": 1.05, "dkd": 1.05, "tekap(kd)": 1.05, "mlkd": 2.2}  # max step time / kd's (issue 4)
_SPEC = re.compile(r"([A-Za-z_][\w-]*)(?:\(([A-Za-z_][\w-]*)\))?")


def method_spec(text: str) -> tuple[str, dict]:
    """``"tekap(dkd)"`` -> ``("tekap(dkd)", {"name": "tekap", "inner": {"name": "dkd"}})``."""
    m = _SPEC.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a method spec (e.g. kd, dkd, tekap(kd))")
    outer, inner = m.groups()
    for name in (outer, inner):
        if name is not None and name not in METHODS:
            raise argparse.ArgumentTypeError(f"unknown method {name!r}; registered: {', '.join(METHODS.names())}")
    if inner is None:
        return outer, {"name": outer}
    return f"{outer}({inner})", {"name": outer, "inner": {"name": inner}}


def make_trainer(label: str, method: dict, args: argparse.Namespace, run_dir: str, tag: str) -> Trainer:
    raw = {
        "model": {"student": args.student, "teachers": [{"name": args.teacher}]},
        "data": {
            "name": "synthetic",
            "num_classes": 100,
            "image_size": 32,
            "channels": 3,
            "train_size": args.batch_size,  # one step per epoch: the trainer times every step
            "test_size": args.batch_size,
            "batch_size": args.batch_size,
            "drop_last": True,
        },
        "method": method,
        "train": {
            "epochs": args.warmup + args.steps,
            "device": "cpu",
            "threads": args.threads,
            "seed": 0,
            "run_dir": run_dir,
            "name": re.sub(r"\W+", "_", label) + tag,
            "eval_every": 10**6,
            "checkpoint_every": 10**6,
        },
        "log": {"progress": "off"},
    }
    return Trainer(build_config(raw), force=True)


def step_times(trainer: Trainer, warmup: int) -> list[float]:
    """Seconds per step of each timed (post-warm-up) step of a finished one-step-per-epoch run."""
    batch = trainer.cfg.data.batch_size
    return [batch / h["images_per_s"] for h in trainer.history[warmup:]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated specs (default {DEFAULT_METHODS})")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per method, interleaved across methods")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    try:
        specs = dict(method_spec(s) for s in args.methods.split(",") if s.strip())
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    if "kd" not in specs:
        specs = {"kd": {"name": "kd"}, **specs}  # the reference of every ratio
    logging.basicConfig(level=logging.ERROR)  # silence the "teacher is randomly initialised" warning per run

    times: dict[str, list[float]] = {label: [] for label in specs}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label, method in specs.items():
                trainer = make_trainer(label, method, args, tmp, f"_r{r}")
                trainer.fit()
                times[label] += step_times(trainer, args.warmup)

    kd_median = statistics.median(times["kd"])
    rows = []
    for label, method in specs.items():
        med = statistics.median(times[label])
        row = {
            "method": label,
            "config": method,
            "median_step_s": med,
            "min_step_s": min(times[label]),
            "timed_steps": len(times[label]),
            "ratio_to_kd": med / kd_median,
        }
        if label in TARGETS:
            row["target_ratio"] = TARGETS[label]
            row["within_target"] = med / kd_median <= TARGETS[label]
        rows.append(row)
    result = {
        "student": args.student,
        "teacher": args.teacher,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps_per_run": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
