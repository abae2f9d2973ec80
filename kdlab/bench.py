"""Training-speed benchmarks of the real trainer (``kdlab bench``; issue 9, "Benchmark").

Two tables, both measured through :class:`kdlab.train.trainer.Trainer` on synthetic CIFAR-shaped data (3x32x32,
100 classes) held on the device and produced by the real loader (gather, random crop, flip, normalise per batch):

- **variants** (:func:`run_variants`): images/s of one method and pair (default ``kd`` resnet32x4 -> resnet8x4,
  batch 64) under speed settings: fp32, bf16, channels_last, bf16 + channels_last, compiled, teacher-output reuse.
  Each variant is a run of ``epochs`` epochs of ``steps`` steps; the first epoch is warm-up (and, for the teacher
  cache, the epoch that fills it), and the images/s is the batch size over the median step time of the later
  epochs. ``loop_efficiency`` is (teacher forward + student step, each timed alone on one fixed batch, medians) /
  (median step time inside the trainer): 1.0 means the loop adds nothing around the model work. Variants run
  interleaved, ``rounds`` times, and the reported numbers are medians over rounds, so a change of load on a shared
  machine affects all variants alike.
- **methods** (:func:`run_methods`): batches/s of every method on one pair (DIST's speed table), one-step epochs so
  the trainer times single steps; ratios to ``kd``.

The allocator is the process's (``kdlab bench`` re-executes itself with tcmalloc when available, like
``kdlab train``); :func:`compare_allocators` runs the variants table in child processes with and without tcmalloc,
alternating, to measure its effect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from kdlab import interrupts
from kdlab.config import ConfigError, RunConfig, build_config

log = logging.getLogger("kdlab")

#: Speed variants: name -> ``train`` overrides. ``teacher_cache`` replays one epoch of augmentation (the warm-up
#: epoch fills the cache, every timed step reuses it): the steady state of a cached run.
VARIANTS: dict[str, dict[str, object]] = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "compiled": {"compile": True},
    "teacher_cache": {"teacher_cache": True, "replay_epochs": 1},
    "bf16+channels_last+teacher_cache": {
        "precision": "bf16",
        "channels_last": True,
        "teacher_cache": True,
        "replay_epochs": 1,
    },
}
DEFAULT_VARIANTS = ("fp32", "bf16", "channels_last", "bf16+channels_last", "compiled", "teacher_cache")
#: Methods of the default speed table (DIST's table lists KD, DKD-like logit methods and feature methods).
DEFAULT_METHODS = "kd,dkd,dist,mlkd,tekap(kd),tekap(dkd),fitnet,at,crd,review_kd"
#: Issue 4 targets: max step time relative to ``kd``.
METHOD_TARGETS = {"dist": 1.05, "dkd": 1.05, "tekap(kd)": 1.05, "mlkd": 2.2}
_SPEC = re.compile(r"([A-Za-z_][\w-]*)(?:\(([A-Za-z_][\w-]*)\))?")


def method_spec(text: str) -> tuple[str, dict]:
    """``"tekap(dkd)"`` -> ``("tekap(dkd)", {"name": "tekap", "inner": {"name": "dkd"}})``; unknown names are a
    :class:`ConfigError`."""
    from kdlab.methods import METHODS

    m = _SPEC.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"{text!r} is not a method spec (e.g. kd, dkd, tekap(kd))")
    outer, inner = m.groups()
    for name in (outer, inner):
        if name is not None and name not in METHODS:
            raise ConfigError(f"unknown method {name!r}; registered: {', '.join(METHODS.names())}")
    if inner is None:
        return outer, {"name": outer}
    return f"{outer}({inner})", {"name": outer, "inner": {"name": inner}}


def parse_variants(text: str | Sequence[str]) -> list[str]:
    """Comma-separated variant names, checked against :data:`VARIANTS`."""
    names = [v.strip() for v in (text.split(",") if isinstance(text, str) else text) if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ConfigError(f"unknown bench variant(s) {bad or names}; choose from {', '.join(VARIANTS)}")
    return names


def bench_config(
    method: dict,
    *,
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    batch_size: int = 64,
    steps: int = 8,
    epochs: int = 4,
    threads: int | None = 2,
    train: dict | None = None,
    run_dir: str = "runs/bench",
    name: str = "bench",
    image_size: int = 32,
    num_classes: int = 100,
) -> RunConfig:
    """The config of a benchmark run: synthetic data of ``steps`` full batches per epoch, no evaluation until the
    end, no checkpoints until the end, random teacher weights (the weights do not change the cost).

    A method that trains on a held-out split (TGeo-KD, RW-KD, or a method wrapping one) gets a training set sized for
    it (:func:`heldout_sizing`): at least ``steps`` full batches after the split, and a held-out split of whole
    batches with at least one sample per class.
    """
    raw = {
        "model": {"student": student, "teachers": [{"name": teacher}]},
        "data": {
            "name": "synthetic",
            "num_classes": num_classes,
            "image_size": image_size,
            "channels": 3,
            "train_size": batch_size * steps,
            "test_size": batch_size,
            "batch_size": batch_size,
            "eval_batch_size": batch_size,
            "drop_last": True,
        },
        "method": method,
        "train": {
            "epochs": epochs,
            "device": "cpu",
            "threads": threads,
            "seed": 0,
            "run_dir": run_dir,
            "name": name,
            "eval_every": 10**6,
            "checkpoint_every": 10**6,
            **(train or {}),
        },
        "log": {"progress": "off"},
    }
    cfg = build_config(raw)
    if needs_heldout(cfg.method):
        cfg.data.train_size, cfg.data.val_fraction = heldout_sizing(batch_size, steps, num_classes)
    return cfg


def needs_heldout(method: object) -> bool:
    """Whether a method config, or a method config it wraps (``inner``, ``methods``), asks for a held-out split
    (a ``holdout_fraction`` > 0)."""
    if not dataclasses.is_dataclass(method):
        return False
    if (getattr(method, "holdout_fraction", 0) or 0) > 0:
        return True
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        if any(needs_heldout(v) for v in (value if isinstance(value, (list, tuple)) else [value])):
            return True
    return False


def heldout_sizing(batch_size: int, steps: int, num_classes: int) -> tuple[int, float]:
    """``(train_size, val_fraction)`` of a synthetic training set (labels ``i mod K``) whose stratified split leaves
    at least ``steps`` full batches to train on and holds out at least one sample per class, in whole batches where
    possible (the outer loop of a held-out method then always reads full mini-batches).

    The split keeps at least one sample of every class for training, so with ``K > batch_size * steps`` an epoch
    has more than ``steps`` steps (the benchmarks time steps, not epochs).
    """
    from kdlab.data.split import stratified_split

    val = -(-max(num_classes, batch_size) // batch_size) * batch_size
    n = max(batch_size * steps, num_classes) + val
    for _ in range(100):
        train_idx, val_idx = stratified_split(torch.arange(n) % num_classes, val / n, 0)
        if len(train_idx) // batch_size >= steps and len(val_idx) >= num_classes:
            return n, val / n
        if len(train_idx) // batch_size < steps:
            n += batch_size * steps - len(train_idx)
        if len(val_idx) < num_classes:
            val += num_classes - len(val_idx)
            n += num_classes - len(val_idx)
    raise ConfigError(f"bench: no synthetic training set fits batch {batch_size}, {steps} steps, {num_classes} classes")


@contextlib.contextmanager
def _stops_as_a_whole() -> Iterator[None]:
    """A cell's interrupted trainer ends the whole table: its runs live in a temporary folder, so the trainer's
    "resume with --resume" hint does not apply; the command exits with 130 (``kdlab/interrupts.py``)."""
    from kdlab.train.trainer import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted:
        signum = interrupts.requested()
        raise interrupts.Interrupted(
            signum, f"kdlab bench stopped by {interrupts.signal_name(signum)}; no table was written"
        ) from None


def _times(fn: Callable[[], None], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bare_step_times(trainer, repeats: int = 10) -> dict[str, float]:
    """Median seconds of the teacher forward and of the student step (forward, loss, backward, optimiser step),
    each alone on one fixed batch, in the trainer's precision, memory format and compilation."""
    batch = trainer.precision.prepare_batch(next(trainer.run.data.train_batches(0)))
    progress = trainer.start
    teachers = trainer.teacher_outputs(batch)

    def student() -> None:
        out = trainer.step_call(batch, teachers, progress)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._backward_step(out.total)

    result = {"student_step_s": statistics.median(_times(student, repeats)), "teacher_forward_s": 0.0}
    if trainer.run.teachers and trainer.run.needs.teacher:
        result["teacher_forward_s"] = statistics.median(_times(lambda: trainer.teacher_outputs(batch), repeats))
    return result


