"""Acceptance of the Criteo path (issue #17): a generated Criteo-format train.txt, the shipped recipes through the real
command line, a summary with AUC and NLL, the tgeo_kd recipe distilling from that run's checkpoint, and a resume
that ends bitwise identical to an uninterrupted run. Tiny BERT widths keep it cheap (the recipes' own widths only
change the cost)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from kdlab.config import load_config
from kdlab.data.sources.criteo import write_criteo_format
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted

from conftest import REPO

SMALL = ["train.threads=1", "train.device=cpu", "data.batch_size=64", "data.eval_batch_size=512", "log.progress=off"]


@pytest.fixture(scope="module")
def criteo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("criteo")
    write_criteo_format(root / "train.txt", 3000, seed=0, malformed=2)
    return root


@pytest.fixture(scope="module")
def student_alone(criteo_dir, tmp_path_factory):
    """``kdlab train configs/criteo/ce/bert4.yaml data.root=DIR train.epochs=1`` in a subprocess (bert4_tiny)."""
    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        str(REPO / "configs/criteo/ce/bert4.yaml"),
        f"data.root={criteo_dir}",
        "train.epochs=1",
        "model.student=bert4_tiny",
        f"train.run_dir={runs}",
        "train.name=ce",
        *SMALL,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab", "train", *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 malformed line(s) skipped" in proc.stderr
    return runs / "ce"


def test_criteo_recipe_writes_auc_and_nll(student_alone):
    summary = json.loads((student_alone / "summary.json").read_text())
    for part in ("last", "best"):
        assert {"top1", "auc", "nll", "ece"} <= set(summary[part])
        assert 0.0 <= summary[part]["auc"] <= 1.0 and summary[part]["nll"] > 0
    assert summary["select_by"] == "auc" and summary["dataset"] == "criteo"
    record = json.loads((student_alone / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"auc", "nll"} <= set(record["test"]) and {"auc", "nll"} <= set(record["val"])  # criteo's own val split


def _tgeo(tmp_path, criteo_dir, teacher, name):
    return load_config(
        REPO / "configs/criteo/tgeo_kd/bert12__bert4.yaml",
        [
            f"data.root={criteo_dir}",
            "train.epochs=2",
            "data.tabular.train_limit=640",
            "model.student=bert4_tiny",
            "model.teachers.0.name=bert4_tiny",
            f"model.teachers.0.checkpoint={teacher}",
            f"train.run_dir={tmp_path}",
            f"train.name={name}",
            *SMALL,
        ],
    )


def test_tgeo_kd_recipe_distils_from_the_run_and_resumes_bitwise(tmp_path, criteo_dir, student_alone):
    teacher = student_alone / "checkpoint.pt"
    full = Trainer(_tgeo(tmp_path, criteo_dir, teacher, "full"))
    done = full.fit()
    assert done["finished"] and done["steps"] == 20 and "auc" in done["last"]

    part = Trainer(_tgeo(tmp_path, criteo_dir, teacher, "part"))
    calls = {"n": 0}
    step = part.optimizer.step

    def step_then_signal(*a, **kw):  # "SIGTERM" during the 13th step (epoch 2, mid-epoch)
        calls["n"] += 1
        if calls["n"] == 13:
            part._on_signal(signal.SIGTERM, None)
        return step(*a, **kw)

    part.optimizer.step = step_then_signal
    with pytest.raises(TrainingInterrupted, match="--resume"):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["step_in_epoch"] == 3
    resumed = Trainer(_tgeo(tmp_path, criteo_dir, teacher, "part"), resume=True).fit()
    assert resumed["steps"] == 20
    a, b = read_file(full.ckpt_path), read_file(part.ckpt_path)
    for key in ("student", "method"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    ta, tb = list(_tensors(a["aux"])), list(_tensors(b["aux"]))  # TGeo-KD's outer-loop network and optimiser
    assert len(ta) == len(tb) > 0 and all(torch.equal(x, y) for x, y in zip(ta, tb))
    assert json.loads((full.run_dir / "summary.json").read_text())["last"] == resumed["last"]


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
