"""``kdlab report``: a paper-style table (Markdown and LaTeX) and plots of a sweep's runs.

Runs are grouped into cells by (row label, pair, grid point). Per cell: the number of seeds, mean +- sample
standard deviation (n - 1 in the denominator; none with one seed) of the test top-1 after the last epoch and at
the best epoch, the last top-5, the published number of the row and the difference (last top-1 mean minus the
published number). The main table puts rows down and pairs across, like the papers' tables; a detail table
has one line per cell. The headline number is the test top-1, or for detection runs (no top-1) the box mAP
(``last_map``/``best_map``, :func:`headline`); a table of detection runs says so. Plots: test top-1 (box mAP) over
epochs per cell (mean over seeds, from ``metrics.jsonl``) and bars per row and pair with the seed std as error bars
and the published number as a marker.

Runs come from a sweep spec (each planned run directory is read: the truth on disk) or from the results store
(a sweep name). A missing, unfinished or corrupt run directory, or one holding another config, is listed under
"Problems" and left out; the report never fails because of one run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.experiments.stats import markdown_sections
from kdlab.experiments.store import RunDirError, read_run_dir, record_from_run

#: The headline metric of a run by preference, and its name in tables: top-1 for classifiers (segmentation: pixel
#: accuracy), box mAP for detectors (which have no top-1).
HEADLINES = {"top1": "top-1", "map": "box mAP"}


def headline(row: dict) -> str:
    """The headline metric of a store-style row: ``"top1"``, or ``"map"`` when the run has no top-1 but a box mAP."""
    return "map" if row.get("last_top1") is None and row.get("last_map") is not None else "top1"


def headline_name(cells: list) -> str:
    """How tables name the cells' headline number (``top-1``, ``box mAP``, or both joined by a slash)."""
    names = list(dict.fromkeys(HEADLINES[c.metric] for c in cells if c.n)) or ["top-1"]
    return " / ".join(names)


@dataclass
class Cell:
    """One table cell: the runs of (label, pair, grid point) over seeds.

    ``last_top1``/``best_top1`` hold the headline number (:func:`headline`): the top-1, or the box mAP of detection
    runs, as ``metric`` says; ``target`` is the published number of the same metric.
    """

    label: str
    pair: str
    grid: dict[str, Any]
    target: float | None = None
    seeds: list[int] = field(default_factory=list)
    last_top1: list[float] = field(default_factory=list)
    best_top1: list[float] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    last_top5: list[float] = field(default_factory=list)
    last_epoch: list[int] = field(default_factory=list)
    curves: list[list[tuple[int, float]]] = field(default_factory=list)
    values: dict[str, dict[int, float]] = field(default_factory=dict)
    """Every evaluated test metric after the last epoch, by seed (``{"auc": {0: 0.91, 1: 0.93}}``; top-1 too)."""
    students: set[str] = field(default_factory=set)
    """Student model(s) of the cell's runs (the paired t-test compares rows that train the same student)."""
    teacher_top1: list[float] = field(default_factory=list)
    """Test top-1 of the pair's (first) teacher as each run measured it at its start (the header)."""
    target_top5: float | None = None
    """The published top-5, where the spec's row gives one (``target: {top1: ..., top5: ...}``)."""
    target_teacher_top1: float | None = None
    """The teacher's published top-1, where the spec's row gives one (``target: {top1: ..., teacher_top1: ...}``)."""
    metric: str = "top1"
    """The headline metric of the cell's runs (``top1``, or ``map`` for detection)."""

    @property
    def n(self) -> int:
        """Number of seeds in the cell."""
        return len(self.last_top1)

    @property
    def grid_text(self) -> str:
        """``key=value, ...`` of the grid point (empty without a grid)."""
        return ", ".join(f"{k}={v}" for k, v in self.grid.items())

    @property
    def row_name(self) -> str:
        """The table row: the label, plus the grid point when there is one."""
        return f"{self.label} [{self.grid_text}]" if self.grid else self.label

    @property
    def diff(self) -> float | None:
        """Mean last top-1 minus the published number."""
        if self.target is None or not self.n:
            return None
        return mean(self.last_top1) - self.target


