"""KD under Mixup/CutMix, generated from the method registry: every method declares how it trains on mixed labels
(``DistillMethod.mixed_labels``); ``soft`` methods' loss terms do not depend on the hard label once the soft target is
there, ``dominant`` methods train on the dominant label, ``refuse`` methods are refused when the run is built. Plus the
loader side: the batch carries ``y_soft``, teacher and student see the same mixed image, the CE term is timm's
soft-target cross-entropy, and mixed batches are a pure function of (seed, epoch, step) under resume and sharding."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kdlab.methods import METHODS
from kdlab.methods.base import MIXED_LABEL_RULES, DistillMethod, mixed_labels_refusal, strictest_mixed_labels
from kdlab.train.build import BuildError
from kdlab.train.trainer import Trainer

from conftest import tiny_config

ALL = METHODS.names()
MIX = ("data.mixup_alpha=0.8", "data.cutmix_alpha=1.0", "data.mix_switch_prob=0.5")


def _config(tmp_path, method: str, *extra: str):
    student = METHODS.meta(method).get("test_student")
    extra = (f"model.student={student}", *extra) if student else extra
    return tiny_config(tmp_path, *MIX, *extra, method=method)


def _mixed_batch(trainer: Trainer, step: int = 0):
    """A batch of the first epoch that is really mixed (lambda strictly between 0 and 1)."""
    for s, batch in enumerate(trainer.run.data.train_batches(0)):
        if s >= step and batch.y_soft is not None and (batch.y_soft.max(dim=1).values < 1).any():
            return batch
    raise AssertionError("no mixed batch in the first epoch")


@pytest.mark.parametrize("method", ALL)
def test_every_method_declares_its_mixed_label_rule(method: str) -> None:
    """Class-level declaration (wrappers resolve theirs from the methods they wrap when built)."""
    cls = METHODS.get(method)
    declared = [k for k in cls.__mro__ if k is not DistillMethod and "mixed_labels" in vars(k)]
    wrapper = method in ("tekap", "sum")
    assert declared or wrapper, f"{cls.__name__} must declare mixed_labels ({', '.join(MIXED_LABEL_RULES)})"
    if declared:
        rule = cls.mixed_labels
        assert rule in MIXED_LABEL_RULES
        if rule == "refuse":
            assert cls.mixed_labels_reason, f"{cls.__name__}: a refusal says why (mixed_labels_reason)"


@pytest.mark.parametrize("method", ALL)
def test_method_under_mixup_cutmix(tmp_path, method: str) -> None:
    """refuse: a BuildError naming the method, the settings, the reason and the fix. soft: the loss terms are unchanged
    when the hard labels are replaced (only ``y_soft`` is read). dominant: the terms are finite and train."""
    rule = getattr(METHODS.get(method), "mixed_labels", None)
    cfg = _config(tmp_path, method, "train.max_steps=1")
    if rule == "refuse":
        with pytest.raises(BuildError) as err:
            Trainer(cfg)
        msg = str(err.value)
        assert f"method {method!r} cannot train on mixed labels (data.mixup_alpha=0.8, data.cutmix_alpha=1)" in msg
        assert METHODS.get(method).mixed_labels_reason in msg
        return
    trainer = Trainer(cfg)
    assert trainer.run.method.mixed_labels in ("soft", "dominant")
    batch = _mixed_batch(trainer)
    teachers = trainer.teacher_outputs(batch)
    method_rng = trainer.run.method.generator_state()  # method-owned randomness (TeKAP's noise) replayed below
    torch.manual_seed(0)
    out = trainer.step_module(batch, teachers, trainer.start)
    for name, term in out.terms.items():
        assert term.dim() == 0 and torch.isfinite(term), name
    if trainer.run.method.mixed_labels == "soft":
        other = dataclasses.replace(batch, y=(batch.y + 1) % 4)
        trainer.run.method.set_generator_state(method_rng)
        torch.manual_seed(0)
        again = trainer.step_module(other, teachers, trainer.start)
        for name, term in out.terms.items():
            assert torch.equal(term, again.terms[name]), (method, name)
    assert trainer.fit()["steps"] == 1


def test_sum_and_tekap_take_their_members_rules(tmp_path) -> None:
    assert strictest_mixed_labels(["soft", "dominant"]) == "dominant"
    assert strictest_mixed_labels(["soft", "refuse", "dominant"]) == "refuse"
    assert strictest_mixed_labels(["soft", None]) is None
    over = ["method.terms.0.name=kd", "method.terms.1.name=crd", "method.terms.1.num_negatives=16"]
    with pytest.raises(BuildError, match="memory bank"):
        Trainer(_config(tmp_path, "sum", *over))
    t = Trainer(_config(tmp_path, "sum", "method.terms.0.name=kd", "method.terms.1.name=dkd", "train.max_steps=1"))
    assert t.run.method.mixed_labels == "dominant" and mixed_labels_refusal(t.run.method) is None
    t = Trainer(_config(tmp_path, "tekap", "method.inner.name=dkd", "train.max_steps=1"))
    assert t.run.method.mixed_labels == "dominant"


def test_teacher_and_student_see_the_mixed_image_and_ce_is_soft(tmp_path) -> None:
    """The teachers' outputs are of the mixed images; ``ce``'s term is the soft-target cross-entropy with the run's
    label smoothing, ``-sum_k ((1 - eps) y_soft + eps / K)_k log softmax(z)_k`` (timm's SoftTargetCrossEntropy)."""
    trainer = Trainer(_config(tmp_path, "kd", "train.label_smoothing=0.1", "train.max_steps=1"))
    batch = _mixed_batch(trainer)
    teacher = trainer.run.teachers[0]
    assert teacher.input_norm is None
    with torch.inference_mode():
        ref = teacher.model(batch.x)
    outs = trainer.teacher_outputs(batch)
    assert torch.allclose(outs[0]["x"].logits, ref.float(), atol=1e-5)
    from kdlab.types import StepIO

    logits = torch.randn(batch.size, 4)
    io = StepIO({"x": None}, outs, batch, trainer.start, label_smoothing=0.1)
    q = 0.9 * batch.y_soft + 0.1 / 4
    expected = -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert io.cross_entropy(logits).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = dataclasses.replace(batch, y_soft=None)
    assert io.replace(batch=plain).cross_entropy(logits).item() == pytest.approx(
        F.cross_entropy(logits, batch.y, label_smoothing=0.1).item(), rel=1e-6
    )


def test_mixed_batches_replay_and_shard(tmp_path) -> None:
    """A mixed batch is a pure function of (seed, epoch, step): a mid-epoch restart replays it; two shards of a
    two-process run are the halves of the one-process batch (the global batch is mixed, then cut)."""
    aug = ("data.rand_augment.magnitude=9", "data.color_jitter=0.4", "data.random_erasing.probability=0.5")
    trainer = Trainer(_config(tmp_path, "ce", *aug, "train.max_steps=1"))
    data = trainer.run.data
    full = list(data.train_batches(1))
    again = list(data.train_batches(1, start_step=2))
    for a, b in zip(full[2:], again):
        assert torch.equal(a.x, b.x) and torch.equal(a.y_soft, b.y_soft) and torch.equal(a.y, b.y)
    assert any(not torch.equal(b.y_soft, F.one_hot(b.index % 1, 4).float()) for b in full)
    parts = []
    for rank in (0, 1):
        data.shard(rank, 2)
        parts.append(next(iter(data.train_batches(1))))
    data.shard(0, 1)
    first = full[0]
    assert torch.equal(torch.cat([p.x for p in parts]), first.x)
    assert torch.equal(torch.cat([p.y_soft for p in parts]), first.y_soft)
    assert torch.equal(torch.cat([p.index for p in parts]), first.index)


def test_cli_refuses_a_mixing_run_of_a_refusing_method(tmp_path) -> None:
    from test_cli import TINY, kdlab_in_process

    from conftest import REPO

    args = [str(REPO / "configs/debug/digits_kd.yaml"), *TINY, "method.name=crd", "model.teachers.0.checkpoint=null"]
    proc = kdlab_in_process(
        "train", *args, "data.mixup_alpha=0.8", f"train.run_dir={tmp_path}", "train.name=r", check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot train on mixed labels (data.mixup_alpha=0.8)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_run_header_states_the_augmentations(tmp_path) -> None:
    from kdlab.data.augment_pipeline import describe_augment
    from kdlab.train.header import build_header, format_header

    aug = ("data.rand_augment.magnitude=9", "data.color_jitter=0.4", "data.random_erasing.probability=0.25")
    trainer = Trainer(_config(tmp_path, "dkd", *aug, "train.max_steps=1"))
    line = describe_augment(trainer.cfg.data, trainer.run.method.mixed_labels)
    assert line == (
        "RandAugment n2 m9 mstd0.5 p0.5, colour jitter 0.4, random erasing p0.25 pixel, Mixup 0.8 / CutMix 1 "
        "(switch 0.5, prob 1, one lambda per batch); cross-entropy on the mixed labels, the dominant label where "
        "the method needs a hard one"
    )
    assert f"  augment  {line}" in format_header(build_header(trainer, measure=False)).splitlines()
    assert describe_augment(Trainer(tiny_config(tmp_path, "train.name=plain")).cfg.data) == ""
