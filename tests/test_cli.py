"""The real command line, in subprocesses: 2-step runs, eval, list, show, errors, SIGTERM + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdlab.methods import METHODS

from conftest import REPO

TINY = [
    "data.name=synthetic",
    "data.num_classes=4",
    "data.image_size=8",
    "data.train_size=96",
    "data.test_size=48",
    "data.batch_size=16",
    "train.device=cpu",
    "train.threads=1",
    "log.progress=plain",
]


def kdlab(*args: str, cwd=None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kdlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kdlab_in_process(*args: str, cwd=None, check: bool = True) -> subprocess.CompletedProcess:
    """``kdlab ARGS`` through :func:`kdlab.cli.main.main` in this process (in ``cwd`` if given); stdout and stderr
    captured as by :func:`kdlab` (log lines included); with ``check`` a non-zero exit code fails."""
    import contextlib
    import io
    import logging

    from kdlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("kdlab")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(here)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    proc = subprocess.CompletedProcess(["kdlab", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"kdlab {' '.join(args)} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_teacher")
    kdlab_in_process(  # the teacher only has to exist: no fresh interpreter (~5 CPU-s) for it
        "train",
        str(REPO / "configs/debug/digits_ce.yaml"),
        *TINY,
        "train.epochs=2",
        "train.name=t",
        f"train.run_dir={tmp}",
    )
    return tmp / "t" / "checkpoint.pt"


@pytest.mark.parametrize("method", METHODS.names())
def test_two_step_run_then_eval(tmp_path, teacher, method):
    args = [
        str(REPO / "configs/debug/digits_kd.yaml"),
        *TINY,
        f"method.name={method}",
        "train.max_steps=2",
        "train.name=r",
        f"train.run_dir={tmp_path}",
        f"model.teachers.0.checkpoint={teacher}",
    ]
    if student := METHODS.meta(method).get("test_student"):  # the method cannot pair the default tiny student
        args.append(f"model.student={student}")
    # in this process through the CLI's entry point (a fresh interpreter per command cost ~3-5 CPU-s each, most of
    # this file's time); `ce` trains and evaluates student.pt in real subprocesses, as do the other tests here
    run = kdlab if method == "ce" else kdlab_in_process
    proc = run("train", *args)
    assert "test top1" in proc.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["method"] == method
    ev = json.loads(run("eval", str(tmp_path / "r" / "student.pt")).stdout)
    assert ev["top1"] == pytest.approx(summary["last"]["top1"]) and ev["n"] == 48
    ev2 = json.loads(kdlab_in_process("eval", str(tmp_path / "r" / "checkpoint.pt")).stdout)
    assert ev2["top1"] == pytest.approx(ev["top1"])
    if method == "ce":  # data overrides reach the evaluation
        ev3 = kdlab_in_process("eval", str(tmp_path / "r" / "student.pt"), "--data", "test_limit=10").stdout
        assert json.loads(ev3)["n"] == 10


def test_list_and_show():
    assert "kd" in kdlab("list", "methods").stdout  # one real process; the rest in this one
    assert "digits" in kdlab_in_process("list", "datasets").stdout
    assert "convnet_s" in kdlab_in_process("list", "models").stdout
    shown = kdlab_in_process("show", str(REPO / "configs/debug/digits_kd.yaml"), "method.temperature=2").stdout
    assert "temperature: 2.0" in shown and "student: convnet_xs" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "configs/debug/digits_ce.yaml", "optim.weight_decy=1"], "Did you mean 'weight_decay'"),
        (["train", "configs/debug/digits_ce.yaml", "model.student=resnet9000"], "unknown model 'resnet9000'"),
        (["train", "configs/debug/digits_ce.yaml", "data.name=imagenet22k"], "unknown dataset 'imagenet22k'"),
        (["train", "configs/debug/digits_ce.yaml", "method.name=nope"], "unknown method 'nope'"),
        (["train", "configs/nope.yaml"], "does not exist"),
        (
            ["train", "configs/debug/digits_ce.yaml", "data.name=cifar100", "data.root=/nonexistent-kdlab"],
            "data.download=true",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, args, message):
    proc = kdlab_in_process(*args, f"train.run_dir={tmp_path}", cwd=REPO, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_checkpoint_exits_2(tmp_path):
    proc = kdlab_in_process("eval", str(tmp_path / "nowhere" / "student.pt"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    cfg = str(REPO / "configs/debug/digits_ce.yaml")
    proc = kdlab_in_process("train", cfg, *TINY, f"train.run_dir={tmp_path}", "--resume", check=False)
    assert proc.returncode == 2 and "--resume: no checkpoint" in proc.stderr


def test_corrupt_checkpoint_exits_1(tmp_path):
    bad = tmp_path / "student.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = kdlab_in_process("eval", str(bad), check=False)
    assert proc.returncode == 1 and "truncated or corrupt" in proc.stderr


def test_sigterm_in_process_writes_checkpoint_and_resume_matches_uninterrupted(tmp_path, monkeypatch):
    """The fast sibling of the real-process test below: the CLI's entry point in this process, a real SIGTERM to
    this process during step 8 of 18 (its handler as the command line installs it), exit 130 with the resume hint,
    then ``--resume`` ends bitwise equal to an uninterrupted run."""
    from test_signals import _signal_at_step

    common = [str(REPO / "configs/debug/digits_ce.yaml"), *TINY, "train.epochs=3", f"train.run_dir={tmp_path}"]
    kdlab_in_process("train", *common, "train.name=full")
    with monkeypatch.context() as m:
        _signal_at_step(m, 8)
        proc = kdlab_in_process("train", *common, "train.name=cut", check=False)
    assert proc.returncode == 130 and "--resume" in proc.stderr, proc.stderr
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "student.pt").exists()
    kdlab_in_process("train", *common, "train.name=cut", "--resume")
    a = torch.load(tmp_path / "full" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_resume_matches_uninterrupted(tmp_path):
    common = [
        str(REPO / "configs/debug/digits_ce.yaml"),
        *TINY,
        "data.train_size=2000",
        "train.epochs=6",
        f"train.run_dir={tmp_path}",
        "log.every_steps=1",
    ]
    kdlab("train", *common, "train.name=full")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab", "train", *common, "train.name=cut"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal arrived: nothing to test on this machine
        pytest.skip("run finished before SIGTERM")
    assert proc.returncode == 130, err
    assert "--resume" in err
    kdlab("train", *common, "train.name=cut", "--resume")
    a = torch.load(tmp_path / "full" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
