"""Training throughput and loop efficiency of the real trainer (issue: core runtime, performance).

On synthetic CIFAR-shaped data (3x32x32, 100 classes), for ``ce`` on the student and ``kd`` from the teacher:

- images/s of the real trainer (``Trainer.fit``; step time includes producing the batch: gather, crop, flip,
  normalise), measured on the epochs after the first (warm-up);
- loop efficiency = (teacher forward + student forward/backward/optimiser step, each timed alone on one fixed
  batch) / (time per step inside the trainer). 1.0 means the loop adds nothing around the model work.

Both sides are medians over many steps (the trainer's per-step times of every warm epoch; repeated calls of each
component alone), which other load on the machine affects alike; the fastest component calls are reported too.

Usage: ``python benchmarks/throughput.py [--student resnet8x4 --teacher resnet32x4 --batch-size 64]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time

import torch

from kdlab.config import build_config
from kdlab.train.trainer import Trainer


def make_trainer(method: str, args: argparse.Namespace, run_dir: str) -> Trainer:
    raw = {
        "model": {"student": args.student},
        "data": {
            "name": "synthetic",
            "num_classes": 100,
            "image_size": 32,
            "channels": 3,
            "train_size": args.batch_size * args.steps,
            "test_size": args.batch_size,
            "batch_size": args.batch_size,
            "drop_last": True,
        },
        "method": {"name": method},
        "train": {
            "epochs": args.epochs,
            "device": "cpu",
            "threads": args.threads,
            "run_dir": run_dir,
            "name": method,
            "eval_every": 1000,
            "checkpoint_every": 1000,
        },
        "log": {"progress": "off"},
    }
    if method != "ce":
        raw["model"]["teachers"] = [{"name": args.teacher}]
    return Trainer(build_config(raw), force=True)


def time_alone(trainer: Trainer, repeats: int) -> dict[str, float]:
    """Seconds per call of the teacher forward and of the student step, each alone on one fixed batch."""
    batch = next(trainer.run.data.train_batches(0))
    step, opt = trainer.step_module, trainer.optimizer
    teachers = trainer.teacher_outputs(batch)

    def teacher() -> None:
        trainer.teacher_outputs(batch)

    def student() -> None:
        out = step(batch, teachers, trainer.start)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()

    result = {"teacher_forward_s": 0.0, "teacher_forward_min_s": 0.0}
    for name, fn in (("student_step", student), ("teacher_forward", teacher)):
        if name == "teacher_forward" and not trainer.run.teachers:
            continue
        times = _times(fn, repeats)
        result[f"{name}_s"] = statistics.median(times)
        result[f"{name}_min_s"] = min(times)
    return result


def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=6, help="the first is warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("ce", "kd"):
            trainer = make_trainer(method, args, tmp)
            trainer.fit()
            warm = trainer.history[1:] or trainer.history
            step_s = statistics.median(h["step_time_median_s"] for h in warm)
            alone = time_alone(trainer, args.repeats)
            ideal = alone["student_step_s"] + alone["teacher_forward_s"]
            rows.append(
                {
                    "method": method,
                    "images_per_s": args.batch_size / step_s,
                    "step_s": step_s,
                    **alone,
                    "loop_efficiency": ideal / step_s,
                }
            )
    print(
        json.dumps(
            {
                "student": args.student,
                "teacher": args.teacher,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "torch": torch.__version__,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
