"""Model-zoo throughput: forward and forward+backward images/s per model and precision (issue: model zoo).

For each model (default: resnet8x4, resnet32x4, wrn_40_2, vgg13, shufflenetv2) on a fixed random batch
(default 64 x 3 x 32 x 32, 100 classes), in each mode:

- ``fp32``: float32, contiguous (NCHW) memory format;
- ``fp32_cl``: float32, ``channels_last`` model and input;
- ``bf16_cl``: bfloat16 autocast (``torch.autocast(device_type, torch.bfloat16)``) with ``channels_last``;
- ``bf16``: bfloat16 autocast, contiguous (not run by default; ``--modes fp32 bf16`` to add it).

two timings are taken, each after ``--warmup`` untimed iterations, as the median over ``--iters`` timed ones:

- forward: ``model.eval()`` under ``torch.inference_mode()`` (what evaluation and a frozen teacher cost);
- forward+backward: ``model.train()``, cross-entropy, ``backward()`` and an SGD step (momentum 0.9, weight decay
  5e-4, as in the training recipe), i.e. one training step of a student.

images/s = batch size / median seconds per iteration. The code is device-agnostic (``--device cuda`` works
too; the device is synchronised around each timed iteration).

Usage::

    python benchmarks/zoo.py                       # all five models, all default modes, 2 threads
    python benchmarks/zoo.py --models resnet8x4 --iters 1 --warmup 1   # smoke test
    python benchmarks/zoo.py --json zoo.json --markdown zoo.md

The Markdown table goes to stdout (and to ``--markdown``); the JSON with every timing to ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdlab.models import count_parameters, create, model_names

DEFAULT_MODELS = ("resnet8x4", "resnet32x4", "wrn_40_2", "vgg13", "shufflenetv2")


@dataclass(frozen=True)
class Mode:
    """One precision / memory-format setting."""

    name: str
    label: str
    channels_last: bool
    autocast_dtype: torch.dtype | None


MODES = {
    m.name: m
    for m in (
        Mode("fp32", "fp32", channels_last=False, autocast_dtype=None),
        Mode("fp32_cl", "fp32 + channels_last", channels_last=True, autocast_dtype=None),
        Mode("bf16_cl", "bf16 autocast + channels_last", channels_last=True, autocast_dtype=torch.bfloat16),
        Mode("bf16", "bf16 autocast", channels_last=False, autocast_dtype=torch.bfloat16),
    )
}
DEFAULT_MODES = ("fp32", "fp32_cl", "bf16_cl")


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    backend = getattr(torch, device.type, None)
    sync = getattr(backend, "synchronize", None)
    if device.type != "cpu" and callable(sync):
        sync()


def median_seconds(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Per-iteration wall times (seconds) of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def autocast_context(mode: Mode, device: torch.device) -> contextlib.AbstractContextManager:
    if mode.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=mode.autocast_dtype)


def bench_one(name: str, mode: Mode, args: argparse.Namespace, device: torch.device) -> dict:
    """Forward and forward+backward timings of model ``name`` in ``mode``."""
    torch.manual_seed(0)
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    model = create(name, num_classes=args.num_classes).to(device=device, memory_format=fmt)
    gen = torch.Generator().manual_seed(0)
    size = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.randn(size, generator=gen).to(device=device, memory_format=fmt)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device)
    row: dict = {"model": name, "mode": mode.name, "params": count_parameters(model)}

    model.eval()

    def forward() -> None:
        with torch.inference_mode(), autocast_context(mode, device):
            model(x)

    times = median_seconds(forward, device, args.warmup, args.iters)
    row["forward_s"] = statistics.median(times)
    row["forward_images_per_s"] = args.batch_size / row["forward_s"]
    row["forward_times_s"] = times

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step() -> None:
        with autocast_context(mode, device):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = median_seconds(train_step, device, args.warmup, args.iters)
    row["train_s"] = statistics.median(times)
    row["train_images_per_s"] = args.batch_size / row["train_s"]
    row["train_times_s"] = times
    return row


def markdown_table(rows: list[dict], modes: list[Mode]) -> str:
    """One line per model: forward and forward+backward images/s in each mode."""
    head = ["model", "params"]
    head += [f"fwd {m.label}" for m in modes] + [f"fwd+bwd {m.label}" for m in modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (2 * len(modes))]
    by_key = {(r["model"], r["mode"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    for name in models:
        cells = [name]
        params = next((r["params"] for r in rows if r["model"] == name and "params" in r), None)
        cells.append(f"{params:,}" if params is not None else "-")
        for key in ("forward_images_per_s", "train_images_per_s"):
            for m in modes:
                r = by_key.get((name, m.name), {})
                cells.append(f"{r[key]:,.0f}" if key in r else "error")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(args: argparse.Namespace, device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "warmup": args.warmup,
        "iters": args.iters,
    }
    if device.type == "cpu":
        with contextlib.suppress(Exception):
            env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["mkldnn"] = torch.backends.mkldnn.is_available()
    elif device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registry names (space or comma)")
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=sorted(MODES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations before each timing")
    p.add_argument("--iters", type=int, default=20, help="timed iterations (the median is reported)")
    p.add_argument("--json", metavar="FILE", help="write every timing as JSON ('-' for stdout)")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown table to FILE")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = [m for item in args.models for m in item.split(",") if m]
    modes = [MODES[m] for m in dict.fromkeys(args.modes)]
    unknown = [m for m in models if not m.startswith("timm:") and m not in model_names()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(model_names())}")
    rows = []
    for name in models:
        for mode in modes:
            try:
                row = bench_one(name, mode, args, device)
            except Exception as exc:  # e.g. bf16 unsupported on this device: keep the other results
                row = {"model": name, "mode": mode.name, "error": f"{type(exc).__name__}: {exc}"}
                print(f"{name} {mode.name}: {row['error']}", file=sys.stderr)
            else:
                print(
                    f"{name:>14} {mode.name:>8}: forward {row['forward_images_per_s']:8.0f} img/s,"
                    f" forward+backward {row['train_images_per_s']:8.0f} img/s",
                    file=sys.stderr,
                )
            rows.append(row)

    table = markdown_table(rows, modes)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        text = json.dumps({"environment": environment(args, device), "rows": rows}, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
