"""Golden values of the group-B feature losses (CRD, ReviewKD's HCL, VID, OFD, SRRL), computed independently in
float64 from the formulas (loops, numpy, math), not with the library's own code path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab import losses


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------------- CRD


def test_crd_nce_matches_eq18():
    rng = _rng(1)
    b, k, n = 3, 5, 40
    probs = rng.uniform(0.01, 2.0, size=(b, 1 + k))
    noise = k / n
    expected = 0.0
    for row in probs:
        expected -= math.log(row[0] / (row[0] + noise + 1e-7))
        expected -= sum(math.log(noise / (p + noise + 1e-7)) for p in row[1:])
    expected /= b
    got = losses.crd_nce(torch.tensor(probs), n)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    per_sample = losses.crd_nce(torch.tensor(probs), n, reduction="none")
    assert per_sample.shape == (b,) and per_sample.mean().item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("memory_rows", [6, 400])  # small memory: matrix product + gather; large: row gather
def test_crd_scores_both_evaluations_match_the_formula(memory_rows):
    rng = _rng(2)
    b, k, d, temperature = 2, 3, 4, 0.07
    anchor = rng.normal(size=(b, d))
    anchor /= np.linalg.norm(anchor, axis=1, keepdims=True)
    memory = rng.normal(size=(memory_rows, d))
    idx = rng.integers(0, memory_rows, size=(b, 1 + k))
    expected = np.array([[math.exp(memory[j] @ anchor[i] / temperature) for j in idx[i]] for i in range(b)])
    a = torch.tensor(anchor, requires_grad=True)
    m = torch.tensor(memory, requires_grad=True)
    got = losses.crd_scores(a, m, torch.tensor(idx), temperature)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12)
    got.sum().backward()
    assert a.grad is not None and m.grad is None  # the memory is a constant


def test_crd_queue_scores():
    rng = _rng(3)
    b, q, d, temperature = 3, 4, 5, 0.5
    anchor, positive, queue = rng.normal(size=(b, d)), rng.normal(size=(b, d)), rng.normal(size=(q, d))
    expected = np.array(
        [
            [math.exp(anchor[i] @ positive[i] / temperature)] + [math.exp(anchor[i] @ r / temperature) for r in queue]
            for i in range(b)
        ]
    )
    got = losses.crd_queue_scores(torch.tensor(anchor), torch.tensor(positive), torch.tensor(queue), temperature)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------- HCL


def _pool(x: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of [B, C, H, W] to size x size (H divisible by size)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_hcl_matches_the_pyramid_formula():
    rng = _rng(4)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 1, 1)]
    s = [rng.normal(size=sh) for sh in shapes]
    t = [rng.normal(size=sh) for sh in shapes]
    expected = 0.0
    for fs, ft in zip(s, t):
        h = fs.shape[2]
        value, weight, weights = np.mean((fs - ft) ** 2), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            weight /= 2
            value += weight * np.mean((_pool(fs, level) - _pool(ft, level)) ** 2)
            weights += weight
        expected += value / weights
    got = losses.hcl([torch.tensor(x) for x in s], [torch.tensor(x) for x in t])
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # the 8x8 pair uses levels 4, 2, 1 (weights 1, 1/2, 1/4, 1/8), the 4x4 pair 2 and 1, the 1x1 pair none
    one = losses.hcl([torch.tensor(s[2])], [torch.tensor(t[2])])
    assert one.item() == pytest.approx(np.mean((s[2] - t[2]) ** 2), rel=1e-12)


def test_hcl_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="student maps"):
        losses.hcl([torch.zeros(1, 1, 2, 2)], [])


# ---------------------------------------------------------------------------------------------------------- VID


def test_vid_nll_matches_the_gaussian_formula():
    rng = _rng(5)
    mu, target = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    log_scale = rng.normal(size=3)
    eps = 1e-5
    var = np.log1p(np.exp(log_scale)) + eps
    expected = np.mean(0.5 * ((mu - target) ** 2 / var[None, :, None, None] + np.log(var)[None, :, None, None]))
    got = losses.vid_nll(torch.tensor(mu), torch.tensor(target), torch.tensor(log_scale), eps)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_vid_initial_log_scale_gives_the_initial_variance():
    init = math.log(math.exp(5.0 - 1e-5) - 1.0)
    mu = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    got = losses.vid_nll(mu, mu, torch.full((2,), init, dtype=torch.float64))
    assert got.item() == pytest.approx(0.5 * math.log(5.0), rel=1e-9)


# ---------------------------------------------------------------------------------------------------------- OFD


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_ofd_margin_matches_the_truncated_normal_mean():
    gamma = [1.0, -0.5, 0.2, 2.0, 0.1]
    beta = [0.0, 0.3, -0.4, 8.0, 5.0]  # the last two have almost no negative mass: margin -3|gamma|
    expected = []
    for g, m in zip(gamma, beta):
        s = abs(g)
        mass = _normal_cdf(-m / s)
        if mass > 0.001:
            expected.append(m - s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / mass)
        else:
            expected.append(-3 * s)
    got = losses.ofd_margin(torch.tensor(gamma, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert expected[3] == -6.0 and expected[4] == pytest.approx(-0.3)


def test_ofd_partial_l2_matches_the_case_analysis():
    rng = _rng(6)
    b, c, h, w = 2, 3, 2, 2
    source, target = rng.normal(size=(b, c, h, w)), rng.normal(size=(b, c, h, w))
    margin = np.array([-0.5, -0.1, -1.0])
    total = 0.0
    for i in range(b):
        for ch in range(c):
            m = margin[ch]
            for y in range(h):
                for x in range(w):
                    s, t = source[i, ch, y, x], target[i, ch, y, x]
                    if t > 0:
                        total += (s - t) ** 2
                    elif t > m:
                        total += (s - t) ** 2 if s > t else 0.0
                    else:
                        total += (s - m) ** 2 if s > m else 0.0
    expected = total / b
    got = losses.ofd(torch.tensor(source), torch.tensor(target), torch.tensor(margin))
    assert got.item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------- SRRL


def test_srrl_is_feature_mse_plus_logit_mse():
    rng = _rng(7)
    s_feat, t_feat = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    s_logits, t_logits = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    expected = np.mean((s_feat - t_feat) ** 2) + np.mean((s_logits - t_logits) ** 2)
    got = losses.srrl(*(torch.tensor(x) for x in (s_feat, t_feat, s_logits, t_logits)))
    assert got.item() == pytest.approx(expected, rel=1e-12)
