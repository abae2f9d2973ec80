"""``kdlab demo``: the whole workflow on the bundled ``digits`` data, in a few minutes on a laptop CPU, through the
same machinery as ``kdlab sweep`` / ``kdlab results`` / ``kdlab report``.

1. A one-row sweep (``demo_teacher``) trains the teacher (``ce``) on the full digits training split.
2. A sweep (``demo_digits``) trains the student with every registered method (a method joins by being
   registered) over several seeds, on a small class-balanced subset (30 images per class) where a teacher has
   something to teach. Methods that cannot run on this pair at their defaults fail their runs; the sweep reports
   them and goes on, and the demo lists them with the reason.
3. Both sweeps record their runs in ``<out>/results.sqlite``; the generic report (``<out>/report/``: Markdown,
   LaTeX, accuracy curves, bars) is written from those runs, and ``<out>/report.md`` adds the demo's verdict: mean
   +- std test top-1 per method, the paired difference to the student trained alone, and whether it exceeds the
   seed-to-seed spread. ``<out>/accuracy.png`` is the bar chart.

Finished runs are skipped when the demo runs again with the same settings (as any sweep), so a re-run only
rewrites the report.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from kdlab.config import to_dict

log = logging.getLogger("kdlab")

TEACHER, STUDENT = "convnet_m", "convnet_xs"
PAIR = f"{TEACHER}→{STUDENT}"


@dataclass
class DemoSettings:
    """The demo's schedule (``quick`` shortens it for smoke tests)."""

    teacher_epochs: int = 30
    student_epochs: int = 40
    train_per_class: int = 30
    batch_size: int = 32
    eval_every: int = 5
    """Test every this many epochs (and after the last): the points of the accuracy curves."""

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(teacher_epochs=3, student_epochs=2, train_per_class=10, eval_every=1)


