"""The report's metric table and paired t-test (kdlab.experiments.stats) against scipy on known numbers, and the
store's metric columns."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import ttest_rel

from kdlab.experiments.report import Cell, markdown, summarize
from kdlab.experiments.stats import paired_tests


def _row(label, seed, top1, auc, nll, student="bert4"):
    metrics = {"last": {"top1": top1, "auc": auc, "nll": nll, "loss": nll}, "best": {}}
    return {
        "row_label": label,
        "pair": "t→s",
        "grid": "{}",
        "seed": seed,
        "student": student,
        "last_top1": top1,
        "best_top1": top1,
        "best_epoch": 1,
        "last_epoch": 1,
        "metrics": json.dumps(metrics),
    }


RUNS = {  # label: (top1, auc, nll) per seed 0..2
    "Teacher": ([95.0, 95.5, 96.0], [0.99, 0.99, 0.99], [0.10, 0.11, 0.12]),
    "Student": ([90.0, 91.0, 89.5], [0.950, 0.955, 0.948], [0.30, 0.28, 0.31]),
    "KD": ([91.0, 91.5, 90.0], [0.960, 0.962, 0.957], [0.27, 0.26, 0.29]),
    "TGeo-KD": ([92.0, 93.5, 91.0], [0.962, 0.970, 0.961], [0.25, 0.24, 0.26]),
}


def _cells():
    records = []
    for label, (top1, auc, nll) in RUNS.items():
        student = "bert12" if label == "Teacher" else "bert4"
        records += [_row(label, s, top1[s], auc[s], nll[s], student) for s in range(3)]
    return summarize(records)


def test_paired_ttest_against_the_strongest_baseline_matches_scipy():
    tests = {(t.row, t.metric): t for t in paired_tests(_cells())}
    # TGeo-KD's strongest rival with the same student is KD on every metric (the teacher trains another model)
    for metric, idx in (("top1", 0), ("auc", 1), ("nll", 2)):
        t = tests[("TGeo-KD", metric)]
        assert t.baseline == "KD" and t.n == 3
        want = ttest_rel(RUNS["TGeo-KD"][idx], RUNS["KD"][idx])
        assert t.t == pytest.approx(want.statistic) and t.p == pytest.approx(want.pvalue)
    # KD's strongest rival is TGeo-KD (higher top-1, lower NLL); the teacher is compared with nobody
    assert tests[("KD", "top1")].baseline == "TGeo-KD" and tests[("KD", "nll")].baseline == "TGeo-KD"
    assert not any(t.row == "Teacher" for t in tests.values())
    assert tests[("TGeo-KD", "nll")].better and not tests[("KD", "nll")].better


def test_equal_values_give_no_p_value_and_one_seed_no_test():
    cells = summarize(
        [_row("A", s, 90.0, 0.9, 0.3) for s in range(2)] + [_row("B", s, 90.0, 0.9, 0.3) for s in range(2)]
    )
    assert all(math.isnan(t.p) for t in paired_tests(cells))
    assert paired_tests(summarize([_row("A", 0, 90.0, 0.9, 0.3), _row("B", 0, 91.0, 0.9, 0.3)])) == []


def test_markdown_shows_metrics_and_p_values():
    text = markdown(_cells(), "t")
    assert "## Metrics" in text and "| TGeo-KD | t→s | 3 | 92.17 ± 1.26 | 0.9643 ± 0.0049 | 0.2500 ± 0.0100 |" in text
    p = ttest_rel(RUNS["TGeo-KD"][1], RUNS["KD"][1]).pvalue
    assert "## Paired t-test against the strongest baseline" in text
    assert "| TGeo-KD | t→s | auc | KD | 3 |" in text and f"{p:.3g}" in text


def test_image_tables_get_the_ttest_on_top1_only():
    rows = [
        {
            "row_label": lab,
            "pair": "r56→r20",
            "grid": "{}",
            "seed": s,
            "student": "resnet20",
            "last_top1": v,
            "best_top1": v,
            "best_epoch": 1,
            "last_epoch": 1,
        }
        for lab, vals in (("KD", [70.1, 70.5, 70.3]), ("DKD", [71.0, 71.6, 71.2]))
        for s, v in enumerate(vals)
    ]
    tests = paired_tests(summarize(rows))
    assert {(t.row, t.metric) for t in tests} == {("KD", "top1"), ("DKD", "top1")}
    want = ttest_rel([71.0, 71.6, 71.2], [70.1, 70.5, 70.3])
    assert next(t for t in tests if t.row == "DKD").p == pytest.approx(want.pvalue)
    assert "## Metrics" not in markdown(summarize(rows), "t")  # top-1 only: the main table says it all


def test_store_records_metric_columns(tmp_path):
    from kdlab.experiments.store import _metric_columns

    summary = {
        "last": {"epoch": 3, "top1": 90.0, "auc": 0.95, "nll": 0.3, "ece": 0.02, "loss": 0.3, "n": 100},
        "best": {"epoch": 2, "top1": 91.0, "auc": 0.96},
        "select_by": "auc",
    }
    cols = _metric_columns(summary)
    assert (cols["last_auc"], cols["last_nll"], cols["last_ece"], cols["select_by"]) == (0.95, 0.3, 0.02, "auc")
    assert json.loads(cols["metrics"])["best"] == {"top1": 91.0, "auc": 0.96}
    assert isinstance(Cell("a", "b", {}).values, dict)
