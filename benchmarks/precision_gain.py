"""The gain of bf16 + channels_last over fp32 for a KD training step on CPU (issue 21: "bf16 + channels_last stays
the documented fast path; measure its gain at batch 64 and 256 and say where it vanishes").

Teacher resnet32x4 -> student resnet8x4, ``kd``, synthetic CIFAR-shaped data (3x32x32, 100 classes). A step is the
trainer's own: teacher forward (``Trainer.teacher_outputs``), student forward and loss (``Trainer.step_call``),
backward and SGD step (``Trainer._backward_step``), on one fixed batch already on the device; the variants are two
trainers of one process, built from the same config but ``train.precision=bf16`` and ``train.channels_last=true``
for the second (:func:`kdlab.bench.bench_config`).

Cells ``BATCH:PxT``: batch size ``BATCH`` per process, ``P`` processes side by side, each with ``T`` threads (``1x2``:
one process on the machine's two cores; ``2x1``: two processes, one core each; ``2x2``: two processes of two threads
each, oversubscribed). The default cells (batch 64 in the three layouts, batch 256 in one process of two threads)
fit in about five minutes on a quiet two-core CPU without native bf16, where a bf16 step is several times an fp32
one; more cells (``256:2x1``, ...) take proportionally longer. Every
process alternates the variants in phases of ``--steps`` steps (fp32 then bf16 + channels_last, the order reversed
every round so a drift of the load affects both alike) and all processes of a layout start each phase together
(a barrier), so side-by-side processes run the same variant at the same time, as two real runs would. Reported per
layout and batch size: the median step time of each variant (median over every timed step of every process), the
gain ``fp32 step / bf16 + channels_last step`` (> 1: bf16 + channels_last is faster) and the machine's throughput
(images/s summed over the processes).

Usage: ``python benchmarks/precision_gain.py [--cells 64:1x2,64:2x1,64:2x2,256:1x2] [--rounds 1] [--steps 1]
[--json FILE] [--md FILE]``; prints the markdown report. The results in ``benchmarks/results/precision_gain.json``
and ``.md`` come from ``--json benchmarks/results/precision_gain.json --md benchmarks/results/precision_gain.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = {"fp32": {}, "bf16+channels_last": {"precision": "bf16", "channels_last": True}}


def _cpu_flags() -> dict:
    """Whether the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), from /proc/cpuinfo where it exists."""
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu_model": model,
        "avx2": "avx2" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def _worker(rank: int, batch_size: int, threads: int, rounds: int, steps: int, barrier, queue) -> None:
    """One process of a layout: two trainers (fp32, bf16 + channels_last), phases of ``steps`` timed steps each."""
    logging.basicConfig(level=logging.ERROR)  # the "teacher is randomly initialised" warning, once per trainer
    import torch

    from kdlab.bench import bench_config
    from kdlab.train.trainer import Trainer

    torch.set_num_threads(threads)
    torch.manual_seed(rank)
    steppers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, train in VARIANTS.items():
            cfg = bench_config(
                {"name": "kd"},
                batch_size=batch_size,
                steps=1,
                epochs=1,
                threads=threads,
                train=train,
                run_dir=tmp,
                name=name.replace("+", "_"),
            )
            trainer = Trainer(cfg, force=True)
            batch = trainer.precision.prepare_batch(next(trainer.run.data.train_batches(0)))

            def step(trainer=trainer, batch=batch) -> None:
                teachers = trainer.teacher_outputs(batch)
                out = trainer.step_call(batch, teachers, trainer.start)
                trainer.optimizer.zero_grad(set_to_none=True)
                trainer._backward_step(out.total)

            steppers[name] = step
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for name in names:  # warm-up: one untimed step of each variant, side by side
            barrier.wait()
            steppers[name]()
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                barrier.wait()
                for _ in range(steps):
                    t0 = time.perf_counter()
                    steppers[name]()
                    times[name].append(time.perf_counter() - t0)
        barrier.wait()
    queue.put({"rank": rank, "threads_seen": torch.get_num_threads(), "step_s": times})


def run_layout(processes: int, threads: int, batch_size: int, rounds: int, steps: int) -> dict:
    """Time both variants in ``processes`` spawned processes of ``threads`` threads each; see the module doc."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(r, batch_size, threads, rounds, steps, barrier, queue))
        for r in range(processes)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a benchmark process exited with {p.exitcode}")
    row: dict = {"layout": f"{processes}x{threads}", "processes": processes, "threads": threads}
    row["batch_size"] = batch_size
    for name in VARIANTS:
        all_steps = [t for res in results for t in res["step_s"][name]]
        med = statistics.median(all_steps)
        row[name] = {
            "step_s": med,
            "step_s_per_process": [
                statistics.median(res["step_s"][name]) for res in sorted(results, key=lambda x: x["rank"])
            ],
            "images_per_s_machine": processes * batch_size / med,
        }
    row["gain"] = row["fp32"]["step_s"] / row["bf16+channels_last"]["step_s"]
    row["gain_per_process"] = [
        f / b for f, b in zip(row["fp32"]["step_s_per_process"], row["bf16+channels_last"]["step_s_per_process"])
    ]
    row["wall_s"] = time.perf_counter() - t0
    return row