def _base(settings: DemoSettings) -> dict:
    return {
        "data": {"name": "digits", "batch_size": settings.batch_size, "augment": "crop_flip", "crop_padding": 1},
        "optim": {"lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
        "train": {"device": "cpu", "threads": 1, "eval_every": settings.eval_every},
        "log": {"progress": "off"},
    }


def teacher_spec(settings: DemoSettings, out: Path):
    """The one-run sweep that trains the demo's teacher."""
    from kdlab.experiments.spec import parse_spec

    raw = _base(settings)
    raw["model"] = {"student": TEACHER}
    raw["method"] = {"name": "ce"}
    raw["train"]["epochs"] = settings.teacher_epochs
    rows = [{"label": "teacher", "config": raw}]
    return parse_spec({"name": "demo_teacher", "run_dir": str(out / "runs"), "seeds": [0], "rows": rows})


def student_spec(settings: DemoSettings, out: Path, teacher_ckpt: Path, seeds: int, methods: list[str]):
    """The sweep of every method at its registered defaults (``ce``: the student alone), over ``seeds`` seeds."""
    from kdlab.experiments.spec import parse_spec

    rows = []
    for method in methods:
        raw = _base(settings)
        raw["model"] = {"student": STUDENT}
        if method != "ce":
            raw["model"]["teachers"] = [{"name": TEACHER, "checkpoint": str(teacher_ckpt)}]
        raw["method"] = {"name": method}
        raw["data"]["train_per_class"] = settings.train_per_class
        raw["train"]["epochs"] = settings.student_epochs
        rows.append({"label": method, "config": raw, "pair": PAIR})
    return parse_spec(
        {
            "name": "demo_digits",
            "description": f"Every registered method, {TEACHER} -> {STUDENT} on digits ({settings.train_per_class} "
            f"training images per class, {settings.student_epochs} epochs), at the methods' defaults.",
            "run_dir": str(out / "runs"),
            "seeds": list(range(seeds)),
            "rows": rows,
        }
    )


def _progress(outcome, i: int, total: int) -> None:
    if outcome.row is not None:
        log.info("[%d/%d] %s %s: test top1 %.2f", i, total, outcome.status, outcome.run.key, outcome.row["last_top1"])
    else:
        log.info("[%d/%d] %s %s: %s", i, total, outcome.status, outcome.run.key, outcome.message)


def _stop_if_interrupted(outcomes) -> None:
    """An interrupted run stops the demo (exit code 130); running the demo again resumes it."""
    from kdlab.train.trainer import TrainingInterrupted

    for o in outcomes:
        if o.status in ("interrupted", "not run"):
            raise TrainingInterrupted(f"the demo was interrupted at {o.run.key}; run the same command to resume it")


def run_demo(out_dir: str | Path = "runs/demo", seeds: int = 3, quick: bool = False, workers: int = 1) -> Path:
    """Run the demo; returns the path of ``report.md``."""
    from kdlab.experiments.report import summarize, write_report
    from kdlab.experiments.sweep import run_sweep
    from kdlab.methods import METHODS

    settings = DemoSettings.quick() if quick else DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.sqlite"
    t0 = time.perf_counter()
    (t_out,) = run_sweep(teacher_spec(settings, out), store_path=store, on_outcome=_progress)
    _stop_if_interrupted([t_out])
    if t_out.row is None:
        raise RuntimeError(f"the demo's teacher run failed: {t_out.message} (see {t_out.run.run_dir})")
    teacher = t_out.row
    methods = ["ce"] + [m for m in METHODS.names() if m != "ce"]
    spec = student_spec(settings, out, t_out.run.run_dir / "checkpoint.pt", seeds, methods)
    outcomes = run_sweep(spec, workers=workers, store_path=store, on_outcome=_progress)
    _stop_if_interrupted(outcomes)

    by_seed: dict[str, dict[int, float]] = {}
    skipped: dict[str, str] = {}
    for o in outcomes:
        if o.row is not None:
            by_seed.setdefault(o.run.label, {})[o.run.seed] = o.row["last_top1"]
        elif o.run.label not in skipped:
            skipped[o.run.label] = o.message or o.status
    for method in skipped:  # a method counts as able to run only when every seed ran
        by_seed.pop(method, None)
    results = {m: [v[s] for s in sorted(v)] for m, v in by_seed.items()}
    elapsed = time.perf_counter() - t0

    cells = summarize([o.row for o in outcomes if o.row is not None and o.run.label in results])
    write_report(cells, out / "report", "kdlab demo: every method on digits", spec.description)
    from kdlab.experiments.report import plot_bars

    plot_bars(cells, out / "accuracy.png", "kdlab demo: digits, student alone (ce) vs. distillation", baseline="ce")
    report = write_demo_report(out, results, skipped, teacher, settings, seeds, elapsed)
    (out / "results.json").write_text(
        json.dumps({"results": results, "skipped": skipped, "settings": to_dict(settings)}, indent=2) + "\n"
    )
    print(report.read_text())
    return report


def _fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def paired(values: list[float], base: list[float]) -> tuple[float, float, bool]:
    """Mean paired difference, its standard error, and whether it exceeds two standard errors.

    Runs with the same seed share the initialisation, data order and augmentation, so the difference per seed
    removes most of the seed-to-seed noise; with a single seed nothing is significant.
    """
    diffs = [a - b for a, b in zip(values, base)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, False
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, se, abs(mean) > 2 * se and se > 0


def write_demo_report(
    out: Path,
    results: dict[str, list[float]],
    skipped: dict[str, str],
    teacher: dict,
    settings: DemoSettings,
    seeds: int,
    elapsed: float,
) -> Path:
    """Write ``report.md``: the verdict table per method, the methods that cannot run, and where the sweep report
    is. ``results`` maps a method to its last-epoch test top-1 per seed (seed order); ``teacher`` is the teacher's
    results-store row."""
    base = results.get("ce", [])
    lines = [
        "# kdlab demo: distillation on the bundled digits data",
        "",
        f"Teacher `{TEACHER}` (trained on the full training split, {settings.teacher_epochs} epochs): "
        f"test top-1 {teacher['last_top1']:.2f} %.",
        f"Student `{STUDENT}`, trained on {settings.train_per_class} images per class for "
        f"{settings.student_epochs} epochs, {seeds} seeds; test top-1 of the last epoch on 500 held-out test images.",
        "",
        "| method | top-1 (mean ± std) | vs. student alone (paired) | verdict |",
        "|---|---|---|---|",
    ]
    for method, values in results.items():
        if method == "ce":
            lines.append(f"| ce (student alone) | {_fmt(values)} | | baseline |")
            continue
        if not base:
            lines.append(f"| {method} | {_fmt(values)} | | no baseline |")
            continue
        diff, se, sig = paired(values, base)
        if math.isnan(se):
            verdict = "one seed: no verdict"
        elif sig:
            verdict = "better than alone" if diff > 0 else "worse than alone"
        else:
            verdict = "within the seed-to-seed spread"
        se_txt = "" if math.isnan(se) else f" ± {se:.2f}"
        lines.append(f"| {method} | {_fmt(values)} | {diff:+.2f}{se_txt} | {verdict} |")
    lines += [
        "",
        "The paired difference is the mean over seeds of (method - student alone) with its standard error; a "
        "verdict needs the difference to exceed two standard errors. Every method runs at its registered defaults "
        "(the CIFAR-100 reference weights and temperatures), untuned for this tiny pair: a large loss weight tuned "
        "for CIFAR ResNets can swamp the cross-entropy here.",
    ]
    if skipped:
        lines += ["", "Methods that cannot run on this pair:", ""]
        lines += [f"- `{m}`: {why}" for m, why in skipped.items()]
    lines += [
        "",
        "The runs were made by `kdlab sweep` machinery and recorded in `results.sqlite` (query it with "
        f"`kdlab results --store {out / 'results.sqlite'} --sweep demo_digits --group-by row_label`); the sweep "
        "report with best-epoch numbers, LaTeX and accuracy curves is `report/report.md`.",
        "",
        f"Total time: {elapsed:.0f} s.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
