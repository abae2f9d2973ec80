"""Acceptance of the segmentation path (issue #19) through the real CLI on a tiny Cityscapes-layout folder: the
shipped ce recipe trains a (tiny) teacher and reports mIoU; the shipped DIST recipe distils it into a tiny PSPNet;
``kdlab eval`` scores the run; a run cut mid-epoch resumes to the bitwise state of an uninterrupted one; impossible
pairs exit 2 naming the problem. The recipes' own models (ResNet-101/18) only change the cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from segmentation_util import cli, make_cityscapes

from kdlab.config import load_config
from kdlab.models import create
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted

from conftest import REPO, sigterm_during_step

SMALL = [
    "model.student_backbone=null",  # the recipes' ImageNet backbone files are not here (and do not fit tiny models)
    "data.crop_size=[32,48]",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "data.workers=0",
    "train.epochs=2",
    "train.eval_every=1",
    "train.device=cpu",
    "train.threads=1",
    "log.progress=off",
]
CE = str(REPO / "configs/cityscapes/ce/deeplabv3_r101.yaml")
DIST = str(REPO / "configs/cityscapes/dist/deeplabv3_r101__pspnet_r18.yaml")


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"), n_train=6, n_val=2)


@pytest.fixture(scope="module")
def teacher_run(cs_root, tmp_path_factory):
    """``kdlab train configs/cityscapes/ce/deeplabv3_r101.yaml`` with the tiny DeepLabV3 (2 epochs x 3 steps)."""
    runs = tmp_path_factory.mktemp("runs")
    code, out, err = cli(
        "train", CE, f"data.root={cs_root}", "model.student=deeplabv3_tiny", *SMALL, f"train.run_dir={runs}",
        "train.name=teacher",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "test top1 last" in out and "miou last" in out  # the selecting metric is named in the result line
    return runs / "teacher"


def test_ce_recipe_reports_miou_and_selects_by_it(teacher_run) -> None:
    summary = json.loads((teacher_run / "summary.json").read_text())
    assert summary["select_by"] == "miou" and summary["dataset"] == "cityscapes" and summary["steps"] == 6
    assert {"miou", "pixel_acc", "top1"} <= set(summary["metrics"])
    for part in ("last", "best"):
        assert 0.0 <= summary[part]["miou"] <= 100.0 and len(summary[part]["miou_per_class"]) == 19
        assert summary[part]["top1"] == pytest.approx(summary[part]["pixel_acc"])  # pixel accuracy, two ways
    records = [json.loads(line) for line in (teacher_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all("miou" in r["test"] for r in records)
    assert any("ce.aux" in k for k in records[0]["train"])  # the auxiliary head's term (aux_weight 0.4)
    code, out, _ = cli("eval", str(teacher_run))  # the run directory scored again: the same numbers
    assert code == 0
    scored = json.loads(out)
    assert scored["miou"] == pytest.approx(summary["last"]["miou"]) and scored["n"] == summary["last"]["n"]


def _dist_config(cs_root, teacher, runs, name):
    return load_config(
        DIST,
        [
            f"data.root={cs_root}",
            "model.student=pspnet_tiny",
            "model.teachers.0.name=deeplabv3_tiny",
            f"model.teachers.0.checkpoint={teacher}",
            *SMALL,
            f"train.run_dir={runs}",
            f"train.name={name}",
        ],
    )


@pytest.mark.slow
def test_dist_recipe_distils_and_resumes_bitwise(cs_root, teacher_run, tmp_path) -> None:
    teacher = teacher_run / "checkpoint.pt"
    full = Trainer(_dist_config(cs_root, teacher, tmp_path, "full"))
    done = full.fit()
    assert done["finished"] and done["steps"] == 6 and "miou" in done["last"]
    record = json.loads((full.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert {"ce", "dist", "ce.aux", "dist.aux"} <= set(record["train"])

    part = Trainer(_dist_config(cs_root, teacher, tmp_path, "part"))
    sigterm_during_step(part, 5)  # the 5th step: epoch 2, mid-epoch
    with pytest.raises(TrainingInterrupted, match="--resume"):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["step_in_epoch"] == 2
    resumed = Trainer(_dist_config(cs_root, teacher, tmp_path, "part"), resume=True).fit()
    assert resumed["steps"] == 6
    a, b = read_file(full.ckpt_path), read_file(part.ckpt_path)
    assert a["student"].keys() == b["student"].keys()
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    assert json.loads((full.run_dir / "summary.json").read_text())["last"] == resumed["last"]


def test_dist_recipe_takes_a_step_from_the_teacher_run(cs_root, teacher_run, tmp_path) -> None:
    """The fast sibling of the resume test: the shipped DIST recipe builds on the tiny pair and trains one step."""
    cfg = _dist_config(cs_root, teacher_run / "checkpoint.pt", tmp_path, "one")
    trainer = Trainer(cfg)
    batch = next(trainer.run.data.train_batches(0))
    assert batch.y.shape == (2, 32, 48)
    out = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start)
    assert {"ce", "dist", "ce.aux", "dist.aux"} == set(out.terms)
    out.total.backward()
    assert all(p.grad is not None for p in trainer.run.student.parameters())


def test_student_backbone_file_reaches_the_run(cs_root, tmp_path) -> None:
    """``model.student_backbone`` (the recipes' ImageNet initialisation) fills the student's backbone at build."""
    backbone = create("deeplabv3_tiny", num_classes=19).backbone
    file = {k: torch.randn_like(v.float()) for k, v in backbone.state_dict().items() if "num_batches" not in k}
    torch.save({**file, "fc.weight": torch.zeros(1000, 64), "fc.bias": torch.zeros(1000)}, tmp_path / "bb.pth")
    args = [f"data.root={cs_root}", "model.student=deeplabv3_tiny", *SMALL, f"train.run_dir={tmp_path}", "train.name=b"]
    cfg = load_config(CE, [*args, f"model.student_backbone={tmp_path / 'bb.pth'}"])
    state = Trainer(cfg).run.student.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in file.items())


@pytest.mark.parametrize(
    ("method", "override", "message"),
    [
        ("crd", "train.name=bad", "method 'crd' does not support dense (per-pixel) outputs"),
        ("ofd", "train.name=bad", "method 'ofd' does not support dense (per-pixel) outputs"),
        ("kd", "model.student=resnet8", "is a classifier"),
        ("kd", "data.crop_size=[32,48,3]", "give [height, width]"),
        ("kd", "data.scale_range=[2.0,0.5]", "give [low, high] with 0 < low <= high"),
        ("kd", "data.scale_range=[0.5]", "give [low, high] with 0 < low <= high"),
        ("kd", "data.batch_size=5", "gives a process a batch of 1 image(s)"),  # 6 images: 5 + a last batch of 1
    ],
)
def test_impossible_pairs_exit_2_naming_the_problem(cs_root, teacher_run, tmp_path, method, override, message) -> None:
    config = tmp_path / "pair.yaml"
    teacher = f"{{name: deeplabv3_tiny, checkpoint: {teacher_run}/checkpoint.pt}}"
    config.write_text(
        f"model: {{student: pspnet_tiny, teachers: [{teacher}]}}\n"
        f"data: {{name: cityscapes, root: {cs_root}}}\nmethod: {{name: {method}}}\n"
    )
    args = ["train", str(config), *SMALL, f"train.run_dir={tmp_path}", "train.name=bad", override]
    code, _, err = cli(*args)
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "bad").exists()


def test_shipped_segmentation_configs_are_the_generator_output(tmp_path) -> None:
    before = {p: p.read_text() for p in (REPO / "configs").glob("*/*/*.yaml") if p.parts[-3] in ("cityscapes", "voc")}
    before[REPO / "configs/sweeps/dist_segmentation.yaml"] = (
        REPO / "configs/sweeps/dist_segmentation.yaml"
    ).read_text()
    assert len(before) == 19
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/make_segmentation_configs.py")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    after = {p: p.read_text() for p in before}
    assert after == before


@pytest.mark.slow
def test_dist_recipe_under_torchrun_with_two_processes(cs_root, teacher_run, tmp_path) -> None:
    """2 gloo processes on CPU through the real command line: each rank trains on its half of every global batch and
    evaluates its half of the split; the confusion matrices are summed, so the evaluation counts every labelled pixel
    of the split once (the single-process count)."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}
    args = [
        DIST, f"data.root={cs_root}", "model.student=pspnet_tiny", "model.teachers.0.name=deeplabv3_tiny",
        f"model.teachers.0.checkpoint={teacher_run / 'checkpoint.pt'}", *SMALL, f"train.run_dir={tmp_path}",
        "train.name=ddp", "data.batch_size=4", "data.drop_last=true",  # 2 images per process, 1 step per epoch
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    proc = subprocess.run([*cmd, "-m", "kdlab", "train", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("test top1") == 1  # rank 0 reports
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    single = json.loads((teacher_run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["last"]["n"] == single["last"]["n"]
    assert 0.0 <= summary["last"]["miou"] <= 100.0


@pytest.mark.parametrize("method", ["kd", "cwd", "at", "fitnet", "tekap"])
def test_every_dense_method_takes_a_step_on_the_segmentation_pair(cs_root, teacher_run, tmp_path, method) -> None:
    """The other methods with dense support at their defaults on the tiny pair (the DIST recipe is tested above): one
    step's terms are finite scalars and the student receives gradients (not its auxiliary head: aux_weight is 0)."""
    config = tmp_path / "pair.yaml"
    teacher = f"{{name: deeplabv3_tiny, checkpoint: {teacher_run}/checkpoint.pt}}"
    config.write_text(
        f"model: {{student: pspnet_tiny, teachers: [{teacher}]}}\n"
        f"data: {{name: cityscapes, root: {cs_root}}}\nmethod: {{name: {method}}}\n"
    )
    trainer = Trainer(load_config(config, [*SMALL, f"train.run_dir={tmp_path}", "train.name=m"]))
    batch = next(trainer.run.data.train_batches(0))
    out = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start)
    assert out.terms and all(t.dim() == 0 and torch.isfinite(t) for t in out.terms.values()), out.terms
    out.total.backward()
    for name, p in trainer.run.student.named_parameters():  # the auxiliary head trains only with aux_weight > 0
        assert (p.grad is not None) == (not name.startswith("aux_head.")), name
