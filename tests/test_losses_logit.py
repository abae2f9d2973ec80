"""kdlab.losses.logit: golden values from independent float64 numpy computations, identities, shapes, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab import losses

B, C = 6, 7


def _inputs(seed: int = 0, b: int = B, c: int = C, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, c)) * scale
    t = rng.normal(size=(b, c)) * scale
    y = rng.integers(0, c, size=b)
    return s, t, y


def _t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


# ------------------------------------------------------------------------------------------ numpy references


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p, q):
    """sum p log(p / q) over the last axis, 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def np_kd(s, t, temp):
    return temp**2 * np_kl(np_softmax(t / temp), np_softmax(s / temp))


def np_tckd_nckd(s, t, y, temp):
    """TCKD and NCKD per sample, with the non-target distribution renormalised explicitly."""
    p_s, p_t = np_softmax(s / temp), np_softmax(t / temp)
    tck, nck = [], []
    for i, yi in enumerate(y):
        b_s = np.array([p_s[i, yi], 1 - p_s[i, yi]])
        b_t = np.array([p_t[i, yi], 1 - p_t[i, yi]])
        tck.append(np_kl(b_t, b_s))
        keep = np.arange(s.shape[1]) != yi
        q_s = p_s[i, keep] / p_s[i, keep].sum()
        q_t = p_t[i, keep] / p_t[i, keep].sum()
        nck.append(np_kl(q_t, q_s))
    return temp**2 * np.array(tck), temp**2 * np.array(nck)


def np_dist(s, t, beta, gamma, tau):
    y_s, y_t = np_softmax(s / tau), np_softmax(t / tau)
    inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(s.shape[0])])
    intra = 1 - np.mean([np.corrcoef(y_s[:, j], y_t[:, j])[0, 1] for j in range(s.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


def np_class_corr(s, t, temp):
    p_s, p_t = np_softmax(s / temp), np_softmax(t / temp)
    return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / s.shape[1]


def np_batch_corr(s, t, temp):
    p_s, p_t = np_softmax(s / temp), np_softmax(t / temp)
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / s.shape[0]


# ------------------------------------------------------------------------------------------ golden values


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_golden(dtype, rtol, temp):
    s, t, _ = _inputs()
    out = losses.kd(_t(s, dtype), _t(t, dtype), temp, reduction="none")
    assert out.dtype == dtype and out.shape == (B,)
    np.testing.assert_allclose(out.double().numpy(), np_kd(s, t, temp), rtol=rtol)
    mean = losses.kd(_t(s, dtype), _t(t, dtype), temp)
    assert mean.shape == ()
    np.testing.assert_allclose(mean.item(), np_kd(s, t, temp).mean(), rtol=rtol)
    np.testing.assert_allclose(
        losses.kd(_t(s, dtype), _t(t, dtype), temp, reduction="sum").item(), np_kd(s, t, temp).sum(), rtol=rtol
    )


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-9, 1e-12), (torch.float32, 5e-5, 1e-6)])
@pytest.mark.parametrize("alpha, beta", [(1.0, 8.0), (1.0, 0.0), (0.0, 1.0), (0.5, 2.0)])
def test_dkd_golden(dtype, rtol, atol, alpha, beta):
    s, t, y = _inputs(1)
    tck, nck = np_tckd_nckd(s, t, y, 4.0)
    out = losses.dkd(_t(s, dtype), _t(t, dtype), torch.tensor(y), alpha, beta, 4.0, reduction="none")
    assert out.dtype == dtype and out.shape == (B,)
    np.testing.assert_allclose(out.double().numpy(), alpha * tck + beta * nck, rtol=rtol, atol=atol)
    mean = losses.dkd(_t(s, dtype), _t(t, dtype), torch.tensor(y), alpha, beta, 4.0)
    np.testing.assert_allclose(mean.item(), (alpha * tck + beta * nck).mean(), rtol=rtol)


