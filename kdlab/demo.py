"""``kdlab demo``: distillation on the bundled ``digits`` data in about a minute on a laptop CPU, through the same
machinery as ``kdlab sweep`` / ``kdlab results`` / ``kdlab report``.

1. A one-row sweep (``demo_teacher``) trains the teacher (``ce``) on the full digits training split, in this
   process, with a progress line and ETA.
2. A sweep (``demo_digits``) trains the student with a representative set of methods (:data:`DEMO_METHODS`: the
   student alone, logit, feature, relational-contrastive, classifier-reuse, teacher-augmentation and
   sample-weighting methods) over several seeds, on a small class-balanced subset (30 images per class) where a
   teacher has something to teach, two runs at a time. ``--all`` runs every registered method instead (a method
   joins by being registered); methods that cannot run on this pair at their defaults fail their runs, the sweep
   reports them and goes on, and the demo lists them with the reason.
3. Both sweeps record their runs in ``<out>/results.sqlite``; the generic report (``<out>/report/``: Markdown,
   LaTeX, accuracy curves, chart) is written from those runs, and ``<out>/report.md`` adds the demo's verdict: mean
   +- std test top-1 per method, the paired difference to the student trained alone, and whether it exceeds the
   seed-to-seed spread. ``<out>/accuracy.png`` is the chart. A method whose runs are identical to another's at
   every seed (``sum``, ``mt_kd`` and ``dgkd`` with one teacher are ``kd``) is shown as ``= kd``, not as a row of
   its own.

Every phase starts with a one-line header (what it does and why) and reports progress with an ETA: the teacher
every few seconds, the students after each run.

Finished runs are skipped when the demo runs again with the same settings (as any sweep), so a re-run only
rewrites the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdlab.config import to_dict
from kdlab.demo_output import DemoLog

log = logging.getLogger("kdlab")

TEACHER, STUDENT = "convnet_m", "convnet_xs"
PAIR = f"{TEACHER}→{STUDENT}"
TRAIN_IMAGES = 1297
"""Images in the digits training split (the teacher trains on all of them)."""

DEMO_METHODS: tuple[tuple[str, str], ...] = (
    ("ce", "ce"),
    ("kd", "kd"),
    ("dkd", "dkd"),
    ("dist", "dist"),
    ("crd", "crd"),
    ("fitnet", "fitnet"),
    ("simkd", "simkd"),
    ("tekap_kd", "tekap"),
    ("tgeo_kd", "tgeo_kd"),
)
"""The default demo's rows as (row label, registered method): ``tekap_kd`` is ``tekap`` around its default inner
``kd``."""

SAME_AS_EXPLAINED = {
    ("sum", "kd"): "with one method (its default) sum is that method",
    ("mt_kd", "kd"): "with one teacher mt_kd is kd",
    ("dgkd", "kd"): "with one teacher dgkd is kd",
}
"""Why a method's runs equal another's in the demo (shown beside ``= kd``)."""


@dataclass
class DemoSettings:
    """The demo's schedule: :meth:`fast` (the default), :meth:`full` (``--all``) and :meth:`quick` (smoke tests)."""

    teacher_epochs: int = 10
    student_epochs: int = 30
    train_per_class: int = 30
    batch_size: int = 32
    eval_every: int = 5
    """Test every this many epochs (and after the last): the points of the accuracy curves."""
    methods: tuple[tuple[str, str], ...] | None = DEMO_METHODS
    """(row label, method) pairs; None: every registered method."""
    teacher_log_every: int = 40
    """A teacher progress line (with ETA) every this many steps (41 steps per epoch)."""
    weight_scaling: str = "gradient"
    """The students' ``train.weight_scaling``: ``gradient`` weakens every term that pulls harder against the
    cross-entropy than the method's published weights make it on a CIFAR ResNet pair to that balance
    (:mod:`kdlab.methods.scaling`; on this tiny pair the published weights make feature terms 10-150 times stronger);
    ``none``: the published weights as they are."""

    @classmethod
    def fast(cls) -> DemoSettings:
        """The default demo: :data:`DEMO_METHODS`, a short schedule."""
        return cls()

    @classmethod
    def full(cls) -> DemoSettings:
        """``--all``: every registered method on the longer schedule of the first demo."""
        return cls(teacher_epochs=30, student_epochs=40, methods=None)

    @classmethod
    def quick(cls, all_methods: bool = False) -> DemoSettings:
        """A smoke-test schedule (``--quick``)."""
        return cls(
            teacher_epochs=3,
            student_epochs=2,
            train_per_class=10,
            eval_every=1,
            methods=None if all_methods else DEMO_METHODS,
            teacher_log_every=20,
        )

    def rows(self) -> list[tuple[str, str]]:
        """(row label, method) of every student row, ``ce`` (the student alone) first."""
        if self.methods is not None:
            return list(self.methods)
        from kdlab.methods import METHODS

        # kd right after ce: the methods that reduce to kd here (sum, mt_kd, dgkd with one teacher) are then marked
        # "= kd" whatever the registration order (sum registers before kd since method configs moved)
        return [("ce", "ce"), ("kd", "kd")] + [(m, m) for m in METHODS.names() if m not in ("ce", "kd")]


