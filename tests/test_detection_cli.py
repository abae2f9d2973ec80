"""Acceptance of detection distillation (issue 20) through the real CLI on a tiny COCO-format set (tests/coco_tiny.py:
coloured rectangles on noise): the shipped ce recipe trains a tiny RetinaNet teacher and reports box mAP through
pycocotools; the shipped kd / cwd / dist / dist_mimic recipes take a step from it (a tiny Faster R-CNN pair for the
two-stage path); the DIST recipe distils through ``kdlab train`` and a run cut mid-epoch resumes to the bitwise state
of an uninterrupted one; impossible pairs exit 2 naming the problem; the shipped recipes are the generator's output.
The recipes' own models (R50 / X101) only change the cost."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from segmentation_util import cli

from kdlab.config import load_config
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted

from conftest import REPO, sigterm_during_step

SMALL = [
    "model.student_backbone=null",  # the recipes' ImageNet backbone files are not here (and do not fit tiny models)
    "data.min_size=64",
    "data.max_size=64",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.workers=0",
    "train.epochs=2",
    "train.eval_every=1",
    "train.device=cpu",
    "train.threads=1",
    "log.progress=off",
]
COCO = REPO / "configs/coco"
PAIRS = {"retinanet": ("retinanet_x101", "retinanet_r50"), "faster_rcnn": ("faster_rcnn_x101", "faster_rcnn_r50")}


def _recipe(method: str, kind: str = "retinanet") -> str:
    teacher, student = PAIRS[kind]
    return str(COCO / method / f"{teacher}__{student}.yaml")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from coco_tiny import make_coco

    return make_coco(tmp_path_factory.mktemp("coco") / "coco", n_train=8, n_val=4)


def _teacher(coco_root, runs, kind: str) -> str:
    code, out, err = cli(
        "train", str(COCO / "ce" / f"{PAIRS[kind][0]}.yaml"), f"data.root={coco_root}",
        f"model.student={kind}_tiny", *SMALL, "train.epochs=1", f"train.run_dir={runs}", f"train.name={kind}",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "map last" in out  # the selecting metric is named in the result line
    return str(runs / kind / "checkpoint.pt")


@pytest.fixture(scope="module")
def teacher_run(coco_root, tmp_path_factory):
    """``kdlab train configs/coco/ce/retinanet_x101.yaml`` with the tiny RetinaNet (1 epoch x 2 steps)."""
    return _teacher(coco_root, tmp_path_factory.mktemp("runs"), "retinanet")


def _config(method: str, coco_root, teacher: str, runs, name: str, kind: str = "retinanet", *extra: str):
    return load_config(
        _recipe(method, kind),
        [
            f"data.root={coco_root}",
            f"model.student={kind}_tiny",
            f"model.teachers.0.name={kind}_tiny",
            f"model.teachers.0.checkpoint={teacher}",
            *SMALL,
            f"train.run_dir={runs}",
            f"train.name={name}",
            *extra,
        ],
    )


def test_ce_recipe_reports_a_finite_map_and_selects_by_it(teacher_run) -> None:
    from pathlib import Path

    summary = json.loads((Path(teacher_run).parent / "summary.json").read_text())
    assert summary["select_by"] == "map" and summary["dataset"] == "coco"
    for part in ("last", "best"):
        assert math.isfinite(summary[part]["map"]) and 0.0 <= summary[part]["map"] <= 100.0


TERMS = {
    "kd": {"ce", "kd"},
    "cwd": {"ce", *(f"cwd.fpn.{i}" for i in range(5))},
    "dist": {"ce", "dist"},
    "dist_mimic": {"ce", "dist.dist", "mimic.mimic"},
}


@pytest.mark.parametrize("method", list(TERMS))
def test_every_shipped_recipe_takes_a_step_from_the_teacher_run(coco_root, teacher_run, tmp_path, method) -> None:
    """The fast siblings of the resume test: each recipe builds on the tiny RetinaNet pair and trains one step; the
    task term is the detector's own losses, every trainable student parameter gets a gradient."""
    trainer = Trainer(_config(method, coco_root, teacher_run, tmp_path, "one"))
    batch = next(trainer.run.data.train_batches(0))
    out = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start)
    assert set(out.terms) == TERMS[method]
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.terms.values())
    out.total.backward()
    assert all(p.grad is not None for p in trainer.run.student.parameters() if p.requires_grad)