def test_dkd_alpha1_beta0_is_tckd_alone():
    s, t, y = _inputs(2)
    tck, _ = np_tckd_nckd(s, t, y, 4.0)
    out = losses.dkd(_t(s), _t(t), torch.tensor(y), alpha=1.0, beta=0.0, temperature=4.0)
    np.testing.assert_allclose(out.item(), tck.mean(), rtol=1e-10)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kd_decomposes_into_tckd_and_nckd(temp):
    """Per sample, KD = TCKD + (1 - p_t[y]) * NCKD at the same temperature (DKD paper, Eq. 7)."""
    s, t, y = _inputs(3)
    s, t, yt = _t(s), _t(t), torch.tensor(y)
    kd = losses.kd(s, t, temp, reduction="none")
    tckd = losses.dkd(s, t, yt, 1.0, 0.0, temp, reduction="none")
    nckd = losses.dkd(s, t, yt, 0.0, 1.0, temp, reduction="none")
    p_t_y = F.softmax(t / temp, dim=-1).gather(1, yt[:, None]).squeeze(1)
    torch.testing.assert_close(kd, tckd + (1 - p_t_y) * nckd, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (1.0, 1.0, 4.0), (2.0, 0.5, 2.0)])
def test_dist_golden(dtype, rtol, beta, gamma, tau):
    # np.corrcoef has no 1e-8 in the denominator: rtol 1e-6 covers it (methods.md, DIST)
    s, t, _ = _inputs(4)
    out = losses.dist(_t(s, dtype), _t(t, dtype), beta, gamma, tau)
    assert out.dtype == dtype and out.shape == ()
    np.testing.assert_allclose(out.item(), np_dist(s, t, beta, gamma, tau), rtol=rtol)