def measure(cfg: RunConfig, repeats: int = 10) -> dict:
    """Train ``cfg`` and time it: images/s over the epochs after the first, bare component times, efficiency."""
    from kdlab.train.trainer import Trainer

    trainer = Trainer(cfg, force=True)
    trainer.fit()
    warm = trainer.history[1:] or trainer.history
    step_s = statistics.median(h["step_time_median_s"] for h in warm)
    bare = bare_step_times(trainer, repeats)
    speed = trainer.speed_record()
    # with reuse, the loop runs no teacher forward in the timed epochs: the ideal step is the student step alone
    cached = speed["teacher_cache"]["kind"] != "off"
    ideal = bare["student_step_s"] + (0.0 if cached else bare["teacher_forward_s"])
    return {
        "images_per_s": cfg.data.batch_size / step_s,
        "step_s": step_s,
        **bare,
        "loop_efficiency": ideal / step_s,
        "speed": speed,
    }


def _context(threads: int | None) -> dict:
    return {
        "torch": torch.__version__,
        "threads": threads if threads else torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "allocator": _allocator(),
    }


def _allocator() -> str:
    from kdlab.allocator import allocator_name

    return allocator_name()


def run_variants(
    variants: Sequence[str] = DEFAULT_VARIANTS,
    *,
    method: str = "kd",
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    batch_size: int = 64,
    steps: int = 8,
    epochs: int = 4,
    rounds: int = 2,
    threads: int | None = 2,
    repeats: int = 10,
    image_size: int = 32,
    num_classes: int = 100,
) -> dict:
    """Images/s of ``method`` (teacher -> student) under each variant, interleaved over ``rounds``; medians.

    Returns:
        ``{"rows": [{"variant", "images_per_s", "step_s", "student_step_s", "teacher_forward_s",
        "loop_efficiency", "rounds": [...], "speed"}], ...context}``.
    """
    if epochs < 2 or steps < 1 or rounds < 1:
        raise ConfigError("bench: --epochs must be >= 2 (the first is warm-up), --steps and --rounds >= 1")
    label, mcfg = method_spec(method)
    variants = parse_variants(variants)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _stops_as_a_whole():
        for r in range(rounds):
            for v in variants:
                interrupts.raise_if_requested("kdlab bench")  # the first signal stops the whole table
                cfg = bench_config(
                    mcfg,
                    teacher=teacher,
                    student=student,
                    batch_size=batch_size,
                    steps=steps,
                    epochs=epochs,
                    threads=threads,
                    train=VARIANTS[v],
                    run_dir=tmp,
                    image_size=image_size,
                    num_classes=num_classes,
                    name=re.sub(r"\W+", "_", v) + f"_r{r}",
                )
                results[v].append(measure(cfg, repeats))
                log.info("bench %s round %d: %.1f img/s", v, r + 1, results[v][-1]["images_per_s"])
    rows = []
    for v in variants:
        rs = results[v]
        row = {"variant": v, "train": VARIANTS[v]}
        for key in ("images_per_s", "step_s", "student_step_s", "teacher_forward_s", "loop_efficiency"):
            row[key] = statistics.median(x[key] for x in rs)
        row["images_per_s_rounds"] = [x["images_per_s"] for x in rs]
        row["images_per_s_best"] = max(row["images_per_s_rounds"])  # the least disturbed round on a shared machine
        row["speed"] = rs[-1]["speed"]
        rows.append(row)
    return {
        "table": "variants",
        "method": label,
        "teacher": teacher,
        "student": student,
        "batch_size": batch_size,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "rounds": rounds,
        "wall_s": time.perf_counter() - t0,
        **_context(threads),
        "rows": rows,
    }


