"""A KD step with a big teacher (issue 18, "Big teachers are cheap to use"): ResNet-152 -> ResNet-18.

Three ways to run the same step (teacher forward, student forward/backward, KD + CE loss, SGD step), built from
kdlab's own pieces (:class:`kdlab.train.teacher.FrozenTeacher`, :class:`kdlab.train.precision.Precision`,
:class:`kdlab.train.teacher_cache.TeacherCache`, :func:`kdlab.losses.kd`):

- ``fp32``: the frozen teacher in fp32, contiguous tensors (the default);
- ``bf16+cl``: the teacher under bf16 autocast (``train.teacher_precision=bf16``) with the models and the batch in
  the channels-last memory format (``train.channels_last=true``); the student stays fp32; ``fp32+cl`` and ``bf16``
  (contiguous) separate the two settings' shares;
- ``cache``: the teacher's logits read from the per-sample teacher cache (``train.teacher_cache``, possible only
  without per-step random augmentation: ``data.augment=none``), so no teacher forward at all.

The modes are timed interleaved (fp32, fp32+cl, bf16, bf16+cl, cache, fp32, ...) on the same batches after warm-up
steps, so load from other processes affects them alike; the medians and their ratios to ``fp32`` are reported, with
the teacher forward timed alone as well. ``bf16_teacher_vs_fp32`` compares the bf16 teacher's logits with the fp32
teacher's (max absolute and relative difference, top-1 agreement). Inputs are reduced (default 64 px) so a CPU step
takes seconds, not minutes; the ratios, not the absolute times, are the result. bf16 pays off only on hardware with
native bf16 matrix units (AVX512-BF16/AMX on CPUs, tensor cores on GPUs); the report records what ``torch`` sees
(``cpu_capability``).

Usage: ``python benchmarks/big_teacher.py [--size 64 --batch-size 8 --repeats 5 --threads 1 --out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time

import torch

from kdlab.config import TrainConfig
from kdlab.losses import cross_entropy, kd
from kdlab.models import count_parameters, create
from kdlab.train.precision import Precision, to_float
from kdlab.train.teacher import FrozenTeacher
from kdlab.train.teacher_cache import TeacherCache
from kdlab.types import DEFAULT_VIEW, Batch

MODES = ("fp32", "fp32+cl", "bf16", "bf16+cl", "cache")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _setup(mode: str, teacher_name: str, student_name: str, num_classes: int) -> dict:
    torch.manual_seed(0)
    train_cfg = TrainConfig(
        teacher_precision="bf16" if mode.startswith("bf16") else "fp32", channels_last=mode.endswith("+cl")
    )
    precision = Precision.from_config(train_cfg, torch.device("cpu"))
    teacher_model = precision.prepare_model(create(teacher_name, num_classes=num_classes))
    teacher = FrozenTeacher(teacher_model, teacher_name, MEAN, STD)
    student = precision.prepare_model(create(student_name, num_classes=num_classes))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    return {"precision": precision, "teacher": teacher, "student": student, "optimizer": optimizer}


def _teacher_outputs(parts: dict, batch: Batch) -> tuple:
    with parts["precision"].teacher_autocast():
        out = parts["teacher"].outputs(batch, (DEFAULT_VIEW,), ())
    return (to_float(out),)


def _step(parts: dict, batch: Batch, cache: TeacherCache | None) -> float:
    """One KD step; returns its wall time in seconds."""
    start = time.perf_counter()
    batch = parts["precision"].prepare_batch(batch)
    teachers = cache.outputs(batch, 0, 0) if cache is not None else _teacher_outputs(parts, batch)
    t_logits = teachers[0][DEFAULT_VIEW].logits
    s_logits = parts["student"](batch.x).float()
    loss = cross_entropy(s_logits, batch.y) + kd(s_logits, t_logits, temperature=4.0)
    parts["optimizer"].zero_grad(set_to_none=True)
    loss.backward()
    parts["optimizer"].step()
    return time.perf_counter() - start


def _teacher_only(parts: dict, batch: Batch) -> float:
    start = time.perf_counter()
    _teacher_outputs(parts, parts["precision"].prepare_batch(batch))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="resnet152")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--size", type=int, default=64, help="input height and width (224 is the native size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batches", type=int, default=4, help="distinct batches of the (cached) training set")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per mode")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each mode once per round, interleaved)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the JSON result here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    n = args.batches * args.batch_size
    images = torch.randn(n, 3, args.size, args.size, generator=gen)
    labels = torch.randint(0, args.num_classes, (n,), generator=gen)
    batches = [
        Batch(images[i : i + args.batch_size], labels[i : i + args.batch_size], torch.arange(i, i + args.batch_size))
        for i in range(0, n, args.batch_size)
    ]
    parts = {mode: _setup(mode, args.teacher, args.student, args.num_classes) for mode in MODES}
    # the cache mode: one teacher pass over the fixed training batches (as train.teacher_cache=on with augment none)
    fp32 = parts["fp32"]
    cache = TeacherCache("sample", lambda b: _teacher_outputs(fp32, b), lambda: iter(batches), n)
    start = time.perf_counter()
    cache.outputs(batches[0], 0, 0)  # fills the [1, N, K] table
    precompute_s = time.perf_counter() - start

    with torch.no_grad():
        ref = _teacher_outputs(parts["fp32"], batches[0])[0][DEFAULT_VIEW].logits
        low = _teacher_outputs(parts["bf16+cl"], batches[0])[0][DEFAULT_VIEW].logits
    agreement = {  # a random-init ResNet-152 has huge logits (no trained BN statistics): the relative difference counts
        "max_abs_logit_diff": float((ref - low).abs().max()),
        "max_rel_logit_diff": float((ref - low).abs().max() / ref.abs().max()),
        "top1_agreement": float((ref.argmax(1) == low.argmax(1)).float().mean()),
    }

    for mode in MODES:
        for b in batches[: args.warmup]:
            _step(parts[mode], b, cache if mode == "cache" else None)
            if mode != "cache":
                _teacher_only(parts[mode], b)
    steps: dict[str, list[float]] = {m: [] for m in MODES}
    teacher_s: dict[str, list[float]] = {m: [] for m in MODES if m != "cache"}
    for r in range(args.repeats):
        b = batches[r % len(batches)]
        for mode in MODES:
            steps[mode].append(_step(parts[mode], b, cache if mode == "cache" else None))
            if mode != "cache":
                teacher_s[mode].append(_teacher_only(parts[mode], b))
    med = {m: statistics.median(v) for m, v in steps.items()}
    t_med = {m: statistics.median(v) for m, v in teacher_s.items()}
    result = {
        "teacher": args.teacher,
        "teacher_params": count_parameters(parts["fp32"]["teacher"].model, trainable_only=False),
        "student": args.student,
        "input": [3, args.size, args.size],
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "step_s_median": med,
        "step_ratio_vs_fp32": {m: med[m] / med["fp32"] for m in MODES},
        "teacher_forward_s_median": t_med,
        "teacher_forward_ratio_vs_fp32": {m: t_med[m] / t_med["fp32"] for m in t_med},
        "cache_precompute_s": precompute_s,
        "cache_record": cache.record(),
        "bf16_teacher_vs_fp32": agreement,
        "step_s_all": steps,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
