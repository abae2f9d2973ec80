"""Group-B feature methods (vid, ofd, review_kd, crd, srrl), the ``sum`` combinator, TeKAP at the feature level and
the OFD BatchNorm mechanism of the zoo."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab import losses, models
from kdlab.config import build_config
from kdlab.methods import METHODS, build_method
from kdlab.models.base import TapError
from kdlab.train.build import build_context
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import Batch, LossOut, Outputs, Progress, StepIO

from conftest import tiny_config

NUM_TRAIN, NUM_CLASSES = 24, 4


def tiny_ctx(seed: int = 0, num_train: int = NUM_TRAIN, labels: torch.Tensor | None = None):
    """Context of the tiny test pair (convnet_xs student, convnet_s teacher, 8x8 images)."""
    student = models.create("convnet_xs", num_classes=NUM_CLASSES)
    teacher = models.create("convnet_s", num_classes=NUM_CLASSES)
    if labels is None:
        labels = torch.arange(num_train) % NUM_CLASSES
    ctx = build_context(student, [teacher], NUM_CLASSES, (3, 8, 8), torch.device("cpu"), seed, num_train, labels)
    return student, teacher, ctx


def method(name: str, ctx, **fields):
    cfg = build_config({"method": {"name": name, **fields}}).method
    return build_method(cfg, ctx)


def step_io(student, teacher, m, index, seed: int = 0, epoch: int = 0) -> StepIO:
    """One batch through both models with the taps ``m`` needs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(index), 3, 8, 8, generator=g)
    index = torch.as_tensor(index)
    y = index % NUM_CLASSES
    needs = m.needs()
    s_logits, s_taps = student.forward_taps(x, tuple(needs.student_taps))
    with torch.no_grad():
        teacher.eval()
        t_logits, t_taps = teacher.forward_taps(x, tuple(needs.teacher_taps))
    batch = Batch(x=x, y=y, index=index)
    return StepIO({"x": Outputs(s_logits, s_taps)}, ({"x": Outputs(t_logits, t_taps)},), batch, Progress(epoch=epoch))


# ------------------------------------------------------------------------------------ parameter counts (methods.md)


@pytest.fixture(scope="module")
def cifar_ctx():
    torch.manual_seed(0)
    student = models.create("resnet8x4", num_classes=100)
    teacher = models.create("resnet32x4", num_classes=100)
    labels = torch.arange(50_000) % 100
    return build_context(student, [teacher], 100, (3, 32, 32), torch.device("cpu"), 0, 50_000, labels)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("vid", 258_048 + 64 + 128 + 256), ("ofd", 86_912), ("review_kd", 1_808_774), ("crd", 65_792)],
)
def test_adapter_parameter_counts_resnet32x4_to_resnet8x4(cifar_ctx, name, expected):
    m = method(name, cifar_ctx)
    assert _count(m.adapters) == expected
    assert _count(m) == expected  # nothing trainable outside the adapters
    if name == "vid":
        assert _count(m.adapters["regressors"]) == 258_048  # methods.md: VID excluding log_scale


def test_srrl_adapters_and_the_teacher_classifier_is_not_a_method_parameter(cifar_ctx):
    m = method("srrl", cifar_ctx)
    assert _count(m.adapters) == 256 * 256 + 2 * 256  # conv1x1 without bias + BN
    classifier = cifar_ctx.teacher_classifiers[0]
    assert not any(p is q for p in m.parameters() for q in classifier.parameters())
    assert not any(k.endswith("classifier.weight") or k.startswith("_teacher") for k in m.state_dict())


def test_review_kd_uses_the_reference_cifar_shapes(cifar_ctx):
    m = method("review_kd", cifar_ctx)
    assert m.student_inputs == ["stage1", "stage2", "stage3", "pool"]
    assert m.teacher_targets == ["stage1.pre", "stage2.pre", "stage3.pre", "pool"]
    assert m.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]  # the reference's OUT_SHAPES, reversed
    assert [a.att_conv is not None for a in m.adapters["abfs"]] == [True, True, True, False]
    assert {a.conv1[0].out_channels for a in m.adapters["abfs"]} == {256}  # mid channels