def test_mimic_box_mask_on_real_batches_keeps_only_positions_inside_the_boxes(coco_root, teacher_run, tmp_path) -> None:
    """``mask: boxes`` on the loader's batches (boxes in resized pixels): the masked term differs from the unmasked
    one and equals the formula on the kept positions."""
    from kdlab.losses.detection import box_mask, mimic_mse

    trainer = Trainer(
        _config("dist_mimic", coco_root, teacher_run, tmp_path, "m", "retinanet", "method.terms.1.mask=boxes")
    )
    batch = next(trainer.run.data.train_batches(0))
    teachers = trainer.teacher_outputs(batch)
    out = trainer.step_module(batch, teachers, trainer.start)
    mimic = trainer.run.method.methods[1]
    _, s_out = trainer.run.student.forward_taps(batch.x, set(mimic.student_tap_names))
    want, plain, kept, total = 0.0, 0.0, 0, 0
    for key, s, t in zip(mimic.keys, mimic.student_tap_names, mimic.teacher_tap_names):
        f_t = teachers[0]["x"].taps[t]
        mask = box_mask(batch.x["boxes"], batch.x["labels"], tuple(f_t.shape[-2:]), 64 / f_t.shape[-2])
        kept, total = kept + int(mask.sum()), total + mask.numel()
        want = want + mimic_mse(mimic.adapters[key](s_out[s]), f_t, mask)
        plain = plain + mimic_mse(mimic.adapters[key](s_out[s]), f_t)
    assert 0 < kept < total
    assert torch.allclose(out.terms["mimic.mimic"], want, rtol=1e-4)
    assert not torch.allclose(out.terms["mimic.mimic"], plain, rtol=1e-3)


@pytest.fixture(scope="module")
def rcnn_teacher_run(coco_root, tmp_path_factory):
    """``kdlab train configs/coco/ce/faster_rcnn_x101.yaml`` with the tiny Faster R-CNN (1 epoch x 2 steps)."""
    return _teacher(coco_root, tmp_path_factory.mktemp("runs"), "faster_rcnn")


@pytest.mark.parametrize(
    ("method", "reads_roi_head"), [("kd", True), ("cwd", False), ("dist", True), ("dist_mimic", True)]
)
def test_two_stage_recipes_read_the_teachers_roi_head_on_the_students_proposals(
    coco_root, rcnn_teacher_run, tmp_path, method, reads_roi_head
) -> None:
    """The Faster R-CNN recipes on tiny models: kd and dist call the teacher's RoI head on the student's sampled
    proposals (one row of K + 1 logits per student RoI, the FPN levels by tap name), cwd and mimic read the FPN levels;
    every recipe trains the student."""
    trainer = Trainer(_config(method, coco_root, rcnn_teacher_run, tmp_path, method, "faster_rcnn"))
    model = trainer.run.teachers[0].model
    calls = []
    original = model.roi_class_logits

    def recording(fpn, rois, sizes):
        out = original(fpn, rois, sizes)
        calls.append((sorted(fpn), tuple(rois.shape), tuple(out.shape)))
        return out

    model.roi_class_logits = recording
    batch = next(trainer.run.data.train_batches(0))
    out = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start)
    assert set(out.terms) == TERMS[method]
    assert len(calls) == int(reads_roi_head)
    if reads_roi_head:
        names, rois, logits = calls[0]
        assert names == [f"fpn.{i}" for i in range(5)] and rois[1] == 5 and logits == (rois[0], 4)  # K = 3, + bg
    out.total.backward()
    assert all(p.grad is not None for p in trainer.run.student.parameters() if p.requires_grad)


@pytest.mark.slow
def test_dist_recipe_distils_through_the_cli_and_resumes_bitwise(coco_root, teacher_run, tmp_path) -> None:
    """The issue's acceptance: the RetinaNet student with DIST from the tiny teacher through ``kdlab train``; the
    evaluation through pycocotools gives a finite mAP; a run cut mid-epoch resumes to the uninterrupted state."""
    args = [f"data.root={coco_root}", "model.student=retinanet_tiny", "model.teachers.0.name=retinanet_tiny",
            f"model.teachers.0.checkpoint={teacher_run}", *SMALL, f"train.run_dir={tmp_path}"]  # fmt: skip
    code, _, err = cli("train", _recipe("dist"), *args, "train.name=full")
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 4 and math.isfinite(summary["last"]["map"])
    record = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"ce", "dist"} <= set(record["train"]) and "map" in record["test"]

    part = Trainer(_config("dist", coco_root, teacher_run, tmp_path, "part"))
    sigterm_during_step(part, 3)  # the 3rd step: epoch 2, mid-epoch
    with pytest.raises(TrainingInterrupted, match="--resume"):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["step_in_epoch"] == 1
    code, _, err = cli("train", _recipe("dist"), *args, "train.name=part", "--resume")
    assert code == 0, err[-3000:]
    a, b = read_file(tmp_path / "full" / "checkpoint.pt"), read_file(part.ckpt_path)
    assert a["student"].keys() == b["student"].keys()
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["last"] == summary["last"]


