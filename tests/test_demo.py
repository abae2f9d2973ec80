"""`kdlab demo` through the real CLI, on a short schedule: every registered method appears in the report."""

from __future__ import annotations

import json

from test_cli import kdlab

from kdlab.methods import METHODS


def test_demo_quick_writes_report_table_and_plot(tmp_path):
    proc = kdlab("demo", "--quick", "--seeds", "2", "--out", str(tmp_path / "demo"))
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| ce (student alone) |" in report and "| kd |" in report
    assert (tmp_path / "demo" / "accuracy.png").stat().st_size > 1000
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    # every registered method either ran on both seeds or is listed with the reason it cannot run
    for method in METHODS.names():
        assert len(results["results"].get(method, [])) == 2 or method in results["skipped"], method
    assert "| method |" in proc.stdout


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
