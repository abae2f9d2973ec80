"""One process versus N gloo processes (``torchrun``) on this machine: images/s of the real training loop.

The same ``kdlab train`` run (``kd``, resnet32x4 -> resnet8x4, synthetic CIFAR-shaped data, global batch 64) is
launched twice through the command line:

- one process with ``--threads`` threads (default 2);
- ``torchrun --nproc_per_node=N`` with ``--threads // N`` threads per process (gloo on CPU), each process training
  its shard (64 / N images) of every global batch, gradients all-reduced by DDP;
- one process with ``--threads // N`` threads (the per-process share alone, for reference).

Throughput is the global batch divided by the median step time of the warm epochs (every epoch after the first),
read from rank 0's ``metrics.jsonl``; a step's time includes producing the batch. Both runs use the same allocator
(the CLI preloads tcmalloc when it is available, for every process).

Usage: ``python benchmarks/distributed.py [--nproc 2 --threads 2 --steps 8 --epochs 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from kdlab.bench import bench_config
from kdlab.config import dump_config

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: Path, run_dir: Path, nproc: int, threads: int, name: str) -> dict:
    """Train ``config`` in ``nproc`` processes of ``threads`` threads as ``run_dir/name``; returns the median step
    time of the warm epochs and the allocator, from rank 0's records."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["-m", "kdlab", "train", str(config), f"train.threads={threads}", f"train.name={name}"]
    if nproc > 1:
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
        args = [*launcher, *args]
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    records = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
    warm = records[1:] or records
    summary = json.loads((run_dir / name / "summary.json").read_text())
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "median_step_s": statistics.median(r["step_time_median_s"] for r in warm),
        "allocator": summary.get("speed", {}).get("allocator"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=8, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=4, help="the first is warm-up")
    p.add_argument("--threads", type=int, default=2, help="threads in total (split over the processes)")
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(
            {"name": "kd"},
            teacher=args.teacher,
            student=args.student,
            batch_size=args.batch_size,
            steps=args.steps,
            epochs=args.epochs,
            threads=args.threads,
            run_dir=tmp,
            name="bench",
        )
        config = Path(tmp) / "kd.yaml"
        config.write_text(dump_config(cfg))
        share = max(args.threads // args.nproc, 1)
        for nproc, threads in dict.fromkeys([(1, args.threads), (args.nproc, share), (1, share)]):
            row = run(config, Path(tmp), nproc, threads, f"p{nproc}t{threads}")
            row["global_batch"] = args.batch_size
            row["images_per_s"] = args.batch_size / row["median_step_s"]
            rows.append(row)
    print(f"kd {args.teacher} -> {args.student}, global batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'processes':>9} {'threads/proc':>12} {'step ms':>8} {'img/s':>7}  allocator")
    for r in rows:
        print(
            f"{r['processes']:>9} {r['threads_per_process']:>12} {1000 * r['median_step_s']:>8.1f} "
            f"{r['images_per_s']:>7.1f}  {r['allocator']}"
        )
    ddp = next(r for r in rows if r["processes"] > 1)
    for r in rows:
        if r["processes"] == 1:
            ratio = ddp["images_per_s"] / r["images_per_s"]
            print(f"{ddp['processes']} processes vs 1 process of {r['threads_per_process']} thread(s): {ratio:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