def run_methods(
    methods: str = DEFAULT_METHODS,
    *,
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    batch_size: int = 64,
    steps: int = 10,
    warmup: int = 2,
    rounds: int = 2,
    threads: int | None = 2,
    train: dict | None = None,
    image_size: int = 32,
    num_classes: int = 100,
) -> dict:
    """Batches/s of each method on one pair (DIST's speed table), through the real trainer.

    Every run has one-step epochs, so the trainer's per-epoch images/s times single steps (batch, teacher forward,
    loss, backward, optimiser step). The first ``warmup`` steps of a run are dropped and the next ``steps`` kept;
    runs are interleaved over methods ``rounds`` times; the reported step time is the median over all kept steps.
    """
    specs = dict(method_spec(s) for s in methods.split(",") if s.strip())
    if "kd" not in specs:
        specs = {"kd": {"name": "kd"}, **specs}  # the reference of every ratio
    if steps < 1 or rounds < 1 or warmup < 0:
        raise ConfigError("bench: --steps and --rounds must be >= 1 and --warmup >= 0")
    from kdlab.train.trainer import Trainer

    times: dict[str, list[float]] = {label: [] for label in specs}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _stops_as_a_whole():
        for r in range(rounds):
            for label, mcfg in specs.items():
                interrupts.raise_if_requested("kdlab bench")  # the first signal stops the whole table
                cfg = bench_config(
                    mcfg,
                    teacher=teacher,
                    student=student,
                    batch_size=batch_size,
                    steps=1,
                    epochs=warmup + steps,
                    threads=threads,
                    train=train,
                    run_dir=tmp,
                    image_size=image_size,
                    num_classes=num_classes,
                    name=re.sub(r"\W+", "_", label) + f"_r{r}",
                )
                trainer = Trainer(cfg, force=True)
                trainer.fit()
                times[label] += [batch_size / h["images_per_s"] for h in trainer.history[warmup:]]
    kd_median = statistics.median(times["kd"])
    rows = []
    for label, mcfg in specs.items():
        med = statistics.median(times[label])
        row = {
            "method": label,
            "config": mcfg,
            "median_step_s": med,
            "batches_per_s": 1.0 / med,
            "images_per_s": batch_size / med,
            "min_step_s": min(times[label]),
            "timed_steps": len(times[label]),
            "ratio_to_kd": med / kd_median,
        }
        if label in METHOD_TARGETS:
            row["target_ratio"] = METHOD_TARGETS[label]
            row["within_target"] = med / kd_median <= METHOD_TARGETS[label]
        rows.append(row)
    return {
        "table": "methods",
        "teacher": teacher,
        "student": student,
        "batch_size": batch_size,
        "warmup_steps": warmup,
        "timed_steps_per_run": steps,
        "rounds": rounds,
        "train": train or {},
        "wall_s": time.perf_counter() - t0,
        **_context(threads),
        "rows": rows,
    }


