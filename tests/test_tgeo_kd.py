"""Sample-wise knowledge fusion: TGeo-KD's bilevel solver, the fusion wrapper and the ANL/ADA/WLS/RW policies.

Golden values are computed here from the formulas, independently of :mod:`kdlab.losses.fusion`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdlab import losses, models
from kdlab.config import ConfigError, build_config
from kdlab.methods import build_method
from kdlab.methods.base import AuxContext, BuildContext
from kdlab.methods.fusion import SampleFusion
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted, functional_student_outputs
from kdlab.types import Batch, Outputs, Progress, StepIO

from conftest import sigterm_during_step, tiny_config

K = 5


def _method(name: str, **fields):
    cfg = build_config({"method": {"name": name, **fields}}).method
    return build_method(cfg, BuildContext(num_classes=K))


def _io(s, t, y, fraction: float = 0.0, teachers: int = 1) -> StepIO:
    total = 100
    progress = Progress(step=int(fraction * total), steps_per_epoch=total, total_epochs=1)
    batch = Batch(x=torch.zeros(y.shape[0], 3, 8, 8), y=y, index=torch.arange(y.shape[0]))
    ts = tuple({"x": Outputs(t[i] if teachers > 1 else t)} for i in range(teachers))
    return StepIO({"x": Outputs(s)}, ts, batch, progress)


def _fixed(b: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, K, generator=g) * 2
    t = torch.randn(b, K, generator=g) * 3
    y = torch.randint(0, K, (b,), generator=g)
    return s, t, y


def _kd_i(s, t, temp):
    """Per-sample Hinton KD, written out: T^2 * sum_k p_t,k (log p_t,k - log p_s,k)."""
    out = []
    for si, ti in zip(s, t):
        pt = [math.exp(v / temp) for v in ti.tolist()]
        ps = [math.exp(v / temp) for v in si.tolist()]
        zt, zs = sum(pt), sum(ps)
        out.append(temp**2 * sum(a / zt * (math.log(a / zt) - math.log(b / zs)) for a, b in zip(pt, ps)))
    return torch.tensor(out)


def _ce_i(s, y):
    return torch.tensor([math.log(sum(math.exp(v) for v in si.tolist())) - si[yi].item() for si, yi in zip(s, y)])


# ------------------------------------------------------------------------------------------------- policies


def test_anl_ratio_is_linear_from_one_to_zero_and_the_loss_is_convex():
    m = _method("anl_kd", inner={"name": "kd", "temperature": 4.0})
    s, t, y = _fixed()
    kd_i, ce_i = _kd_i(s, t, 4.0), _ce_i(s, y)
    for fraction in (0.0, 0.25, 0.7, 1.0):
        io = _io(s, t, y, fraction)
        alpha = 1.0 - fraction
        assert torch.allclose(m.sample_weights(io), torch.full((12,), alpha), atol=1e-7)
        out = m.loss(io)
        # s = kd_weight + ce_weight = 1 for the default kd
        assert out.terms["kd"].item() == pytest.approx(alpha * kd_i.mean().item(), rel=1e-5, abs=1e-7)
        assert out.terms["ce"].item() == pytest.approx((1 - alpha) * ce_i.mean().item(), rel=1e-5, abs=1e-7)
        assert out.metrics["alpha.mean"].item() == pytest.approx(alpha, abs=1e-6)


def test_ada_ratio_is_the_teacher_margin_on_the_label():
    m = _method("ada_kd")
    s, t, y = _fixed()
    expected = []
    for ti, yi in zip(t, y):
        p = [math.exp(v) for v in ti.tolist()]
        p = [v / sum(p) for v in p]
        others = [p[j] for j in range(K) if j != yi]
        expected.append(max(0.0, p[yi] - sum(others) / len(others)))
    got = m.sample_weights(_io(s, t, y))
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert (got[t.argmax(-1) == y] > 0).all()  # a right teacher's label probability is above the others' mean
    assert (got == 0).any()
    out = m.loss(_io(s, t, y))
    kd_i, ce_i = _kd_i(s, t, 4.0), _ce_i(s, y)
    a = torch.tensor(expected)
    assert out.terms["kd"].item() == pytest.approx((a * kd_i).mean().item(), rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(((1 - a) * ce_i).mean().item(), rel=1e-5)


def test_wls_weight_scales_only_the_kd_term():
    m = _method("wls_kd")  # kd at tau 2, weight 2.5, CE 1
    s, t, y = _fixed()
    ce_s, ce_t = _ce_i(s, y), _ce_i(t, y)
    w = torch.tensor([1 - math.exp(-max(a / (b + 1e-7), 0.0)) for a, b in zip(ce_s.tolist(), ce_t.tolist())])
    io = _io(s, t, y)
    assert torch.allclose(m.sample_weights(io), w, atol=1e-6)
    out = m.loss(io)
    assert out.terms["kd"].item() == pytest.approx(2.5 * (w * _kd_i(s, t, 2.0)).mean().item(), rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(ce_s.mean().item(), rel=1e-5)
    # the weight reads detached logits: no gradient flows through it
    s_req = s.clone().requires_grad_(True)
    m.loss(_io(s_req, t, y)).terms["kd"].backward()
    expected = torch.autograd.grad((w * 2.5 * losses.kd(s_req, t, 2.0, reduction="none")).mean(), s_req)[0]
    assert torch.allclose(s_req.grad, expected, atol=1e-6)


def test_tgeo_features_are_the_trilateral_geometry():
    m = _method("tgeo_kd")
    s, t, y = _fixed()
    tbar = torch.softmax(torch.randn(K, K), -1)
    m.t_class_mean.copy_(tbar)
    ps, pt, g = torch.softmax(s, -1), torch.softmax(t, -1), torch.eye(K)[y]
    tb = tbar[y]
    expected = torch.cat([g - ps, g - pt, pt - ps, ps, pt, g, g - tb, tb - ps, tb], dim=-1)
    io = _io(s, t, y)
    feats = m.features(io, m.sample_terms(io))
    assert feats.shape == (12, 9 * K) and torch.allclose(feats, expected, atol=1e-6)
    assert _method("tgeo_kd", feature_set="edges").features(io, m.sample_terms(io)).shape == (12, 3 * K)
    intra = _method("tgeo_kd", feature_set="intra").features(io, m.sample_terms(io))
    assert torch.allclose(intra, expected[:, : 6 * K], atol=1e-6)
    # f_omega starts at init_ratio for every sample; its ratio is a sigmoid of an MLP of the features
    assert torch.allclose(m.sample_weights(io), torch.full((12,), 0.5))
    with torch.no_grad():
        for p in m.ratio_net.parameters():
            p.normal_()
    lin1, lin2 = m.ratio_net.net[0], m.ratio_net.net[2]
    manual = torch.sigmoid(lin2(torch.relu(lin1(expected)))).squeeze(-1)
    assert torch.allclose(m.sample_weights(io), manual, atol=1e-6)


def test_rw_features_are_the_two_per_sample_losses():
    m = _method("rw_kd")
    s, t, y = _fixed()
    io = _io(s, t, y)
    feats = m.features(io, m.sample_terms(io))
    assert torch.allclose(feats, torch.stack([_ce_i(s, y), _kd_i(s, t, 4.0)], -1), rtol=1e-5)


def test_alpha_metrics_split_by_teacher_correctness():
    m = _method("ada_kd", histogram_bins=4)
    s, t, y = _fixed(b=40, seed=3)
    io = _io(s, t, y)
    out = m.loss(io)
    a = m.sample_weights(io)
    wrong = t.argmax(-1) != y
    assert out.metrics["alpha.teacher_wrong"].item() == pytest.approx(wrong.float().mean().item())
    assert out.metrics["alpha.mass_wrong"].item() == pytest.approx((a * wrong).sum().item() / 40, abs=1e-7)
    assert out.metrics["alpha.q50"].item() == pytest.approx(a.quantile(0.5).item(), abs=1e-6)
    right_hist = [out.metrics[f"alpha.hist.right.{b}"].item() for b in range(4)]
    wrong_hist = [out.metrics[f"alpha.hist.wrong.{b}"].item() for b in range(4)]
    assert sum(right_hist) + sum(wrong_hist) == pytest.approx(1.0)
    bins = [min(int(v * 4), 3) for v in a.tolist()]
    for b in range(4):
        assert right_hist[b] == pytest.approx(sum(1 for i, c in enumerate(bins) if c == b and not wrong[i]) / 40)
        assert wrong_hist[b] == pytest.approx(sum(1 for i, c in enumerate(bins) if c == b and wrong[i]) / 40)


# ------------------------------------------------------------------------------------ no-op equivalences


@pytest.mark.parametrize(
    "inner",
    [
        {"name": "kd"},
        {"name": "kd", "ce_weight": 0.3, "kd_weight": 2.0, "label_smoothing": 0.1},
        {"name": "dkd", "warmup_epochs": 0},
        {"name": "dist"},
    ],
)
def test_a_constant_ratio_is_the_inner_method(inner):
    """The per-sample path with the inner method's own ratio w_kd / (w_kd + w_gt) gives its terms and gradients."""
    m = _method("anl_kd", inner=inner)
    s, t, y = _fixed(b=16)
    t2 = torch.stack([t, t.flip(0)])  # two teachers: the per-sample forms average over them
    for teachers, tt in ((1, t), (2, t2)):
        io_a = _io(s.clone().requires_grad_(True), tt, y, teachers=teachers)
        io_b = _io(s.clone().requires_grad_(True), tt, y, teachers=teachers)
        terms = m.sample_terms(io_a)
        alpha0 = terms.kd_weight / (terms.kd_weight + terms.gt_weight)
        m.cfg.alpha_start = m.cfg.alpha_end = 0.123  # not the inner's ratio: the generic per-sample path
        m.ratio = lambda io, terms, a=alpha0: terms.kd.new_full(terms.kd.shape, a)
        fused = SampleFusion.loss(m, io_a)
        ref = m.inner.loss(io_b)
        assert fused.terms.keys() == ref.terms.keys()
        for k in ref.terms:
            torch.testing.assert_close(fused.terms[k], ref.terms[k], rtol=1e-6, atol=1e-7)
        fused.total.backward()
        ref.total.backward()
        torch.testing.assert_close(io_a.s.logits.grad, io_b.s.logits.grad, rtol=1e-5, atol=1e-7)
        del m.ratio


