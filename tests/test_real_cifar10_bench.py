"""The real-data benchmark's driver logic (``benchmarks/real_cifar10.py``, issue 22), without training: the run
order, the report paths, the partial report, the before/after guard and the controls' configs."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_cifar10_bench", REPO / "benchmarks" / "real_cifar10.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(bench, tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(
        train_per_class=bench.DEFAULT_PER_CLASS,
        epochs=20,
        seeds=3,
        test_limit=2000,
        student="resnet8",
        lr=0.05,
        threads=1,
        jobs=2,
        out=tmp_path,
        before=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_runs_are_seed_major_so_every_method_gets_seed_0_first(bench):
    tasks = bench.run_tasks(["ce", "kd", "simkd"], 3)
    assert tasks[:3] == [("ce", 0), ("kd", 0), ("simkd", 0)]
    assert tasks[3:6] == [("ce", 1), ("kd", 1), ("simkd", 1)]
    assert len(tasks) == 9


def test_report_paths_keep_the_500_image_table_beside_the_default(bench):
    assert bench.DEFAULT_PER_CLASS == 200
    assert bench.report_path(200).name == "real_cifar10.md"
    assert bench.report_path(50).name == "real_cifar10_50pc.md"


def test_every_control_has_a_reference_and_a_note_and_every_ordered_label_exists(bench):
    assert set(bench.CONTROL_PAIRS) == set(bench.CONTROL_NOTES)
    assert set(bench.CONTROL_PAIRS) <= set(bench.VARIANTS)
    assert set(bench.RUN_ORDER) <= set(bench.VARIANTS)
    assert all(ref in bench.VARIANTS for ref in bench.CONTROL_PAIRS.values())


def test_a_partial_report_gives_each_method_the_seeds_that_finished(bench, tmp_path):
    args = _args(bench, tmp_path)
    runs = bench.runs_dir(args)
    finished = {("ce", 0): 40.0, ("ce", 1): 41.0, ("kd", 0): 42.5, ("kd", 2): 44.0}  # kd seed 1 missing
    for (label, seed), top1 in finished.items():
        d = runs / bench.run_name(label, seed)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"finished": True, "last": {"top1": top1}, "train_time_s": 60}))
    results = bench.collect(["ce", "kd", "simkd"], 3, runs)
    assert results["ce"]["top1"] == [40.0, 41.0]
    assert results["kd"]["top1"] == [42.5]  # stops at the first missing seed: pairs stay aligned by seed
    text = bench.report(results, ["ce", "kd", "simkd"], [], args, None, complete=False)
    assert "PARTIAL" in text
    assert "| ce | 2 | 40.50 ± 0.71 |" in text
    assert "| kd | 1 | 42.50 ± n/a | +2.50 ± n/a |" in text
    assert "| simkd | 0 | not run yet |" in text
    assert "2,000 class-balanced training images (200 per class" in text
    assert "Training time summed over the runs 0.1 h." in text  # 4 runs x 60 s, whichever invocation wrote it
    assert "Re-runs" not in text  # no --rerun


def test_re_runs_at_several_commits_say_whether_their_kdlab_is_the_same(bench):
    assert bench.same_kdlab(["abc+dirty", "def"]) is False
    assert bench.same_kdlab(["unknown"]) is False
    head = bench.code_version()
    if head == "unknown" or head.endswith("+dirty"):
        pytest.skip("not a clean git checkout")
    assert bench.same_kdlab([head, head]) is True


def test_re_runs_are_compared_with_the_stored_run_of_the_same_label_and_seed(bench, tmp_path):
    def run(label: str, seed: int, top1: float, code: str, out: Path) -> None:
        d = bench.runs_dir(_args(bench, out)) / bench.run_name(label, seed)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"finished": True, "last": {"top1": top1}, "train_time_s": 60}))
        (d / "bench.json").write_text(json.dumps({"code": code}))

    for seed, top1 in enumerate((40.0, 41.0, 42.0)):
        run("ce", seed, top1, "aaa", tmp_path / "stored")
        run("kd[holdout]", seed, top1 + 1, "bbb+dirty", tmp_path / "stored")
    run("ce", 0, 40.0, "ccc", tmp_path / "again")
    run("kd[holdout]", 0, 40.5, "ccc", tmp_path / "again")
    labels = ["ce", "simkd", "kd[holdout]"]
    stored = bench.collect(labels, 3, bench.runs_dir(_args(bench, tmp_path / "stored")))
    again = bench.collect(labels, 3, bench.runs_dir(_args(bench, tmp_path / "again")))
    lines = bench.rerun_lines(stored, again, labels)
    assert lines[3].startswith("1 of 2 re-runs give the stored top-1 exactly.")
    assert "from scratch at commit ccc, in a separate folder" in lines[3]
    assert "| ce | 0 | 40.00 (aaa) | 40.00 (ccc) | equal |" in lines
    assert "| kd[holdout] | 0 | 41.00 (bbb+dirty) | 40.50 (ccc) | -0.50 |" in lines
    text = bench.report(stored, ["ce", "simkd"], ["kd[holdout]"], _args(bench, tmp_path), None, True, again)
    assert "## Re-runs" in text and "| ce | 0 | 40.00 (aaa) | 40.00 (ccc) | equal |" in text


def test_before_after_is_skipped_against_another_subset_size(bench, tmp_path):
    before = tmp_path / "before.json"
    before.write_text(
        json.dumps({"protocol": {"train_per_class": 50, "epochs": 20}, "methods": {"ce": {"top1": [30.0, 31.0]}}})
    )
    results = {"ce": {"top1": [30.0, 31.0]}}
    assert bench.before_after(results, ["ce"], before, {"train_per_class": 200, "epochs": 20}) == []
    lines = bench.before_after(results, ["ce"], before, {"train_per_class": 50, "epochs": 20})
    assert "| ce | identical | 30.50 ± 0.71 (2) |  | 30.50 ± 0.71 (2) |  |" in lines


def test_crd_controls_change_only_their_memory_field(bench, tmp_path):
    from kdlab.config import build_config

    args = _args(bench, tmp_path)
    jpg, ckpt = tmp_path / "cifar10_jpg", tmp_path / "teacher.th"
    base = build_config(bench.run_config("crd", 0, args, jpg, ckpt)).method
    k64 = build_config(bench.run_config("crd[k=64]", 0, args, jpg, ckpt)).method
    m0 = build_config(bench.run_config("crd[m=0]", 0, args, jpg, ckpt)).method
    assert (base.num_negatives, base.momentum) == (16384, 0.5)
    assert (k64.num_negatives, k64.momentum) == (64, 0.5)
    assert (m0.num_negatives, m0.momentum) == (16384, 0.0)


def test_batch_layout_follows_the_loaders_last_batch_rule(bench):
    assert bench.batch_layout(500) == "7 x 64 + 52"  # 52 >= 8: a batch of its own
    assert bench.batch_layout(450) == "6 x 64 + 66"  # 2 < 8: merged into the previous batch
    assert bench.batch_layout(2000) == "31 x 64 + 16"
    assert bench.batch_layout(1800) == "28 x 64 + 8"  # exactly 1/8 of the batch: not below it, kept
    assert bench.batch_layout(192) == "3 x 64"


def test_a_rerun_folder_without_runs_of_the_protocol_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    script = REPO / "benchmarks" / "real_cifar10.py"
    out = subprocess.run(
        [sys.executable, str(script), "--report-only", "--rerun", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "--rerun" in out.stderr and "no runs of this protocol there" in out.stderr
    assert "Traceback" not in out.stderr
