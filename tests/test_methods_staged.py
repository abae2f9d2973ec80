"""The methods with an initialisation stage (ab, ft, fsp): the init stage runs first through the real trainer and
trains what the reference trains, the main stage has the reference's terms, a run interrupted inside the init stage
resumes exactly, and the adapters have the reference's sizes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdlab import losses, models
from kdlab.config import build_config
from kdlab.methods import METHODS, build_method
from kdlab.methods._feature import PairError
from kdlab.methods.ab import AB
from kdlab.methods.fsp import FSP
from kdlab.methods.ft import FT
from kdlab.train.build import build_context
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import Progress

from conftest import sigterm_during_step, tiny_config

STAGED = ["ab", "ft", "fsp"]
INIT_TERM = {"ab": "ab", "ft": "reconstruction", "fsp": "fsp"}
MAIN_TERMS = {"ab": {"ce"}, "ft": {"ce", "ft"}, "fsp": {"ce"}}
STEPS_PER_EPOCH = 6  # 96 synthetic images, batch 16


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("staged_teacher")
    trainer = Trainer(tiny_config(tmp, "model.student=convnet_s", "train.epochs=2"))
    trainer.fit()
    return str(trainer.ckpt_path)


def _cfg(tmp_path, method, teacher_ckpt, *extra):
    student = METHODS.meta(method).get("test_student")  # fsp: the default tiny student has other channel counts
    extra = (f"model.student={student}", *extra) if student else extra
    return tiny_config(tmp_path, "method.init_epochs=1", *extra, method=method, teacher_ckpt=teacher_ckpt)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _records(trainer: Trainer) -> list[dict]:
    return [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ both stages


@pytest.mark.parametrize("method", STAGED)
def test_init_stage_then_main_stage_in_metrics(tmp_path, teacher_ckpt, method):
    trainer = Trainer(_cfg(tmp_path, method, teacher_ckpt, "train.epochs=2"))
    assert [(s.name, s.epochs) for s in trainer.stages] == [("init", 1), ("main", 2)]
    summary = trainer.fit()
    lines = _records(trainer)
    assert [(x["stage"], x["epoch"]) for x in lines] == [("init", 1), ("main", 1), ("main", 2)]
    init, *main = lines
    assert set(init["train"]) == {INIT_TERM[method], "loss"} and "test" not in init
    assert init["lr"] == (0.01 if method == "ft" else 0.05)  # FT: the reference's 0.01; AB, FSP: the run's lr
    for x in main:
        assert set(x["train"]) == MAIN_TERMS[method] | {"loss"}
    assert summary["finished"] and summary["steps"] == 3 * STEPS_PER_EPOCH and summary["stage"] == "main"


def test_ft_init_stage_trains_only_the_paraphraser(tmp_path, teacher_ckpt):
    trainer = Trainer(_cfg(tmp_path, "ft", teacher_ckpt, f"train.max_steps={STEPS_PER_EPOCH}"))  # the init stage
    adapters = trainer.run.method.adapters
    student0, translator0 = _state(trainer.run.student), _state(adapters["translator"])
    paraphraser0 = _state(adapters["paraphraser"])
    summary = trainer.fit()
    assert summary["stage"] == "init"
    assert _same(student0, _state(trainer.run.student))  # BN statistics too: the student stays in eval mode
    assert _same(translator0, _state(adapters["translator"]))
    after = _state(adapters["paraphraser"])
    assert all(not torch.equal(paraphraser0[k], after[k]) for k in after)


def test_ft_main_stage_leaves_the_paraphraser_alone(tmp_path, teacher_ckpt):
    init_only = Trainer(_cfg(tmp_path, "ft", teacher_ckpt, "train.name=init", f"train.max_steps={STEPS_PER_EPOCH}"))
    init_only.fit()
    full = Trainer(_cfg(tmp_path, "ft", teacher_ckpt, "train.name=full", "train.epochs=1"))
    translator0 = _state(full.run.method.adapters["translator"])
    full.fit()
    para_init, para_full = (_state(t.run.method.adapters["paraphraser"]) for t in (init_only, full))
    assert _same(para_init, para_full)
    assert not _same(translator0, _state(full.run.method.adapters["translator"]))


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_ab_and_fsp_init_stage_trains_the_student_but_not_its_classifier(tmp_path, teacher_ckpt, method):
    trainer = Trainer(_cfg(tmp_path, method, teacher_ckpt, f"train.max_steps={STEPS_PER_EPOCH}"))
    student = trainer.run.student
    before, classifier0 = _state(student), _state(student.classifier)
    adapters0 = _state(trainer.run.method.adapters)
    trainer.fit()
    after = _state(student)
    feature_keys = [k for k in after if k.endswith("weight") and not k.startswith("classifier")]
    assert feature_keys and all(not torch.equal(before[k], after[k]) for k in feature_keys)
    # no gradient from the init loss reaches the classifier, and the optimiser skips it (no weight decay either)
    assert _same(classifier0, _state(student.classifier))
    if method == "ab":  # the connectors are trained with the student
        assert not _same(adapters0, _state(trainer.run.method.adapters))


@pytest.mark.parametrize("method", ["ab", "fsp"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_ab_and_fsp_init_stage_student_mode(tmp_path, teacher_ckpt, method, mode):
    """The reference runs the init stage with the student in eval mode: BN running statistics stay at their
    initial values (and normalise the batch); ``init_student_mode: train`` uses and updates batch statistics."""
    trainer = Trainer(
        _cfg(tmp_path, method, teacher_ckpt, f"method.init_student_mode={mode}", f"train.max_steps={STEPS_PER_EPOCH}")
    )
    assert trainer.stages[0].student_training is (mode == "train")
    before = _state(trainer.run.student)
    trainer.fit()
    after = _state(trainer.run.student)
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert stats
    unchanged = all(torch.equal(before[k], after[k]) for k in stats)
    assert unchanged is (mode == "eval")


def test_ab_main_stage_is_cross_entropy_alone_and_the_connectors_stay_put(tmp_path, teacher_ckpt):
    init_only = Trainer(_cfg(tmp_path, "ab", teacher_ckpt, "train.name=init", f"train.max_steps={STEPS_PER_EPOCH}"))
    init_only.fit()
    full = Trainer(_cfg(tmp_path, "ab", teacher_ckpt, "train.name=full", "train.epochs=2"))
    full.fit()  # the optimiser of the main stage holds the connectors but skips them: they have no gradient
    assert _same(_state(init_only.run.method.adapters), _state(full.run.method.adapters))
    assert not _same(_state(init_only.run.student), _state(full.run.student))
    batch = next(full.run.data.train_batches(0))
    out = full.step_module(batch, full.teacher_outputs(batch), Progress(stage="main"))
    assert set(out.terms) == {"ce"}
    torch.testing.assert_close(out.total, losses.cross_entropy(full.run.student(batch.x), batch.y))
    out.total.backward()
    assert all(p.grad is None for p in full.run.method.adapters.parameters())
    assert all(p.grad is not None for p in full.run.student.parameters())


def test_init_epochs_zero_skips_the_stage(tmp_path, teacher_ckpt):
    trainer = Trainer(_cfg(tmp_path, "ab", teacher_ckpt, "method.init_epochs=0", "train.epochs=1"))
    assert [s.name for s in trainer.stages] == ["main"]
    trainer.fit()
    assert [x["stage"] for x in _records(trainer)] == ["main"]


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("method", STAGED)
def test_resume_inside_the_init_stage_is_bitwise_identical(tmp_path, teacher_ckpt, method):
    stop_at = STEPS_PER_EPOCH + 3  # the middle of the second init epoch
    extra = ("method.init_epochs=2", "train.epochs=1")
    full = Trainer(_cfg(tmp_path, method, teacher_ckpt, "train.name=full", *extra))
    full.fit()
    part = Trainer(_cfg(tmp_path, method, teacher_ckpt, "train.name=part", *extra))
    sigterm_during_step(part, stop_at)
    with pytest.raises(TrainingInterrupted, match="stage 'init'"):
        part.fit()
    saved = read_file(part.ckpt_path)["progress"]
    assert saved["global_step"] == stop_at and saved["stage"] == 0
    resumed = Trainer(_cfg(tmp_path, method, teacher_ckpt, "train.name=part", *extra), resume=True)
    resumed.fit()
    a, b = read_file(full.ckpt_path), read_file(resumed.ckpt_path)
    for name in ("student", "method", "optimizer"):
        if name == "optimizer":
            sa, sb = a[name]["state"], b[name]["state"]
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa), name
        else:
            assert a[name].keys() == b[name].keys()
            assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert [(x["stage"], x["epoch"]) for x in _records(resumed)] == [("init", 1), ("init", 2), ("main", 1)]


# ------------------------------------------------------------------------------------------ build


def _ctx(student: str, teacher: str):
    """The build context of two zoo models on the meta device (shapes only)."""
    with torch.device("meta"):
        s = models.create(student, num_classes=100)
        t = models.create(teacher, num_classes=100)
    return build_context(s, [t], 100, (3, 32, 32), torch.device("meta"))


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_parameter_counts_resnet32x4_to_resnet8x4():
    ctx = _ctx("resnet8x4", "resnet32x4")
    ab = build_method(AB.Config(), ctx)
    # every stage of resnet8x4 has resnet32x4's shape: identity connectors, as the reference's Connector
    assert all(isinstance(c, nn.Identity) for c in ab.adapters["connectors"]) and _params(ab.adapters) == 0
    assert ab.needs().student_taps == ab.needs().teacher_taps == {"stage1.pre", "stage2.pre", "stage3.pre"}
    fsp = build_method(FSP.Config(), ctx)
    assert _params(fsp.adapters) == 0 and fsp.teacher_tap_names == ["stem", "stage1", "stage2", "stage3"]
    ft = build_method(FT.Config(), ctx)
    # paraphraser (2,065,536, trained in the init stage only) + translator (1,033,728)
    assert _params(ft.adapters) == 2_065_536 + 1_033_728


def test_ab_connector_counts_across_architectures():
    def conv_bn(c_in, c_out, k):  # conv (or transposed conv) with bias, then BN
        return c_in * c_out * k * k + c_out + 2 * c_out

    # resnet32x4 -> shufflenetv1: half-size student maps, 4x4 stride-2 transposed convs to the teacher's size
    ab = build_method(AB.Config(), _ctx("shufflenetv1", "resnet32x4"))
    assert all(isinstance(c.conv, nn.ConvTranspose2d) for c in ab.adapters["connectors"])
    assert _params(ab.adapters) == conv_bn(240, 64, 4) + conv_bn(480, 128, 4) + conv_bn(960, 256, 4) == 5_162_304
    # wrn_40_2 -> wrn_40_1: equal sizes, 1x1 convs
    ab = build_method(AB.Config(), _ctx("wrn_40_1", "wrn_40_2"))
    assert _params(ab.adapters) == conv_bn(16, 32, 1) + conv_bn(32, 64, 1) + conv_bn(64, 128, 1) == 11_424
    # mobilenetv2 has no pre-activation taps: its stage outputs (the reference's MobileNetV2 ignores `preact`)
    ab = build_method(AB.Config(), _ctx("mobilenetv2", "vgg13"))
    assert ab.student_tap_names == ["stage1", "stage2", "stage3", "stage4"]
    assert ab.teacher_tap_names == ["stage1.pre", "stage2.pre", "stage3.pre", "stage4.pre"]


def test_defaults_are_the_references():
    ab, ft, fsp = AB.Config(), FT.Config(), FSP.Config()
    # init_epochs None: the reference's 30 of 240 epochs as a share of the run (kdlab.schedule; tests/test_schedule.py)
    assert (ab.init_epochs, ab.init_lr, ab.ab_weight, ab.margin, ab.ce_weight) == (None, None, 1.0, 1.0, 1.0)
    assert (ft.init_epochs, ft.init_lr, ft.ft_weight, ft.ce_weight) == (None, 0.01, 200.0, 1.0)
    assert (fsp.init_epochs, fsp.init_lr, fsp.fsp_weight, fsp.ce_weight) == (None, None, 1.0, 1.0)
    assert {"ab", "ft", "fsp"} <= set(METHODS.names())


def test_pairs_that_cannot_be_distilled_fail_clearly():
    with pytest.raises(PairError, match=r"fsp.*equal channel counts.*student's 'stem' has 16 and the teacher's"):
        build_method(FSP.Config(), _ctx("mobilenetv2", "vgg13"))
    with pytest.raises(PairError, match="equal channel counts"):
        build_method(FSP.Config(), _ctx("wrn_40_1", "wrn_40_2"))  # N/A in the CRD table
    with pytest.raises(PairError, match="pairs student and teacher maps one to one"):
        build_method(AB.Config(), _ctx("resnet8x4", "vgg13"))  # 3 stages vs 4
    with pytest.raises(ValueError, match="init_epochs"):
        build_method(AB.Config(init_epochs=-1), _ctx("resnet8x4", "resnet32x4"))


def test_tekap_runs_the_inner_methods_init_stage_unperturbed(tmp_path):
    teacher = Trainer(tiny_config(tmp_path, "model.student=convnet_s", "train.epochs=1", "train.name=t"))
    teacher.fit()
    cfg = tiny_config(
        tmp_path,
        "method.inner.name=ft",
        "method.inner.init_epochs=1",
        "train.epochs=1",
        method="tekap",
        teacher_ckpt=str(teacher.ckpt_path),
    )
    trainer = Trainer(cfg)
    assert [st.name for st in trainer.stages] == ["init", "main"]
    trainer.fit()
    stages = [json.loads(x)["stage"] for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["init", "main"]


def test_sum_of_two_methods_with_init_stages_runs_both_stages_then_main(tmp_path, teacher_ckpt):
    """AB and FT both declare an ``init`` stage; in a ``sum`` they run one after the other as ``ab.init`` and
    ``ft.init``, each evaluating only its own term, then the main stage evaluates both."""
    cfg = tiny_config(tmp_path, "train.epochs=1", method="kd", teacher_ckpt=teacher_ckpt)
    cfg.method = build_config(
        {"method": {"name": "sum", "terms": [{"name": "ab", "init_epochs": 1}, {"name": "ft", "init_epochs": 1}]}}
    ).method
    trainer = Trainer(cfg)
    assert [(s.name, s.epochs) for s in trainer.stages] == [("ab.init", 1), ("ft.init", 1), ("main", 1)]
    summary = trainer.fit()
    lines = _records(trainer)
    assert [x["stage"] for x in lines] == ["ab.init", "ft.init", "main"]
    assert set(lines[0]["train"]) == {"ab.ab", "loss"}
    assert set(lines[1]["train"]) == {"ft.reconstruction", "loss"}
    assert set(lines[2]["train"]) == {"ce", "ft.ft", "loss"}
    assert summary["finished"] and summary["steps"] == 3 * STEPS_PER_EPOCH
