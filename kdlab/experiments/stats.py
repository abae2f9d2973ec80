"""Per-metric tables and paired t-tests for ``kdlab report``.

TGeo-KD reports "statistical significance for p <= 0.01 compared to the strongest baseline based on the paired
t-test". kdlab does that for every table: within each report column (pair) and for every evaluated metric, each row
is compared with the *strongest other row that trains the same student model* (the best mean, by the metric's
direction; teacher rows train another model and are never a baseline), paired by seed: ``scipy.stats.ttest_rel``
over the seeds both rows ran (at least 2), two-sided. The value compared is each run's metric after its last epoch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from kdlab.metrics import METRICS, higher_is_better

#: Metric display order in reports (registered metrics first, in registry order).
ORDER = ("top1", "top5", "auc", "nll", "ece", "map", "map_50", "map_75", "map_s", "map_m", "map_l")
#: Metrics in percent, printed like top-1 (the box mAP family of detection runs too).
_PERCENT = ("top1", "top5", "map", "map_50", "map_75", "map_s", "map_m", "map_l")


@dataclass
class PairedTest:
    """One row against its strongest baseline on one metric.

    Attributes:
        row, pair: the tested cell (row name and report column).
        metric: the metric.
        baseline: the strongest other row (same student model) by mean.
        n: seeds both rows ran.
        diff: mean over those seeds of (row - baseline).
        t, p: ``scipy.stats.ttest_rel`` statistic and two-sided p-value (NaN when undefined, e.g. equal values).
    """

    row: str
    pair: str
    metric: str
    baseline: str
    n: int
    diff: float
    t: float
    p: float

    @property
    def better(self) -> bool:
        """Whether the row's mean is better than the baseline's (by the metric's direction)."""
        return self.diff > 0 if higher_is_better(self.metric) else self.diff < 0


def metric_names(cells) -> list[str]:
    """The metrics any cell has values for, in :data:`ORDER` (then alphabetical)."""
    found = {m for c in cells for m, by_seed in c.values.items() if by_seed}

    def key(m: str) -> tuple:  # the student EMA's ema_<metric> (train.ema_decay) after all the raw weights' metrics
        base = m.removeprefix("ema_")
        return (m != base, ORDER.index(base) if base in ORDER else len(ORDER), m)

    return sorted(found, key=key)


def paired_tests(cells) -> list[PairedTest]:
    """Every cell against the strongest other cell of its column with the same student, for every metric (see the
    module docstring). Cells need ``row_name``, ``pair``, ``students`` and ``values[metric][seed]``."""
    from scipy.stats import ttest_rel

    out = []
    for metric in metric_names(cells):
        if metric not in METRICS and metric != "loss":
            continue
        sign = 1.0 if higher_is_better(metric) else -1.0
        for cell in cells:
            mine = cell.values.get(metric) or {}
            if not mine:
                continue
            rivals = [
                c
                for c in cells
                if c is not cell and c.pair == cell.pair and c.values.get(metric) and c.students & cell.students
            ]
            if not rivals:
                continue
            best = max(rivals, key=lambda c: sign * statistics.fmean(c.values[metric].values()))
            seeds = sorted(set(mine) & set(best.values[metric]))
            if len(seeds) < 2:
                continue
            a = [mine[s] for s in seeds]
            b = [best.values[metric][s] for s in seeds]
            diff = statistics.fmean(x - y for x, y in zip(a, b))
            if all(x == y for x, y in zip(a, b)):
                t, p = math.nan, math.nan
            else:
                res = ttest_rel(a, b)
                t, p = float(res.statistic), float(res.pvalue)
            out.append(PairedTest(cell.row_name, cell.pair, metric, best.row_name, len(seeds), diff, t, p))
    return out


def _num(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _fmt(metric: str, values: list[float], fmt) -> str:
    """Percent metrics with ``fmt`` (2 decimals); the 0..1 and nats metrics with 4 decimals."""
    if metric.removeprefix("ema_") in _PERCENT or not values:
        return fmt(values)
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown_sections(cells, fmt) -> list[str]:
    """Markdown lines: a table of every metric (mean ± std over seeds, last epoch) when the runs evaluated more than
    top-1/top-5, and the paired t-tests. ``fmt`` formats a list of values as ``mean ± std``."""
    names = metric_names(cells)
    lines: list[str] = []
    if set(names) - {"top1", "top5"}:
        lines += [
            "",
            "## Metrics",
            "",
            "Test metrics after the last epoch, mean ± std over seeds (top-1 and box mAP in %, AUC and ECE in 0..1, "
            "NLL in nats; "
            "ema_*: the student's moving average, train.ema_decay).",
            "",
            "| row | pair | n | " + " | ".join(names) + " |",
            "|---|---|---|" + "---|" * len(names),
        ]
        for c in cells:
            vals = [_fmt(m, list((c.values.get(m) or {}).values()), fmt) for m in names]
            lines.append(f"| {c.row_name} | {c.pair} | {c.n} | " + " | ".join(vals) + " |")
    tests = paired_tests(cells)
    if tests:
        lines += [
            "",
            "## Paired t-test against the strongest baseline",
            "",
            "Each row against the best other row of its column that trains the same student (by mean), per metric; "
            "scipy.stats.ttest_rel over the seeds both ran (two-sided), on each run's last-epoch value. "
            "diff = row − baseline; ✓ marks a better mean with p ≤ 0.01.",
            "",
            "| row | pair | metric | strongest baseline | n | diff | t | p |  |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for t in tests:
            mark = "✓" if t.better and not math.isnan(t.p) and t.p <= 0.01 else ""
            lines.append(
                f"| {t.row} | {t.pair} | {t.metric} | {t.baseline} | {t.n} | {t.diff:+.4g} | {_num(t.t)} | "
                f"{_num(t.p, 3)} | {mark} |"
            )
    return lines


__all__ = ["ORDER", "PairedTest", "markdown_sections", "metric_names", "paired_tests"]
