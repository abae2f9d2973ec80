"""Training speed of the RetinaNet-R50 student with DIST on this CPU: images/s and the teacher's share of a step.

One training step of the COCO DIST recipe (``configs/coco/dist/retinanet_x101__retinanet_r50.yaml``: RetinaNet on a
ResNeXt-101 32x8d FPN teacher, RetinaNet-R50-FPN student, DIST on the per-anchor sigmoid scores, SGD) at a reduced image
size, on random images with random boxes (no data loading), timed in its two parts:

- ``teacher``: the frozen teacher's forward in eval mode under ``torch.inference_mode()``, asked for its ``cls`` tap
  (``--method dist_mimic`` also for its FPN levels); its post-processing (NMS) runs too, as in training;
- ``student``: the student's training forward (its detection losses and the taps the method reads), the method's loss
  (the detection losses as ``ce`` + DIST; its own time is reported as ``method_loss_s``), backward, SGD step.

A step is ``teacher + student``; images/s is ``batch / step``; the teacher's share is ``teacher / step``. The parts
alternate step by step, so load from other processes falls on both alike; the median over steps is reported (the
first step is a warm-up and is dropped). Peak memory is the process's peak resident set (``ru_maxrss``); the machine's
load average at the end is recorded, since other processes share the cores.

Usage: ``python benchmarks/detection_speed.py [--size 320 --batch 2 --steps 3 --threads 1 --method dist
--out benchmarks/results/detection_speed.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
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

K = 80


def _batch(g: torch.Generator, batch: int, size: int, boxes: int = 4) -> Batch:
    """Random normalised images ``[B, 3, size, size]`` with ``boxes`` random boxes each (labels in ``0..K-1``)."""
    xy = torch.rand(batch, boxes, 2, generator=g) * size * 0.7
    wh = 16 + torch.rand(batch, boxes, 2, generator=g) * size * 0.3
    x = {
        "images": torch.randn(batch, 3, size, size, generator=g),
        "image_sizes": torch.full((batch, 2), size, dtype=torch.int64),
        "original_sizes": torch.full((batch, 2), size, dtype=torch.int64),
        "boxes": torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=-1),
        "labels": torch.randint(0, K, (batch, boxes), generator=g),
    }
    return Batch(x=x, y=torch.zeros(batch, boxes, 7), index=torch.arange(batch))


def _method(name: str, student, teacher, probe: Batch):
    """The method of the recipe, built on the two models' taps and shapes (from one forward at the probe size)."""
    dist = dict(name="dist", ce_weight=1.0, dist_weight=1.0, beta=1.0, gamma=1.0, tau=1.0)
    if name == "dist":
        cfg = METHODS.get("dist").Config(**{k: v for k, v in dist.items() if k != "name"})
    else:
        terms = [
            METHODS.get("dist").Config(**{k: v for k, v in dist.items() if k != "name"}),
            METHODS.get("mimic").Config(),
        ]
        cfg = METHODS.get("sum").Config(terms=terms)
    shapes = []
    for model in (student, teacher):
        names = [t.name for t in model.tap_info()]
        with torch.no_grad():
            logits, taps = model.forward_taps(probe.x, [n for n in names if n != "anchors"])
        shape = {n: tuple(v.shape[1:]) for n, v in taps.items() if not n.startswith("loss.")}
        shape["logits"] = tuple(logits.shape[1:])
        shapes.append(({t.name: t for t in model.tap_info()}, shape))
    ctx = BuildContext(
        K,
        student_taps=shapes[0][0],
        teacher_taps=[shapes[1][0]],
        student_shapes=shapes[0][1],
        teacher_shapes=[shapes[1][1]],
    )
    ctx.teacher_models = [teacher]  # the frozen teachers (two-stage pairs call their RoI head)
    return build_method(cfg, ctx)


def run(
    size: int,
    batch: int,
    steps: int,
    threads: int,
    method_name: str = "dist",
    seed: int = 0,
    teacher_name: str = "retinanet_x101",
    student_name: str = "retinanet_r50",
) -> dict:
    """Time ``steps`` (+1 warm-up) KD steps, teacher and student parts alternating step by step (``teacher_name`` /
    ``student_name``: registered RetinaNet models; the tiny ones for a quick check)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    teacher = create(teacher_name, num_classes=K).eval()
    student = create(student_name, num_classes=K)
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    student.eval()
    method = _method(method_name, student, teacher, _batch(g, batch, size))
    student.train()
    needs = method.needs()
    params = [p for p in (*student.parameters(), *method.adapters.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    t_times, s_times, l_times = [], [], []
    for _ in range(steps + 1):
        b = _batch(g, batch, size)
        start = time.perf_counter()
        with torch.inference_mode():
            t_logits, t_taps = teacher.forward_taps(b.x, sorted(needs.teacher_taps), logits=needs.teacher_logits)
        t_out = Outputs(t_logits.clone(), {k: v.clone() for k, v in t_taps.items()})
        mid = time.perf_counter()
        s_logits, s_taps = student.forward_taps(b.x, sorted(needs.student_taps))
        io = StepIO({"x": Outputs(s_logits, s_taps)}, ({"x": t_out},), b)
        loss_start = time.perf_counter()
        loss = method.loss(io).total
        l_times.append(time.perf_counter() - loss_start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        end = time.perf_counter()
        t_times.append(mid - start)
        s_times.append(end - mid)
    t_med, s_med = statistics.median(t_times[1:]), statistics.median(s_times[1:])
    step = t_med + s_med
    return {
        "method": method_name,
        "teacher": teacher_name,
        "student": student_name,
        "image_size": size,
        "batch": batch,
        "steps_timed": steps,
        "threads": threads,
        "teacher_s": round(t_med, 4),
        "student_s": round(s_med, 4),
        "step_s": round(step, 4),
        "images_per_s": round(batch / step, 3),
        "teacher_share": round(t_med / step, 3),
        "method_loss_s": round(statistics.median(l_times[1:]), 4),
        "teacher_steps_s": [round(t, 4) for t in t_times],
        "student_steps_s": [round(t, 4) for t in s_times],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],  # other processes on the machine
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="square image side (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", choices=["dist", "dist_mimic"], default="dist")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.size % 32:
        parser.error(f"--size must be a multiple of 32 (the detection loader pads to one), got {args.size}")
    result = run(args.size, args.batch, args.steps, args.threads, args.method)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