def test_anl_at_the_inner_ratio_trains_exactly_like_kd(tmp_path):
    teacher = Trainer(tiny_config(tmp_path, "model.student=convnet_s", "train.epochs=1", "train.name=t"))
    teacher.fit()
    ckpt = str(teacher.ckpt_path)
    kd = Trainer(tiny_config(tmp_path, "train.max_steps=4", "train.name=kd", method="kd", teacher_ckpt=ckpt))
    anl = Trainer(
        tiny_config(
            tmp_path,
            "train.max_steps=4",
            "train.name=anl",
            "method.alpha_start=0.9",
            "method.alpha_end=0.9",
            method="anl_kd",
            teacher_ckpt=ckpt,
        )
    )
    kd.fit()
    anl.fit()
    a, b = kd.run.student.state_dict(), anl.run.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    line = json.loads((anl.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["train"]["alpha.mean"] == pytest.approx(0.9)


def test_per_sample_dist_averages_to_dist():
    s, t, _ = _fixed(b=16)
    per = losses.dist(s, t, 1.0, 2.0, 4.0, reduction="none")
    assert per.shape == (16,)
    torch.testing.assert_close(per.mean(), losses.dist(s, t, 1.0, 2.0, 4.0), rtol=1e-6, atol=1e-7)
    # sample i: tau^2 (beta (1 - pearson_i) + gamma intra)
    ps, pt = torch.softmax(s / 4, -1), torch.softmax(t / 4, -1)
    cs, ct = ps - ps.mean(-1, keepdim=True), pt - pt.mean(-1, keepdim=True)
    inter_i = 1 - (cs * ct).sum(-1) / (cs.norm(dim=-1) * ct.norm(dim=-1) + 1e-8)
    cs, ct = ps - ps.mean(0), pt - pt.mean(0)
    intra = 1 - ((cs * ct).sum(0) / (cs.norm(dim=0) * ct.norm(dim=0) + 1e-8)).mean()
    torch.testing.assert_close(per, 16 * (inter_i + 2 * intra), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- the bilevel solver


def _aux_ctx(method, student, batch, teacher_logits, lr):
    needs = method.needs()

    def outputs(b, params=None):
        return functional_student_outputs(student, params, b, needs)

    return AuxContext(
        student=student,
        method=method,
        progress=Progress(),
        lr=lr,
        batch=batch,
        teacher_outputs=None,
        student_outputs=outputs,
        heldout_batches=None,
        teachers=({"x": Outputs(teacher_logits)},),
    )


def test_hypergradient_matches_finite_differences():
    torch.set_default_dtype(torch.float64)  # restored by conftest
    torch.manual_seed(0)
    student = models.create("convnet_xs", num_classes=K, in_channels=3).train()
    m = _method("tgeo_kd", hidden=[6])
    with torch.no_grad():
        for p in m.ratio_net.parameters():  # a random omega, so that every coordinate has a gradient
            p.normal_(0.0, 0.5)
        m.t_class_mean.copy_(torch.softmax(torch.randn(K, K), -1))
    x, y, t = torch.randn(12, 3, 8, 8), torch.randint(0, K, (12,)), torch.randn(12, K) * 3
    xv, yv = torch.randn(10, 3, 8, 8), torch.randint(0, K, (10,))
    batch, heldout = Batch(x, y, torch.arange(12)), Batch(xv, yv, torch.arange(10))
    lr = 0.5
    grads, outer = m.meta.hypergradient(_aux_ctx(m, student, batch, t, lr), heldout)

    theta = {n: p.detach() for n, p in student.named_parameters()}

    def buffers():
        return {n: b.clone() for n, b in student.named_buffers()}

    def heldout_loss() -> float:
        """CE on the held-out batch after one SGD step on the alpha-fused training loss, written out with plain
        autograd (no graph through omega)."""
        params = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
        logits = torch.func.functional_call(student, {**params, **buffers()}, (x,))
        ps, pt, g = logits.detach().softmax(-1), t.softmax(-1), torch.eye(K)[y]
        tb = m.t_class_mean[y]
        feats = torch.cat([g - ps, g - pt, pt - ps, ps, pt, g, g - tb, tb - ps, tb], -1)
        with torch.no_grad():
            alpha = m.ratio_net(feats)
        kd_i = 16 * (torch.softmax(t / 4, -1) * (torch.log_softmax(t / 4, -1) - torch.log_softmax(logits / 4, -1)))
        kd_i = kd_i.sum(-1)
        ce_i = F.cross_entropy(logits, y, reduction="none")
        train = (alpha * kd_i + (1 - alpha) * ce_i).mean()
        step = torch.autograd.grad(train, list(params.values()))
        new = {n: p - lr * gi for (n, p), gi in zip(params.items(), step)}
        vlogits = torch.func.functional_call(student, {**new, **buffers()}, (xv,))
        return F.cross_entropy(vlogits, yv).item()

    assert outer.item() == pytest.approx(heldout_loss(), rel=1e-10)
    eps = 1e-6
    omega = m.meta.parameters()
    g = torch.Generator().manual_seed(1)
    checked = 0
    for p, hg in zip(omega, grads):
        flat = p.data.view(-1)
        picks = torch.randperm(flat.numel(), generator=g)[:20]
        for j in picks.tolist():
            old = flat[j].item()
            flat[j] = old + eps
            up = heldout_loss()
            flat[j] = old - eps
            down = heldout_loss()
            flat[j] = old
            fd = (up - down) / (2 * eps)
            assert hg.view(-1)[j].item() == pytest.approx(fd, rel=1e-4, abs=1e-9), (p.shape, j)
            checked += 1
    assert checked == 33  # 20 of the first layer's weights, all of its 6 biases, the 6 + 1 of the last layer
    assert any(hg.abs().max() > 1e-6 for hg in grads)
    # the student's BatchNorm statistics are untouched by the two functional forwards
    assert all(torch.equal(b, student.state_dict()[n]) for n, b in buffers().items())


def test_omega_learns_to_distrust_a_teacher_that_is_wrong_on_a_known_subset():
    """The regression test against the public code's defect (omega never moves): a learnable task, a teacher that
    is confidently wrong on a known third of the training samples; the held-out labels are right. After some outer
    steps alpha of the wrong-teacher samples falls below its start and below that of the right-teacher samples."""
    torch.manual_seed(0)
    n, d = 96, 3 * 8 * 8
    centres = torch.randn(K, d) * 0.6
    y = torch.arange(n) % K
    x = (centres[y] + 0.6 * torch.randn(n, d)).view(n, 3, 8, 8)
    yv = torch.arange(60) % K
    xv = (centres[yv] + 0.6 * torch.randn(60, d)).view(60, 3, 8, 8)
    wrong = torch.arange(n) % 3 == 0
    t = 6.0 * torch.eye(K)[torch.where(wrong, (y + 1) % K, y)]
    student = models.create("convnet_xs", num_classes=K, in_channels=3).train()
    m = _method("tgeo_kd", feature_set="intra", hidden=[16], meta_lr=0.05)
    sgd = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    omega0 = [p.detach().clone() for p in m.meta.parameters()]
    io_all = _io(torch.zeros(n, K), t, y)
    before = m.sample_weights(io_all)
    assert torch.allclose(before, torch.full((n,), 0.5))
    for step in range(40):
        i = torch.randperm(n)[:32]
        batch = Batch(x[i], y[i], i)
        io = StepIO({"x": Outputs(student(batch.x))}, ({"x": Outputs(t[i])},), batch, Progress(step=step))
        sgd.zero_grad()
        m.loss(io).total.backward()
        sgd.step()
        j = torch.arange(step * 20, step * 20 + 20) % 60
        m.meta.step_with(_aux_ctx(m, student, batch, t[i], 0.1), Batch(xv[j], yv[j], j))
        if step == 0:
            assert any(not torch.equal(a, b) for a, b in zip(omega0, m.meta.parameters())), "omega did not move"
    with torch.no_grad():
        s = student(x)
    after = m.sample_weights(_io(s, t, y))
    assert after[wrong].mean() < 0.45
    assert after[wrong].mean() < after[~wrong].mean() - 0.05


def test_learned_ratio_is_detached_in_the_student_loss():
    m = _method("tgeo_kd")
    s, t, y = _fixed()
    with torch.no_grad():
        for p in m.ratio_net.parameters():
            p.normal_()
    m.loss(_io(s.requires_grad_(True), t, y)).total.backward()
    assert all(p.grad is None for p in m.ratio_net.parameters())


# ------------------------------------------------------------------------------ runs: split, Tbar, resume


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tgeo_teacher")
    trainer = Trainer(tiny_config(tmp, "model.student=convnet_s", "train.epochs=2"))
    trainer.fit()
    return str(trainer.ckpt_path)


def _rows(x):
    return {tuple(r.flatten().tolist()) for r in x}


def test_heldout_split_is_disjoint_from_training_batches_and_test_and_tbar_reads_training_data_only(
    tmp_path, teacher_ckpt
):
    trainer = Trainer(tiny_config(tmp_path, method="tgeo_kd", teacher_ckpt=teacher_ckpt))
    data = trainer.run.data
    assert data.val is not None and data.num_train + data.val.y.shape[0] == 96
    assert data.val.y.shape[0] == round(0.1 * 96)
    val, train, test = _rows(data.val.x), _rows(data.train.x), _rows(data.test.x)
    assert not val & train and not val & test
    seen = set()
    for epoch in range(2):
        for batch in data.train_batches(epoch):
            seen |= _rows(data.train.x[batch.index])
    assert seen == train and not seen & val
    # Tbar: the teacher's mean prediction per class on the (un-augmented) training split only
    method = trainer.run.method
    method.prepare(trainer._prepare_context())
    teacher = trainer.run.teachers[0]
    with torch.no_grad():
        p_train = teacher(data.normalize(data.train.x)).softmax(-1).double()
        p_val = teacher(data.normalize(data.val.x)).softmax(-1).double()
    k = data.num_classes
    expected = torch.stack([p_train[data.train.y == c].mean(0) for c in range(k)])
    assert torch.allclose(method.t_class_mean.double(), expected, atol=1e-6)
    both = torch.cat([p_train, p_val]), torch.cat([data.train.y, data.val.y])
    with_val = torch.stack([both[0][both[1] == c].mean(0) for c in range(k)])
    assert not torch.allclose(method.t_class_mean.double(), with_val, atol=1e-6)


def test_an_explicit_val_fraction_is_the_heldout_split(tmp_path, teacher_ckpt):
    trainer = Trainer(tiny_config(tmp_path, "data.val_fraction=0.25", method="rw_kd", teacher_ckpt=teacher_ckpt))
    assert trainer.run.data.val.y.shape[0] == 24 and trainer.run.data.num_train == 72


def test_resume_restores_omega_its_optimiser_and_the_split(tmp_path, teacher_ckpt):
    args = ("train.epochs=2", "method.meta_every=2", "method.meta_lr=0.01")
    full = Trainer(tiny_config(tmp_path, *args, "train.name=full", method="tgeo_kd", teacher_ckpt=teacher_ckpt))
    full.fit()
    part = Trainer(tiny_config(tmp_path, *args, "train.name=part", method="tgeo_kd", teacher_ckpt=teacher_ckpt))
    sigterm_during_step(part, 8)  # epoch 2 (6 steps per epoch), mid-epoch
    with pytest.raises(TrainingInterrupted):
        part.fit()
    saved = read_file(part.ckpt_path)
    n_val = part.run.data.val.y.shape[0]  # every outer step takes the whole held-out split (fewer than 16 samples)
    assert saved["aux"][0]["heldout_position"] == 4 * n_val  # outer steps at steps 0, 2, 4, 6
    resumed = Trainer(
        tiny_config(tmp_path, *args, "train.name=part", method="tgeo_kd", teacher_ckpt=teacher_ckpt), resume=True
    )
    resumed.fit()
    a, b = read_file(full.ckpt_path), read_file(resumed.ckpt_path)
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    omega = [k for k in a["method"] if k.startswith("ratio_net.")]
    assert omega and all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert not torch.equal(
        a["method"]["ratio_net.net.2.weight"], torch.zeros_like(a["method"]["ratio_net.net.2.weight"])
    )
    oa, ob = a["aux"][0], b["aux"][0]
    assert oa["heldout_position"] == ob["heldout_position"] == 6 * n_val and oa["heldout_pass"] == n_val
    for pid, st in oa["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["optimizer"]["state"][pid][name])), name
    assert torch.equal(full.run.data.val.x, resumed.run.data.val.x)
    assert torch.equal(full.run.data.val.y, resumed.run.data.val.y)
    line = json.loads((resumed.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert "meta.heldout_ce" in line["train"] and "alpha.hist.wrong.0" in line["train"]


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "tgeo_kd", "inner": {"name": "crd"}}, r"'crd' has no per-sample form; use one of"),
        ({"name": "tgeo_kd", "init_ratio": 1.0}, r"method\.init_ratio must be in \(0, 1\)"),
        ({"name": "rw_kd", "meta_every": 0}, r"method\.meta_every must be >= 1"),
        ({"name": "rw_kd", "holdout_fraction": 0.0}, r"method\.holdout_fraction must be in \(0, 1\)"),
        ({"name": "anl_kd", "alpha_end": 1.5}, r"method\.alpha_end must be in \[0, 1\]"),
        ({"name": "tgeo_kd", "hidden": [0]}, r"method\.hidden\.0 must be >= 1, got 0"),
    ],
)
def test_bad_settings_name_the_key(fields, message):
    with pytest.raises(ConfigError, match=message):
        cfg = build_config({"method": fields}).method
        build_method(cfg, BuildContext(num_classes=K, num_train=100))


def test_bad_feature_set_is_a_config_error():
    with pytest.raises(ConfigError, match="feature_set"):
        build_config({"method": {"name": "tgeo_kd", "feature_set": "vertices"}})


def test_cli_bad_inner_method_exits_2(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdlab",
            "train",
            str(REPO / "configs/debug/digits_kd.yaml"),
            "method.name=tgeo_kd",
            "method.inner.name=fitnet",
            "model.teachers.0.checkpoint=null",
            f"train.run_dir={tmp_path}",
            "train.device=cpu",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "'fitnet' has no per-sample form" in proc.stderr and "Traceback" not in proc.stderr


def test_wrappers_forward_the_inner_sample_weights():
    """tekap and sum report their inner policy's per-sample weights (kdlab analyze discrepancy reads them)."""
    s, t, y = _fixed()
    io = _io(s, t, y)
    expected = _method("ada_kd").sample_weights(io)
    wrapped = _method("tekap", inner={"name": "ada_kd"}, num_views=2)
    assert torch.equal(wrapped.sample_weights(io), expected)
    summed = _method("sum", terms=[{"name": "kd"}, {"name": "ada_kd"}])
    assert torch.equal(summed.sample_weights(io), expected)
    assert _method("sum", terms=[{"name": "kd"}]).sample_weights(io) is None
