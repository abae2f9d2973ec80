"""Logit methods (kd, dkd, dist, mlkd) and the tekap wrapper, on synthetic StepIO objects (no models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab import losses
from kdlab.config import ConfigError, from_dict
from kdlab.methods import METHODS, build_method
from kdlab.methods.base import BuildContext
from kdlab.methods.dkd import warmup_factor
from kdlab.methods.tekap import TeKAP
from kdlab.types import Batch, Outputs, Progress, StepIO

B, C = 8, 10
LOGIT_METHODS = ["kd", "dkd", "dist", "mlkd"]


def make_io(
    seed: int = 0,
    teachers: int = 1,
    epoch: int = 0,
    dtype: torch.dtype = torch.float64,
    taps: bool = False,
) -> StepIO:
    g = torch.Generator().manual_seed(seed)

    def outputs(scale: float) -> dict[str, Outputs]:
        out = {}
        for view in ("x", "strong"):
            feats = {"pool": torch.randn(B, 4, generator=g, dtype=dtype)} if taps else {}
            out[view] = Outputs(torch.randn(B, C, generator=g, dtype=dtype) * scale, feats)
        return out

    student = outputs(2.0)
    teacher_outputs = tuple(outputs(3.0) for _ in range(teachers))
    y = torch.randint(0, C, (B,), generator=g)
    batch = Batch(x=torch.zeros(B, 3, 4, 4), y=y, index=torch.arange(B))
    return StepIO(student, teacher_outputs, batch, Progress(epoch=epoch, total_epochs=240))


def build(name: str, **fields):
    cfg = from_dict(METHODS.get(name).Config, {"name": name, **fields})
    return build_method(cfg, BuildContext(num_classes=C, seed=0))


def tekap(inner: str, inner_fields: dict | None = None, seed: int = 0, **fields) -> TeKAP:
    cfg = from_dict(TeKAP.Config, {"inner": {"name": inner, **(inner_fields or {})}, **fields})
    return build_method(cfg, BuildContext(num_classes=C, seed=seed))


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kd(s, t, temp):
    p_t, p_s = np_softmax(t / temp), np_softmax(s / temp)
    return temp**2 * (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=-1)


def np_ce(s, y):
    return -np.log(np_softmax(s)[np.arange(len(y)), y]).mean()


def np_gram_rows(s, t, temp, over):
    p_s, p_t = np_softmax(s / temp), np_softmax(t / temp)
    if over == "class":
        p_s, p_t = p_s.T, p_t.T
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum(axis=1)


# ------------------------------------------------------------------------------------------ kd / dkd / dist


def test_kd_method_terms():
    io = make_io(1)
    out = build("kd").loss(io)
    s, t, y = np_(io.s.logits), np_(io.t.logits), io.y.numpy()
    np.testing.assert_allclose(out.terms["ce"].item(), 0.1 * np_ce(s, y), rtol=1e-10)
    np.testing.assert_allclose(out.terms["kd"].item(), 0.9 * np_kd(s, t, 4.0).mean(), rtol=1e-10)


def test_kd_method_averages_teachers():
    io = make_io(2, teachers=3)
    out = build("kd").loss(io)
    s = np_(io.s.logits)
    expected = np.mean([np_kd(s, np_(t["x"].logits), 4.0).mean() for t in io.teachers])
    np.testing.assert_allclose(out.terms["kd"].item(), 0.9 * expected, rtol=1e-10)


def test_dkd_warmup_factor_values():
    assert warmup_factor(0, 20) == pytest.approx(0.05)
    assert warmup_factor(9, 20) == pytest.approx(0.5)
    assert warmup_factor(19, 20) == 1.0
    assert warmup_factor(200, 20) == 1.0
    assert warmup_factor(0, 0) == 1.0


@pytest.mark.parametrize("epoch, factor", [(0, 0.05), (19, 1.0), (100, 1.0)])
def test_dkd_method_terms(epoch, factor):
    io = make_io(3, epoch=epoch)
    out = build("dkd", warmup_epochs=20).loss(io)  # the reference's 20 epochs (the default is 20/240 of the run)
    s, t = io.s.logits, io.t.logits
    expected = factor * losses.dkd(s, t, io.y, 1.0, 8.0, 4.0)
    torch.testing.assert_close(out.terms["dkd"], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.terms["ce"], F.cross_entropy(s, io.y))
    assert out.metrics["dkd_warmup"].item() == pytest.approx(factor)
    # constant within an epoch
    later = io.replace(progress=Progress(epoch=epoch, step_in_epoch=50, steps_per_epoch=100))
    torch.testing.assert_close(build("dkd", warmup_epochs=20).loss(later).terms["dkd"], out.terms["dkd"])


def test_dkd_standardize_option():
    io = make_io(4, epoch=30)
    out = build("dkd", standardize=True, temperature=2.0, alpha=9.0, beta=72.0).loss(io)
    zs, zt = losses.standardize_logits(io.s.logits), losses.standardize_logits(io.t.logits)
    torch.testing.assert_close(out.terms["dkd"], losses.dkd(zs, zt, io.y, 9.0, 72.0, 2.0))


def test_dist_method_terms_defaults_are_the_cifar_recipe():
    io = make_io(5)
    m = build("dist")
    assert (m.cfg.ce_weight, m.cfg.dist_weight, m.cfg.tau, m.cfg.beta, m.cfg.gamma) == (1.0, 2.0, 4.0, 1.0, 1.0)
    out = m.loss(io)
    torch.testing.assert_close(out.terms["dist"], 2.0 * losses.dist(io.s.logits, io.t.logits, 1.0, 1.0, 4.0))
    torch.testing.assert_close(out.terms["ce"], F.cross_entropy(io.s.logits, io.y))


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_label_smoothing_option_of_the_ce_term(name):
    io = make_io(6)
    plain, smooth = build(name).loss(io), build(name, label_smoothing=0.1).loss(io)
    for key in plain.terms:
        if key != "ce":
            torch.testing.assert_close(plain.terms[key], smooth.terms[key])
    weight = build(name).cfg.ce_weight
    views = ("x", "strong") if name == "mlkd" else ("x",)
    expected = weight * sum(F.cross_entropy(io.student[v].logits, io.y, label_smoothing=0.1) for v in views)
    torch.testing.assert_close(smooth.terms["ce"], expected)


@pytest.mark.parametrize("name", LOGIT_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_methods_return_finite_scalar_terms_and_gradients(name, dtype):
    io = make_io(7, dtype=dtype, teachers=2)
    student = {v: Outputs(o.logits.clone().requires_grad_(True)) for v, o in io.student.items()}
    out = build(name).loss(io.replace(student=student))
    for key, value in out.terms.items():
        assert value.shape == () and value.dtype == dtype and torch.isfinite(value), key
    out.total.backward()
    assert student["x"].logits.grad is not None and torch.isfinite(student["x"].logits.grad).all()


# ------------------------------------------------------------------------------------------ mlkd


TEMPS = (4.0, 3.0, 5.0, 2.0, 6.0)


def np_mlkd_reference(io: StepIO, ce_w=0.1, w=0.9):
    """The released code's formula as written in methods.md (masks reduced to their mean, weak logits in two
    strong terms, np.percentile thresholds)."""
    sw, ss = np_(io.student["x"].logits), np_(io.student["strong"].logits)
    tw, ts = np_(io.t.logits), np_(io.teachers[0]["strong"].logits)
    y = io.y.numpy()
    p = np_softmax(tw)
    conf = p.max(axis=1)
    mask = conf <= np.percentile(conf, 50)
    class_conf = p.sum(axis=0)
    class_mask = class_conf <= np.percentile(class_conf, 50)
    kd_weak = sum(mask.mean() * np_kd(sw, tw, temp).mean() for temp in TEMPS)
    kd_strong = sum(np_kd(ss, ts, temp).mean() for temp in (4.0, 3.0, 5.0)) + sum(
        np_kd(sw, tw, temp).mean() for temp in (2.0, 6.0)
    )
    cc = sum(class_mask.mean() * np_gram_rows(sw, tw, temp, "class").sum() / C for temp in TEMPS)
    bc = sum(mask.mean() * np_gram_rows(sw, tw, temp, "batch").sum() / B for temp in TEMPS)
    return {
        "ce": ce_w * (np_ce(sw, y) + np_ce(ss, y)),
        "instance": w * (kd_weak + kd_strong),
        "class": w * cc,
        "batch": w * bc,
    }


def np_mlkd_masked(io: StepIO, ce_w=0.1, w=0.9):
    """kdlab's default: per-sample (per-class) masks, strong logits at every temperature."""
    sw, ss = np_(io.student["x"].logits), np_(io.student["strong"].logits)
    tw, ts = np_(io.t.logits), np_(io.teachers[0]["strong"].logits)
    y = io.y.numpy()
    p = np_softmax(tw)
    mask = (p.max(axis=1) <= np.median(p.max(axis=1))).astype(float)
    class_mask = (p.sum(axis=0) <= np.median(p.sum(axis=0))).astype(float)
    instance = sum((mask * np_kd(sw, tw, temp)).sum() / B + np_kd(ss, ts, temp).mean() for temp in TEMPS)
    cc = sum((class_mask * np_gram_rows(sw, tw, temp, "class")).sum() / C for temp in TEMPS)
    bc = sum((mask * np_gram_rows(sw, tw, temp, "batch")).sum() / B for temp in TEMPS)
    return {"ce": ce_w * (np_ce(sw, y) + np_ce(ss, y)), "instance": w * instance, "class": w * cc, "batch": w * bc}


