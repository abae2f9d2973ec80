"""Step time of ``tgeo_kd`` relative to ``kd`` with the outer (hypergradient) step every step and every 10 steps
(issue 21; targets: at most 2.0x ``kd`` every step, at most 1.2x with k = 10; issue 7 had 2.5x and 1.3x).

Teacher resnet32x4 -> student resnet8x4 (random weights: the weights do not change the cost), synthetic CIFAR-shaped
data (3x32x32, 100 classes), batch 64, on CPU, through the real trainer. Every variant trains on the same split
(``data.val_fraction=0.1``, 10 full batches per epoch, so the held-out split exists for all and each 10-step epoch of
``meta_every: 10`` holds exactly one outer step). The step time of an epoch is its mean (``batch / images_per_s``:
batch, teacher forward, loss, backward, optimiser step and the aux objective, no evaluation); the first ``--warmup``
epochs of a run are dropped; runs are interleaved over the variants ``--rounds`` times, and the reported step time is
the median over all kept epochs (the CPU is shared, so medians of interleaved runs).

Usage: ``python benchmarks/tgeo_kd.py [--rounds 3] [--epochs 2] [--threads 2] [--out FILE]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time

from kdlab.bench import _context, bench_config

VARIANTS = {
    "kd": ({"name": "kd"}, None),
    "tgeo_kd(k=1)": ({"name": "tgeo_kd", "meta_every": 1}, 2.0),
    "tgeo_kd(k=10)": ({"name": "tgeo_kd", "meta_every": 10}, 1.2),
}
STEPS_PER_EPOCH = 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs at the start of each run")
    p.add_argument("--epochs", type=int, default=2, help=f"timed epochs ({STEPS_PER_EPOCH} steps each) per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per variant, interleaved across variants")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # silence the "teacher is randomly initialised" warning per run
    from kdlab.train.trainer import Trainer

    bs = args.batch_size
    times: dict[str, list[float]] = {label: [] for label in VARIANTS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label, (method, _) in VARIANTS.items():
                cfg = bench_config(
                    method,
                    teacher=args.teacher,
                    student=args.student,
                    batch_size=bs,
                    epochs=args.warmup + args.epochs,
                    threads=args.threads,
                    run_dir=tmp,
                    name=f"{label.replace('(', '_').replace(')', '').replace('=', '')}_r{r}",
                )
                # 10 full batches after the held-out split (stratified, at least one sample per class, so 100
                # samples here): the same training split for every variant
                cfg.data.val_fraction = 0.1
                cfg.data.train_size = STEPS_PER_EPOCH * bs + 100
                trainer = Trainer(cfg, force=True)
                assert trainer.steps_per_epoch == STEPS_PER_EPOCH, trainer.steps_per_epoch
                trainer.fit()
                times[label] += [bs / h["images_per_s"] for h in trainer.history[args.warmup :]]
    kd = statistics.median(times["kd"])
    rows = []
    for label, (method, target) in VARIANTS.items():
        med = statistics.median(times[label])
        row = {
            "variant": label,
            "method": method,
            "median_step_s": med,
            "epoch_mean_step_s": times[label],
            "ratio_to_kd": med / kd,
        }
        if target is not None:
            row["target_ratio"] = target
            row["within_target"] = med / kd <= target
        rows.append(row)
    result = {
        "benchmark": "tgeo_kd step time relative to kd",
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": bs,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "warmup_epochs": args.warmup,
        "timed_epochs_per_run": args.epochs,
        "rounds": args.rounds,
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
