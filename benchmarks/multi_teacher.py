"""Cost of several teachers (issue 8): step time with 1, 2 and 3 teachers relative to single-teacher ``kd``, and an
*estimate* of the training time of TAKD's chain (and of DGKD and CA-MKD with the models they need trained) against
one TeKAP run.

Models: resnet32x4 teachers (1, 2 or 3 copies, random weights: the weights do not change the cost) -> resnet8x4,
synthetic CIFAR-shaped data (3x32x32, 100 classes), batch 64, CPU. Every measurement is a real ``Trainer.fit`` whose
epochs are one step long, so the trainer's per-epoch throughput is the time of single steps (batch production,
teacher forwards, student forward, loss, backward, optimiser step). The first ``--warmup`` steps of a run are
dropped. ``--rounds`` runs every job once per round, interleaved, so a change of machine load hits all jobs alike; a
job's step time is the median over all its timed steps of all rounds. (``ca_mkd``'s feature term starts after its
first epoch, i.e. after the first step here, so the timed steps include it.)

Time estimate (not a measurement of full runs): a method's training cost is
``median step time x steps per epoch (50,000 / 64 -> 782) x 240 epochs`` of every run it needs besides the common
teacher (resnet32x4, trained once for all of them):

- TeKAP: one ``tekap(kd)`` run, resnet32x4 -> resnet8x4;
- TAKD: the chain, ``kd`` resnet32x4 -> wrn_40_2 (the assistant of configs/cifar100/takd/) then wrn_40_2 -> resnet8x4;
- DGKD: the same assistant, then ``dgkd`` from resnet32x4 and wrn_40_2;
- CA-MKD: two more resnet32x4 teachers (``ce``) and ``ca_mkd`` from three.

Usage: ``python benchmarks/multi_teacher.py [--steps 6] [--rounds 3] [--threads 1] [--out FILE]``; prints JSON.
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
from dataclasses import dataclass, field

import torch

from kdlab.config import build_config
from kdlab.train.trainer import Trainer

STEPS_PER_EPOCH = -(-50_000 // 64)  # CIFAR-100 training set, batch 64, last batch kept
EPOCHS = 240
TEACHER, STUDENT, ASSISTANT = "resnet32x4", "resnet8x4", "wrn_40_2"


@dataclass
class Job:
    """One timed configuration: a student, its teachers and a method config."""

    student: str
    teachers: list[str]
    method: dict
    times: list[float] = field(default_factory=list)


def jobs() -> dict[str, Job]:
    """Every timed configuration, by label."""
    out = {"kd@1": Job(STUDENT, [TEACHER], {"name": "kd"})}
    for name in ("mt_kd", "dgkd", "ca_mkd"):
        for m in (1, 2, 3):
            out[f"{name}@{m}"] = Job(STUDENT, [TEACHER] * m, {"name": name})
    out["tekap(kd)@1"] = Job(STUDENT, [TEACHER], {"name": "tekap", "inner": {"name": "kd"}})
    for name in ("mt_kd", "dgkd", "ca_mkd"):
        out[f"tekap({name})@3"] = Job(STUDENT, [TEACHER] * 3, {"name": "tekap", "inner": {"name": name}})
    # the other runs the multi-teacher pipelines need
    out[f"ce:{TEACHER}"] = Job(TEACHER, [], {"name": "ce"})
    out[f"kd:{TEACHER}->{ASSISTANT}"] = Job(ASSISTANT, [TEACHER], {"name": "kd"})
    out[f"kd:{ASSISTANT}->{STUDENT}"] = Job(STUDENT, [ASSISTANT], {"name": "kd"})
    out[f"dgkd:{TEACHER}+{ASSISTANT}->{STUDENT}"] = Job(STUDENT, [TEACHER, ASSISTANT], {"name": "dgkd"})
    return out


def make_trainer(label: str, job: Job, args: argparse.Namespace, run_dir: str, tag: str) -> Trainer:
    """A run of ``warmup + steps`` one-step epochs on synthetic CIFAR-100-shaped data."""
    raw = {
        "model": {"student": job.student, "teachers": [{"name": t} for t in job.teachers]},
        "data": {
            "name": "synthetic",
            "num_classes": 100,
            "image_size": 32,
            "channels": 3,
            "train_size": args.batch_size,
            "test_size": args.batch_size,
            "batch_size": args.batch_size,
            "drop_last": True,
        },
        "method": job.method,
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


def hours(step_s: float) -> float:
    """Estimated hours of a 240-epoch CIFAR-100 run at ``step_s`` seconds per step."""
    return step_s * STEPS_PER_EPOCH * EPOCHS / 3600


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per job, interleaved across jobs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if args.steps < 1 or args.rounds < 1 or args.warmup < 1:
        p.error("--steps, --rounds and --warmup must be >= 1")
    logging.basicConfig(level=logging.ERROR)  # silence the "teacher is randomly initialised" warnings

    todo = jobs()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label, job in todo.items():
                trainer = make_trainer(label, job, args, tmp, f"_r{r}")
                trainer.fit()
                job.times += [args.batch_size / h["images_per_s"] for h in trainer.history[args.warmup :]]
    med = {label: statistics.median(job.times) for label, job in todo.items()}
    kd = med["kd@1"]
    step_rows = [
        {
            "job": label,
            "teachers": len(job.teachers),
            "method": job.method,
            "median_step_s": med[label],
            "timed_steps": len(job.times),
            "ratio_to_kd": med[label] / kd,
        }
        for label, job in todo.items()
        if "@" in label
    ]
    runs = {label: med[label] for label in todo if "@" not in label}
    pipelines = {
        "tekap": ["tekap(kd)@1"],
        "takd": [f"kd:{TEACHER}->{ASSISTANT}", f"kd:{ASSISTANT}->{STUDENT}"],
        "dgkd": [f"kd:{TEACHER}->{ASSISTANT}", f"dgkd:{TEACHER}+{ASSISTANT}->{STUDENT}"],
        "ca_mkd": [f"ce:{TEACHER}", f"ce:{TEACHER}", "ca_mkd@3"],
    }
    tekap_h = hours(med["tekap(kd)@1"])
    estimate = {
        name: {
            "runs": parts,
            "estimated_hours": sum(hours(med[p]) for p in parts),
            "ratio_to_tekap": sum(hours(med[p]) for p in parts) / tekap_h,
        }
        for name, parts in pipelines.items()
    }
    result = {
        "teacher": TEACHER,
        "student": STUDENT,
        "assistant": ASSISTANT,
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
        "step_time": step_rows,
        "other_runs_median_step_s": runs,
        "estimate_note": (
            f"ESTIMATE, not measured end to end: median step time x {STEPS_PER_EPOCH} steps/epoch x {EPOCHS} epochs, "
            "summed over the runs each method needs besides the common resnet32x4 teacher, on this CPU"
        ),
        "estimate": estimate,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
