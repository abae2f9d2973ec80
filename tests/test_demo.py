"""`kdlab demo` through the real CLI, on a short schedule: every registered method appears in the report, the runs
go through the sweep machinery into the results store, and a second demo skips every finished run."""

from __future__ import annotations

import json
import statistics

from test_cli import kdlab

from kdlab.experiments.store import ResultsStore
from kdlab.methods import METHODS


def test_demo_quick_writes_report_table_and_plot(tmp_path):
    out = tmp_path / "demo"
    # every registered method twice: minutes when the CI machine's two cores are shared
    proc = kdlab("demo", "--quick", "--seeds", "2", "--out", str(out), timeout=1200)
    report = (out / "report.md").read_text()
    assert "| ce (student alone) |" in report and "| kd |" in report
    assert (out / "accuracy.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    # every registered method either ran on both seeds or is listed with the reason it cannot run
    for method in METHODS.names():
        assert len(results["results"].get(method, [])) == 2 or method in results["skipped"], method
    assert "| method |" in proc.stdout

    # the runs are in the results store: the teacher, and each method that ran, once per seed, with the same numbers
    store = ResultsStore(out / "results.sqlite")
    (teacher,) = store.query(sweep="demo_teacher")
    assert teacher["method"] == "ce" and teacher["student"] == "convnet_m" and teacher["finished"] == 1
    assert f"test top-1 {teacher['last_top1']:.2f} %" in report
    rows = store.query(sweep="demo_digits")
    for method, values in results["results"].items():
        stored = sorted((r["seed"], r["last_top1"]) for r in rows if r["row_label"] == method)
        assert stored == list(enumerate(values)), method
    kd = results["results"]["kd"]
    assert f"| kd | {statistics.mean(kd):.2f} ± {statistics.stdev(kd):.2f} |" in report
    # the generic sweep report sits beside it
    sweep_report = (out / "report" / "report.md").read_text()
    assert "(n=2)" in sweep_report and "| kd |" in sweep_report
    assert (out / "report" / "report.tex").is_file() and (out / "report" / "curves.png").stat().st_size > 1000

    # a second demo with the same settings trains nothing: every run is skipped, the numbers are unchanged
    summaries = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
    kdlab("demo", "--quick", "--seeds", "2", "--out", str(out), timeout=600)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")} == summaries
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]


def test_paired_difference_and_verdict():
    import math

    from kdlab.demo import paired

    diff, se, sig = paired([72.0, 75.0, 74.0], [70.0, 71.0, 70.0])
    assert diff == 10 / 3
    assert math.isclose(se, math.sqrt(((2 - diff) ** 2 + (4 - diff) ** 2 + (4 - diff) ** 2) / 2) / math.sqrt(3))
    assert sig  # 3.33 > 2 * 0.67
    diff, se, sig = paired([70.0, 75.0, 68.0], [70.0, 71.0, 70.0])
    assert not sig  # +0.67 with se 1.76: within the spread
    assert paired([71.0], [70.0])[2] is False  # one seed: no verdict