@pytest.mark.parametrize(
    ("method", "override", "message"),
    [
        ("at", ["train.name=bad"], "method 'at' does not support object-detection outputs"),
        (
            "dist",
            ["model.teachers.0.name=faster_rcnn_tiny", "model.teachers.0.checkpoint=null"],
            "one-stage teacher with a 'cls' tap",
        ),
        ("dist", ["method.gather_logits=true"], "method.gather_logits does not apply to object-detection outputs"),
        ("kd", ["method.standardize=true"], "method.standardize does not apply to object-detection outputs"),
    ],
)
def test_impossible_pairs_exit_2_naming_the_problem(coco_root, teacher_run, tmp_path, method, override, message):
    config = tmp_path / "pair.yaml"
    config.write_text(
        f"model: {{student: retinanet_tiny, teachers: [{{name: retinanet_tiny, checkpoint: {teacher_run}}}]}}\n"
        f"data: {{name: coco, root: {coco_root}}}\nmethod: {{name: {method}}}\n"
    )
    args = ["train", str(config), *SMALL, f"train.run_dir={tmp_path}", "train.name=bad", *override]
    code, _, err = cli(*args)
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "bad").exists()


def test_shipped_detection_configs_are_the_generator_output() -> None:
    before = {p: p.read_text() for p in COCO.glob("*/*.yaml")}
    before[REPO / "configs/sweeps/dist_detection.yaml"] = (REPO / "configs/sweeps/dist_detection.yaml").read_text()
    assert len(before) == 13
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/make_detection_configs.py")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_text() for p in before} == before


# The issue's numbers (COCO val2017 box mAP), transcribed from issue 20 independently of the generator.
ISSUE_TARGETS = {
    ("Student", "retinanet_x101→retinanet_r50"): 37.4,
    ("DIST", "retinanet_x101→retinanet_r50"): 39.8,
    ("DIST + mimic", "retinanet_x101→retinanet_r50"): 40.1,
    ("Student", "faster_rcnn_x101→faster_rcnn_r50"): 38.4,
    ("DIST", "faster_rcnn_x101→faster_rcnn_r50"): 40.4,
    ("DIST + mimic", "faster_rcnn_x101→faster_rcnn_r50"): 41.8,
}


def test_the_sweep_states_the_issues_numbers_as_targets() -> None:
    from kdlab.experiments.spec import load_spec

    spec = load_spec(REPO / "configs/sweeps/dist_detection.yaml")
    got = {(r.label, r.pair): r.targets["map"] for r in spec.rows if "map" in r.targets}
    assert got == ISSUE_TARGETS
    assert load_config(COCO / "ce/retinanet_x101.yaml").target == {"map": 41.0}  # the one-stage teacher
    labels = [(r.label, r.pair) for r in spec.rows]
    assert len(labels) == 10 and {label for label, _ in labels} == {"Student", "KD", "CWD", "DIST", "DIST + mimic"}


def test_detection_speed_benchmark_times_a_dist_step_on_tiny_models() -> None:
    """benchmarks/detection_speed.py on the tiny RetinaNet pair: the teacher and student parts of each step are
    timed, the teacher's share is the ratio of the medians, the DIST loss is part of the student's time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("detection_speed", REPO / "benchmarks" / "detection_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.run(64, 2, 1, 1, "dist_mimic", teacher_name="retinanet_tiny", student_name="retinanet_tiny")
    assert len(out["teacher_steps_s"]) == len(out["student_steps_s"]) == 2  # a warm-up step and a timed one
    assert out["step_s"] == pytest.approx(out["teacher_s"] + out["student_s"], abs=2e-4)
    assert out["teacher_share"] == pytest.approx(out["teacher_s"] / out["step_s"], abs=2e-3)
    assert 0 < out["method_loss_s"] < out["student_s"] and out["images_per_s"] > 0
