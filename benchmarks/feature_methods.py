"""Step time of each feature method relative to ``kd`` (issue 5, "Recipes, tests, performance").

Teacher resnet32x4 -> student resnet8x4 (random weights: the weights do not change the cost), batch 64, CPU,
synthetic CIFAR-shaped data of ``--train-size`` images (50,000 by default, so that CRD's memory bank and its 16,384
negatives per sample have their real size). Every step is timed from the start of one training step to the start
of the next (batch production, teacher forward, loss, backward, optimiser step, aux objectives such as CRD's memory
update); the first ``--warmup`` steps of each run are dropped. Methods run interleaved over ``--rounds`` so that a
change of machine load affects all of them alike; the reported time is the median over all timed steps.

AB and FSP are timed in their initialisation stage (their main stage is CE alone), FT in its main stage. The
random teacher's BN running statistics are first set from a few training batches (with BN at its initial
statistics a random resnet32x4's maps grow with depth until FSP's Gram matrices overflow); the learning rate is 0.001
and CC's weight 1e-6 (its loss is unnormalised and diverges against random teachers). None of this changes the cost.

Usage: ``python benchmarks/feature_methods.py [--methods kd,crd,...] [--rounds 2] [--steps 12]``; prints JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time

import torch

from kdlab.config import build_config
from kdlab.train.trainer import Trainer

TEKAP_F = {
    "name": "tekap",
    "inner": {"name": "crd"},
    "perturb": "features",
    "feature_taps": ["pool"],
    "num_views": 1,
    "noise_weight": 0.1,
    "noise_std": 0.1,
    "view_weight": 1.0,
}
METHODS = {
    "kd": {"name": "kd"},
    "fitnet": {"name": "fitnet"},
    "at": {"name": "at"},
    "nst": {"name": "nst"},
    "sp": {"name": "sp"},
    "cc": {"name": "cc", "cc_weight": 1e-6},  # random teachers make the unnormalised CC loss diverge
    "vid": {"name": "vid"},
    "rkd": {"name": "rkd"},
    "pkt": {"name": "pkt"},
    "ab(init)": {"name": "ab", "init_epochs": 1},
    "ft": {"name": "ft", "init_epochs": 0},
    "fsp(init)": {"name": "fsp", "init_epochs": 1},
    "kdsvd": {"name": "kdsvd"},
    "ofd": {"name": "ofd"},
    "review_kd": {"name": "review_kd"},
    "crd": {"name": "crd"},
    "srrl": {"name": "srrl"},
    "tekap(crd)": TEKAP_F,
}
# Targets of the issue: CRD at most 1.3x kd, every other method at most 1.25x except ReviewKD (reported only).
TARGETS = {"crd": 1.3, "tekap(crd)": 1.3}
DEFAULT_TARGET = 1.25
UNTARGETED = {"kd", "review_kd"}


def config(label: str, args: argparse.Namespace, run_dir: str, tag: str):
    raw = {
        "model": {"student": args.student, "teachers": [{"name": args.teacher}]},
        "data": {
            "name": "synthetic",
            "num_classes": 100,
            "image_size": 32,
            "channels": 3,
            "train_size": args.train_size,
            "test_size": args.batch_size,
            "batch_size": args.batch_size,
            "drop_last": True,
        },
        "method": METHODS[label],
        "optim": {"lr": 0.001},
        "train": {
            "epochs": 1,
            "max_steps": args.warmup + args.steps + 1,  # the last step only closes the previous interval
            "device": "cpu",
            "threads": args.threads,
            "seed": 0,
            "run_dir": run_dir,
            "name": f"{label}{tag}".replace("(", "_").replace(")", ""),
            "eval_every": 10**6,
            "checkpoint_every": 10**6,
        },
        "log": {"progress": "off"},
    }
    return build_config(raw)


@torch.no_grad()
def calibrate_teachers(trainer: Trainer, batches: int = 4) -> None:
    """Set every (random) teacher's BN running statistics to the average over a few training batches."""
    for teacher in trainer.run.teachers:
        norms = [m for m in teacher.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        teacher.model.train()
        for _, batch in zip(range(batches), trainer.run.data.train_batches(0)):
            teacher.model(batch.x)
        teacher.model.eval()


def step_times(trainer: Trainer, warmup: int) -> list[float]:
    """Seconds between the starts of consecutive training steps of one run, after ``warmup`` steps."""
    stamps: list[float] = []
    forward = trainer.step_module.forward

    def timed(*a, **k):
        stamps.append(time.perf_counter())
        return forward(*a, **k)

    trainer.step_module.forward = timed
    calibrate_teachers(trainer)
    trainer.fit()
    return [b - a for a, b in itertools.pairwise(stamps)][warmup:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated labels of METHODS")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    labels = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in labels if m not in METHODS]
    if unknown:
        p.error(f"unknown method label(s) {unknown}; choose from {', '.join(METHODS)}")
    if "kd" not in labels:
        labels.insert(0, "kd")
    logging.disable(logging.WARNING)
    times: dict[str, list[float]] = {m: [] for m in labels}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label in labels:
                times[label] += step_times(Trainer(config(label, args, tmp, f"_{r}"), force=True), args.warmup)
    kd = statistics.median(times["kd"])
    out = {}
    for label, ts in times.items():
        median = statistics.median(ts)
        target = None if label in UNTARGETED else TARGETS.get(label, DEFAULT_TARGET)
        out[label] = {
            "median_step_s": round(median, 4),
            "ratio_to_kd": round(median / kd, 3),
            "target": target,
            "met": None if target is None else median / kd <= target,
            "steps_timed": len(ts),
        }
    print(json.dumps({"setup": vars(args), "methods": out}, indent=1))


if __name__ == "__main__":
    main()
