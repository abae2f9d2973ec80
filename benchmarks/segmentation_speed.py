"""Training speed of the segmentation student with DIST on this CPU: pixels/s, the teacher's share, peak memory.

One training step of the Cityscapes DIST recipe (``configs/cityscapes/dist/deeplabv3_r101__deeplabv3_r18.yaml``:
DeepLabV3-ResNet101 teacher, DeepLabV3-ResNet18 student, dense DIST with the auxiliary heads at 0.4, SGD) at a reduced
crop, timed in its two parts on random inputs (no data loading):

- ``teacher``: the frozen teacher's forward (logits and ``aux`` tap) under ``torch.inference_mode()``;
- ``student``: the student's forward, the method's loss (CE + DIST, main and auxiliary heads), backward, SGD step.

A step is ``teacher + student``; pixels/s is ``batch * height * width / step``; the teacher's share is
``teacher / step``. The parts alternate step by step, so load from other processes falls on both alike; the median
over steps is reported (the first step is a warm-up and is dropped). Peak memory is the process's peak resident set
(``ru_maxrss``; on CPU there is no allocator counter), weights of both models included.

Usage: ``python benchmarks/segmentation_speed.py [--crop 128 256 --batch 2 --steps 5 --threads 1
--out benchmarks/results/segmentation_speed.json]``.
"""

from __future__ import annotations

import argparse
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


def run(crop: tuple[int, int], batch: int, steps: int, threads: int, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    k = 19
    teacher = create("deeplabv3_r101", num_classes=k).eval()
    student = create("deeplabv3_r18", num_classes=k).train()
    cfg = METHODS.get("dist").Config(ce_weight=1.0, dist_weight=1.0, tau=1.0, aux_weight=0.4)
    method = build_method(cfg, BuildContext(k))
    opt = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    h, w = crop
    g = torch.Generator().manual_seed(seed)
    t_times, s_times = [], []
    for _ in range(steps + 1):
        x = torch.randn(batch, 3, h, w, generator=g)
        y = torch.randint(0, k, (batch, h, w), generator=g)
        y[:, : h // 8] = 255
        start = time.perf_counter()
        with torch.inference_mode():
            t_logits, t_taps = teacher.forward_taps(x, ["aux"])
        t_out = Outputs(t_logits.clone(), {"aux": t_taps["aux"].clone()})
        mid = time.perf_counter()
        s_logits, s_taps = student.forward_taps(x, ["aux"])
        io = StepIO({"x": Outputs(s_logits, s_taps)}, ({"x": t_out},), Batch(x=x, y=y, index=torch.arange(batch)))
        loss = method.loss(io).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        end = time.perf_counter()
        t_times.append(mid - start)
        s_times.append(end - mid)
    t_med, s_med = statistics.median(t_times[1:]), statistics.median(s_times[1:])
    step = t_med + s_med
    return {
        "crop": [h, w],
        "batch": batch,
        "steps_timed": steps,
        "threads": threads,
        "teacher_s": round(t_med, 4),
        "student_s": round(s_med, 4),
        "step_s": round(step, 4),
        "pixels_per_s": round(batch * h * w / step, 1),
        "teacher_share": round(t_med / step, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "teacher_steps_s": [round(v, 4) for v in t_times],
        "student_steps_s": [round(v, 4) for v in s_times],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(tuple(args.crop), args.batch, args.steps, args.threads)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
