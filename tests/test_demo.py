"""`kdlab demo`: the progress contract (a header per phase, teacher progress with an ETA, a line with an ETA after each
student run) on a shortened in-process demo; the report marks methods identical to another; through the real CLI
(slow, CI) the default set and `--all` on a short schedule, a second demo skipping every finished run."""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
from types import SimpleNamespace

import pytest
from test_cli import kdlab

from kdlab.demo import DEMO_METHODS, DemoSettings, StudentProgress, fingerprint, run_demo, same_as
from kdlab.experiments.store import ResultsStore
from kdlab.methods import METHODS


def test_shortened_demo_reports_progress_and_marks_identical_methods(tmp_path, caplog):
    out = tmp_path / "demo"
    settings = DemoSettings.quick()
    settings.methods = (("ce", "ce"), ("kd", "kd"), ("sum", "sum"))  # sum of its default (kd) is kd
    lines: list[tuple[float, str]] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append((record.created, record.getMessage()))

    handler = Keep(level=logging.INFO)
    logger = logging.getLogger("kdlab")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        report = run_demo(out, seeds=2, workers=1, settings=settings)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = [m for _, m in lines]

    # one header per phase, in order, each saying what it does
    heads = [next(i for i, m in enumerate(text) if f"kdlab demo [{k}/3]" in m) for k in (1, 2, 3)]
    assert heads == sorted(heads)
    assert "teacher" in text[heads[0]] and "students" in text[heads[1]] and "report" in text[heads[2]]
    # the teacher's training shows progress with an ETA while it runs (3 epochs x 41 steps, a line every 20 steps)
    teacher_steps = [m for m in text[heads[0] : heads[1]] if m.startswith("step ") and "eta" in m]
    assert len(teacher_steps) >= 6, text[heads[0] : heads[1]]
    # a line with an ETA after every student run: never more than one run without a line
    student = [m for m in text[heads[1] : heads[2]] if m.startswith("[")]
    assert len(student) == 6 and all("eta" in m for m in student)
    assert [m.split("]")[0] for m in student] == [f"[{i}/6" for i in range(1, 7)]
    # nothing silent for longer than one run (plus its set-up): the gaps between lines, measured
    times = [t for t, _ in lines]
    walls = [json.loads(p.read_text())["wall_time_s"] for p in (out / "runs").rglob("sweep.json")]
    assert max(b - a for a, b in itertools.pairwise(times)) < 2 * max(walls) + 15

    results = json.loads((out / "results.json").read_text())
    assert results["same_as"] == {"sum": "kd"}
    assert results["results"]["sum"] == results["results"]["kd"]
    md = report.read_text()
    assert "| sum | = kd (with one method (its default) sum is that method) | | |" in md
    assert "| sum |" not in (out / "report" / "report.md").read_text()  # the sweep report leaves the twin out
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "report" / "curves.png").stat().st_size > 1000
    # one line per run: the teacher's header shortened; the students (in this process: workers=1) add nothing but
    # their progress line; demo.log has every run's full header (1 teacher + 6 students)
    headers = [m for m in text if m.startswith("run header:")]
    assert len(headers) == 1 and "\n" not in headers[0] and "full header: demo.log" in headers[0]
    assert all(m.startswith("[") for m in text[heads[1] + 1 : heads[2]]), text[heads[1] : heads[2]]
    full = (out / "demo.log").read_text()
    assert full.count("run header:") == 7 and full.count("\n  system   cpu") == 7


def _header_text(teachers: list[dict]) -> str:
    from kdlab.train.header import format_header

    return format_header(
        {
            "data": {"name": "digits", "train": 1297, "val": 0, "test": 500, "classes": 10, "input_size": [1, 8, 8]},
            "student": {
                "name": "convnet_xs",
                "parameters": 5120,
                "macs": 90000,
                "input_mean": None,
                "input_std": None,
                "checkpoint": None,
            },
            "method": {"name": "kd", "changed": {"temperature": 2.0}},
            "teachers": teachers,
            "system": {
                "device": "cpu",
                "precision": "fp32",
                "teacher_precision": "fp32",
                "threads": 1,
                "allocator": "system",
                "seed": 0,
                "processes": 1,
            },
            "schedule": {"epochs": 3, "steps_per_epoch": 41, "batch_size": 32},
        }
    )


