"""The tabular path's speed (issue 17): Criteo preprocessing rows/s, and training rows/s of the bert4 student with
``kd`` and with ``tgeo_kd`` (and tgeo_kd's step cost / kd's) on Criteo-format field tokens.

1. Preprocessing: a generated Criteo-format ``train.txt`` (:func:`kdlab.data.sources.criteo.write_criteo_format`,
   ``--rows`` lines) through both chunked passes into the memory-mapped cache (:func:`~kdlab.data.sources.criteo.
   preprocess`), timed ``--rounds`` times; rows/s = lines / seconds (median).
2. Training: the ``configs/criteo`` recipes' models (teacher ``--teacher``, default bert12; student ``--student``,
   default bert4; random weights, which do not change the cost) on that cache, batch ``--batch-size``, through the
   real trainer with ``kd`` and ``tgeo_kd`` (outer step every step, on Criteo's validation split), one epoch of
   ``--warmup + --steps`` steps per run, whose median step time is kept (``step_time_median_s``: batch, teacher
   forward, loss, backward, optimiser and the aux objective, no evaluation; the median discounts the warm-up). Runs
   alternate between the two methods ``--rounds`` times (the CPU is shared: medians of interleaved runs); rows/s =
   batch / median step.

Usage: ``python benchmarks/tabular.py [--rows 20000] [--rounds 3] [--steps 12] [--threads 1] [--out FILE]``; prints
JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000, help="lines of the generated Criteo-format file")
    p.add_argument("--teacher", default="bert12")
    p.add_argument("--student", default="bert4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="timed training steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import torch

    from kdlab.config import build_config
    from kdlab.data.sources.criteo import preprocess, write_criteo_format
    from kdlab.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    result: dict = {"rows": args.rows, "threads": args.threads, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = write_criteo_format(root / "train.txt", args.rows, seed=0)
        cfg = build_config({}, ["data.name=criteo", f"data.root={root}", "data.tabular.min_count=10"])
        secs = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            preprocess(src, root / f"cache{r}", cfg.data)
            secs.append(time.perf_counter() - t0)
        result["preprocess_s"] = secs
        result["preprocess_rows_per_s"] = args.rows / statistics.median(secs)

        bs = args.batch_size
        train_rows = (args.warmup + args.steps) * bs
        times: dict[str, list[float]] = {"kd": [], "tgeo_kd": []}
        for r in range(args.rounds):
            for method in times:
                over = [
                    "data.name=criteo",
                    f"data.root={root}",
                    "data.tabular.min_count=10",
                    f"data.tabular.train_limit={train_rows}",
                    f"data.batch_size={bs}",
                    "data.drop_last=true",
                    f"model.student={args.student}",
                    f"model.teachers.0.name={args.teacher}",
                    f"method.name={method}",
                    "train.epochs=1",
                    f"train.threads={args.threads}",
                    "train.device=cpu",
                    f"train.run_dir={root / 'runs'}",
                    f"train.name={method}_{r}",
                    "log.progress=off",
                    "optim.name=adamw",
                    "optim.lr=1e-4",
                    "optim.weight_decay=0.01",
                ]
                if method == "tgeo_kd":
                    over += ["method.inner.name=kd", "method.meta_every=1"]
                trainer = Trainer(build_config({}, over))
                t_run = time.perf_counter()
                trainer.fit()
                total = time.perf_counter() - t_run
                step = trainer.history[-1]["step_time_median_s"]  # median over the epoch's steps (robust to warm-up)
                times[method].append(step)
                result.setdefault("runs", []).append(
                    {"method": method, "round": r, "step_time_median_s": step, "run_s": total}
                )
    med = {m: statistics.median(v) for m, v in times.items()}
    result["step_time_median_s"] = med
    result["train_rows_per_s"] = {m: bs / t for m, t in med.items()}
    result["tgeo_kd_over_kd"] = med["tgeo_kd"] / med["kd"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
