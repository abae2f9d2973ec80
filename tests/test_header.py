"""The run header: logged at the start, stored in summary.json; every teacher with a checkpoint scored once on the
test split (cached by the checkpoint's content), with a warning at chance level."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import kdlab.evaluate
from kdlab.evaluate import evaluate_file
from kdlab.models import create
from kdlab.models.flops import count_flops
from kdlab.train.header import cache_dir, chance_level
from kdlab.train.trainer import Trainer

from conftest import tiny_config


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("header_teacher")
    trainer = Trainer(tiny_config(tmp, "train.epochs=4", "train.name=t", "model.student=convnet_s", "optim.lr=0.1"))
    trainer.fit()
    return trainer.ckpt_path


def test_header_in_summary_names_data_models_method_and_system(tmp_path, teacher_ckpt, caplog):
    cfg = tiny_config(tmp_path, "train.epochs=1", "method.temperature=2", method="kd", teacher_ckpt=str(teacher_ckpt))
    with caplog.at_level(logging.INFO, logger="kdlab"):
        summary = Trainer(cfg).fit()
    h = summary["header"]
    assert h["data"] == {
        "name": "synthetic",
        "train": 96,
        "val": 0,
        "test": 48,
        "classes": 4,
        "input_size": [3, 8, 8],
        "mean": h["data"]["mean"],
        "std": h["data"]["std"],
    }
    assert h["student"]["name"] == "convnet_xs"
    assert h["student"]["macs"] == count_flops(create("convnet_xs", num_classes=4), (3, 8, 8))
    assert h["method"] == {"name": "kd", "changed": {"temperature": 2.0}, "term_scales": {}}
    assert h["system"]["seed"] == 0 and h["system"]["threads"] == 1 and h["system"]["device"] == "cpu"
    (t,) = h["teachers"]
    assert t["name"] == "convnet_s" and t["parameters"] > h["student"]["parameters"]
    # the teacher's accuracy is what kdlab eval measures on its checkpoint
    ev = evaluate_file(teacher_ckpt, device="cpu")
    assert t["test"]["top1"] == pytest.approx(ev["top1"]) and t["test"]["top5"] == pytest.approx(ev["top5"])
    assert t["test"]["n"] == 48
    text = caplog.text
    assert "run header: kd (temperature=2.0)" in text and "teacher0 convnet_s" in text
    assert f"test top-1 {ev['top1']:.2f} %" in text
    on_disk = json.loads((tmp_path / "runs" / "kd__convnet_s__convnet_xs__s0" / "summary.json").read_text())
    assert on_disk["header"] == h


def test_teacher_is_measured_once_per_checkpoint_content(tmp_path, teacher_ckpt, monkeypatch):
    calls = []
    real = kdlab.evaluate.score

    def counting(model, batches, *a, **k):
        calls.append(type(model).__name__)
        return real(model, batches, *a, **k)

    monkeypatch.setattr(kdlab.evaluate, "score", counting)
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))
    tops = []
    for seed in (0, 1):  # two runs of a sweep with the same teacher
        cfg = tiny_config(tmp_path, "train.epochs=1", f"train.seed={seed}", method="kd", teacher_ckpt=str(teacher_ckpt))
        t = Trainer(cfg).fit()["header"]["teachers"][0]
        tops.append((t["test"]["top1"], t["cached"]))
    assert calls == ["FrozenTeacher"]
    assert tops[0][0] == tops[1][0] and [c for _, c in tops] == [False, True]
    assert len(list((cache_dir() / "teacher_accuracy").glob("*.json"))) == 1
    # another normalisation is another measurement
    cfg = tiny_config(
        tmp_path,
        "train.epochs=1",
        "train.name=n",
        "model.teachers.0.input_mean=[0.4,0.4,0.4]",
        method="kd",
        teacher_ckpt=str(teacher_ckpt),
    )
    assert not Trainer(cfg).fit()["header"]["teachers"][0]["cached"]
    assert len(calls) == 2


def test_teacher_at_chance_level_warns_with_the_usual_causes(tmp_path, caplog):
    path = tmp_path / "random_teacher.pt"
    torch.manual_seed(3)
    model = create("convnet_s", num_classes=4)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))  # always class 0: exactly chance
    torch.save(model.state_dict(), path)
    cfg = tiny_config(tmp_path, "train.epochs=1", method="kd", teacher_ckpt=str(path))
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        t = Trainer(cfg).fit()["header"]["teachers"][0]
    assert t["test"]["top1"] == pytest.approx(25.0) and t["chance_level"]
    assert "chance level for 4 classes" in caplog.text and "input_mean/input_std" in caplog.text
    assert "wrong checkpoint" in t["warning"]


def test_chance_level_rule():
    assert chance_level(10.0, 100, 10_000) and not chance_level(12.0, 100, 10_000)  # threshold 10.9 %
    assert chance_level(18.0, 10, 10_000) and not chance_level(25.0, 10, 10_000)  # 19 %
    assert chance_level(52.0, 2, 10_000) and not chance_level(70.0, 2, 10_000)  # 55 %
    assert chance_level(40.0, 4, 48) and not chance_level(60.0, 4, 48)  # 3 sd above 25 % on 48 samples: 43.75 %


def test_teacher_without_checkpoint_is_not_measured(tmp_path):
    h = Trainer(tiny_config(tmp_path, "train.epochs=1", method="kd")).fit()["header"]
    assert h["teachers"][0]["test"] is None and h["teachers"][0]["checkpoint"] is None


def test_changed_method_fields_are_plain_json_for_nested_configs():
    from kdlab.config import build_config
    from kdlab.train.header import method_changes

    cfg = build_config({"method": {"name": "sum", "terms": [{"name": "kd", "temperature": 2}], "weights": [0.5]}})
    changed = method_changes(cfg.method)
    assert json.loads(json.dumps(changed)) == changed
    assert changed["weights"] == [0.5] and changed["terms"][0]["temperature"] == 2.0
    assert method_changes(build_config({"method": {"name": "kd"}}).method) == {}


def test_off_target_rule():
    from kdlab.train.header import off_target

    assert off_target(79.0, 80.1, 50_000) and not off_target(79.5, 80.1, 50_000)  # ImageNet val: 1 point
    assert not off_target(75.0, 80.1, 100) and off_target(65.0, 80.1, 100)  # 3 sd of 80.1 % on 100 images: 12 points


def test_a_teacher_missing_the_recipes_published_accuracy_warns(tmp_path, teacher_ckpt, caplog):
    """A recipe's ``target.teacher_top1`` (DIST Table 4's teacher column) is checked against the teacher's measured
    top-1 at the run's start: far off, the header warns; at the measured value, it does not."""
    args = ("train.epochs=1", "train.max_steps=1")
    first = Trainer(tiny_config(tmp_path, *args, "train.name=a", method="kd", teacher_ckpt=str(teacher_ckpt)))
    measured = first.fit()["header"]["teachers"][0]["test"]["top1"]
    far = 0.0 if measured > 50 else 100.0
    for name, published in (("far", far), ("same", measured)):
        cfg = tiny_config(
            tmp_path, *args, f"train.name={name}", f"target.teacher_top1={published}", method="kd",
            teacher_ckpt=str(teacher_ckpt),
        )  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kdlab"):
            t = Trainer(cfg).fit()["header"]["teachers"][0]
        if name == "far":
            assert f"target.teacher_top1 is {far:g} %" in t["warning"] and "target.teacher_top1" in caplog.text
        else:  # (this small teacher is at chance level for 4 classes: that warning stays)
            assert "target.teacher_top1" not in t.get("warning", "")