def test_run_header_as_one_line():
    from kdlab.demo_output import header_line

    teacher = {
        "name": "convnet_m",
        "parameters": 19130,
        "macs": 525630,
        "input_mean": None,
        "input_std": None,
        "checkpoint": "runs/t/checkpoint.pt",
        "sha256": "ab" * 32,
        "test": {"top1": 97.2, "top5": 99.8},
    }
    text = _header_text([teacher])
    assert len(text.splitlines()) == 5
    assert header_line(text) == (
        "run header: kd (temperature=2.0); digits: 1297 train / 0 val / 500 test; student convnet_xs: 5.12k "
        "parameters; teacher0 convnet_m: 19.13k parameters, test top-1 97.20 % (full header: demo.log, summary.json)"
    )
    assert header_line(_header_text([])).startswith("run header: kd (temperature=2.0); digits: 1297 train")


def test_demo_log_keeps_everything_in_its_file_and_one_line_per_run_on_the_console(tmp_path):
    from kdlab.demo_output import DemoLog

    logger = logging.getLogger("kdlab.test_demo_output")  # a logger of its own: nothing else logs to it
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    header = _header_text([])
    try:
        with DemoLog(tmp_path / "demo.log", logger) as console:
            logger.info("%s", header)
            logger.info("step 20/123 epoch 1 | eta 0:00:03")  # from this test file: not the training loop's
            console.quiet_runs = True
            logger.info("%s", header)  # a student's header: file only
            logger.warning("crd: num_negatives exceeds the negatives available")
        logger.info("after the demo")
    finally:
        logger.removeHandler(handler)
    assert seen == [
        "run header: kd (temperature=2.0); digits: 1297 train / 0 val / 500 test; student convnet_xs: 5.12k "
        "parameters (full header: demo.log, summary.json)",
        "step 20/123 epoch 1 | eta 0:00:03",
        "crd: num_negatives exceeds the negatives available",
        "after the demo",
    ]
    full = (tmp_path / "demo.log").read_text()
    assert full.count(header) == 2 and "crd: num_negatives" in full and "after the demo" not in full
    assert console not in logger.filters


def test_student_progress_eta_counts_trained_runs_only():
    now = [0.0]
    got: list[str] = []
    progress = StudentProgress(emit=got.append, clock=lambda: now[0])

    def outcome(status, label, seed, top1=50.0):
        run = SimpleNamespace(label=label, seed=seed)
        return SimpleNamespace(status=status, run=run, row={"last_top1": top1}, message="")

    progress(outcome("skipped", "ce", 0), 1, 4)  # a finished run from an earlier demo: no time, no ETA yet
    assert got[-1] == "[1/4] ce seed 0: test top-1 50.00 (already done) | 0:00 elapsed, eta 0:00"
    now[0] = 10.0
    progress(outcome("done", "kd", 0, 61.25), 2, 4)  # 10 s per trained run, 2 runs left
    assert got[-1] == "[2/4] kd seed 0: test top-1 61.25 | 0:10 elapsed, eta 0:20"
    now[0] = 30.0
    failed = SimpleNamespace(status="failed", run=SimpleNamespace(label="x", seed=1), row=None, message="boom")
    progress(failed, 3, 4)
    assert got[-1] == "[3/4] x seed 1: failed: boom | 0:30 elapsed, eta 0:15"


def test_student_progress_eta_with_two_workers_counts_the_runs_started_together():
    now = [100.0]
    got: list[str] = []
    progress = StudentProgress(emit=got.append, clock=lambda: now[0], workers=2)
    now[0] += 60.0  # the first two runs started together; one finished after 60 s, the other is about to
    run = SimpleNamespace(status="done", run=SimpleNamespace(label="ce", seed=0), row={"last_top1": 50.0}, message="")
    progress(run, 1, 9)
    assert got[-1].endswith("1:00 elapsed, eta 4:00")  # 8 runs left, 2 every 60 s
    progress(run, 2, 9)
    assert got[-1].endswith("1:00 elapsed, eta 3:30")


def test_same_as_finds_rows_identical_at_every_seed():
    def row(top1, loss):
        return {"last_top1": top1, "last_top5": 99.0, "metrics": json.dumps({"last": {"loss": loss, "top1": top1}})}

    assert fingerprint(row(70.0, 0.5)) == (70.0, 99.0, 0.5)
    prints = {
        "ce": [fingerprint(row(10.0, 2.30)), fingerprint(row(10.0, 2.31))],
        "kd": [fingerprint(row(10.0, 2.29)), fingerprint(row(10.0, 2.30))],  # same accuracy, another model
        "sum": [fingerprint(row(10.0, 2.29)), fingerprint(row(10.0, 2.30))],
        "dkd": [fingerprint(row(10.0, 2.29)), fingerprint(row(12.0, 2.30))],
    }
    assert same_as(prints) == {"sum": "kd"}
    assert same_as({"kd": prints["kd"][:1], "sum": prints["sum"][:1]}) == {}  # one seed is not evidence


