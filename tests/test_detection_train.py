"""A detection student through the real trainer with the ``ce`` method (its own losses as the task term), the 1x
schedule (12 epochs, x0.1 at 8 and 11, a 500-iteration linear warm-up) and a bitwise resume of a Faster R-CNN run,
whose RPN and RoI samplers draw random numbers every step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdlab.config import ConfigError, OptimConfig, load_config
from kdlab.train.checkpoint import read_file
from kdlab.train.schedule import learning_rate
from kdlab.train.strategy import check_strategy, describe_strategy
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import Progress

from conftest import REPO, sigterm_during_step

RECIPE = str(REPO / "configs/coco/ce/faster_rcnn_r50.yaml")
SMALL = [
    "model.student=faster_rcnn_tiny",
    "model.student_backbone=null",
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
    "optim.warmup_epochs=0",
    "optim.warmup_steps=3",
    "optim.warmup_lr=0.00001",
]


def _one_x(**changes) -> OptimConfig:
    """The 1x schedule at lr 0.02 (batch 16)."""
    return OptimConfig(
        lr=0.02, schedule="step", milestones=[8, 11], gamma=0.1, warmup_steps=500, warmup_lr=0.02 * 0.001, **changes
    )


@pytest.mark.parametrize("steps_per_epoch", [7330, 1000])
def test_one_x_schedule_is_torchs_linear_warmup_then_multistep(steps_per_epoch: int) -> None:
    """The warm-up is torch's ``LinearLR(start_factor=0.001, total_iters=500)`` (torchvision's detection reference and
    mmdetection's ``warmup_ratio=0.001``) one step ahead, 500 iterations whatever the epoch length; then x0.1 at the
    starts of epochs 8 and 11 (0-based), as mmdetection's ``step=[8, 11]``."""
    cfg = _one_x()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.02)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.001, total_iters=500)
    for s in range(520):
        opt.step()
        warm.step()  # kdlab's step s runs at LinearLR's value after s + 1 updates
        got = learning_rate(cfg, Progress(step=s, epoch=0, step_in_epoch=s, steps_per_epoch=steps_per_epoch))
        assert got == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), s
    for epoch, want in [(1, 0.02), (7, 0.02), (8, 0.002), (10, 0.002), (11, 0.0002)]:
        s = epoch * steps_per_epoch + 17
        progress = Progress(s, epoch, 17, steps_per_epoch, 12)
        assert learning_rate(cfg, progress) == pytest.approx(want, rel=1e-12)


def test_warmup_steps_and_epochs_are_exclusive_and_described() -> None:
    cfg = load_config(RECIPE, ["optim.warmup_epochs=0", "optim.warmup_steps=500", "optim.warmup_lr=0.00002"])
    check_strategy(cfg)
    assert "under a 500-step warm-up from 2e-05" in describe_strategy(cfg)
    both = load_config(RECIPE, ["optim.warmup_epochs=1", "optim.warmup_steps=500"])
    with pytest.raises(ConfigError, match="set one of them"):
        check_strategy(both)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from coco_tiny import make_coco

    return make_coco(tmp_path_factory.mktemp("coco") / "coco", n_train=8, n_val=4)


def _config(coco_root, runs, name: str):
    return load_config(RECIPE, [f"data.root={coco_root}", *SMALL, f"train.run_dir={runs}", f"train.name={name}"])


def test_ce_step_of_a_detector_is_its_own_losses(coco_root, tmp_path) -> None:
    """The fast sibling of the resume test: one trainer step of the tiny Faster R-CNN with ``ce`` is the sum of its
    four torchvision losses, and every trainable parameter gets a gradient (the frozen stem and layer1 none)."""
    trainer = Trainer(_config(coco_root, tmp_path, "step"))
    batch = next(trainer.run.data.train_batches(0))
    torch.manual_seed(0)
    out = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start)
    torch.manual_seed(0)
    _, taps = trainer.run.student.forward_taps(batch.x, ())
    assert list(out.terms) == ["ce"]
    want = taps["loss.objectness"] + taps["loss.rpn_box_reg"] + taps["loss.classifier"] + taps["loss.box_reg"]
    assert torch.equal(out.terms["ce"], want)
    out.total.backward()
    student = trainer.run.student
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in student.named_parameters() if n.startswith("backbone.body.layer1."))


