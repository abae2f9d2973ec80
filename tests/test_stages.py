"""Method-declared training stages (e.g. the initialisation stages of AB, FT, FSP) run before the main stage,
train only what they declare, and resume exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.methods import METHODS
from kdlab.methods.base import DistillMethod, Stage
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import LossOut, Needs, StepIO

from conftest import sigterm_during_step, tiny_config


class Staged(DistillMethod):
    """Test method: a 2-epoch stage training an adapter alone, then CE + the adapter's loss."""

    @dataclass(kw_only=True)
    class Config(MethodConfig):
        name: str = "staged_for_test"
        init_epochs: int = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.adapters["proj"] = nn.Linear(ctx.student_shapes["pool"][0], ctx.teacher_shapes[0]["pool"][0])
        self.seen_stages: list[str] = []

    def needs(self) -> Needs:
        return Needs(student_taps=frozenset({"pool"}), teacher_taps=frozenset({"pool"}))

    def stages(self):
        return [Stage("init", self.cfg.init_epochs, trains="adapters", lr=0.1)]

    def loss(self, io: StepIO) -> LossOut:
        self.seen_stages.append(io.progress.stage)
        match = nn.functional.mse_loss(self.adapters["proj"](io.s.taps["pool"]), io.t.taps["pool"])
        if io.progress.stage == "init":
            return LossOut({"match": match})
        return LossOut({"ce": losses.cross_entropy(io.s.logits, io.y), "match": match})


@pytest.fixture
def staged(monkeypatch):
    monkeypatch.setitem(METHODS._items, "staged_for_test", Staged)
    monkeypatch.setitem(METHODS._meta, "staged_for_test", {})


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage_teacher")
    trainer = Trainer(tiny_config(tmp, "model.student=convnet_s", "train.epochs=2"))
    trainer.fit()
    return str(trainer.ckpt_path)


def _cfg(tmp_path, teacher_ckpt, *extra):
    return tiny_config(tmp_path, *extra, method="staged_for_test", teacher_ckpt=teacher_ckpt)


def test_init_stage_runs_first_and_trains_only_its_parameters(tmp_path, teacher_ckpt, staged):
    trainer = Trainer(_cfg(tmp_path, teacher_ckpt, "train.max_steps=12"))  # 6 steps/epoch: all of "init"
    student0 = {k: v.clone() for k, v in trainer.run.student.state_dict().items()}
    proj0 = trainer.run.method.adapters["proj"].weight.clone()
    summary = trainer.fit()
    assert set(trainer.run.method.seen_stages) == {"init"} and summary["stage"] == "init"
    student1 = trainer.run.student.state_dict()
    assert all(torch.equal(student0[k], student1[k]) for k in student0)  # BN statistics too: student in eval
    assert not torch.equal(proj0, trainer.run.method.adapters["proj"].weight)
    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(x["stage"], x["epoch"]) for x in lines] == [("init", 1), ("init", 2)]
    assert all(x["lr"] == 0.1 and "test" not in x for x in lines)


def test_full_run_goes_through_both_stages(tmp_path, teacher_ckpt, staged):
    trainer = Trainer(_cfg(tmp_path, teacher_ckpt))
    summary = trainer.fit()
    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(x["stage"], x["epoch"]) for x in lines] == [
        ("init", 1),
        ("init", 2),
        ("main", 1),
        ("main", 2),
        ("main", 3),
    ]
    assert summary["finished"] and summary["steps"] == 30 and summary["epochs"] == 3
    assert trainer.run.method.seen_stages[:12] == ["init"] * 12 and trainer.run.method.seen_stages[12] == "main"


@pytest.mark.parametrize("stop_at", [4, 12, 15])  # inside init, at the stage boundary, inside main
def test_resume_across_stages_is_bitwise_identical(tmp_path, teacher_ckpt, staged, stop_at):
    full = Trainer(_cfg(tmp_path, teacher_ckpt, "train.name=full"))
    full.fit()
    part = Trainer(_cfg(tmp_path, teacher_ckpt, "train.name=part"))
    sigterm_during_step(part, stop_at)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["global_step"] == stop_at
    resumed = Trainer(_cfg(tmp_path, teacher_ckpt, "train.name=part"), resume=True)
    resumed.fit()
    a, b = read_file(full.ckpt_path), read_file(resumed.ckpt_path)
    for part_name in ("student", "method"):
        assert all(torch.equal(a[part_name][k], b[part_name][k]) for k in a[part_name]), part_name
