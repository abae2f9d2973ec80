"""Training speed of the segmentation student with DIST on this CPU: pixels/s, the teacher's share, peak memory.

One training step of the Cityscapes DIST recipe (``configs/cityscapes/dist/deeplabv3_r101__deeplabv3_r18.yaml``:
DeepLabV3-ResNet101 teacher, DeepLabV3-ResNet18 student, dense DIST with the auxiliary heads at 0.4, SGD) at a reduced
crop, timed in its two parts on random inputs (no data loading):

- ``teacher``: the frozen teacher's forward (logits and ``aux`` tap) under ``torch.inference_mode()``;
- ``student``: the student's forward, the method's loss (CE + DIST, main and auxiliary heads), backward, SGD step.

A step is ``teacher + student``; pixels/s is ``batch * height * width / step``; the teacher's share is
``teacher / step``. The parts alternate step by step, so load from other processes falls on both alike; the median
over steps is reported (the first step is a warm-up and is dropped). Peak memory is the process's peak resident set
(``ru_maxrss``; on CPU there is no allocator counter), weights of every model copy included.

``--variants`` times the same steps in several forms, alternating step by step: ``fp32``; ``bf16`` (both forwards
under CPU autocast to bfloat16, the losses in fp32: ``train.precision=bf16``); ``channels_last`` (models and inputs
in the channels-last memory format: ``train.channels_last=true``). ``speedup_vs_fp32`` is the ratio of step times.

Usage: ``python benchmarks/segmentation_speed.py [--crop 128 256 --batch 2 --steps 5 --threads 1
--variants fp32 bf16 channels_last --out benchmarks/results/segmentation_speed.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from kdlab.methods import METHODS, build_method
from kdlab.methods.base import BuildContext
from kdlab.models import create
from kdlab.types import Batch, Outputs, StepIO

VARIANTS = ("fp32", "bf16", "channels_last")


def _context(variant: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext()


def run(crop: tuple[int, int], batch: int, steps: int, threads: int, variants=("fp32",), seed: int = 0) -> dict:
    """Time ``steps`` (+1 warm-up) DIST steps per variant, the variants alternating step by step."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    k = 19
    base_teacher = create("deeplabv3_r101", num_classes=k).eval()
    base_student = create("deeplabv3_r18", num_classes=k).train()
    cfg = METHODS.get("dist").Config(ce_weight=1.0, dist_weight=1.0, tau=1.0, aux_weight=0.4)
    method = build_method(cfg, BuildContext(k))
    parts = {}
    for v in variants:
        fmt = torch.channels_last if v == "channels_last" else torch.contiguous_format
        teacher = copy.deepcopy(base_teacher).to(memory_format=fmt)
        student = copy.deepcopy(base_student).to(memory_format=fmt)
        opt = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
        parts[v] = (teacher, student, opt, fmt)
    h, w = crop
    g = torch.Generator().manual_seed(seed)
    times = {v: ([], []) for v in variants}
    for _ in range(steps + 1):
        x = torch.randn(batch, 3, h, w, generator=g)
        y = torch.randint(0, k, (batch, h, w), generator=g)
        y[:, : h // 8] = 255
        for v in variants:
            teacher, student, opt, fmt = parts[v]
            xv = x.contiguous(memory_format=fmt)
            start = time.perf_counter()
            with torch.inference_mode(), _context(v):
                t_logits, t_taps = teacher.forward_taps(xv, ["aux"])
            t_out = Outputs(t_logits.float().clone(), {"aux": t_taps["aux"].float().clone()})
            mid = time.perf_counter()
            with _context(v):
                s_logits, s_taps = student.forward_taps(xv, ["aux"])
            s_out = Outputs(s_logits.float(), {"aux": s_taps["aux"].float()})  # losses in fp32
            io = StepIO({"x": s_out}, ({"x": t_out},), Batch(x=xv, y=y, index=torch.arange(batch)))
            loss = method.loss(io).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            end = time.perf_counter()
            times[v][0].append(mid - start)
            times[v][1].append(end - mid)
    out = {"crop": [h, w], "batch": batch, "steps_timed": steps, "threads": threads, "variants": {}}
    for v, (t_times, s_times) in times.items():
        t_med, s_med = statistics.median(t_times[1:]), statistics.median(s_times[1:])
        step = t_med + s_med
        out["variants"][v] = {
            "teacher_s": round(t_med, 4),
            "student_s": round(s_med, 4),
            "step_s": round(step, 4),
            "pixels_per_s": round(batch * h * w / step, 1),
            "teacher_share": round(t_med / step, 3),
            "teacher_steps_s": [round(t, 4) for t in t_times],
            "student_steps_s": [round(t, 4) for t in s_times],
        }
    if "fp32" in times:
        ref = out["variants"]["fp32"]["step_s"]
        for v in variants:
            out["variants"][v]["speedup_vs_fp32"] = round(ref / out["variants"][v]["step_s"], 3)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["fp32"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(tuple(args.crop), args.batch, args.steps, args.threads, tuple(args.variants))
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
