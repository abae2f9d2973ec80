"""The trainer: exact resume, interruption, non-finite losses, checkpoints, teachers, summaries."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from kdlab.config import ConfigError
from kdlab.train.checkpoint import CheckpointError, read_file
from kdlab.train.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

from conftest import tiny_config


def _weights(run_dir):
    state = read_file(run_dir / "checkpoint.pt")
    return state["student"], state["optimizer"], state["method"]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A trained ``convnet_s`` teacher checkpoint (a kdlab ``ce`` run)."""
    tmp = tmp_path_factory.mktemp("teacher")
    cfg = tiny_config(tmp, "model.student=convnet_s", "train.epochs=4")
    trainer = Trainer(cfg)
    trainer.fit()
    return str(trainer.ckpt_path)


def _assert_same_state(a, b):
    sa, oa, ma = a
    sb, ob, mb = b
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    for pid, st in oa["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                assert torch.equal(v, ob["state"][pid][name]), (pid, name)


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_resume_mid_epoch_is_bitwise_identical(tmp_path, teacher_ckpt, method):
    """A run stopped mid-epoch (as on SIGTERM) and resumed ends with exactly the uninterrupted weights."""
    ckpt = teacher_ckpt if method == "kd" else None
    full = Trainer(tiny_config(tmp_path, "train.name=full", method=method, teacher_ckpt=ckpt))
    full.fit()

    part = Trainer(tiny_config(tmp_path, "train.name=part", method=method, teacher_ckpt=ckpt))
    calls = {"n": 0}
    step = part.optimizer.step

    def step_then_signal(*a, **kw):  # deliver "SIGTERM" during the 9th step (epoch 2, mid-epoch)
        calls["n"] += 1
        if calls["n"] == 9:
            part._on_signal(signal.SIGTERM, None)
        return step(*a, **kw)

    part.optimizer.step = step_then_signal
    with pytest.raises(TrainingInterrupted, match="--resume"):
        part.fit()
    saved = read_file(part.ckpt_path)
    assert saved["progress"]["step"] == 9 and saved["progress"]["step_in_epoch"] == 3

    resumed = Trainer(tiny_config(tmp_path, "train.name=part", method=method, teacher_ckpt=ckpt), resume=True)
    summary = resumed.fit()
    assert summary["finished"] and summary["steps"] == 18
    _assert_same_state(_weights(full.run_dir), _weights(resumed.run_dir))
    # the exported student is the same too
    a = read_file(full.run_dir / "student.pt")["state_dict"]
    b = read_file(resumed.run_dir / "student.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_at_epoch_boundary_after_max_steps(tmp_path):
    full = Trainer(tiny_config(tmp_path, "train.name=full"))
    full.fit()
    first = Trainer(tiny_config(tmp_path, "train.name=cut", "train.max_steps=12"))
    s = first.fit()
    assert s["steps"] == 12 and not s["finished"]
    rest = Trainer(tiny_config(tmp_path, "train.name=cut"), resume=True)
    rest.fit()
    _assert_same_state(_weights(full.run_dir), _weights(rest.run_dir))


def test_summary_metrics_and_files(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    summary = trainer.fit()
    d = trainer.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "student.pt"):
        assert (d / name).is_file(), name
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert all("test" in x and "ce" in x["train"] and x["images_per_s"] > 0 for x in lines)
    best = max(lines, key=lambda x: x["test"]["top1"])
    assert summary["best"]["top1"] == best["test"]["top1"] and summary["best"]["epoch"] == best["epoch"]
    assert summary["last"]["top1"] == lines[-1]["test"]["top1"]
    assert summary["versions"]["torch"] == torch.__version__
    # the learning-rate schedule is the step schedule of the config (x0.1 after epoch 2)
    assert lines[0]["lr"] == pytest.approx(0.05) and lines[-1]["lr"] == pytest.approx(0.005)


def test_non_finite_loss_names_step_and_term_and_keeps_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=2"))
    trainer.fit()
    before = read_file(trainer.ckpt_path)["student"]
    again = Trainer(tiny_config(tmp_path, "train.epochs=3"), resume=True)
    loss = again.run.method.loss

    def poisoned(io):
        out = loss(io)
        out.terms["ce"] = out.terms["ce"] * float("nan")
        return out

    again.run.method.loss = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 12 \(epoch 3\): term 'ce'"):
        again.fit()
    after = read_file(trainer.ckpt_path)["student"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_truncated_checkpoint_is_detected_never_silently_restarted(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=1"))
    trainer.fit()
    data = trainer.ckpt_path.read_bytes()
    trainer.ckpt_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Trainer(tiny_config(tmp_path, "train.epochs=2"), resume=True).fit()


def test_existing_run_needs_resume_or_force(tmp_path):
    Trainer(tiny_config(tmp_path, "train.epochs=1")).fit()
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_config(tmp_path, "train.epochs=1"))
    Trainer(tiny_config(tmp_path, "train.epochs=1"), force=True).fit()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(tiny_config(tmp_path, "train.name=other"), resume=True)


def test_resume_with_another_method_config_is_refused(tmp_path, teacher_ckpt):
    Trainer(tiny_config(tmp_path, "train.epochs=1", method="kd", teacher_ckpt=teacher_ckpt)).fit()
    cfg = tiny_config(tmp_path, "train.epochs=2", "method.temperature=2", method="kd", teacher_ckpt=teacher_ckpt)
    with pytest.raises(ConfigError, match=r"method\.temperature: 4\.0 -> 2\.0"):
        Trainer(cfg, resume=True).fit()


def test_teacher_is_frozen_and_unchanged(tmp_path, teacher_ckpt):
    trainer = Trainer(tiny_config(tmp_path, method="kd", teacher_ckpt=teacher_ckpt))
    teacher = trainer.run.teachers[0]
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    trainer.fit()
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included


def test_teacher_checkpoint_of_another_architecture_names_the_mismatch(tmp_path, teacher_ckpt):
    cfg = tiny_config(tmp_path, "model.teachers.0.name=convnet_m", method="kd", teacher_ckpt=teacher_ckpt)
    with pytest.raises(CheckpointError, match=r"(?s)does not fit model 'convnet_m'.*shape mismatches"):
        Trainer(cfg)


def test_missing_teacher_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, method="kd", teacher_ckpt=str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(cfg)


def test_teacher_loads_plain_state_dict_with_module_prefix(tmp_path, teacher_ckpt):
    state = read_file(teacher_ckpt)["student"]
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, plain)
    a = Trainer(tiny_config(tmp_path, "train.name=a", method="kd", teacher_ckpt=str(plain)))
    b = Trainer(tiny_config(tmp_path, "train.name=b", method="kd", teacher_ckpt=teacher_ckpt))
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(a.run.teachers[0](x), b.run.teachers[0](x))


def test_kd_needs_a_teacher(tmp_path):
    from kdlab.train.build import BuildError

    cfg = tiny_config(tmp_path, "model.teachers=[]", method="kd")
    with pytest.raises(BuildError, match=r"model\.teachers is empty"):
        Trainer(cfg)


def test_functional_student_outputs_match_the_module_and_differentiate_params(tmp_path):
    """The aux-objective hook runs the student with substituted parameters (a virtual step) exactly."""
    from kdlab.train.trainer import functional_student_outputs

    trainer = Trainer(tiny_config(tmp_path))
    student = trainer.run.student.eval()
    batch = next(trainer.run.data.train_batches(0))
    params = dict(student.named_parameters())
    out = functional_student_outputs(student, params, batch, trainer.run.needs)
    assert torch.equal(out["x"].logits, student(batch.x))
    shifted = {k: v + 0.01 if k == "classifier.bias" else v for k, v in params.items()}
    out2 = functional_student_outputs(student, shifted, batch, trainer.run.needs)
    assert torch.allclose(out2["x"].logits, out["x"].logits + 0.01, atol=1e-6)
    w = params["classifier.weight"].detach().clone().requires_grad_(True)
    loss = functional_student_outputs(student, {**params, "classifier.weight": w}, batch, trainer.run.needs)["x"]
    loss.logits.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