def mean(values: list[float]) -> float:
    """Arithmetic mean (NaN for no values)."""
    return statistics.fmean(values) if values else math.nan


def std(values: list[float]) -> float | None:
    """Sample standard deviation (``n - 1``); None with fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def read_curve(run_dir: str | Path) -> list[tuple[int, float]]:
    """``(epoch, test top-1)`` of every evaluated main-stage epoch in ``metrics.jsonl`` (unreadable lines skipped);
    the box mAP for a detection run (no top-1)."""
    path = Path(run_dir) / "metrics.jsonl"
    curve = []
    if not path.is_file():
        return curve
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "test" in rec and rec.get("stage", "main") == "main":
            value = rec["test"].get("top1", rec["test"].get("map"))
            if isinstance(value, (int, float)):
                curve.append((int(rec["epoch"]), float(value)))
    return curve


def collect_from_spec(spec) -> tuple[list[dict], list[str], list[Cell]]:
    """Read every planned run directory of ``spec``. Returns the store-style rows (plus ``curve``), the problems
    found, and empty cells for every planned (label, pair, grid point) so rows without runs still appear."""
    from kdlab.experiments.spec import expand

    records, problems, cells = [], [], {}
    for run in expand(spec):
        key = (run.label, run.pair, json.dumps(run.grid, sort_keys=True))
        cell = cells.setdefault(key, Cell(run.label, run.pair, dict(run.grid), run.target))
        cell.target_top5 = run.targets.get("top5", cell.target_top5)
        cell.target_teacher_top1 = run.targets.get("teacher_top1", cell.target_teacher_top1)
        try:
            files = read_run_dir(run.run_dir)
        except RunDirError as err:
            problems.append(f"{run.key}: {err}")
            continue
        if files.config_hash != run.config_hash:
            problems.append(
                f"{run.key}: {str(run.run_dir)!r} holds a run of another config (hash {files.config_hash}, spec "
                f"{run.config_hash}); re-run the sweep"
            )
            continue
        if not files.summary.get("finished"):
            problems.append(f"{run.key}: the run in {str(run.run_dir)!r} did not finish; resume it with kdlab sweep")
            continue
        row = record_from_run(files)
        row.update(sweep=run.sweep, row_label=run.label, pair=run.pair, grid=json.dumps(run.grid, sort_keys=True))
        row["target_top1"] = run.target
        row["curve"] = read_curve(run.run_dir)
        records.append(row)
    return records, problems, list(cells.values())


#: The sweep name under which ``kdlab report`` finds the runs recorded outside any sweep (``kdlab results --import``).
IMPORTED = "imported"


def collect_from_store(store, sweep: str) -> tuple[list[dict], list[str]]:
    """The store's finished rows of ``sweep`` with their curves; a run directory gone since is a problem (its
    numbers still count, without a curve). ``sweep`` :data:`IMPORTED` also takes the rows without a sweep (runs
    brought in with ``kdlab results --import``; each labelled by its method and pair)."""
    records, problems = [], []
    rows = store.query(sweep=sweep)
    if sweep == IMPORTED:
        rows = [r for r in store.query() if r.get("sweep") in (None, IMPORTED)]
    for row in rows:
        if not row.get("finished"):
            problems.append(f"{row['row_label']} | {row['pair']} | s{row['seed']}: not finished; left out")
            continue
        if not Path(row["run_dir"]).is_dir():
            problems.append(
                f"{row['row_label']} | {row['pair']} | s{row['seed']}: run directory {row['run_dir']!r} is missing "
                "(its numbers count, without a curve)"
            )
            row["curve"] = []
        else:
            row["curve"] = read_curve(row["run_dir"])
        records.append(row)
    return records, problems


def summarize(records: Iterable[dict], cells: list[Cell] | None = None) -> list[Cell]:
    """Group store-style rows into :class:`Cell` s (first-appearance order; ``cells`` give the planned order)."""
    out: dict[tuple, Cell] = {}
    for c in cells or []:
        out[(c.label, c.pair, json.dumps(c.grid, sort_keys=True))] = c
    for r in records:
        grid = json.loads(r.get("grid") or "{}")
        key = (r["row_label"], r["pair"], json.dumps(grid, sort_keys=True))
        cell = out.setdefault(key, Cell(r["row_label"], r["pair"], grid, r.get("target_top1")))
        if cell.target is None:
            cell.target = r.get("target_top1")
        cell.seeds.append(r["seed"])
        cell.students.add(str(r.get("student")))
        last = {"top1": r["last_top1"], **(json.loads(r.get("metrics") or "{}").get("last") or {})}
        cell.metric = headline(r)
        top = "last_top1" if cell.metric == "top1" else "last_map"
        for name, value in last.items():
            if value is not None and name not in ("loss", "ema_loss"):
                cell.values.setdefault(name, {})[int(r["seed"])] = float(value)
        cell.last_top1.append(float(r[top]))
        cell.best_top1.append(float(r[top.replace("last_", "best_")]))
        cell.best_epoch.append(int(r["best_epoch"]))
        cell.last_epoch.append(int(r["last_epoch"]))
        if r.get("last_top5") is not None:
            cell.last_top5.append(float(r["last_top5"]))
        if r.get("teacher_top1") is not None:
            cell.teacher_top1.append(float(r["teacher_top1"]))
        curve = r.get("curve")
        if curve is None and r.get("run_dir"):
            curve = read_curve(r["run_dir"])
        if curve:
            cell.curves.append(list(curve))
    return list(out.values())


def fmt(values: list[float]) -> str:
    """``mean ± std`` with two decimals (the mean alone with one value, an en dash with none)."""
    if not values:
        return "–"
    s = std(values)
    return f"{mean(values):.2f}" if s is None else f"{mean(values):.2f} ± {s:.2f}"


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


def _pivot(cells: list[Cell]) -> tuple[list[str], list[str], dict[tuple[str, str], Cell]]:
    rows, cols, at = [], [], {}
    for c in cells:
        if c.row_name not in rows:
            rows.append(c.row_name)
        if c.pair not in cols:
            cols.append(c.pair)
        at[(c.row_name, c.pair)] = c
    return rows, cols, at


def markdown(cells: list[Cell], title: str, description: str = "", problems: list[str] | None = None) -> str:
    """The report as Markdown: the paper-style table (rows x pairs), the detail table, and the problems."""
    rows, cols, at = _pivot(cells)
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    published = any(c.target is not None for c in cells)  # the published columns appear only where a target exists
    published5 = any(c.target_top5 is not None for c in cells)
    what = headline_name(cells)
    lines += [
        f"Test {what} (%) after the last epoch, mean ± std over seeds (sample std), with the number of seeds n"
        + ("; beside it the published number and the difference (ours - published)." if published else "."),
        "",
        "| row | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for r in rows:
        parts = []
        for col in cols:
            c = at.get((r, col))
            if c is None:
                parts.append("")
                continue
            text = f"{fmt(c.last_top1)} (n={c.n})"
            if c.target is not None:
                text += f" · paper {c.target:.2f}" + (f" ({_signed(c.diff)})" if c.diff is not None else "")
            parts.append(text)
        lines.append(f"| {r} | " + " | ".join(parts) + " |")
    lines += teacher_row(cells, cols)
    lines += [
        "",
        "## Per cell",
        "",
        f"| row | pair | grid | n | last {what} | best {what} | best epoch | last epoch | last top-5 |"
        + (" paper | diff |" if published else "")
        + (" paper top-5 |" if published5 else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if published else "") + ("---|" if published5 else ""),
    ]
    for c in cells:
        be = f"{mean(c.best_epoch):.1f}" if c.best_epoch else "–"
        le = f"{mean(c.last_epoch):.0f}" if c.last_epoch else "–"
        paper = "" if c.target is None else f"{c.target:.2f}"
        lines.append(
            f"| {c.label} | {c.pair} | {c.grid_text} | {c.n} | {fmt(c.last_top1)} | {fmt(c.best_top1)} | {be} | "
            f"{le} | {fmt(c.last_top5)} |"
            + (f" {paper} | {_signed(c.diff)} |" if published else "")
            + ((" " + ("" if c.target_top5 is None else f"{c.target_top5:.2f}") + " |") if published5 else "")
        )
    lines += [
        "",
        f"Best {what} is the maximum over the evaluated epochs of each run, measured on the test set: it is an "
        "optimistic number (selection on the test set), reported because papers often print it; the last epoch is "
        "the honest one.",
    ]
    lines += markdown_sections(cells, fmt)  # every metric, and the paired t-tests (kdlab.experiments.stats)
    if problems:
        lines += ["", "## Problems (runs left out)", ""]
        lines += [f"- {p}" for p in problems[:50]]
        if len(problems) > 50:
            lines.append(f"- ... and {len(problems) - 50} more")
    return "\n".join(lines) + "\n"


def teacher_row(cells: list[Cell], cols: list[str]) -> list[str]:
    """The table's "teacher" row: each pair's teacher top-1 as measured at the runs' start (one number when the runs
    agree, as they do for one checkpoint) and, where the spec's rows give it (``target.teacher_top1``), the published
    one as ``(paper 80.10)``; nothing when no run measured a teacher and no row publishes one."""
    by_pair: dict[str, list[float]] = {}
    paper: dict[str, float] = {}
    for c in cells:
        by_pair.setdefault(c.pair, []).extend(c.teacher_top1)
        if c.target_teacher_top1 is not None:
            paper.setdefault(c.pair, c.target_teacher_top1)
    if not any(by_pair.values()) and not paper:
        return []
    parts = []
    for col in cols:
        values = by_pair.get(col) or []
        text = "" if not values else f"{values[0]:.2f}" if len(set(values)) == 1 else fmt(values)
        if col in paper:
            text = f"{text or '–'} (paper {paper[col]:.2f})"
        parts.append(text)
    return ["| teacher (measured) | " + " | ".join(parts) + " |"]


def _tex(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{"}
    repl.update({"}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "→": r"$\to$", "±": r"$\pm$"})
    return "".join(repl.get(ch, ch) for ch in text)


def latex(cells: list[Cell], caption: str = "") -> str:
    """The paper-style table as a LaTeX ``table`` (booktabs): mean $\\pm$ std (n) with the published number and
    the difference in small type below each cell."""
    rows, cols, at = _pivot(cells)
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "c" * len(cols) + "}",
        r"\toprule",
        "Row & " + " & ".join(_tex(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    for r in rows:
        parts = []
        for col in cols:
            c = at.get((r, col))
            if c is None or not c.n:
                parts.append("--" if c is None or c.target is None else rf"-- \scriptsize{{({c.target:.2f})}}")
                continue
            s = std(c.last_top1)
            text = f"{mean(c.last_top1):.2f}" + ("" if s is None else rf"$\pm${s:.2f}") + rf"\,\scriptsize{{({c.n})}}"
            if c.target is not None:
                text += rf" \scriptsize{{[{c.target:.2f}, {c.diff:+.2f}]}}"
            parts.append(text)
        out.append(_tex(r) + " & " + " & ".join(parts) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    cap = caption or f"Test {headline_name(cells)} (\\%) after the last epoch"
    out.append(r"\caption{" + _tex(cap) + r". Mean $\pm$ std over seeds, (number of seeds), [published, difference].}")
    out += [r"\end{table}", ""]
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Mean top-1 per epoch over the curves that evaluated that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for curve in curves:
        for epoch, top1 in curve:
            by_epoch.setdefault(epoch, []).append(top1)
    return [(e, statistics.fmean(v)) for e, v in sorted(by_epoch.items())]


def plot_curves(cells: list[Cell], path: str | Path, title: str = "", baseline: str | None = None) -> bool:
    """Test top-1 over epochs as small multiples: one panel per cell (mean over seeds, thin lines per seed), the
    ``baseline`` row's mean curve (same pair) in grey in every panel, shared axes; False when no cell has a curve."""
    with_curves = [c for c in cells if c.curves]
    if not with_curves:
        return False
    plt = _plt()
    n = len(with_curves)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.6 * ncols + 0.6, 2.1 * nrows + 0.8), sharex=True, sharey=True, squeeze=False
    )
    base = {c.pair: c for c in with_curves if baseline is not None and c.label == baseline}
    several_pairs = len({x.pair for x in cells}) > 1
    for k, c in enumerate(with_curves):
        ax = axes[k // ncols][k % ncols]
        ref = base.get(c.pair)
        if ref is not None and ref is not c:
            bx, by = zip(*mean_curve(ref.curves))
            ax.plot(bx, by, color="#999999", lw=1.2, label=f"{baseline} (mean)")
        for curve in c.curves:
            if len(c.curves) > 1 and curve:
                ax.plot(*zip(*curve), color="#3b75af", lw=0.6, alpha=0.35)
        xs, ys = zip(*mean_curve(c.curves))
        ax.plot(xs, ys, color="#3b75af" if c is not ref else "#555555", lw=1.8, marker="." if len(xs) < 30 else None)
        name = f"{c.row_name} | {c.pair}" if several_pairs else c.row_name
        ax.set_title(f"{name} (n={len(c.curves)})", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    for row in axes:
        row[0].set_ylabel(f"test {headline_name(cells)} (%)", fontsize=8)
    note = f"; grey: {baseline}" if base else ""
    fig.suptitle((title or "test accuracy over epochs") + f" (thick: mean over seeds{note})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_bars(cells: list[Cell], path: str | Path, title: str = "", baseline: str | None = None) -> bool:
    """Bars of mean last top-1 per row, grouped by pair, seed std as error bars, the published number as a black
    marker; ``baseline`` (a row label) is drawn in grey. False when no cell has runs."""
    cells = [c for c in cells if c.n]
    if not cells:
        return False
    plt = _plt()
    rows, cols, at = _pivot(cells)
    if len(cols) == 1:  # one pair: a bar per row, labelled on the x axis
        return _bars_one_pair(plt, [at[(r, cols[0])] for r in rows], path, title or cols[0], baseline)
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(cells) + 2 * len(cols) + 2), 4))
    lo, hi = 100.0, 0.0
    for j, r in enumerate(rows):
        xs, ys, es, targets = [], [], [], []
        for i, col in enumerate(cols):
            c = at.get((r, col))
            if c is None:
                continue
            x = i + (j - (len(rows) - 1) / 2) * width
            xs.append(x)
            ys.append(mean(c.last_top1))
            es.append(std(c.last_top1) or 0.0)
            lo, hi = min(lo, ys[-1] - es[-1]), max(hi, ys[-1] + es[-1])
            if c.target is not None:
                targets.append((x, c.target))
                lo, hi = min(lo, c.target), max(hi, c.target)
        color = "#888888" if r == baseline else None
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=r, color=color)
        if targets:
            tx, ty = zip(*targets)
            ax.scatter(tx, ty, marker="_", s=200, color="black", zorder=3)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=20 if len(cols) > 3 else 0, ha="right" if len(cols) > 3 else "center")
    ax.set_ylim(0.0, min(100.0, hi + 2) if hi > 0 else 100.0)  # bars encode length: the axis starts at 0
    ax.set_ylabel(f"test {headline_name(cells)} (%)")
    ax.set_title(title or f"last-epoch test {headline_name(cells)} (black: published)")
    if len(rows) > 1:
        ax.legend(fontsize=7, ncol=max(1, len(rows) // 12 + 1), loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _bars_one_pair(plt, cells: list[Cell], path: str | Path, title: str, baseline: str | None) -> bool:
    """One pair: a dot per row (mean last top-1) with the seed std as error bars, rows top to bottom, the
    ``baseline`` row's mean as a dashed grey line. Dots encode position, not length, so the axis spans the data
    (with the error bars and published markers) instead of starting at 0."""
    names = [c.row_name for c in cells]
    means = [mean(c.last_top1) for c in cells]
    stds = [std(c.last_top1) or 0.0 for c in cells]
    ys = list(range(len(cells)))[::-1]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.32 * len(cells) + 1.2)))
    colors = ["#555555" if c.label == baseline else "#3b75af" for c in cells]
    for m, y, e, color in zip(means, ys, stds, colors):
        ax.errorbar([m], [y], xerr=[e], fmt="o", color=color, ecolor=color, capsize=3, lw=1, ms=5)
    ref = next((m for c, m in zip(cells, means) if c.label == baseline), None)
    if ref is not None:
        ax.axvline(ref, color="#888888", ls="--", lw=1, label=f"{baseline} (mean)")
    marks = [(c.target, y) for c, y in zip(cells, ys) if c.target is not None]
    if marks:
        ax.scatter(*zip(*marks), marker="|", s=120, color="black", zorder=4, label="published")
    if ref is not None or marks:
        ax.legend(fontsize=7, loc="lower left")
    lows = [m - e for m, e in zip(means, stds)] + [t for t, _ in marks]
    highs = [m + e for m, e in zip(means, stds)] + [t for t, _ in marks]
    pad = max(1.0, 0.05 * (max(highs) - min(lows)))
    ax.set_xlim(max(0.0, min(lows) - pad), min(100.0, max(highs) + pad))
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel(f"test {headline_name(cells)} (%), mean ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


@dataclass
class Report:
    """What :func:`write_report` produced."""

    cells: list[Cell]
    problems: list[str]
    markdown: Path
    latex: Path
    curves: Path | None
    bars: Path | None


def write_report(
    cells: list[Cell],
    out_dir: str | Path,
    title: str,
    description: str = "",
    problems: list[str] | None = None,
    baseline: str | None = None,
) -> Report:
    """Write ``report.md``, ``report.tex``, ``curves.png`` and ``bars.png`` into ``out_dir``; ``baseline`` (a row
    label) is drawn as the reference in the charts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = list(problems or [])
    md, tex = out / "report.md", out / "report.tex"
    md.write_text(markdown(cells, title, description, problems))
    tex.write_text(latex(cells, caption=description or title))
    curves = out / "curves.png" if plot_curves(cells, out / "curves.png", title, baseline=baseline) else None
    bars = out / "bars.png" if plot_bars(cells, out / "bars.png", title, baseline=baseline) else None
    return Report(cells, problems, md, tex, curves, bars)


def report(target: str, out_dir: str | Path | None = None, store_path: str | Path | None = None) -> Report:
    """Report a sweep spec file (read from its run directories) or a sweep name (read from the results store)."""
    from kdlab.config import ConfigError
    from kdlab.experiments.spec import load_spec
    from kdlab.experiments.store import DEFAULT_STORE, ResultsStore

    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        spec = load_spec(path)
        records, problems, planned = collect_from_spec(spec)
        cells = summarize(records, planned)
        name, description = spec.name, spec.description
    else:
        store = Path(store_path or DEFAULT_STORE)
        if not store.exists():
            raise ConfigError(
                f"{target!r} is neither a sweep spec file nor a sweep in the results store {str(store)!r} (no such "
                "file); pass a spec (configs/sweeps/*.yaml) or --store"
            )
        records, problems = collect_from_store(ResultsStore(store, create=False), target)
        if not records:
            names = sorted({r["sweep"] or IMPORTED for r in ResultsStore(store, create=False).query()})
            raise ConfigError(
                f"no finished runs of sweep {target!r} in {str(store)!r}; sweeps there: {', '.join(names) or 'none'}"
            )
        cells = summarize(records)
        name, description = target, ""
    out = Path(out_dir) if out_dir is not None else Path("runs") / "reports" / name
    return write_report(cells, out, f"Sweep {name}", description, problems)
