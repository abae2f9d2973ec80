"""``kdlab report``: numbers equal a hand computation on fixture run directories; problems are listed, never fatal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_cli import kdlab, kdlab_in_process

from kdlab.config import build_config, dump_config
from kdlab.experiments.report import mean_curve, report
from kdlab.experiments.spec import expand, parse_spec
from kdlab.experiments.store import ResultsStore

TINY_RAW = {
    "model": {"student": "convnet_xs", "teachers": [{"name": "convnet_s"}]},
    "data": {"name": "synthetic", "num_classes": 4, "image_size": 8, "train_size": 96, "test_size": 48},
    "method": {"name": "kd"},
    "train": {"epochs": 3, "device": "cpu", "threads": 1},
}


def fake_run(
    run_dir: Path,
    config: dict,
    curve: list[float],
    identity: dict | None = None,
    top5: float = 90.0,
    finished: bool = True,
) -> dict:
    """Write a run directory as the trainer would (config.yaml, metrics.jsonl, summary.json) with the test top-1
    ``curve`` (one value per epoch), plus ``sweep.json`` when ``identity`` is given; returns the summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_config(config)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    records = [{"stage": "main", "epoch": e + 1, "test": {"top1": v, "top5": top5}} for e, v in enumerate(curve)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    best = max(range(len(curve)), key=lambda i: curve[i])
    summary = {
        "run": run_dir.name,
        "method": cfg.method.name,
        "student": cfg.model.student,
        "teachers": [t.name for t in cfg.model.teachers],
        "dataset": cfg.data.name,
        "seed": cfg.train.seed,
        "epochs": len(curve),
        "steps": 10 * len(curve),
        "finished": finished,
        "last": {"epoch": len(curve), "top1": curve[-1], "top5": top5},
        "best": {"epoch": best + 1, "top1": curve[best], "top5": top5},
        "train_time_s": 1.5,
        "images_per_s": 1000.0,
        "versions": {"kdlab": "0.1.0", "torch": "x"},
        "git_commit": None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if identity is not None:
        (run_dir / "sweep.json").write_text(json.dumps(identity))
    return summary


def sample_std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


# per (row, seed): the test top-1 curve over 3 epochs
CURVES = {
    ("KD", 0): [50.0, 70.0, 68.0],
    ("KD", 1): [52.0, 66.0, 71.0],
    ("KD", 2): [40.0, 73.0, 72.5],
    ("CE", 0): [45.0, 60.0, 61.0],
}


def _fixture_store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore(tmp_path / "results.sqlite")
    for (label, seed), curve in CURVES.items():
        d = tmp_path / "runs" / f"{label}_s{seed}"
        identity = {"sweep": "fx", "label": label, "pair": "convnet_s→convnet_xs", "grid": {}, "seed": seed}
        identity["target"] = 73.33 if label == "KD" else None
        cfg = {**TINY_RAW, "train": {**TINY_RAW["train"], "seed": seed}}
        fake_run(d, cfg, curve, identity)
        store.record_run_dir(d)
    return store


def test_report_numbers_equal_a_hand_computation(tmp_path):
    store = _fixture_store(tmp_path)
    rep = report("fx", out_dir=tmp_path / "out", store_path=store.path)
    kd = next(c for c in rep.cells if c.label == "KD")
    last = [CURVES[("KD", s)][-1] for s in range(3)]  # 68.0, 71.0, 72.5
    best = [max(CURVES[("KD", s)]) for s in range(3)]  # 70.0, 71.0, 73.0
    m_last, s_last = sum(last) / 3, sample_std(last)
    assert kd.n == 3 and kd.seeds == [0, 1, 2]
    assert math.isclose(sum(kd.last_top1) / kd.n, m_last) and math.isclose(sample_std(kd.best_top1), sample_std(best))
    assert math.isclose(kd.diff, m_last - 73.33)
    md = rep.markdown.read_text()
    # the paper-style cell: mean ± std (n), the published number and the difference
    assert f"{m_last:.2f} ± {s_last:.2f} (n=3) · paper 73.33 ({m_last - 73.33:+.2f})" in md
    # the detail line: best top-1 mean ± std and the mean best epoch (2, 3, 2)
    assert f"| {sum(best) / 3:.2f} ± {sample_std(best):.2f} | {7 / 3:.1f} | 3 |" in md
    # one seed: the mean alone, no std, no published number
    assert "| CE | 61.00 (n=1) |" in md
    tex = rep.latex.read_text()
    assert f"{m_last:.2f}$\\pm${s_last:.2f}" in tex and f"[73.33, {m_last - 73.33:+.2f}]" in tex
    assert r"convnet\_s$\to$convnet\_xs" in tex
    # the accuracy curve is the mean over seeds per epoch
    assert mean_curve(kd.curves) == [(1, (50 + 52 + 40) / 3), (2, (70 + 66 + 73) / 3), (3, m_last)]
    assert rep.curves.stat().st_size > 1000 and rep.bars.stat().st_size > 1000


def test_spec_report_lists_missing_corrupt_and_foreign_runs_and_uses_the_rest(tmp_path):
    import yaml

    raw = {"name": "sp", "run_dir": str(tmp_path / "runs"), "seeds": [0, 1, 2, 3, 4]}
    raw["rows"] = [{"label": "KD", "config": TINY_RAW, "target": 70.0}]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    runs = expand(parse_spec(raw, spec_path))
    for run, v in zip(runs[:4], [60.0, 64.0, 99.0, 98.0]):  # seed 4 never ran
        fake_run(run.run_dir, run.config, [v - 5, v])
    (runs[2].run_dir / "summary.json").write_text("{ not json")  # corrupt
    other = {**runs[3].config, "optim": {**runs[3].config["optim"], "lr": 0.5}}  # a run of another config
    (runs[3].run_dir / "config.yaml").write_text(dump_config(build_config(other)))
    rep = report(str(spec_path), out_dir=tmp_path / "out")
    (cell,) = rep.cells
    assert cell.last_top1 == [60.0, 64.0] and cell.n == 2
    text = " ".join(rep.problems)
    assert "not readable JSON" in text and "another config" in text and "does not exist" in text
    md = rep.markdown.read_text()
    assert "## Problems" in md and f"62.00 ± {sample_std([60.0, 64.0]):.2f} (n=2) · paper 70.00 (-8.00)" in md


def test_report_cli_on_a_stored_sweep_and_unknown_names(tmp_path):
    store = _fixture_store(tmp_path)
    proc = kdlab("report", "fx", "--store", str(store.path), "--out", str(tmp_path / "rep"))
    assert "| KD |" in proc.stdout and (tmp_path / "rep" / "report.tex").is_file()
    assert (tmp_path / "rep" / "bars.png").stat().st_size > 1000
    # the refusals through the same entry point in this process (a fresh interpreter costs ~3 CPU-s each)
    bad = kdlab_in_process("report", "nope", "--store", str(store.path), check=False)
    assert bad.returncode == 2 and "no finished runs of sweep 'nope'" in bad.stderr and "fx" in bad.stderr
    missing = kdlab_in_process("report", str(tmp_path / "missing.yaml"), check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_stored_run_whose_directory_is_gone_still_counts(tmp_path):
    import shutil

    store = _fixture_store(tmp_path)
    shutil.rmtree(tmp_path / "runs" / "KD_s1")
    rep = report("fx", out_dir=tmp_path / "out", store_path=store.path)
    kd = next(c for c in rep.cells if c.label == "KD")
    assert kd.n == 3 and len(kd.curves) == 2
    assert any("KD_s1" in p and "missing" in p for p in rep.problems)


@pytest.mark.parametrize("value", [[], [70.0]])
def test_fmt_without_spread(value):
    from kdlab.experiments.report import fmt

    assert fmt(value) == ("–" if not value else "70.00")


# ---- charts and rows (issue #16): honest axes, readable curves, published columns only where a target exists ----


def _cells(labels: list[str], pairs: list[str], target: float | None = None):
    from kdlab.experiments.report import Cell

    cells = []
    for j, pair in enumerate(pairs):
        for i, label in enumerate(labels):
            top1 = [80.0 + i + j, 82.0 + i + j, 81.0 + i + j]
            curves = [[(1, 40.0 + i), (2, 60.0 + i), (3, v)] for v in top1]
            cells.append(Cell(label, pair, {}, target, [0, 1, 2], top1, top1, [3, 3, 3], [95.0] * 3, [3] * 3, curves))
    return cells


@pytest.fixture
def figures(monkeypatch):
    """The figures the report's plot functions close (instead of only their PNG files)."""
    import kdlab.experiments.report as rep

    kept = []
    real = rep._plt

    def plt_keeping():
        plt = real()

        class Keep:
            def __getattr__(self, name):
                return getattr(plt, name)

            def close(self, fig):
                kept.append(fig)

        return Keep()

    monkeypatch.setattr(rep, "_plt", plt_keeping)
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept:
        plt.close(fig)


def test_grouped_bars_start_at_zero(tmp_path, figures):
    from kdlab.experiments.report import plot_bars

    assert plot_bars(_cells(["ce", "kd"], ["a→b", "c→d"]), tmp_path / "bars.png", baseline="ce")
    (ax,) = figures[0].axes
    assert ax.get_ylim()[0] == 0.0  # bars encode length: a truncated axis would exaggerate differences


def test_one_pair_chart_is_dots_with_error_bars_and_the_baseline(tmp_path, figures):
    from kdlab.experiments.report import mean, plot_bars

    cells = _cells(["ce", "kd", "dkd"], ["a→b"])
    assert plot_bars(cells, tmp_path / "bars.png", baseline="ce")
    (ax,) = figures[0].axes
    assert not ax.patches  # no bars on a truncated axis
    assert len(ax.containers) == 3 and all(c.has_xerr for c in ax.containers)  # a dot with an error bar per row
    (line,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert line.get_xdata()[0] == mean(cells[0].last_top1)  # the student alone as the reference line
    at = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    assert [at[y] for y in sorted(at, reverse=True)] == ["ce", "kd", "dkd"]  # first row on top


def test_curves_are_small_multiples_with_the_baseline_in_every_panel(tmp_path, figures):
    from kdlab.experiments.report import plot_curves

    labels = ["ce", "kd", "dkd", "dist", "crd"]
    assert plot_curves(_cells(labels, ["a→b"]), tmp_path / "curves.png", baseline="ce")
    axes = figures[0].axes
    shown = [ax for ax in axes if ax.axison]
    assert len(axes) == 8 and len(shown) == 5  # a 2 x 4 grid, the last three panels empty
    assert [ax.get_title().split(" (")[0] for ax in shown] == labels
    for ax in shown[1:]:  # the student alone (grey) beside each method's thin seed lines and thick mean
        assert any(ln.get_color() == "#999999" for ln in ax.lines) and len(ax.lines) == 1 + 3 + 1


def test_published_columns_only_where_a_target_exists():
    from kdlab.experiments.report import markdown

    without = markdown(_cells(["ce", "kd"], ["a→b"]), "t")
    assert "| paper |" not in without and "published" not in without
    with_target = markdown(_cells(["ce", "kd"], ["a→b"], target=80.0), "t")
    assert "| paper | diff |" in with_target and "published number" in with_target


def test_the_teacher_row_puts_the_published_teacher_accuracy_beside_the_measured_one():
    """A row's ``target.teacher_top1`` (DIST Table 4's teacher column) appears next to the teacher top-1 the runs
    measured; a pair without runs shows the published number alone; a pair without either stays empty."""
    from kdlab.experiments.report import Cell, teacher_row

    cells = [
        Cell("KD", "t→s", {}, 72.6, teacher_top1=[79.91, 79.91], target_teacher_top1=80.1),
        Cell("DIST", "t→s", {}, 74.5, teacher_top1=[79.91], target_teacher_top1=80.1),
        Cell("KD", "big→s", {}, 80.0, target_teacher_top1=86.3),
        Cell("Student", "u→s", {}, 73.4),
    ]
    assert teacher_row(cells, ["t→s", "big→s", "u→s"]) == [
        "| teacher (measured) | 79.91 (paper 80.10) | – (paper 86.30) |  |"
    ]
    assert teacher_row([Cell("Student", "u→s", {}, 73.4)], ["u→s"]) == []
