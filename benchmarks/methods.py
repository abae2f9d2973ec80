"""Step time of each method relative to ``kd``, through the real trainer (issue 4, "Efficiency"; issue 9).

Teacher resnet32x4 -> student resnet8x4 (random weights: the weights do not change the cost), synthetic
CIFAR-shaped data (3x32x32, 100 classes), batch 64, on CPU. The measurement is :func:`kdlab.bench.run_methods`
(also ``kdlab bench methods``): every run has one-step epochs so the trainer times single steps, each including
producing the batch, the teacher forward, the loss, the backward and the optimiser step; the first ``--warmup`` steps
of a run are dropped; ``--rounds`` interleaves the methods; the step time is the median over all timed steps and
``ratio_to_kd`` its ratio to ``kd``'s. Issue 4 targets: ``dist``, ``dkd`` and ``tekap(kd)`` within 5% of ``kd``;
``mlkd`` within 2.2x.

Usage: ``python benchmarks/methods.py [--methods "kd,dkd,dist,mlkd,tekap(kd),tekap(dkd)"] [--steps 20]``; prints JSON
(``--out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import logging

from kdlab.bench import run_methods
from kdlab.config import ConfigError

DEFAULT_METHODS = "kd,dkd,dist,mlkd,tekap(kd),tekap(dkd)"


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
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # silence the "teacher is randomly initialised" warning per run
    try:
        result = run_methods(
            args.methods,
            teacher=args.teacher,
            student=args.student,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            rounds=args.rounds,
            threads=args.threads,
            train={"precision": args.precision, "channels_last": args.channels_last},
        )
    except ConfigError as err:
        p.error(str(err))
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
