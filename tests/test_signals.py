"""Signals and exit codes (issue #15): SIGTERM/Ctrl-C during start-up exits 130 with a message; bench and sweep stop
as a whole on the first signal; a closed stdout pipe is quiet; the exit codes 0 / 1 / 2 / 130 of the README."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from catalogue_util import assert_clean_error, run_case
from runrecord_util import write_tiny_config

from kdlab.train import trainer as trainer_module
from kdlab.train.trainer import Trainer

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}


def _signal_self(signum: int = signal.SIGTERM) -> None:
    """Deliver ``signum`` to this process (its Python handler runs before the next bytecode)."""
    os.kill(os.getpid(), signum)


def _signal_at_step(monkeypatch, n: int, signum: int = signal.SIGTERM) -> dict:
    """Send ``signum`` to this process during the ``n``-th training step of the process (over all trainers)."""
    calls = {"steps": 0, "fits": 0}
    real_step, real_fit = Trainer._backward_step, Trainer.fit

    def step(self, loss, *args, **kwargs):
        calls["steps"] += 1
        if calls["steps"] == n:
            _signal_self(signum)
        return real_step(self, loss, *args, **kwargs)

    def fit(self):
        calls["fits"] += 1
        return real_fit(self)

    monkeypatch.setattr(Trainer, "_backward_step", step)
    monkeypatch.setattr(Trainer, "fit", fit)
    return calls


# ------------------------------------------------------------------------------------------------ start-up
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_run_is_built_stops_with_130_and_a_message(tmp_path, monkeypatch, signum):
    cfg = write_tiny_config(tmp_path)
    real = trainer_module.build_run

    def build(*a, **kw):
        _signal_self(signum)
        return real(*a, **kw)

    monkeypatch.setattr(trainer_module, "build_run", build)
    code, out, err = run_case(["train", cfg])
    name = signal.Signals(signum).name
    assert_clean_error(code, out, err, 130, f"stopped by {name}")
    assert not (tmp_path / "runs" / "r" / "checkpoint.pt").exists()


def test_a_signal_before_the_first_step_stops_with_130_saying_no_checkpoint(tmp_path, monkeypatch):
    cfg = write_tiny_config(tmp_path)
    real = trainer_module.Trainer._prepare_context

    def prepare(self):
        _signal_self(signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(trainer_module.Trainer, "_prepare_context", prepare)
    code, out, err = run_case(["train", cfg])
    assert_clean_error(code, out, err, 130, "stopped by SIGTERM before the first step", "no checkpoint was written yet")


# ------------------------------------------------------------------------------------------------ multi-run
@pytest.mark.parametrize("step", [1, 2])
def test_bench_stops_as_a_whole_on_the_first_signal(monkeypatch, step):
    # step 2 is the last step of the first cell: that trainer ends normally, and the bench must not go on;
    # step 1: the cell's trainer stops mid-run, and the bench stops with it (no hint to resume a temporary run)
    calls = _signal_at_step(monkeypatch, step)
    args = ["bench", "methods", "--methods", "kd,dkd", "--teacher", "convnet_s", "--student", "convnet_xs"]
    args += ["--image-size", "8", "--num-classes", "4", "--batch-size", "8", "--steps", "2", "--warmup", "0"]
    code, out, err = run_case([*args, "--rounds", "2", "--threads", "1"])
    assert_clean_error(code, out, err, 130, "kdlab bench stopped by SIGTERM")
    assert calls["fits"] == 1 and "--resume" not in err  # no second cell was trained


def _spec(tmp_path, seeds) -> str:
    config = yaml.safe_load(write_tiny_config(tmp_path).read_text())
    for key in ("name", "run_dir"):
        config["train"].pop(key)
    spec = {
        "name": "s",
        "run_dir": str(tmp_path / "sweeps"),
        "seeds": seeds,
        "rows": [{"label": "A", "config": config}],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_sweep_stops_as_a_whole_on_the_first_signal(tmp_path, monkeypatch):
    spec = _spec(tmp_path, [0, 1, 2])
    calls = _signal_at_step(monkeypatch, 6)  # the last step of the first run (2 epochs x 3 steps)
    code, out, err = run_case(["sweep", spec, "--store", tmp_path / "r.sqlite"])
    assert code == 130 and "Traceback" not in err, out + err
    assert calls["fits"] == 1
    runs = sorted((tmp_path / "sweeps" / "s").iterdir())
    assert [r.name.endswith("s0") for r in runs] == [True]  # the other runs never started
    assert "not run" in err


def test_sweep_interrupted_mid_run_resumes_on_the_next_call(tmp_path, monkeypatch):
    spec = _spec(tmp_path, [0, 1])
    _signal_at_step(monkeypatch, 2)
    code, out, err = run_case(["sweep", spec, "--store", tmp_path / "r.sqlite"])
    assert code == 130 and "interrupted" in err, out + err
    monkeypatch.undo()
    code, out, err = run_case(["sweep", spec, "--store", tmp_path / "r.sqlite"])
    assert code == 0, out + err
    assert "2 done" in out


# ------------------------------------------------------------------------------------------------ pipes
def test_a_closed_stdout_pipe_exits_quietly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab", "list", "methods"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    proc.stdout.close()  # like `| head` that has read enough
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# ------------------------------------------------------------------------------------------------ exit codes
def test_exit_codes_0_1_2(tmp_path, monkeypatch):
    cfg = write_tiny_config(tmp_path, epochs=1)
    assert run_case(["train", cfg])[0] == 0
    code, out, err = run_case(["train", cfg, "train.name=other", "train.epochs=notanumber"])
    assert_clean_error(code, out, err, 2, "train.epochs")

    def nan_step(self, batch, progress):
        raise trainer_module.NonFiniteLossError("non-finite loss at step 0: term 'ce' = nan")

    monkeypatch.setattr(Trainer, "_step_teachers", nan_step)
    code, out, err = run_case(["train", cfg, "train.name=third"])
    assert_clean_error(code, out, err, 1, "non-finite loss")


@pytest.mark.slow
def test_sigterm_stops_a_sweep_with_workers_as_a_whole(tmp_path):
    spec = _spec(tmp_path, [0, 1, 2, 3])
    text = open(spec).read().replace("epochs: 2", "epochs: 400")
    open(spec, "w").write(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab", "sweep", spec, "--workers", "2", "--store", str(tmp_path / "r.sqlite")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    root = tmp_path / "sweeps" / "s"
    t0 = time.monotonic()
    while len(list(root.glob("*/checkpoint.pt"))) < 2 and time.monotonic() - t0 < 300:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)  # both workers checkpoint and stop; no further run starts
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    started = sorted(p.parent.name for p in root.glob("*/checkpoint.pt"))
    assert len(started) == 2 and err.count("interrupted:") == 2 and err.count("not run:") == 2, err
    for name in started:
        lines = (root / name / "metrics.jsonl").read_text().splitlines()
        epochs = [json.loads(x)["epoch"] for x in lines]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 400
