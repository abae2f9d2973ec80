"""``kdlab demo``: the whole workflow on the bundled ``digits`` data, in a few minutes on a laptop CPU.

1. Train a teacher (``ce``) on the full digits training split.
2. Train the student with every registered method that can run on this teacher/student pair (a method joins
   by being registered; methods that cannot run here are listed with the reason), over several seeds, on a
   small class-balanced subset (30 images per class) where a teacher has something to teach.
3. Write ``report.md`` (mean +- std test top-1 per method, the paired difference to the student trained alone,
   and whether it exceeds the seed-to-seed spread) and ``accuracy.png`` (a bar chart).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from kdlab.config import build_config, to_dict
from kdlab.methods import METHODS

log = logging.getLogger("kdlab")

TEACHER, STUDENT = "convnet_m", "convnet_xs"


@dataclass
class DemoSettings:
    """The demo's schedule (``quick`` shortens it for smoke tests)."""

    teacher_epochs: int = 30
    student_epochs: int = 40
    train_per_class: int = 30
    batch_size: int = 32

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(teacher_epochs=3, student_epochs=2, train_per_class=10)


def _base(settings: DemoSettings, out: Path, name: str, seed: int) -> dict:
    return {
        "data": {"name": "digits", "batch_size": settings.batch_size, "augment": "crop_flip", "crop_padding": 1},
        "optim": {"lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
        "train": {
            "device": "cpu",
            "threads": 1,
            "seed": seed,
            "run_dir": str(out / "runs"),
            "name": name,
            "eval_every": 1000,
        },
        "log": {"progress": "off"},
    }


def train_teacher(settings: DemoSettings, out: Path) -> tuple[Path, dict]:
    """Train the demo's teacher; returns its checkpoint path and summary."""
    from kdlab.train.trainer import Trainer

    raw = _base(settings, out, "teacher", 0)
    raw["model"] = {"student": TEACHER}
    raw["method"] = {"name": "ce"}
    raw["train"]["epochs"] = settings.teacher_epochs
    trainer = Trainer(build_config(raw), force=True)
    summary = trainer.fit()
    return trainer.ckpt_path, summary


def student_config(method: str, settings: DemoSettings, out: Path, teacher_ckpt: Path, seed: int):
    """The config of one student run with ``method`` at its registered defaults."""
    raw = _base(settings, out, f"{method}__s{seed}", seed)
    raw["model"] = {"student": STUDENT}
    if method != "ce":
        raw["model"]["teachers"] = [{"name": TEACHER, "checkpoint": str(teacher_ckpt)}]
    raw["method"] = {"name": method}
    raw["data"]["train_per_class"] = settings.train_per_class
    raw["train"]["epochs"] = settings.student_epochs
    return build_config(raw)


def run_demo(out_dir: str | Path = "runs/demo", seeds: int = 3, quick: bool = False) -> Path:
    """Run the demo; returns the path of ``report.md``."""
    from kdlab.errors import USER_ERRORS
    from kdlab.train.trainer import Trainer

    settings = DemoSettings.quick() if quick else DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher_ckpt, teacher = train_teacher(settings, out)
    log.info("teacher %s: test top1 %.2f", TEACHER, teacher["last"]["top1"])

    results: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    methods = ["ce"] + [m for m in METHODS.names() if m != "ce"]
    for method in methods:
        for seed in range(seeds):
            cfg = student_config(method, settings, out, teacher_ckpt, seed)
            try:
                trainer = Trainer(cfg, force=True)
            except (*USER_ERRORS, ValueError) as err:  # cannot run on this pair at its defaults (e.g. a tap)
                skipped[method] = str(err).splitlines()[0]
                break
            summary = trainer.fit()
            results.setdefault(method, []).append(summary["last"]["top1"])
        if method in results:
            log.info("%s: %s", method, _fmt(results[method]))
    elapsed = time.perf_counter() - t0
    report = write_report(out, results, skipped, teacher, settings, seeds, elapsed)
    plot(out / "accuracy.png", results)
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


def write_report(
    out: Path,
    results: dict[str, list[float]],
    skipped: dict[str, str],
    teacher: dict,
    settings: DemoSettings,
    seeds: int,
    elapsed: float,
) -> Path:
    """Write ``report.md``: the table and a plain verdict per method."""
    base = results.get("ce", [])
    lines = [
        "# kdlab demo: distillation on the bundled digits data",
        "",
        f"Teacher `{TEACHER}` (trained on the full training split, {settings.teacher_epochs} epochs): "
        f"test top-1 {teacher['last']['top1']:.2f} %.",
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
    lines += ["", f"Total time: {elapsed:.0f} s.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "results.json").write_text(
        __import__("json").dumps({"results": results, "skipped": skipped, "settings": to_dict(settings)}, indent=2)
    )
    return path


def plot(path: Path, results: dict[str, list[float]]) -> None:
    """A bar chart of mean test top-1 per method with the seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [statistics.mean(results[n]) for n in names]
    stds = [statistics.stdev(results[n]) if len(results[n]) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    ax.bar(names, means, yerr=stds, capsize=4, color=["#888888" if n == "ce" else "#3b75af" for n in names])
    lo = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0, lo - 5), min(100, max(m + s for m, s in zip(means, stds)) + 2))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("kdlab demo: digits, student alone (ce) vs. distillation")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
