"""Acceptance (issue #15): SIGKILL at random steps of a run that checkpoints every step, then ``--resume``: the final
weights are bitwise equal to an uninterrupted run's and ``metrics.jsonl`` has exactly one line per epoch."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from runrecord_util import write_tiny_config

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}
EPOCHS = 14


def _lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_ends_bitwise_equal(tmp_path):
    # one step per epoch and a checkpoint every epoch: a checkpoint after every step
    cfg = write_tiny_config(
        tmp_path, epochs=EPOCHS, data={"train_size": 16, "test_size": 16}, train={"checkpoint_every": 1}
    )
    kdlab = [sys.executable, "-m", "kdlab", "train", str(cfg)]
    ref = subprocess.run([*kdlab, "train.name=ref"], capture_output=True, text=True, env=ENV, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "runs" / "r"
    rng = random.Random(15)
    kills = []
    for target in sorted(rng.sample(range(1, EPOCHS - 2), 4)):
        resume = ["--resume"] if (run / "checkpoint.pt").is_file() else []
        proc = subprocess.Popen([*kdlab, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        t0 = time.monotonic()
        while _lines(run / "metrics.jsonl") < target and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))  # somewhere in the following steps, checkpoint writes or evaluation
        proc.kill()
        proc.wait(timeout=60)
        kills.append((target, proc.returncode, _lines(run / "metrics.jsonl")))
    assert any(code == -9 for _, code, _ in kills), kills  # at least one kill landed mid-run
    final = subprocess.run([*kdlab, "--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1)), kills
    a, b = _state(run / "checkpoint.pt"), _state(tmp_path / "runs" / "ref" / "checkpoint.pt")
    for part in ("student", "method"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["progress"] == b["progress"]
    assert not list(run.glob(".*.tmp"))
    ref_lines = [json.loads(x) for x in (tmp_path / "runs" / "ref" / "metrics.jsonl").read_text().splitlines()]
    got_lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["train"] for x in got_lines] == [x["train"] for x in ref_lines]
    assert [x["test"] for x in got_lines] == [x["test"] for x in ref_lines]
