"""``log.tensorboard: true`` writes every scalar of metrics.jsonl as TensorBoard events; read back with
tensorboard's own event reader."""

from __future__ import annotations

import json

import pytest

from kdlab.train.tensorboard import scalars
from kdlab.train.trainer import Trainer

from conftest import sigterm_during_step, tiny_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _events(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(run_dir, steps_per_epoch: int) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for i, line in enumerate((run_dir / "metrics.jsonl").read_text().splitlines()):
        record = json.loads(line)
        for tag, value in scalars(record):
            out.setdefault(tag, []).append(((i + 1) * steps_per_epoch, value))
    return out


def test_every_metrics_scalar_is_an_event(tmp_path):
    teacher = Trainer(tiny_config(tmp_path, "train.epochs=1", "train.name=t", "model.student=convnet_s"))
    teacher.fit()
    cfg = tiny_config(
        tmp_path, "log.tensorboard=true", "data.val_fraction=0.25", method="kd", teacher_ckpt=str(teacher.ckpt_path)
    )
    trainer = Trainer(cfg)
    trainer.fit()
    events = _events(trainer.run_dir)
    expected = _expected(trainer.run_dir, trainer.steps_per_epoch)
    for tag in ("train/loss", "train/kd", "train/ce", "lr", "images_per_s", "test/top1", "test/top5", "val/top1"):
        assert tag in expected, tag
    assert set(events) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert not (teacher.run_dir / "tensorboard").exists()  # off by default


def test_a_resumed_run_has_each_step_once(tmp_path):
    cfg = tiny_config(tmp_path, "log.tensorboard=true", "train.name=r")
    part = Trainer(cfg)
    sigterm_during_step(part, 9)  # epoch 2 of 3, mid-epoch: the checkpoint holds epoch 1
    with pytest.raises(Exception, match="--resume"):
        part.fit()
    resumed = Trainer(tiny_config(tmp_path, "log.tensorboard=true", "train.name=r"), resume=True)
    resumed.fit()
    events = _events(resumed.run_dir)
    steps = [s for s, _ in events["train/loss"]]
    assert steps == [6, 12, 18]
    expected = _expected(resumed.run_dir, resumed.steps_per_epoch)
    assert [v for _, v in events["test/top1"]] == pytest.approx([v for _, v in expected["test/top1"]])


def test_scalars_flatten_nested_records_and_prefix_stages():
    record = {"stage": "init", "epoch": 1, "step": 3, "lr": 0.1, "train": {"loss": 2.0, "ok": True}, "note": "x"}
    assert dict(scalars(record)) == {"init/lr": 0.1, "init/train/loss": 2.0}
