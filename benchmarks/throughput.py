"""Training throughput and loop efficiency of the real trainer (issue: core runtime, performance).

On synthetic CIFAR-shaped data (3x32x32, 100 classes), for ``ce`` on the student and ``kd`` from the teacher:

- images/s of the real trainer (``Trainer.fit``; step time includes producing the batch: gather, crop, flip,
  normalise), measured on the epochs after the first (warm-up);
- loop efficiency = (teacher forward + student forward/backward/optimiser step, each timed alone on one fixed
  batch) / (time per step inside the trainer). 1.0 means the loop adds nothing around the model work.

Both sides are medians over many steps (the trainer's per-step times of every warm epoch; repeated calls of each
component alone), which other load on the machine affects alike. The measurement is :func:`kdlab.bench.measure`
(``kdlab bench`` runs the same for more speed settings); ``--precision``/``--channels-last`` select them here.

Usage: ``python benchmarks/throughput.py [--student resnet8x4 --teacher resnet32x4 --batch-size 64]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile

import torch

from kdlab.allocator import allocator_name
from kdlab.bench import bench_config, measure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=6, help="the first is warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # silence the "teacher is randomly initialised" warning
    train = {"precision": args.precision, "channels_last": args.channels_last}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("ce", "kd"):
            cfg = bench_config(
                {"name": method},
                teacher=args.teacher,
                student=args.student,
                batch_size=args.batch_size,
                steps=args.steps,
                epochs=args.epochs,
                threads=args.threads,
                train=train,
                run_dir=tmp,
                name=method,
            )
            result = measure(cfg, args.repeats)
            rows.append({"method": method, **{k: v for k, v in result.items() if k != "speed"}})
    print(
        json.dumps(
            {
                "student": args.student,
                "teacher": args.teacher,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "allocator": allocator_name(),
                "torch": torch.__version__,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