def test_default_demo_set_and_schedules():
    labels = [label for label, _ in DEMO_METHODS]
    assert labels[0] == "ce" and {"kd", "dkd", "dist", "crd", "fitnet", "simkd", "tekap_kd", "tgeo_kd"} <= set(labels)
    assert all(method in METHODS.names() for _, method in DEMO_METHODS)
    full = DemoSettings.full()
    others = [m for m in METHODS.names() if m not in ("ce", "kd")]
    assert full.methods is None and [m for _, m in full.rows()] == ["ce", "kd", *others]  # kd before its twins
    assert DemoSettings.fast().rows() == list(DEMO_METHODS)


@pytest.mark.parametrize("flag", ["--workers", "--seeds"])
def test_demo_refuses_zero_workers_or_seeds_before_training(tmp_path, capsys, flag):
    from kdlab.cli.main import main

    assert main(["demo", flag, "0", "--out", str(tmp_path / "d")]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_paired_difference_and_verdict():
    from kdlab.demo import paired

    diff, se, sig = paired([72.0, 75.0, 74.0], [70.0, 71.0, 70.0])
    assert diff == 10 / 3
    assert math.isclose(se, math.sqrt(((2 - diff) ** 2 + (4 - diff) ** 2 + (4 - diff) ** 2) / 2) / math.sqrt(3))
    assert sig  # 3.33 > 2 * 0.67
    diff, se, sig = paired([70.0, 75.0, 68.0], [70.0, 71.0, 70.0])
    assert not sig  # +0.67 with se 1.76: within the spread
    assert paired([71.0], [70.0])[2] is False  # one seed: no verdict


def _check_cli_demo(out, proc, labels: list[str], seeds: int) -> dict:
    report = (out / "report.md").read_text()
    assert "| ce (student alone) |" in report and "| kd |" in report
    assert (out / "accuracy.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    # every row either ran on every seed or is listed with the reason it cannot run
    for label in labels:
        assert len(results["results"].get(label, [])) == seeds or label in results["skipped"], label
    assert "| method |" in proc.stdout
    # the runs are in the results store: the teacher, and each row that ran, once per seed, with the same numbers
    store = ResultsStore(out / "results.sqlite")
    (teacher,) = store.query(sweep="demo_teacher")
    assert teacher["method"] == "ce" and teacher["student"] == "convnet_m" and teacher["finished"] == 1
    assert f"test top-1 {teacher['last_top1']:.2f} %" in report
    rows = store.query(sweep="demo_digits")
    for label, values in results["results"].items():
        stored = sorted((r["seed"], r["last_top1"]) for r in rows if r["row_label"] == label)
        assert stored == list(enumerate(values)), label
    kd = results["results"]["kd"]
    assert f"| kd | {statistics.mean(kd):.2f} ± {statistics.stdev(kd):.2f} |" in report
    sweep_report = (out / "report" / "report.md").read_text()
    assert f"(n={seeds})" in sweep_report and "| kd |" in sweep_report
    assert (out / "report" / "report.tex").is_file() and (out / "report" / "curves.png").stat().st_size > 1000
    for twin in results["same_as"]:
        assert f"| {twin} | = " in report
    return results


@pytest.mark.slow
def test_cli_demo_quick_default_set_then_rerun_skips_everything(tmp_path):
    out = tmp_path / "demo"
    proc = kdlab("demo", "--quick", "--seeds", "2", "--out", str(out), timeout=1200)
    assert "kdlab demo [2/3] students: 9 methods x 2 seeds" in proc.stderr
    results = _check_cli_demo(out, proc, [label for label, _ in DEMO_METHODS], 2)
    # a second demo with the same settings trains nothing: every run is skipped, the numbers are unchanged
    summaries = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
    again = kdlab("demo", "--quick", "--seeds", "2", "--out", str(out), timeout=600)
    assert "(already done)" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")} == summaries
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]


@pytest.mark.slow
def test_cli_demo_all_runs_every_registered_method(tmp_path):
    out = tmp_path / "demo"
    proc = kdlab("demo", "--quick", "--all", "--seeds", "2", "--out", str(out), timeout=2400)
    results = _check_cli_demo(out, proc, METHODS.names(), 2)
    # with one teacher, sum / mt_kd / dgkd train exactly as kd: marked, not shown as unexplained identical rows
    for name in ("sum", "mt_kd", "dgkd"):
        if name in results["results"]:
            assert results["same_as"].get(name) == "kd", name