def compare_allocators(argv: Sequence[str], rounds: int = 2) -> dict:
    """Run ``kdlab bench <argv> --rounds 1`` in child processes with the system allocator and with tcmalloc,
    alternating ``rounds`` times; returns, per allocator, the child results and the per-variant median images/s.

    Raises:
        ConfigError: no tcmalloc library is installed (nothing to compare).
    """
    from kdlab.allocator import MARKER, OPT_OUT, find_tcmalloc

    lib = find_tcmalloc()
    if lib is None:
        raise ConfigError(
            "bench --compare-allocators: no tcmalloc library found; install it (Debian/Ubuntu: "
            "apt-get install libgoogle-perftools4) or set KDLAB_TCMALLOC=<path>"
        )
    base = {k: v for k, v in os.environ.items() if k not in (MARKER, OPT_OUT, "LD_PRELOAD")}
    envs = {"system": {**base, OPT_OUT: "1"}, "tcmalloc": base}
    runs: dict[str, list[dict]] = {k: [] for k in envs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, env in envs.items():
                out = Path(tmp) / f"{name}_{r}.json"
                cmd = [sys.executable, "-m", "kdlab", "bench", *argv, "--rounds", "1", "--json", str(out)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"bench child ({name}) failed:\n{proc.stderr[-2000:]}")
                runs[name].append(json.loads(out.read_text()))
    summary = {}
    for name, rs in runs.items():
        key = "variant" if rs[0]["table"] == "variants" else "method"
        per: dict[str, list[float]] = {}
        for res in rs:
            for row in res["rows"]:
                per.setdefault(row[key], []).append(row["images_per_s"])
        summary[name] = {
            "allocator": rs[0]["allocator"],
            "images_per_s": {k: statistics.median(v) for k, v in per.items()},
        }
    return {"table": "allocators", "library": lib, "rounds": rounds, "allocators": summary, "runs": runs}


def format_table(result: dict) -> str:
    """A plain-text table of a :func:`run_variants`, :func:`run_methods` or :func:`compare_allocators` result."""
    lines = []
    if result["table"] == "variants":
        lines.append(
            f"{result['method']} {result['teacher']} -> {result['student']}, batch {result['batch_size']}, "
            f"{result['threads']} threads, {result['allocator']}, load {_load(result)}"
        )
        head = ("img/s", "step ms", "teacher ms", "student ms", "eff")
        lines.append(f"{'variant':36s} {head[0]:>8s} {head[1]:>8s} {head[2]:>10s} {head[3]:>10s} {head[4]:>5s}")
        for r in result["rows"]:
            lines.append(
                f"{r['variant']:36s} {r['images_per_s']:8.1f} {1e3 * r['step_s']:8.1f} "
                f"{1e3 * r['teacher_forward_s']:10.1f} {1e3 * r['student_step_s']:10.1f} {r['loop_efficiency']:5.2f}"
            )
    elif result["table"] == "methods":
        lines.append(
            f"{result['teacher']} -> {result['student']}, batch {result['batch_size']}, {result['threads']} threads, "
            f"{result['allocator']}, load {_load(result)}"
        )
        lines.append(f"{'method':16s} {'batches/s':>9s} {'step ms':>8s} {'x kd':>6s}")
        for r in result["rows"]:
            target = f"  (target <= {r['target_ratio']})" if "target_ratio" in r else ""
            lines.append(
                f"{r['method']:16s} {r['batches_per_s']:9.2f} {1e3 * r['median_step_s']:8.1f} "
                f"{r['ratio_to_kd']:6.2f}{target}"
            )
    else:
        names = list(result["allocators"])
        keys = list(result["allocators"][names[0]]["images_per_s"])
        lines.append(f"images/s by allocator ({result['library']}), medians of {result['rounds']} alternating rounds")
        lines.append(f"{'':36s} " + " ".join(f"{n:>9s}" for n in names) + f" {'ratio':>6s}")
        for k in keys:
            vals = [result["allocators"][n]["images_per_s"].get(k, float("nan")) for n in names]
            lines.append(f"{k:36s} " + " ".join(f"{v:9.1f}" for v in vals) + f" {vals[-1] / vals[0]:6.2f}")
    return "\n".join(lines)


def _load(result: dict) -> str:
    la = result.get("load_average")
    return "/".join(f"{x:.2f}" for x in la) if la else "n/a"