def test_dist_dense_inputs_are_pixels_as_samples():
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(2, C, 3, 4)), rng.normal(size=(2, C, 3, 4))
    flat = lambda a: a.transpose(0, 2, 3, 1).reshape(-1, C)  # noqa: E731
    np.testing.assert_allclose(losses.dist(_t(s), _t(t)).item(), np_dist(flat(s), flat(t), 1, 1, 1), rtol=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_correlations_golden(temp):
    s, t, _ = _inputs(6)
    np.testing.assert_allclose(losses.class_correlation(_t(s), _t(t), temp).item(), np_class_corr(s, t, temp), 1e-10)
    np.testing.assert_allclose(losses.batch_correlation(_t(s), _t(t), temp).item(), np_batch_corr(s, t, temp), 1e-10)
    rows = losses.class_correlation(_t(s), _t(t), temp, reduction="none")
    assert rows.shape == (C,)
    torch.testing.assert_close(rows.mean(), losses.class_correlation(_t(s), _t(t), temp))
    assert losses.batch_correlation(_t(s), _t(t), temp, reduction="none").shape == (B,)


def test_cross_entropy_label_smoothing_golden():
    s, _, y = _inputs(7)
    eps = 0.1
    q = np.full((B, C), eps / C)
    q[np.arange(B), y] += 1 - eps
    log_p = np.log(np_softmax(s))
    expected = -(q * log_p).sum(axis=1).mean()
    np.testing.assert_allclose(losses.cross_entropy(_t(s), torch.tensor(y), eps).item(), expected, rtol=1e-10)


def test_standardize_logits_golden():
    s, _, _ = _inputs(8)
    expected = (s - s.mean(axis=1, keepdims=True)) / (1e-7 + s.std(axis=1, ddof=1, keepdims=True))
    np.testing.assert_allclose(losses.standardize_logits(_t(s)).numpy(), expected, rtol=1e-12)
    out = losses.kd(_t(s), _t(s[::-1].copy()), 2.0, standardize=True, reduction="none")
    np.testing.assert_allclose(out.numpy(), np_kd(expected, expected[::-1], 2.0), rtol=1e-10)


# ------------------------------------------------------------------------------------------ identities


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kd_zero_with_zero_gradient_when_logits_equal(dtype):
    s, _, _ = _inputs(9)
    z = _t(s, dtype).requires_grad_(True)
    loss = losses.kd(z, z.detach().clone(), 4.0)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert z.grad.abs().max().item() < 1e-7


def test_kd_and_dist_invariant_to_per_sample_shift():
    s, t, _ = _inputs(10)
    shift_s = np.random.default_rng(0).normal(size=(B, 1)) * 10
    shift_t = np.random.default_rng(1).normal(size=(B, 1)) * 10
    s2, t2 = _t(s + shift_s), _t(t + shift_t)
    torch.testing.assert_close(losses.kd(s2, t2, 4.0), losses.kd(_t(s), _t(t), 4.0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses.dist(s2, t2, tau=4.0), losses.dist(_t(s), _t(t), tau=4.0), rtol=1e-9, atol=0)


def test_standardized_kd_invariant_to_per_sample_affine_change():
    s, t, _ = _inputs(11)
    a = np.abs(np.random.default_rng(2).normal(size=(B, 1))) + 0.5
    out = losses.kd(_t(a * s + 3.0), _t(t), 2.0, standardize=True)
    torch.testing.assert_close(out, losses.kd(_t(s), _t(t), 2.0, standardize=True), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------ stacked teachers


def test_stacked_teachers_equal_one_call_per_teacher():
    s, _, y = _inputs(12)
    ts = torch.tensor(np.random.default_rng(3).normal(size=(3, B, C)) * 3)
    yt = torch.tensor(y)
    torch.testing.assert_close(losses.kd(_t(s), ts, 4.0), torch.stack([losses.kd(_t(s), t, 4.0) for t in ts]))
    torch.testing.assert_close(
        losses.dkd(_t(s), ts, yt, reduction="none"),
        torch.stack([losses.dkd(_t(s), t, yt, reduction="none") for t in ts]),
    )
    torch.testing.assert_close(
        losses.dist(_t(s), ts, tau=4.0), torch.stack([losses.dist(_t(s), t, tau=4.0) for t in ts])
    )
    dense_s = torch.randn(2, C, 3, 3, dtype=torch.float64)
    dense_t = torch.randn(3, 2, C, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(losses.dist(dense_s, dense_t), torch.stack([losses.dist(dense_s, t) for t in dense_t]))


def test_temperature_tensor_equals_one_call_per_temperature():
    s, t, _ = _inputs(13)
    temps = [4.0, 3.0, 5.0]
    tt = torch.tensor(temps, dtype=torch.float64).reshape(-1, 1, 1)
    torch.testing.assert_close(losses.kd(_t(s), _t(t), tt), torch.stack([losses.kd(_t(s), _t(t), x) for x in temps]))
    for fn in (losses.class_correlation, losses.batch_correlation):
        torch.testing.assert_close(fn(_t(s), _t(t), tt), torch.stack([fn(_t(s), _t(t), x) for x in temps]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 1, 1\]"):
        losses.kd(_t(s), _t(t), torch.tensor([4.0, 2.0]))


def test_dist_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must match"):
        losses.dist(torch.randn(4, 5), torch.randn(4, 6))


def test_reduce_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        losses.kd(torch.randn(2, 3), torch.randn(2, 3), reduction="batchmean")


# ------------------------------------------------------------------------------------------ TeKAP


def test_tekap_kd_golden():
    s, t, _ = _inputs(14)
    noise = np.random.default_rng(4).normal(size=(3, B, C))
    views = 0.9 * t + 0.1 * noise
    expected = np_kd(s, t, 4.0) + 0.8 * sum(np_kd(s, v, 4.0) for v in views)
    out = losses.tekap_kd(_t(s), _t(t), _t(noise), reduction="none")
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(losses.tekap_kd(_t(s), _t(t), _t(noise)).item(), expected.mean(), rtol=1e-10)
    torch.testing.assert_close(losses.tekap_views(_t(t), _t(noise), 0.1), _t(views))


def test_tekap_kd_noise_from_generator_is_reproducible():
    s, t = torch.randn(B, C), torch.randn(B, C)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    a = losses.tekap_kd(s, t, generator=g, num_views=4)
    g.set_state(state)
    noise = torch.randn((4, B, C), generator=g)
    torch.testing.assert_close(a, losses.tekap_kd(s, t, noise))
    assert not torch.equal(a, losses.tekap_kd(s, t, generator=g, num_views=4))  # fresh noise afterwards


def test_tekap_kd_without_views_is_kd():
    s, t = torch.randn(B, C), torch.randn(B, C)
    out = losses.tekap_kd(s, t, torch.randn(3, B, C), noise_weight=0.0, view_weight=0.0, reduction="none")
    torch.testing.assert_close(out, losses.kd(s, t, reduction="none"))
    with_views = losses.tekap_kd(s, t, torch.randn(3, B, C), noise_weight=0.0, clean_weight=0.5, view_weight=0.25)
    torch.testing.assert_close(with_views, (0.5 + 3 * 0.25) * losses.kd(s, t))


def test_tekap_kd_gradient_flows_to_student_only():
    s = torch.randn(B, C, requires_grad=True)
    t = torch.randn(B, C, requires_grad=True)
    losses.tekap_kd(s, t, generator=torch.Generator().manual_seed(0)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