def _base(settings: DemoSettings) -> dict:
    return {
        "data": {"name": "digits", "batch_size": settings.batch_size, "augment": "crop_flip", "crop_padding": 1},
        "optim": {"lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
        "train": {
            "device": "cpu",
            "threads": 1,
            "eval_every": settings.eval_every,
            "weight_scaling": settings.weight_scaling,
        },
        "log": {"progress": "off"},
    }


def teacher_spec(settings: DemoSettings, out: Path):
    """The one-run sweep that trains the demo's teacher (with a progress display: it runs in this process)."""
    from kdlab.experiments.spec import parse_spec

    raw = _base(settings)
    raw["model"] = {"student": TEACHER}
    raw["method"] = {"name": "ce"}
    raw["train"]["epochs"] = settings.teacher_epochs
    # a sweep turns progress off (it reports each run); the teacher runs alone, in this process: show its progress
    shown = {"log.progress": "auto", "log.every_steps": settings.teacher_log_every, "train.threads": 1}
    rows = [{"label": "teacher", "config": raw, "overrides": shown}]
    return parse_spec({"name": "demo_teacher", "run_dir": str(out / "runs"), "seeds": [0], "rows": rows})


def student_spec(settings: DemoSettings, out: Path, teacher_ckpt: Path, seeds: int, rows: list[tuple[str, str]]):
    """The sweep of every (label, method) row at the method's registered defaults (``ce``: the student alone), over
    ``seeds`` seeds."""
    from kdlab.experiments.spec import parse_spec

    spec_rows = []
    for label, method in rows:
        raw = _base(settings)
        raw["model"] = {"student": STUDENT}
        if method != "ce":
            raw["model"]["teachers"] = [{"name": TEACHER, "checkpoint": str(teacher_ckpt)}]
        raw["method"] = {"name": method}
        raw["data"]["train_per_class"] = settings.train_per_class
        raw["train"]["epochs"] = settings.student_epochs
        spec_rows.append({"label": label, "config": raw, "pair": PAIR})
    which = "every registered method" if settings.methods is None else "a representative set of methods"
    return parse_spec(
        {
            "name": "demo_digits",
            "description": f"{which[0].upper()}{which[1:]}, {TEACHER} -> {STUDENT} on digits "
            f"({settings.train_per_class} training images per class, {settings.student_epochs} epochs), at the "
            "methods' defaults.",
            "run_dir": str(out / "runs"),
            "seeds": list(range(seeds)),
            "overrides": {"train.threads": 1},  # one thread per run: the runs share the cores (--workers)
            "rows": spec_rows,
        }
    )


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    m, s = divmod(seconds, 60)
    return f"{m:d}:{s:02d}"


class StudentProgress:
    """The ``on_outcome`` callback of the students' sweep: one line per finished run with the elapsed time and an
    ETA (elapsed per trained run times the runs left; runs skipped as already finished cost nothing).

    Args:
        emit: where a line goes (default: the ``kdlab`` logger at INFO).
        clock: the time source (seconds).
        workers: runs trained at once (they start together: the first ones finish together).
    """

    def __init__(
        self,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        workers: int = 1,
    ) -> None:
        self.emit = emit or (lambda line: log.info("%s", line))
        self.workers = workers
        self.clock = clock
        self.t0 = clock()
        self.trained = 0
        self.skipped = 0

    def __call__(self, outcome, index: int, total: int) -> None:
        if outcome.status == "skipped":
            self.skipped += 1
        else:
            self.trained += 1
        elapsed = self.clock() - self.t0
        left = total - index
        # runs start ``workers`` at a time: until as many have finished, the ones still running started with them
        eta = elapsed / max(self.trained, min(self.workers, total)) * left if self.trained else 0.0
        run = outcome.run
        if outcome.row is not None:
            done = " (already done)" if outcome.status == "skipped" else ""
            what = f"test top-1 {outcome.row['last_top1']:.2f}{done}"
        else:
            what = f"{outcome.status}: {outcome.message}"
        self.emit(
            f"[{index}/{total}] {run.label} seed {run.seed}: {what} | {_clock(elapsed)} elapsed, eta {_clock(eta)}"
        )


def _teacher_line(outcome, i: int, total: int) -> None:
    if outcome.row is not None:
        log.info("teacher %s: test top-1 %.2f", outcome.status, outcome.row["last_top1"])
    else:
        log.info("teacher %s: %s", outcome.status, outcome.message)


def _stop_if_interrupted(outcomes) -> None:
    """An interrupted run stops the demo (exit code 130); running the demo again resumes it."""
    from kdlab.train.trainer import TrainingInterrupted

    for o in outcomes:
        if o.status in ("interrupted", "not run"):
            raise TrainingInterrupted(f"the demo was interrupted at {o.run.key}; run the same command to resume it")


def default_workers() -> int:
    """Runs trained at once: one per CPU core, at most 2 (each run uses one thread)."""
    return max(1, min(2, os.cpu_count() or 1))


def fingerprint(row: dict) -> tuple:
    """What identifies a trained student in its store row: test top-1, top-5 and test loss after the last epoch."""
    last = (json.loads(row.get("metrics") or "{}").get("last") or {}) if isinstance(row.get("metrics"), str) else {}
    return (row.get("last_top1"), row.get("last_top5"), last.get("loss"))


def same_as(prints: dict[str, list]) -> dict[str, str]:
    """Rows whose runs equal an earlier row's at every seed: ``{row: earlier row}`` (e.g. ``sum`` -> ``kd``).

    ``prints`` maps a row to one :func:`fingerprint` per seed (seed order). Equal test top-1, top-5 and test loss at
    every seed (two seeds at least) mean the same trained student: a method that reduces to another here. The
    student alone (``ce``) is never marked."""
    out: dict[str, str] = {}
    seen: list[str] = []
    for label, values in prints.items():
        twin = next((s for s in seen if prints[s] == values and len(values) > 1), None)
        if twin is not None and label != "ce":
            out[label] = twin
        else:
            seen.append(label)
    return out


def run_demo(
    out_dir: str | Path = "runs/demo",
    seeds: int = 3,
    quick: bool = False,
    workers: int | None = None,
    all_methods: bool = False,
    settings: DemoSettings | None = None,
    weight_scaling: str | None = None,
) -> Path:
    """Run the demo; returns the path of ``report.md``.

    Args:
        out_dir: where the runs, the results store and the reports go.
        seeds: seeds per method (the same seeds for every method: the differences are paired).
        quick: the smoke-test schedule.
        workers: student runs trained at once (default :func:`default_workers`).
        all_methods: every registered method, on the longer schedule (``kdlab demo --all``).
        settings: overrides the schedule chosen by ``quick`` / ``all_methods``.
        weight_scaling: the students' ``train.weight_scaling`` (default: the settings', ``gradient``).
    """
    if settings is None:
        if quick:
            settings = DemoSettings.quick(all_methods)
        else:
            settings = DemoSettings.full() if all_methods else DemoSettings.fast()
    if weight_scaling is not None:
        settings = dataclasses.replace(settings, weight_scaling=weight_scaling)
    workers = default_workers() if workers is None else workers
    if workers < 1 or seeds < 1:
        from kdlab.config import ConfigError

        raise ConfigError(f"kdlab demo: --workers and --seeds must be at least 1 (got {workers} and {seeds})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with DemoLog(out / "demo.log") as console:  # one line per run on the console, all of it in demo.log
        return _run_phases(out, settings, seeds, workers, console)


def _run_phases(out: Path, settings: DemoSettings, seeds: int, workers: int, console: DemoLog) -> Path:
    """The demo's three phases (teacher, students, report); returns the path of ``report.md``."""
    from kdlab.experiments.report import plot_bars, summarize, write_report
    from kdlab.experiments.sweep import run_sweep

    store = out / "results.sqlite"
    t0 = time.perf_counter()
    rows = settings.rows()
    steps = settings.teacher_epochs * math.ceil(TRAIN_IMAGES / settings.batch_size)
    log.info(
        "kdlab demo [1/3] teacher: training %s with plain cross-entropy on all %d digits training images, %d epochs "
        "(%d steps); the students learn from it",
        TEACHER,
        TRAIN_IMAGES,
        settings.teacher_epochs,
        steps,
    )
    (t_out,) = run_sweep(teacher_spec(settings, out), store_path=store, on_outcome=_teacher_line)
    _stop_if_interrupted([t_out])
    if t_out.row is None:
        raise RuntimeError(f"the demo's teacher run failed: {t_out.message} (see {t_out.run.run_dir})")
    teacher = t_out.row
    spec = student_spec(settings, out, t_out.run.run_dir / "checkpoint.pt", seeds, rows)
    log.info(
        "kdlab demo [2/3] students: %d methods x %d seeds = %d runs of %s on %d images per class, %d epochs each, "
        "%d at a time; every method uses the same seeds, so its difference to the student alone (ce) is paired; "
        "loss weights: %s",
        len(rows),
        seeds,
        len(rows) * seeds,
        STUDENT,
        settings.train_per_class,
        settings.student_epochs,
        workers,
        "the published ones, a term that pulls harder against the cross-entropy than on a CIFAR ResNet pair "
        "weakened to that balance (train.weight_scaling=gradient)"
        if settings.weight_scaling == "gradient"
        else "the published ones as they are (train.weight_scaling=none)",
    )
    console.quiet_runs = True  # a student run's own lines (in this process with --workers 1) go to demo.log only
    outcomes = run_sweep(spec, workers=workers, store_path=store, on_outcome=StudentProgress(workers=workers))
    console.quiet_runs = False
    _stop_if_interrupted(outcomes)

    by_seed: dict[str, dict[int, float]] = {}
    prints: dict[str, dict[int, tuple]] = {}
    skipped: dict[str, str] = {}
    for o in outcomes:
        if o.row is not None:
            by_seed.setdefault(o.run.label, {})[o.run.seed] = o.row["last_top1"]
            prints.setdefault(o.run.label, {})[o.run.seed] = fingerprint(o.row)
        elif o.run.label not in skipped:
            skipped[o.run.label] = o.message or o.status
    for method in skipped:  # a method counts as able to run only when every seed ran
        by_seed.pop(method, None)
    results = {m: [v[s] for s in sorted(v)] for m, v in by_seed.items()}
    twins = same_as({m: [prints[m][s] for s in sorted(prints[m])] for m in results})
    elapsed = time.perf_counter() - t0

    log.info("kdlab demo [3/3] report: mean ± std per method and the paired difference to the student alone")
    shown = [o.row for o in outcomes if o.row is not None and o.run.label in results and o.run.label not in twins]
    cells = summarize(shown)
    write_report(cells, out / "report", "kdlab demo: distillation on digits", spec.description, baseline="ce")
    plot_bars(cells, out / "accuracy.png", "kdlab demo: digits, student alone (ce) vs. distillation", baseline="ce")
    report = write_demo_report(out, results, skipped, teacher, settings, seeds, elapsed, twins)
    (out / "results.json").write_text(
        json.dumps({"results": results, "skipped": skipped, "same_as": twins, "settings": to_dict(settings)}, indent=2)
        + "\n"
    )
    log.info("kdlab demo: done in %s; report %s", _clock(elapsed), report)
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
    twins: dict[str, str] | None = None,
) -> Path:
    """Write ``report.md``: the verdict table per method, the methods that cannot run, and where the sweep report
    is. ``results`` maps a row to its last-epoch test top-1 per seed (seed order); ``teacher`` is the teacher's
    results-store row; ``twins`` maps a row to the earlier row its runs equal (:func:`same_as`)."""
    twins = twins or {}
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
        if method in twins:
            twin = twins[method]
            why = SAME_AS_EXPLAINED.get((method, twin), "identical runs at every seed")
            lines.append(f"| {method} | = {twin} ({why}) | | |")
            continue
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
        "(the CIFAR-100 reference weights and temperatures), untuned for this tiny pair. At those weights, terms on "
        "logits with a temperature (kd, dkd, TeKAP) keep their CIFAR balance with the cross-entropy here; terms "
        "that normalise the student's representation (feature, relation, contrastive, correlation terms: fitnet, "
        "crd, dist, ...) are 10 to 150 times stronger relative to it than on a CIFAR ResNet pair (README, "
        '"The demo\'s verdicts"; `benchmarks/loss_scales.py`).',
        "",
        (
            "Loss weights: `train.weight_scaling=gradient`, one rule for every method: a term whose gradient "
            "relative to the cross-entropy's (at the student's initial weights) is larger than its published weights "
            "give on a CIFAR ResNet pair is weakened to that balance, no term is strengthened (the factors are in "
            "each run's `summary.json`, "
            "`header.method.term_scales`; "
            "`kdlab demo --weight-scaling none` shows the published weights as they are)."
            if settings.weight_scaling == "gradient"
            else "Loss weights: the published ones as they are (`--weight-scaling none`)."
        ),
    ]
    if settings.methods is not None:
        lines += ["", "`kdlab demo --all` runs every registered method (a few minutes)."]
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