@pytest.mark.slow
def test_faster_rcnn_ce_run_resumes_bitwise(coco_root, tmp_path) -> None:
    """Two epochs of 2 steps; a run cut in its 3rd step (epoch 2, mid-epoch) and resumed ends in the uninterrupted
    run's state and metrics: the samplers' random state travels in the checkpoint."""
    full = Trainer(_config(coco_root, tmp_path, "full"))
    full.fit()
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 4 and math.isfinite(summary["last"]["map"])
    record = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[0])
    assert "ce" in record["train"] and "map" in record["test"]

    part = Trainer(_config(coco_root, tmp_path, "part"))
    sigterm_during_step(part, 3)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["step_in_epoch"] == 1
    resumed = Trainer(_config(coco_root, tmp_path, "part"), resume=True)
    resumed.fit()
    a, b = read_file(tmp_path / "full" / "checkpoint.pt"), read_file(resumed.ckpt_path)
    assert a["student"].keys() == b["student"].keys()
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["last"] == summary["last"]


def test_dict_batches_in_channels_last_and_through_a_renormalising_teacher() -> None:
    """The fast sibling of the trainer test below: ``prepare_batch`` converts the dict's 4-D images only, and a frozen
    teacher with its own input normalisation re-normalises ``x["images"]`` of a dict batch."""
    from kdlab.models import create
    from kdlab.train.precision import Precision
    from kdlab.train.teacher import FrozenTeacher
    from kdlab.types import Batch

    x = {"images": torch.randn(2, 3, 64, 64), "image_sizes": torch.tensor([[64, 64], [64, 48]])}
    batch = Precision(channels_last=True).prepare_batch(Batch(x=x, y=torch.zeros(2, 1, 7), index=torch.arange(2)))
    assert batch.x["images"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.x["images"], x["images"]) and torch.equal(batch.x["image_sizes"], x["image_sizes"])
    torch.manual_seed(0)
    model = create("retinanet_tiny", num_classes=3)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    teacher = FrozenTeacher(model, "retinanet_tiny", mean, std, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    out = teacher.outputs(batch, ["x"], ["cls"])["x"]
    raw = x["images"] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]  # back to [0, 1] pixels
    with torch.no_grad():
        _, want = model.forward_taps({**x, "images": raw}, ["cls"])
    torch.testing.assert_close(out.taps["cls"], want["cls"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_channels_last_and_bf16_steps_take_the_dict_batch(coco_root, tmp_path) -> None:
    """The generic precision path (``prepare_batch``'s memory format, autocast) accepts the detection batch dict:
    a channels_last step equals the fp32 step; a bf16 step gives a finite ce term close to it."""
    terms = {}
    for extra in ([], ["train.channels_last=true"], ["train.precision=bf16"]):
        cfg = load_config(RECIPE, [f"data.root={coco_root}", *SMALL, f"train.run_dir={tmp_path}", *extra])
        trainer = Trainer(cfg)
        batch = trainer.precision.prepare_batch(next(trainer.run.data.train_batches(0)))
        torch.manual_seed(0)
        terms[tuple(extra)] = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start).terms["ce"]
    fp32 = terms[()]
    torch.testing.assert_close(terms[("train.channels_last=true",)], fp32, rtol=1e-5, atol=1e-6)
    bf16 = terms[("train.precision=bf16",)]
    assert torch.isfinite(bf16) and abs(float(bf16.detach()) - float(fp32.detach())) < 0.1 * float(fp32.detach())
