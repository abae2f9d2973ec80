"""Contract tests generated from the method registry: every registered method, at its default config, trains
on a tiny teacher/student pair through the real trainer, touches only the student and its adapters, and resumes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kdlab.methods import METHODS
from kdlab.methods.base import MAIN_STAGE
from kdlab.train.trainer import Trainer

from conftest import tiny_config

ALL = METHODS.names()


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract_teacher")
    trainer = Trainer(tiny_config(tmp, "model.student=convnet_s", "train.epochs=3"))
    trainer.fit()
    return str(trainer.ckpt_path)


def _config(tmp_path, method, teacher_ckpt, *extra):
    # a method that cannot pair the default tiny student with the teacher names a student to test it with
    student = METHODS.meta(method).get("test_student")
    extra = (f"model.student={student}", *extra) if student else extra
    return tiny_config(tmp_path, *extra, method=method, teacher_ckpt=None if method == "ce" else teacher_ckpt)


@pytest.mark.parametrize("method", ALL)
def test_method_trains_two_steps_and_only_student_and_adapters_get_gradients(tmp_path, teacher_ckpt, method):
    trainer = Trainer(_config(tmp_path, method, teacher_ckpt, "train.max_steps=2"))
    batch = next(trainer.run.data.train_batches(0))
    # every stage (a method's own stages, e.g. AB/FT/FSP initialisation, then the main stage): the gradients reach
    # only the student and the adapters, the student not at all in a stage that trains only the adapters, and every
    # student parameter in the main stage
    for stage in trainer.stages:
        trainer.run.student.zero_grad(set_to_none=True)
        trainer.run.method.zero_grad(set_to_none=True)
        progress = dataclasses.replace(trainer.start, stage=stage.name)
        out = trainer.step_module(batch, trainer.teacher_outputs(batch), progress)
        assert out.terms, "a method must return at least one loss term"
        for name, term in out.terms.items():
            assert term.dim() == 0 and torch.isfinite(term), (stage.name, name)
        out.total.backward()
        if stage.name == MAIN_STAGE:
            for p in trainer.run.student.parameters():
                assert p.grad is not None
        elif stage.trains == "adapters":
            assert all(p.grad is None for p in trainer.run.student.parameters()), stage.name
        for t in trainer.run.teachers:
            assert all(p.grad is None for p in t.parameters())
        for name, p in trainer.run.method.named_parameters():
            if p.grad is not None:
                assert any(p is q for q in trainer.run.method.adapters.parameters()), name
    summary = trainer.fit()
    assert summary["steps"] == 2 and summary["last"]["n"] == 48


@pytest.mark.parametrize("method", ALL)
def test_method_is_deterministic_under_a_seed(tmp_path, teacher_ckpt, method):
    a = Trainer(_config(tmp_path, method, teacher_ckpt, "train.max_steps=3", "train.name=a"))
    b = Trainer(_config(tmp_path, method, teacher_ckpt, "train.max_steps=3", "train.name=b"))
    a.fit()
    b.fit()
    sa, sb = a.run.student.state_dict(), b.run.student.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ALL)
def test_method_state_round_trips_through_a_checkpoint(tmp_path, teacher_ckpt, method):
    first = Trainer(_config(tmp_path, method, teacher_ckpt, "train.epochs=1"))
    first.fit()
    again = Trainer(_config(tmp_path, method, teacher_ckpt, "train.epochs=1"), resume=True)
    state = torch.load(first.ckpt_path, weights_only=False)
    again.load_state_dict(state)
    ma, mb = first.run.method.state_dict(), again.run.method.state_dict()
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    ga, gb = first.run.method.generator_state(), again.run.method.generator_state()
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)


@pytest.mark.parametrize("method", ALL)
def test_method_trains_in_the_channels_last_format_as_in_nchw(tmp_path, teacher_ckpt, method):
    """``train.channels_last`` (kdlab's fp32 fast path on oneDNN CPUs) changes only the memory format: every method
    trains on channels-last students, teachers and batches, and at the same initialisation and batch its loss terms
    in every stage equal the NCHW run's up to the convolutions' float rounding."""
    terms = {}
    for name, cl in (("nchw", False), ("cl", True)):
        trainer = Trainer(
            _config(
                tmp_path, method, teacher_ckpt, "train.max_steps=2", f"train.name={name}", f"train.channels_last={cl}"
            )
        )
        batch = trainer.precision.prepare_batch(next(trainer.run.data.train_batches(0)))
        assert batch.x.is_contiguous(memory_format=torch.channels_last) is cl or batch.x.dim() != 4
        for stage in trainer.stages:
            progress = dataclasses.replace(trainer.start, stage=stage.name)
            out = trainer.step_module(batch, trainer.teacher_outputs(batch), progress)
            terms[name, stage.name] = {k: v.detach() for k, v in out.terms.items()}
        assert trainer.fit()["speed"]["channels_last"] is cl
    for (layout, stage), values in terms.items():
        if layout == "cl":
            ref = terms["nchw", stage]
            assert values.keys() == ref.keys()
            for k in ref:
                torch.testing.assert_close(values[k], ref[k], rtol=1e-4, atol=1e-6, msg=f"{method} {stage}: {k}")
