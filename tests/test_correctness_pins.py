"""Correctness that no other test pinned (issue #15): each test fails if its behaviour is changed on purpose.

Schedules against their formulas at known epochs/steps, ``data.crop_padding`` honoured by the loader, CRD's memory
momentum and KD's weights and temperature at non-default values against hand-written formulas, the global RNG
states restored on resume, and the ``torch.compile`` fallback applying a step's side effects once.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab import models
from kdlab.config import build_config
from kdlab.data import load_dataset
from kdlab.data.loader import DeviceLoader
from kdlab.methods import build_method
from kdlab.train import precision as precision_module
from kdlab.train.build import build_context
from kdlab.train.checkpoint import read_file
from kdlab.train.precision import CompiledStep
from kdlab.train.schedule import learning_rate
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import Batch, Outputs, Progress, StepIO

from conftest import sigterm_during_step, tiny_config


def _optim(**fields):
    return build_config({"optim": fields, "train": {"epochs": 10}}).optim


def _lr(cfg, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 10, total_epochs: int = 10) -> float:
    p = Progress(
        step=epoch * steps_per_epoch + step_in_epoch,
        epoch=epoch,
        step_in_epoch=step_in_epoch,
        steps_per_epoch=steps_per_epoch,
        total_epochs=total_epochs,
    )
    return learning_rate(cfg, p)


# ------------------------------------------------------------------------------------------------ schedules
def test_step_schedule_changes_after_each_milestone_epoch():
    # RepDistiller: lr * gamma ** sum(epoch_1based > milestones); milestones 3 and 6 (1-based epochs)
    cfg = _optim(lr=0.1, schedule="step", milestones=[3, 6], gamma=0.1, warmup_epochs=0)
    lrs = [_lr(cfg, e) for e in range(8)]  # 0-based epochs 0..7 = 1-based 1..8
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001])
    # the last step of the milestone epoch still has the old rate, the first step after it the new one
    assert _lr(cfg, 2, step_in_epoch=9) == pytest.approx(0.1) and _lr(cfg, 3, 0) == pytest.approx(0.01)


def test_linear_warmup_values_per_step():
    cfg = _optim(lr=0.2, schedule="step", milestones=[8], gamma=0.1, warmup_epochs=2)
    # warm-up over 2 epochs x 10 steps: step s has lr * (s + 1) / 20
    for step in (0, 1, 9, 10, 18, 19):
        assert _lr(cfg, step // 10, step % 10) == pytest.approx(0.2 * (step + 1) / 20)
    assert _lr(cfg, 2, 0) == pytest.approx(0.2) and _lr(cfg, 5, 3) == pytest.approx(0.2)
    assert _lr(cfg, 8, 0) == pytest.approx(0.02)  # the milestone still applies after the warm-up


def test_cosine_values_at_known_epochs():
    cfg = _optim(lr=0.1, schedule="cosine", min_lr=0.001, warmup_epochs=0)

    def expected(t: float) -> float:
        return 0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * t))

    for epoch, t in ((0, 0.0), (2, 0.2), (5, 0.5), (8, 0.8)):
        assert _lr(cfg, epoch) == pytest.approx(expected(t), rel=1e-12)
    assert _lr(cfg, 5) == pytest.approx(0.0505)
    assert _lr(cfg, 2, step_in_epoch=5) == pytest.approx(expected(0.25))  # per step, not per epoch


# ------------------------------------------------------------------------------------------------ data
def _max_crop_offset(padding: int, tmp_path) -> tuple[int, bool]:
    """Largest |shift| any augmented training sample shows, and whether every sample is a shifted (and possibly
    flipped) copy of its raw image with zero fill."""
    cfg = tiny_config(tmp_path, "data.augment=crop_flip", f"data.crop_padding={padding}").data
    loader = DeviceLoader(load_dataset(cfg), cfg, torch.device("cpu"), seed=3)
    largest, all_explained = 0, True
    for batch in loader.train_batches(0):
        raw = loader.train.x[batch.index].float()
        pixels = torch.round((batch.x + loader._shift) / loader._scale)  # back to the uint8 values
        h, w = raw.shape[-2:]
        padded = F.pad(raw, (padding,) * 4)
        for i in range(batch.size):
            found = None
            for oy in range(2 * padding + 1):
                for ox in range(2 * padding + 1):
                    crop = padded[i, :, oy : oy + h, ox : ox + w]
                    if torch.equal(crop, pixels[i]) or torch.equal(crop.flip(-1), pixels[i]):
                        found = max(abs(oy - padding), abs(ox - padding))
                        break
                if found is not None:
                    break
            all_explained &= found is not None
            largest = max(largest, found or 0)
    return largest, all_explained


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_crop_padding_is_honoured_by_the_loader(tmp_path, padding):
    largest, explained = _max_crop_offset(padding, tmp_path)
    assert explained
    assert largest == padding  # 96 samples: every padding shift is drawn


# ------------------------------------------------------------------------------------------------ methods
def _ctx(num_train: int = 32):
    student = models.create("convnet_xs", num_classes=4)
    teacher = models.create("convnet_s", num_classes=4)
    labels = torch.arange(num_train) % 4
    return student, teacher, build_context(student, [teacher], 4, (3, 8, 8), torch.device("cpu"), 0, num_train, labels)


def _io(student, teacher, method, index) -> StepIO:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(index), 3, 8, 8, generator=g)
    index = torch.as_tensor(index)
    needs = method.needs()
    s_logits, s_taps = student.forward_taps(x, tuple(needs.student_taps))
    with torch.no_grad():
        teacher.eval()
        t_logits, t_taps = teacher.forward_taps(x, tuple(needs.teacher_taps))
    batch = Batch(x=x, y=index % 4, index=index)
    return StepIO({"x": Outputs(s_logits, s_taps)}, ({"x": Outputs(t_logits, t_taps)},), batch, Progress())


def test_kd_weights_and_temperature_at_non_default_values():
    torch.manual_seed(0)
    student, teacher, ctx = _ctx()
    cfg = build_config({"method": {"name": "kd", "temperature": 2.5, "ce_weight": 0.3, "kd_weight": 1.7}}).method
    method = build_method(cfg, ctx)
    io = _io(student, teacher, method, list(range(8)))
    out = method.loss(io)
    s, t, y, temp = io.s.logits, io.t.logits, io.batch.y, 2.5
    ce = F.cross_entropy(s, y)
    kl = F.kl_div(F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1), reduction="batchmean") * temp**2
    assert float(out.terms["ce"].detach()) == pytest.approx(0.3 * float(ce.detach()), rel=1e-6)
    assert float(out.terms["kd"].detach()) == pytest.approx(1.7 * float(kl.detach()), rel=1e-5)
    default = build_method(build_config({"method": {"name": "kd"}}).method, ctx).loss(io)
    assert float(default.terms["kd"].detach()) != pytest.approx(float(out.terms["kd"].detach()))


@pytest.mark.parametrize("momentum", [0.3, 0.9])
def test_crd_memory_update_uses_the_configured_momentum(momentum):
    torch.manual_seed(0)
    student, teacher, ctx = _ctx(num_train=64)
    cfg = build_config({"method": {"name": "crd", "momentum": momentum, "num_negatives": 16}}).method
    method = build_method(cfg, ctx)
    index = [3, 10, 17, 40]
    method.loss(_io(student, teacher, method, index))
    ((idx, v_s, v_t),) = method._pending
    old_s = method.memory_student[idx].clone()
    old_t = method.memory_teacher[idx].clone()
    method.update_memory()
    for old, v, memory in ((old_s, v_s, method.memory_student), (old_t, v_t, method.memory_teacher)):
        rows = momentum * old + (1 - momentum) * v
        torch.testing.assert_close(memory[idx], rows / rows.norm(dim=1, keepdim=True), rtol=1e-6, atol=1e-7)
        half = 0.5 * old + 0.5 * v
        assert not torch.allclose(memory[idx], half / half.norm(dim=1, keepdim=True))


# ------------------------------------------------------------------------------------------------ resume RNG
def test_global_rng_states_are_restored_on_resume(tmp_path):
    part = Trainer(tiny_config(tmp_path, "train.epochs=2"))
    sigterm_during_step(part, 4)
    with pytest.raises(TrainingInterrupted):
        part.fit()
    state = read_file(part.ckpt_path)
    resumed = Trainer(tiny_config(tmp_path, "train.epochs=2"), resume=True)
    random.random(), np.random.rand(), torch.rand(3)  # move every generator away from the saved states
    resumed.load_state_dict(state)
    assert random.getstate() == state["rng"]["python"]
    saved_np = state["rng"]["numpy"]
    now_np = np.random.get_state()
    assert now_np[0] == saved_np[0] and np.array_equal(now_np[1], saved_np[1]) and now_np[2:] == saved_np[2:]
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    assert draws[:2] == (random.random(), float(np.random.rand())) and torch.equal(draws[2], torch.rand(3))


# ------------------------------------------------------------------------------------------------ compile fallback
class _Counting(nn.Module):
    """A step with side effects: a buffer counter, a Python list of pending updates, a random draw."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.weight = nn.Parameter(torch.ones(3))
        self.pending: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.updates += 1
        self.pending.append(int(self.updates))
        return (x * self.weight).sum() + torch.rand(())