@pytest.mark.parametrize("seed", [8, 9])
def test_mlkd_reference_quirks_reproduce_the_released_formula(seed):
    io = make_io(seed)
    out = build("mlkd", reference_quirks=True).loss(io)
    for key, value in np_mlkd_reference(io).items():
        np.testing.assert_allclose(out.terms[key].item(), value, rtol=1e-9, err_msg=key)


@pytest.mark.parametrize("seed", [8, 9])
def test_mlkd_masks_per_sample(seed):
    io = make_io(seed)
    m = build("mlkd")
    assert m.needs().views == ("x", "strong")
    out = m.loss(io)
    for key, value in np_mlkd_masked(io).items():
        np.testing.assert_allclose(out.terms[key].item(), value, rtol=1e-9, err_msg=key)
    quirky = build("mlkd", reference_quirks=True).loss(io)
    assert not torch.allclose(out.terms["instance"], quirky.terms["instance"])


def test_mlkd_masks_keep_the_less_confident_half():
    from kdlab.methods.mlkd import confidence_masks

    t = torch.tensor([[5.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [0.5, 0, 0]])
    sample_mask, class_mask = confidence_masks(t)
    assert sample_mask.tolist() == [False, True, False, True]
    assert class_mask.shape == (3,) and class_mask.sum() == 2


def test_mlkd_standardize_applies_to_instance_terms_only():
    io = make_io(10)
    plain, std = build("mlkd").loss(io), build("mlkd", standardize=True).loss(io)
    for key in ("ce", "class", "batch"):
        torch.testing.assert_close(plain.terms[key], std.terms[key])
    z = lambda a: (a - a.mean(axis=1, keepdims=True)) / (1e-7 + a.std(axis=1, ddof=1, keepdims=True))  # noqa: E731
    sw, ss = z(np_(io.student["x"].logits)), z(np_(io.student["strong"].logits))
    tw, ts = z(np_(io.t.logits)), z(np_(io.teachers[0]["strong"].logits))
    p = np_softmax(np_(io.t.logits))  # the mask reads the raw teacher logits
    mask = (p.max(axis=1) <= np.median(p.max(axis=1))).astype(float)
    expected = sum((mask * np_kd(sw, tw, temp)).sum() / B + np_kd(ss, ts, temp).mean() for temp in TEMPS)
    np.testing.assert_allclose(std.terms["instance"].item(), 0.9 * expected, rtol=1e-9)


# ------------------------------------------------------------------------------------------ tekap


@pytest.mark.parametrize("inner", LOGIT_METHODS)
def test_tekap_with_zero_weights_equals_the_inner_method_exactly(inner):
    io = make_io(11, epoch=5)
    wrapped = tekap(inner, noise_weight=0.0, view_weight=0.0).loss(io)
    plain = build(inner).loss(io)
    assert wrapped.terms.keys() == plain.terms.keys()
    for key in plain.terms:
        assert torch.equal(wrapped.terms[key], plain.terms[key]), key
    assert torch.equal(wrapped.total, plain.total)


@pytest.mark.parametrize("inner", LOGIT_METHODS)
def test_tekap_with_zero_noise_counts_the_teacher_terms_once_per_view(inner):
    io = make_io(12, epoch=5)
    out = tekap(inner, noise_weight=0.0, view_weight=0.5, num_views=3).loss(io)
    plain = build(inner).loss(io)
    torch.testing.assert_close(out.terms["ce"], plain.terms["ce"])
    for key in plain.terms:
        if key != "ce":
            torch.testing.assert_close(out.terms[f"{key}.views"], 1.5 * plain.terms[key])


def _replay_noise(m: TeKAP, state: dict, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    g.set_state(state["tekap"])
    return torch.randn((m.cfg.num_views, *shape), generator=g, dtype=dtype)


def test_tekap_over_kd_is_ce_plus_tekap_kd():
    io = make_io(13)
    m = tekap("kd")
    state = m.generator_state()
    out = m.loss(io)
    noise = _replay_noise(m, state, (B, C))
    expected = 0.1 * F.cross_entropy(io.s.logits, io.y) + 0.9 * losses.tekap_kd(io.s.logits, io.t.logits, noise)
    torch.testing.assert_close(out.total, expected, rtol=1e-12, atol=0)
    assert set(out.terms) == {"ce", "kd", "kd.views"}


def test_tekap_noise_is_reproducible_from_the_generator_state_and_fresh_every_step():
    io = make_io(14)
    m = tekap("dkd")
    state = m.generator_state()
    first = m.loss(io).total
    second = m.loss(io).total
    assert not torch.equal(first, second)
    m.set_generator_state(state)
    assert torch.equal(m.loss(io).total, first)
    other = tekap("dkd")  # same run seed -> same stream
    assert torch.equal(other.loss(io).total, first)
    assert not torch.equal(tekap("dkd", seed=1).loss(io).total, first)


def test_tekap_generator_state_is_a_checkpointable_tensor():
    m = tekap("kd")
    state = m.generator_state()
    assert set(state) == {"tekap"} and isinstance(state["tekap"], torch.Tensor)
    m.loss(make_io(15))
    m.set_generator_state({k: v.clone() for k, v in state.items()})
    assert torch.equal(m.generator_state()["tekap"], state["tekap"])


@pytest.mark.parametrize("inner", LOGIT_METHODS)
@pytest.mark.parametrize("teachers", [1, 2])
def test_tekap_batched_views_equal_one_inner_call_per_view(inner, teachers):
    io = make_io(16, teachers=teachers, epoch=3)
    batched = tekap(inner)
    looped = tekap(inner)
    looped.inner.averages_teachers = False  # force the generic path: one inner loss call per view
    a, b = batched.loss(io), looped.loss(io)
    assert a.terms.keys() == b.terms.keys()
    for key in a.terms:
        torch.testing.assert_close(a.terms[key], b.terms[key], rtol=1e-10, atol=1e-12)


def test_tekap_over_kd_makes_one_extra_inner_call(monkeypatch):
    m = tekap("kd", num_views=3)
    calls = []
    original = m.inner.loss

    def counting(io):
        calls.append(len(io.teachers))
        return original(io)

    monkeypatch.setattr(m.inner, "loss", counting)
    m.loss(make_io(17))
    assert calls == [1, 3]  # the clean teacher, then all three views in one batched call


def test_tekap_views_perturb_the_teacher_logits():
    io = make_io(18)
    m = tekap("kd", num_views=2, noise_weight=0.1)
    state = m.generator_state()
    views = m._views_of(io.teachers[0])
    g = torch.Generator().manual_seed(0)
    g.set_state(state["tekap"])
    for view in ("x", "strong"):  # noise drawn per image view, in mapping order
        noise = torch.randn((2, B, C), generator=g, dtype=torch.float64)
        for i in range(2):
            torch.testing.assert_close(views[i][view].logits, 0.9 * io.teachers[0][view].logits + 0.1 * noise[i])


def test_tekap_feature_perturbation_mixes_the_taps_only():
    io = make_io(19, taps=True)
    m = tekap("kd", perturb="features", feature_taps=["pool"], noise_std=0.1, num_views=2)
    assert "pool" in m.needs().teacher_taps
    views = m._views_of(io.teachers[0])
    for i in range(2):
        assert views[i]["x"].logits is io.t.logits
        diff = views[i]["x"].taps["pool"] - 0.9 * io.t.taps["pool"]
        assert 0 < diff.abs().max() < 0.1  # 0.1 * N(0, 0.1^2) noise
    out = m.loss(io)
    torch.testing.assert_close(out.terms["kd.views"], 0.8 * 2 * out.terms["kd"])  # logits untouched


def test_tekap_both_perturbs_logits_and_taps():
    io = make_io(20, taps=True)
    views = tekap("kd", perturb="both", feature_taps=["pool"])._views_of(io.teachers[0])
    assert not torch.equal(views[0]["x"].logits, io.t.logits)
    assert not torch.equal(views[0]["x"].taps["pool"], io.t.taps["pool"])


def test_tekap_exposes_the_inner_adapters_and_needs():
    m = tekap("mlkd")
    assert m.adapters is m.inner.adapters
    assert m.needs() == m.inner.needs()
    assert m.needs().views == ("x", "strong")
    assert m.teacher_free_terms == m.inner.teacher_free_terms


def test_tekap_config_resolves_the_inner_method_by_name():
    cfg = from_dict(TeKAP.Config, {"inner": {"name": "dkd", "beta": 2.0}, "num_views": 2})
    assert type(cfg.inner) is METHODS.get("dkd").Config and cfg.inner.beta == 2.0
    assert TeKAP.Config().inner.name == "kd"
    with pytest.raises(ConfigError, match="temprature"):
        from_dict(TeKAP.Config, {"inner": {"name": "dkd", "temprature": 2.0}})


def test_tekap_rejects_an_inner_method_without_teacher():
    with pytest.raises(ValueError, match="reads none"):
        tekap("ce")


# ------------------------------------------------------------------------------------------ in the trainer


@pytest.mark.parametrize("method", ["tekap", "mlkd"])
def test_resumed_run_draws_the_same_noise_and_views(tmp_path, method):
    """Cut after 5 steps and resumed, a run ends with the uninterrupted run's student (TeKAP noise generator and
    MLKD's RandAugment view are both restored)."""
    from kdlab.train.checkpoint import read_file
    from kdlab.train.trainer import Trainer

    from conftest import tiny_config

    base = ("train.epochs=2",)
    full = Trainer(tiny_config(tmp_path, "train.name=full", *base, method=method))
    full.fit()
    Trainer(tiny_config(tmp_path, "train.name=cut", "train.max_steps=5", *base, method=method)).fit()
    rest = Trainer(tiny_config(tmp_path, "train.name=cut", *base, method=method), resume=True)
    rest.fit()
    a, b = read_file(full.run_dir / "checkpoint.pt"), read_file(rest.run_dir / "checkpoint.pt")
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key