# ---------------------------------------------------------------------------------------------------------- VID


def test_vid_variances_train():
    student, teacher, ctx = tiny_ctx()
    m = method("vid", ctx)
    before = [v.clone() for v in m.variances()]
    assert all(torch.allclose(v, torch.full_like(v, 5.0)) for v in before)
    opt = torch.optim.SGD(list(student.parameters()) + list(m.adapters.parameters()), lr=0.1)
    out = m.loss(step_io(student, teacher, m, range(8)))
    out.total.backward()
    assert all(p.grad is not None for p in m.adapters["log_scales"])
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.variances()))


def test_vid_loss_value():
    student, teacher, ctx = tiny_ctx()
    m = method("vid", ctx, ce_weight=0.0)
    io = step_io(student, teacher, m, range(4))
    expected = 0.0
    for (s_tap, t_tap), reg, log_scale in zip(m.pairs, m.adapters["regressors"], m.adapters["log_scales"]):
        s, t = io.s.taps[s_tap].double(), io.t.taps[t_tap].double()
        if s.shape[-1] > t.shape[-1]:
            s = F.avg_pool2d(s, s.shape[-1] // t.shape[-1])
        mu = reg.double()(s)
        var = torch.log1p(torch.exp(log_scale.double())) + 1e-5
        expected += (0.5 * ((mu - t) ** 2 / var[:, None, None] + torch.log(var)[:, None, None])).mean().item()
        reg.float()
    assert m.loss(io).terms["vid"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------- OFD


def test_ofd_margins_come_from_the_teachers_bn_before_relu():
    student, teacher, ctx = tiny_ctx()
    with torch.no_grad():
        for bn in (teacher.stage1.body[-1], teacher.stage2.body[-1]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    ctx = build_context(student, [teacher], NUM_CLASSES, (3, 8, 8), torch.device("cpu"), 0, NUM_TRAIN)
    m = method("ofd", ctx)
    assert m.pairs == [("stage1.pre", "stage1.pre"), ("stage2.pre", "stage2.pre")]
    for margin, bn in zip(m.margins(), (teacher.stage1.body[-1], teacher.stage2.body[-1])):
        assert torch.allclose(margin, losses.ofd_margin(bn.weight, bn.bias))
        assert (margin < 0).all()
    assert {"margin0", "margin1"} <= set(m.state_dict())
    out = m.loss(step_io(student, teacher, m, range(4)))
    assert set(out.terms) == {"ce", "ofd"} and torch.isfinite(out.total)


def test_ofd_fails_the_build_when_the_teacher_cannot_name_its_bn():
    student = models.create("convnet_xs", num_classes=10)
    teacher = models.create("shufflenetv2", num_classes=10)
    ctx = build_context(student, [teacher], 10, (3, 16, 16), torch.device("cpu"), 0, 8)
    with pytest.raises(TapError, match="BatchNorm before the ReLU"):
        method("ofd", ctx)
    no_pre = models.create("mobilenetv2", num_classes=10)
    ctx = build_context(no_pre, [teacher], 10, (3, 16, 16), torch.device("cpu"), 0, 8)
    with pytest.raises(TapError, match=r"pre-activation taps \(stageK.pre\)"):
        method("ofd", ctx)


@pytest.mark.parametrize("name", ["vgg8", "wrn_16_1", "convnet_s", "resnet8", "shufflenetv1"])
def test_bn_before_relu_is_the_bn_that_produces_the_pre_activation(name):
    """For VGG/WRN/ConvNet the tap is that BN's output; for residual models the BN ends the last branch."""
    model = models.create(name, num_classes=10).eval()
    pres = [t.name for t in model.tap_info() if t.kind == "pre"]
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.bn_before_relu(tap).register_forward_hook(lambda mod, i, o, tap=tap: captured.__setitem__(tap, o))
        for tap in pres
    ]
    _, taps = model.forward_taps(torch.randn(2, 3, 32, 32), pres)
    for h in hooks:
        h.remove()
    for tap in pres:
        assert captured[tap].shape == taps[tap].shape
        if name in ("vgg8", "wrn_16_1", "convnet_s"):
            assert torch.equal(captured[tap], taps[tap])
    assert model.bn_before_relu("stage1") is None and model.bn_before_relu("pool") is None


# ---------------------------------------------------------------------------------------------------------- ReviewKD


def test_review_kd_warmup_and_shapes():
    student, teacher, ctx = tiny_ctx()
    m = method("review_kd", ctx, warmup_epochs=20)  # the reference's ramp, set explicitly (default: 20/240 of the run)
    assert [m.warmup_factor(e) for e in (0, 9, 19, 30)] == [1 / 20, 10 / 20, 1.0, 1.0]
    io = step_io(student, teacher, m, range(4))
    fused = m.fuse([m._as_map(io.s.taps[t]) for t in m.student_inputs])
    assert [f.shape for f in fused] == [m._as_map(io.t.taps[t]).shape for t in m.teacher_targets]
    hcl = losses.hcl(fused, [m._as_map(io.t.taps[t]) for t in m.teacher_targets])
    late = m.loss(step_io(student, teacher, m, range(4), epoch=25)).terms["review_kd"]
    early = m.loss(io).terms["review_kd"]
    assert late.item() == pytest.approx(5.0 * hcl.item(), rel=1e-5)
    assert early.item() == pytest.approx(5.0 * hcl.item() / 20, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------- CRD


def test_crd_negatives_are_other_classes_distinct_and_reproducible():
    _, _, ctx = tiny_ctx()
    m = method("crd", ctx)
    assert m.num_negatives == NUM_TRAIN - NUM_TRAIN // NUM_CLASSES  # clamped to the pool of other-class samples
    index = torch.tensor([0, 5, 10])
    state = {k: v.clone() for k, v in m.generator_state().items()}
    idx = m.sample_indices(index)
    assert idx.shape == (3, 1 + m.num_negatives) and torch.equal(idx[:, 0], index)
    labels = torch.arange(NUM_TRAIN) % NUM_CLASSES
    for row, i in zip(idx, index):
        negatives = row[1:]
        assert len(set(negatives.tolist())) == len(negatives)  # without replacement
        assert (labels[negatives] != labels[i]).all()
    again = m.sample_indices(index)
    assert not torch.equal(again, idx)  # fresh every draw
    m.set_generator_state(state)
    assert torch.equal(m.sample_indices(index), idx)  # reproducible from the checkpointed state


def test_crd_other_samples_mode_excludes_only_the_sample_itself():
    _, _, ctx = tiny_ctx()
    m = method("crd", ctx, negatives="other_samples", num_negatives=NUM_TRAIN - 1)
    idx = m.sample_indices(torch.tensor([3, 7]))
    for row in idx:
        assert sorted(row[1:].tolist()) == [j for j in range(NUM_TRAIN) if j != row[0]]


def test_crd_num_negatives_clamps_with_a_warning(caplog):
    _, _, ctx = tiny_ctx()
    with caplog.at_level("WARNING", logger="kdlab"):
        m = method("crd", ctx)
    assert "exceeds" in caplog.text and m.num_negatives == 18
    small = method("crd", ctx, num_negatives=5)
    assert small.num_negatives == 5


def _np_crd_nce(v: np.ndarray, memory: np.ndarray, idx: np.ndarray, temperature: float, z: float, n: int) -> float:
    k = idx.shape[1] - 1
    total = 0.0
    for b in range(v.shape[0]):
        p = np.exp(memory[idx[b]] @ v[b] / temperature) / z
        total -= math.log(p[0] / (p[0] + k / n + 1e-7)) + sum(math.log((k / n) / (q + k / n + 1e-7)) for q in p[1:])
    return total / v.shape[0]


def test_crd_loss_z_and_memory_update_on_a_fixed_input():
    student, teacher, ctx = tiny_ctx()
    m = method("crd", ctx, num_negatives=6, ce_weight=0.0)
    memory_s, memory_t = m.memory_student.clone(), m.memory_teacher.clone()
    stdv = 1 / math.sqrt(128 / 3)
    assert memory_s.abs().max() <= stdv and memory_s.shape == (NUM_TRAIN, 128)
    assert m.z_student.item() == -1 and m.z_teacher.item() == -1
    index = [1, 2, 3, 4]
    io = step_io(student, teacher, m, index)
    out = m.loss(io)
    idx = m._step_idx.numpy()
    v_s = m.adapters["embed_student"](io.s.taps["pool"]).detach().double().numpy()
    v_t = m.adapters["embed_teacher"](io.t.taps["pool"]).detach().double().numpy()
    t = 0.07
    # Z frozen at the first batch: mean of exp(<m, v> / T) over the batch and its 1 + K rows, times N
    z_s = np.mean([np.exp(memory_t.double().numpy()[idx[b]] @ v_s[b] / t) for b in range(4)]) * NUM_TRAIN
    z_t = np.mean([np.exp(memory_s.double().numpy()[idx[b]] @ v_t[b] / t) for b in range(4)]) * NUM_TRAIN
    assert m.z_student.item() == pytest.approx(z_s, rel=1e-5) and m.z_teacher.item() == pytest.approx(z_t, rel=1e-5)
    expected = _np_crd_nce(v_s, memory_t.double().numpy(), idx, t, z_s, NUM_TRAIN)
    expected += _np_crd_nce(v_t, memory_s.double().numpy(), idx, t, z_t, NUM_TRAIN)
    assert out.terms["crd"].item() == pytest.approx(0.8 * expected, rel=1e-4)
    # the memory is untouched until the end of the step ...
    assert torch.equal(m.memory_student, memory_s) and torch.equal(m.memory_teacher, memory_t)
    (aux,) = m.aux_objectives()
    aux.step(None)
    # ... then the positives' rows get a momentum-0.5 update and are renormalised; other rows are unchanged
    for memory, old, v in ((m.memory_student, memory_s, v_s), (m.memory_teacher, memory_t, v_t)):
        rows = 0.5 * old.double().numpy()[index] + 0.5 * v
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        np.testing.assert_allclose(memory[index].double().numpy(), rows, rtol=1e-5, atol=1e-6)
        others = [i for i in range(NUM_TRAIN) if i not in index]
        assert torch.equal(memory[others], old[others])
        assert torch.allclose(memory[index].norm(dim=1), torch.ones(4))
    # Z stays frozen
    z = m.z_student.clone()
    m.loss(step_io(student, teacher, m, [5, 6], seed=1))
    assert torch.equal(m.z_student, z)


def test_crd_state_dict_holds_the_memory_and_z():
    _, _, ctx = tiny_ctx()
    m = method("crd", ctx)
    state = m.state_dict()
    assert {"memory_student", "memory_teacher", "z_student", "z_teacher"} <= set(state)
    assert "train_labels" not in state  # derived from the dataset, not method state
    queue = method("crd", ctx, memory="queue", num_negatives=8)
    assert {"queue_student", "queue_teacher", "queue_ptr", "z_student", "z_teacher"} <= set(queue.state_dict())


def test_crd_scores_every_call_of_a_step_against_the_start_of_step_memory():
    """TeKAP calls the inner loss again with a perturbed teacher: the negatives are reused, the student-anchored
    term is the clean one (as in the released TeKAP code), and the memory is updated once, with clean embeddings."""
    student, teacher, ctx = tiny_ctx()
    for quirks, updates in ((False, 1), (True, 2)):
        m = method("crd", ctx, num_negatives=6, reference_quirks=quirks)
        io = step_io(student, teacher, m, [0, 1, 2])
        clean = m.loss(io)
        idx = m._step_idx.clone()
        noisy_t = {"x": Outputs(io.t.logits, {"pool": io.t.taps["pool"] + 0.1})}
        noisy = m.loss(io.replace(teachers=(noisy_t,)))
        assert torch.equal(m._step_idx, idx)
        assert torch.equal(noisy.metrics["crd.student"], clean.metrics["crd.student"])
        assert not torch.equal(noisy.metrics["crd.teacher"], clean.metrics["crd.teacher"])
        assert len(m._pending) == updates
        m.update_memory()
        assert not m._pending and m._step_idx is None


def test_crd_queue_variant_is_a_fifo():
    student, teacher, ctx = tiny_ctx()
    m = method("crd", ctx, memory="queue", num_negatives=6)
    assert m.needs().batch_fields == frozenset()
    io = step_io(student, teacher, m, [0, 1, 2, 3])
    out = m.loss(io)
    assert torch.isfinite(out.total)
    v_s = m.adapters["embed_student"](io.s.taps["pool"]).detach()
    m.update_memory()
    assert torch.allclose(m.queue_student[:4], v_s) and m.queue_ptr.item() == 4
    m.loss(step_io(student, teacher, m, [4, 5, 6, 7], seed=1))
    m.update_memory()
    assert m.queue_ptr.item() == 2  # wrapped around: 4 + 4 = 8 = 6 + 2


def test_crd_needs_the_index_and_kd_option():
    student, teacher, ctx = tiny_ctx()
    assert method("crd", ctx).needs().batch_fields == frozenset({"index"})
    m = method("crd", ctx, kd_weight=1.0, num_negatives=4)
    io = step_io(student, teacher, m, [0, 1])
    out = m.loss(io)
    assert list(out.terms) == ["ce", "kd", "crd"]
    assert out.terms["kd"].item() == pytest.approx(losses.kd(io.s.logits, io.t.logits, 4.0).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------- SRRL


def test_srrl_never_changes_the_teacher_classifier():
    student, teacher, ctx = tiny_ctx()
    m = method("srrl", ctx)
    classifier = ctx.teacher_classifiers[0]
    before = [p.detach().clone() for p in classifier.parameters()]
    params = list(student.parameters()) + list(m.adapters.parameters())
    opt = torch.optim.SGD(params, lr=1.0, momentum=0.9, weight_decay=5e-4)
    for step in range(2):
        io = step_io(student, teacher, m, range(8), seed=step)
        out = m.loss(io)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    assert all(p.grad is None for p in classifier.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, classifier.parameters()))
    assert m.adapters["connector"].body[0].weight.grad is not None


def test_srrl_loss_value():
    student, teacher, ctx = tiny_ctx()
    m = method("srrl", ctx)
    io = step_io(student, teacher, m, range(4))
    out = m.loss(io)
    s_feat = m.adapters["connector"](io.s.taps["pool"])
    classifier = ctx.teacher_classifiers[0]
    expected = F.mse_loss(s_feat, io.t.taps["pool"]) + F.mse_loss(classifier(s_feat), io.t.logits)
    assert out.terms["srrl"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out.terms) == {"ce", "kd", "srrl"}


# ---------------------------------------------------------------------------------------------------------- sum


def _same(a: LossOut, b: LossOut, prefix: str) -> None:
    renamed = {(k if k == "ce" else f"{prefix}.{k}"): v for k, v in b.terms.items()}
    assert list(a.terms) == list(renamed)
    assert all(torch.equal(a.terms[k], renamed[k]) for k in a.terms)
    assert torch.equal(a.total, b.total)


@pytest.mark.parametrize(("inner", "fields"), [("kd", {}), ("crd", {"num_negatives": 5}), ("vid", {})])
def test_sum_of_one_method_is_that_method(inner, fields):
    student, teacher, ctx = tiny_ctx()
    torch.manual_seed(1)
    alone = method(inner, ctx, **fields)
    torch.manual_seed(1)
    summed = method("sum", ctx, terms=[{"name": inner, **fields}])
    summed.load_state_dict({f"methods.0.{k}": v for k, v in alone.state_dict().items()}, strict=False)
    io = step_io(student, teacher, alone, range(6))
    _same(summed.loss(io), alone.loss(io), inner)
    assert summed.needs() == alone.needs()
    assert _count(summed.adapters) == _count(alone.adapters)


def test_sum_weights_prefixes_and_teacher_free_terms_once():
    student, teacher, ctx = tiny_ctx()
    s = method(
        "sum",
        ctx,
        terms=[{"name": "kd", "ce_weight": 0.3}, {"name": "kd", "temperature": 2.0}, {"name": "dist"}],
        weights=[1.0, 0.5, 2.0],
    )
    assert s.prefixes == ["kd0", "kd1", "dist"]
    assert s.teacher_free_terms == frozenset(
        {"ce", "ce.aux"}
    )  # the cross-entropy and its auxiliary-head form (dense models)
    io = step_io(student, teacher, s, range(4))
    out = s.loss(io)
    assert list(out.terms) == ["ce", "kd0.kd", "kd1.kd", "dist.dist"]
    assert out.terms["ce"].item() == pytest.approx(0.3 * losses.cross_entropy(io.s.logits, io.y).item(), rel=1e-6)
    kd2 = 0.9 * losses.kd(io.s.logits, io.t.logits, 2.0)
    assert out.terms["kd1.kd"].item() == pytest.approx(0.5 * kd2.item(), rel=1e-6)
    dist = METHODS.get("dist")(METHODS.get("dist").Config(), ctx).loss(io)
    for k, v in dist.terms.items():
        if k != "ce":
            assert out.terms[f"dist.{k}"].item() == pytest.approx(2.0 * v.item(), rel=1e-6)


def test_sum_config_is_strict_and_checks_weights():
    with pytest.raises(Exception, match=r"method\.terms\.0\.temprature"):
        build_config({"method": {"name": "sum", "terms": [{"name": "kd", "temprature": 1}]}})
    _, _, ctx = tiny_ctx()
    with pytest.raises(ValueError, match="one per term"):
        method("sum", ctx, terms=[{"name": "kd"}], weights=[1.0, 2.0])


def test_sum_unions_needs_adapters_and_aux_objectives():
    _, _, ctx = tiny_ctx()
    s = method("sum", ctx, terms=[{"name": "crd", "num_negatives": 4}, {"name": "vid"}])
    needs = s.needs()
    assert "pool" in needs.student_taps and "stage1" in needs.student_taps and needs.batch_fields == {"index"}
    assert set(s.adapters) == {"crd", "vid"}
    assert len(s.aux_objectives()) == 1
    assert set(s.generator_state()) == {"crd.negatives"}
    assert "methods.0.memory_student" in s.state_dict()


# --------------------------------------------------------------------------------------------- TeKAP(F), TeKAP(F+L)

TEKAP_F = {
    "name": "tekap",
    "inner": {"name": "crd"},
    "perturb": "features",
    "feature_taps": ["pool"],
    "num_views": 1,
    "noise_weight": 0.1,
    "noise_std": 0.1,
    "clean_weight": 1.0,
    "view_weight": 1.0,
}


def _trainer(tmp_path, method_cfg: dict) -> Trainer:
    cfg = tiny_config(tmp_path, "train.max_steps=2", method="kd")  # a (random) convnet_s teacher
    data = build_config({"method": method_cfg}).method
    cfg.method = data
    return Trainer(cfg)


@pytest.mark.parametrize(
    "method_cfg",
    [
        TEKAP_F,
        {**TEKAP_F, "inner": {"name": "crd", "reference_quirks": True}},
        {
            "name": "tekap",
            "inner": {"name": "sum", "terms": [{"name": "crd"}, {"name": "kd", "kd_weight": 1.0}]},
            "perturb": "both",
        },
        {
            "name": "sum",
            "terms": [TEKAP_F, {"name": "tekap", "inner": {"name": "kd", "ce_weight": 0.0, "kd_weight": 1.0}}],
        },
    ],
    ids=["tekap_crd", "tekap_crd_quirks", "tekap_sum_crd_kd", "sum_tekap_crd_tekap_kd"],
)
def test_tekap_over_crd_and_over_sum_trains_two_steps(tmp_path, method_cfg):
    trainer = _trainer(tmp_path, method_cfg)
    summary = trainer.fit()
    assert summary["steps"] == 2
    crds = [m for m in trainer.run.method.modules() if type(m).__name__ == "CRD"]
    assert len(crds) == 1 and crds[0].z_student.item() > 0
    assert not crds[0]._pending  # the end-of-step aux objective applied the update


def test_tekap_crd_terms_are_clean_plus_one_view(tmp_path):
    trainer = _trainer(tmp_path, TEKAP_F)
    batch = next(trainer.run.data.train_batches(0))
    out = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start)
    assert set(out.terms) == {"ce", "crd", "crd.views"}


@pytest.mark.parametrize("method_cfg", [{"name": "crd"}, TEKAP_F], ids=["crd", "tekap_crd"])
def test_crd_resume_mid_epoch_is_bitwise_identical(tmp_path, method_cfg):
    """Memory, Z and the negatives' generator are checkpointed: an interrupted, resumed run ends identical."""

    def make(name: str, resume: bool = False) -> Trainer:
        cfg = tiny_config(tmp_path, "train.epochs=2", f"train.name={name}", method="kd")
        cfg.method = build_config({"method": method_cfg}).method
        return Trainer(cfg, resume=resume)

    full = make("full")
    full.fit()
    part = make("part")
    step = part.optimizer.step

    def step_then_signal(*a, **kw):
        if part.global_step == 4:  # the 5th step (epoch 1, mid-epoch)
            part._on_signal(signal.SIGTERM, None)
        return step(*a, **kw)

    part.optimizer.step = step_then_signal
    with pytest.raises(TrainingInterrupted):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["step"] == 5
    resumed = make("part", resume=True)
    resumed.fit()
    for a, b in ((full.run.student, resumed.run.student), (full.run.method, resumed.run.method)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    crd = next(m for m in resumed.run.method.modules() if type(m).__name__ == "CRD")
    assert crd.z_student.item() > 0


def test_sum_forwards_the_stages_of_its_terms(monkeypatch):
    """During a term's own training stage only that term is evaluated, under its own stage name; in the main stage
    all of them. Two terms may both declare an ``init`` stage: the sum names them ``<prefix>.init``."""
    from dataclasses import dataclass

    from kdlab.config import MethodConfig
    from kdlab.methods.base import DistillMethod, Stage
    from kdlab.types import Needs

    class Staged(DistillMethod):
        @dataclass(kw_only=True)
        class Config(MethodConfig):
            name: str = "staged_for_sum_test"

        def needs(self) -> Needs:
            return Needs()

        def stages(self):
            return [Stage("init", 1)]

        def loss(self, io: StepIO) -> LossOut:
            seen = torch.tensor(1.0 if io.progress.stage == "init" else 0.0)
            return LossOut({"match": io.s.logits.square().mean()}, {"saw_init": seen})

    monkeypatch.setitem(METHODS._items, "staged_for_sum_test", Staged)
    monkeypatch.setitem(METHODS._meta, "staged_for_sum_test", {})
    student, teacher, ctx = tiny_ctx()
    s = method("sum", ctx, terms=[{"name": "staged_for_sum_test"}, {"name": "kd"}])
    assert [st.name for st in s.stages()] == ["staged_for_sum_test.init"]
    io = step_io(student, teacher, s, range(4))
    out = s.loss(io.replace(progress=Progress(stage="staged_for_sum_test.init")))
    assert set(out.terms) == {"staged_for_sum_test.match"}
    assert out.metrics["staged_for_sum_test.saw_init"].item() == 1.0
    assert set(s.loss(io).terms) == {"staged_for_sum_test.match", "ce", "kd.kd"}

    two = method("sum", ctx, terms=[{"name": "staged_for_sum_test"}, {"name": "staged_for_sum_test"}])
    assert [st.name for st in two.stages()] == ["staged_for_sum_test0.init", "staged_for_sum_test1.init"]
    for owner in ("staged_for_sum_test0", "staged_for_sum_test1"):
        out = two.loss(io.replace(progress=Progress(stage=f"{owner}.init")))
        assert set(out.terms) == {f"{owner}.match"} and out.metrics[f"{owner}.saw_init"].item() == 1.0
    assert set(two.loss(io).terms) == {"staged_for_sum_test0.match", "staged_for_sum_test1.match"}