def _failing_compile(module, *args, **kwargs):
    """A torch.compile whose first call runs the module's Python (tracing side effects), then fails to compile."""

    def call(*a, **kw):
        module(*a, **kw)
        raise RuntimeError("backend compiler failed")

    return call


def test_compile_fallback_applies_the_side_effects_of_the_first_step_once(monkeypatch):
    monkeypatch.setattr(precision_module.torch, "compile", _failing_compile)
    module = _Counting()
    step = CompiledStep(module, enabled=True)
    torch.manual_seed(5)
    out = step(torch.ones(3))
    assert step.status.startswith("fallback: RuntimeError: backend compiler failed")
    assert int(module.updates) == 1 and module.pending == [1]
    torch.manual_seed(5)
    assert float(out.detach()) == float(_Counting()(torch.ones(3)).detach())  # the same random draw as one eager call
    step(torch.ones(3))
    assert int(module.updates) == 2 and module.pending == [1, 2]


def test_compile_fallback_run_equals_an_eager_run_with_crd(tmp_path, monkeypatch):
    eager = Trainer(tiny_config(tmp_path, "train.epochs=1", "train.name=eager", method="crd"))
    eager.fit()
    monkeypatch.setattr(precision_module.torch, "compile", _failing_compile)
    fallback = Trainer(
        tiny_config(tmp_path, "train.epochs=1", "train.name=fallback", "train.compile=true", method="crd")
    )
    fallback.fit()
    assert fallback.step_call.status.startswith("fallback")
    for a, b in ((eager.run.method, fallback.run.method), (eager.run.student, fallback.run.student)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k  # CRD memories, BN statistics, weights: each update applied once