def markdown(result: dict) -> str:
    """A short markdown report of :func:`main`'s result."""
    cpu = result["cpu"]
    native = cpu["avx512_bf16"] or cpu["amx_bf16"]
    lines = [
        "# bf16 + channels_last vs fp32: KD step, resnet32x4 -> resnet8x4 (CPU)",
        "",
        f"Generated by `{result['command']}` ({result['wall_s']:.0f} s; torch {result['torch']}; "
        f"{cpu['cpu_model']}, {result['cpu_count']} cores, native bf16 "
        f"{'yes' if native else 'no (AVX2 only: no AVX512-BF16, no AMX)'}; load average at start "
        f"{result['load_average_start'][0]:.1f}, at end {result['load_average_end'][0]:.1f}).",
        "",
        "Gain = fp32 step time / bf16 + channels_last step time (> 1: bf16 + channels_last is faster). Layout PxT: "
        "P processes side by side, T threads each; images/s is the machine's (all processes).",
        "",
        *(
            [f"Partial: the cells {', '.join(result['cells_pending'])} did not run (stopped before them).", ""]
            if result.get("cells_pending")
            else []
        ),
        "| batch | layout | fp32 step (s) | bf16+cl step (s) | gain | fp32 images/s | bf16+cl images/s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        f, b = row["fp32"], row["bf16+channels_last"]
        lines.append(
            f"| {row['batch_size']} | {row['layout']} | {f['step_s']:.3f} | {b['step_s']:.3f} | {row['gain']:.2f} "
            f"| {f['images_per_s_machine']:.1f} | {b['images_per_s_machine']:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


DEFAULT_CELLS = "64:1x2,64:2x1,64:2x2,256:1x2"


def parse_cells(text: str) -> list[tuple[int, int, int]]:
    """``"64:1x2,256:1x2"`` -> ``[(batch, processes, threads), ...]``; a malformed cell is a ValueError."""
    cells = []
    for cell in text.split(","):
        try:
            batch, layout = cell.split(":")
            procs, threads = layout.split("x")
            parsed = (int(batch), int(procs), int(threads))
        except ValueError:
            raise ValueError(f"--cells: {cell!r} is not BATCH:PxT (e.g. 64:2x1)") from None
        if min(parsed) < 1:
            raise ValueError(f"--cells: {cell!r} needs positive numbers")
        cells.append(parsed)
    return cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default=DEFAULT_CELLS, help="BATCH:PxT, comma-separated (P processes of T threads)")
    p.add_argument("--rounds", type=int, default=1, help="timed phases of each variant per process")
    p.add_argument("--steps", type=int, default=1, help="timed steps per phase")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--md", help="write the markdown report here")
    args = p.parse_args()
    try:
        cells = parse_cells(args.cells)
    except ValueError as e:
        p.error(str(e))  # exit status 2
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be >= 1")
    import torch

    command = f"python benchmarks/precision_gain.py --cells {args.cells} --rounds {args.rounds} --steps {args.steps}"
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict] = []

    def write(done: bool) -> str:
        """The report so far: written after every cell, so a long run on a loaded machine leaves its finished cells
        (``cells_pending`` lists the rest)."""
        result = {
            "benchmark": "bf16 + channels_last vs fp32, KD step",
            "command": command,
            "teacher": "resnet32x4",
            "student": "resnet8x4",
            "method": "kd",
            "rounds": args.rounds,
            "steps_per_phase": args.steps,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "cpu": _cpu_flags(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_start": list(load0),
            "load_average_end": list(os.getloadavg()),
            "wall_s": time.perf_counter() - t0,
            "complete": done,
            "cells_pending": [f"{bs}:{pr}x{th}" for bs, pr, th in cells[len(rows) :]],
            "rows": rows,
        }
        text = markdown(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        if args.md:
            Path(args.md).write_text(text)
        return text

    for bs, procs, threads in cells:
        rows.append(run_layout(procs, threads, bs, args.rounds, args.steps))
        r = rows[-1]
        logging.getLogger("kdlab").warning("batch %d layout %s: gain %.2f", bs, r["layout"], r["gain"])
        write(len(rows) == len(cells))
    print(write(True))


if __name__ == "__main__":
    main()
