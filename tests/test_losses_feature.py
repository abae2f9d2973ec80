"""kdlab.losses.feature: golden values from independent float64 numpy computations of each formula, the
invariances the formulas imply, zero at identical inputs, dtypes, and the stable singular-vector gradient."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from kdlab import losses
from kdlab.losses.feature import _align

B = 4


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _maps(rng, shapes, relu: bool = True) -> list[np.ndarray]:
    out = [rng.normal(size=(B, *s)) for s in shapes]
    return [np.maximum(x, 0) for x in out] if relu else out


def _t(a, dtype=torch.float64):
    if isinstance(a, list):
        return [_t(x, dtype) for x in a]
    return torch.tensor(a, dtype=dtype)


# ------------------------------------------------------------------------------------------ numpy references


def np_pool(f, size):
    """Average pooling of [B, C, H, W] to [B, C, size, size] for H divisible by size."""
    b, c, h, w = f.shape
    return f.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def np_match(s, t):
    if s.shape[2] > t.shape[2]:
        return np_pool(s, t.shape[2]), t
    if s.shape[2] < t.shape[2]:
        return s, np_pool(t, s.shape[2])
    return s, t


def np_unit_rows(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_attention(f, p=2):
    return np_unit_rows((f**p).mean(axis=1).reshape(f.shape[0], -1))


def np_at(s_list, t_list, p=2):
    total = 0.0
    for s, t in zip(s_list, t_list):
        s, t = np_match(s, t)
        total += ((np_attention(s, p) - np_attention(t, p)) ** 2).mean()
    return total


def np_nst(s_list, t_list):
    total = 0.0
    for s, t in zip(s_list, t_list):
        s, t = np_match(s, t)
        s = np_unit_rows(s.reshape(B, s.shape[1], -1))
        t = np_unit_rows(t.reshape(B, t.shape[1], -1))

        def k(a, c):
            return np.mean([[[(a[n, i] @ c[n, j]) ** 2 for j in range(c.shape[1])] for i in range(a.shape[1])]
                            for n in range(B)])  # fmt: skip

        total += k(t, t) + k(s, s) - 2 * k(s, t)
    return total


def np_sp(s, t):
    s, t = s.reshape(B, -1), t.reshape(B, -1)
    g_s, g_t = np_unit_rows(s @ s.T), np_unit_rows(t @ t.T)
    return ((g_t - g_s) ** 2).sum() / B**2


def np_pkt(s, t, eps=1e-7):
    def probs(x):
        x = x / (np.sqrt((x**2).sum(axis=1, keepdims=True)) + eps)
        sim = (x @ x.T + 1) / 2
        return sim / sim.sum(axis=1, keepdims=True)

    p_s, p_t = probs(s), probs(t)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def np_smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def np_rkd(s, t, wd=25.0, wa=50.0):
    def dist(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(len(e))] for i in range(len(e))])
        return d / d[d > 0].mean()

    def angles(e):
        out = []
        for i in range(len(e)):
            for j in range(len(e)):
                for k in range(len(e)):
                    a, b = e[j] - e[i], e[k] - e[i]
                    na, nb = max(np.linalg.norm(a), 1e-12), max(np.linalg.norm(b), 1e-12)
                    out.append(a @ b / (na * nb))
        return np.array(out)

    return wd * np_smooth_l1(dist(s), dist(t)) + wa * np_smooth_l1(angles(s), angles(t))


def np_cc(s, t):
    delta = np.abs(s - t)
    return np.mean([delta[i] @ delta[i + 1] for i in range(len(delta) - 1)])


def np_ft(s, t, p=2):
    s, t = np_match(s, t)
    return np.abs(np_attention(s, p) - np_attention(t, p)).mean()


def np_ab(s_list, t_list, m=1.0):
    n = len(s_list)
    total = 0.0
    for i, (s, t) in enumerate(zip(s_list, t_list)):
        stage = 0.0
        for sv, tv in zip(s.ravel(), t.ravel()):
            if sv > -m and tv <= 0:
                stage += (sv + m) ** 2
            if sv <= m and tv > 0:
                stage += (sv - m) ** 2
        total += 2.0 ** (i - n + 1) * stage / B * 3 / 1000
    return total


def np_fsp(s_list, t_list):
    def mats(fs):
        out = []
        for bot, top in pairwise(fs):
            bot, top = np_match(bot, top)
            hw = bot.shape[2] * bot.shape[3]
            out.append(np.einsum("bihw,bjhw->bij", top, bot) / hw)
        return out

    return sum(((a - b) ** 2).mean() for a, b in zip(mats(s_list), mats(t_list)))


def np_kdsvd(s_list, t_list, k=1):
    """The paper's layout ([H*W, C] per sample), canonical teacher signs, student vectors aligned by |cos|."""

    def vectors(f, n):
        x = f.reshape(B, f.shape[1], -1).transpose(0, 2, 1)
        vs, ss = [], []
        for b in range(B):
            _, sv, vt = np.linalg.svd(x[b], full_matrices=False)
            vs.append(vt.T[:, :n])
            ss.append(sv)
        return vs, ss

    total, prev = 0.0, None
    for s, t in zip(s_list, t_list):
        v_s, _ = vectors(s, k + 3)
        v_t, s_t = vectors(t, k)
        cur_s, cur_t = [], []
        for b in range(B):
            vt = v_t[b] * np.sign(v_t[b][np.abs(v_t[b]).argmax(axis=0), range(k)])
            w = s_t[b][:k] / np.linalg.norm(s_t[b][:k])
            aligned = np.zeros_like(vt)
            for j in range(k):
                cos = v_s[b].T @ vt[:, j]
                i = np.abs(cos).argmax()
                aligned[:, j] = np.sign(cos[i]) * v_s[b][:, i]
            cur_s.append(aligned * w)
            cur_t.append(vt * w)
        if prev is not None:
            for b in range(B):
                rbf_s = np.exp(-((cur_s[b][:, None, :] - prev[0][b][None, :, :]) ** 2) / 8)
                rbf_t = np.exp(-((cur_t[b][:, None, :] - prev[1][b][None, :, :]) ** 2) / 8)
                total += ((rbf_s - rbf_t) ** 2).sum() / B
        prev = (cur_s, cur_t)
    return total


# ------------------------------------------------------------------------------------------ golden values

S_SHAPES = [(6, 8, 8), (10, 4, 4), (12, 2, 2)]
T_SHAPES = [(9, 4, 4), (14, 4, 4), (20, 4, 4)]  # stage 1: the student is pooled, stage 3: the teacher


def test_at_matches_numpy():
    rng = _rng(1)
    s, t = _maps(rng, S_SHAPES), _maps(rng, T_SHAPES)
    assert losses.at(_t(s), _t(t)).item() == pytest.approx(np_at(s, t), rel=1e-10)
    assert losses.at(_t(s), _t(t), p=4).item() == pytest.approx(np_at(s, t, p=4), rel=1e-10)


def test_nst_matches_numpy():
    rng = _rng(2)
    s, t = _maps(rng, S_SHAPES), _maps(rng, T_SHAPES)
    assert losses.nst(_t(s), _t(t)).item() == pytest.approx(np_nst(s, t), rel=1e-10)


def test_sp_matches_numpy():
    rng = _rng(3)
    s, t = rng.normal(size=(B, 6, 4, 4)), rng.normal(size=(B, 9, 2, 2))
    assert losses.sp(_t(s), _t(t)).item() == pytest.approx(np_sp(s, t), rel=1e-10)


def test_hint_is_the_mean_squared_error():
    rng = _rng(4)
    s, t = rng.normal(size=(B, 3, 4, 4)), rng.normal(size=(B, 3, 4, 4))
    assert losses.hint(_t(s), _t(t)).item() == pytest.approx(((s - t) ** 2).mean(), rel=1e-12)
    with pytest.raises(ValueError, match="teacher map's shape"):
        losses.hint(_t(s), _t(t[:, :2]))


def test_pkt_matches_numpy():
    rng = _rng(5)
    s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 9))
    assert losses.pkt(_t(s), _t(t)).item() == pytest.approx(np_pkt(s, t), rel=1e-10)


def test_rkd_matches_numpy():
    rng = _rng(6)
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 7))
    assert losses.rkd(_t(s), _t(t)).item() == pytest.approx(np_rkd(s, t), rel=1e-8)
    assert losses.rkd(_t(s), _t(t), 1.0, 0.0).item() == pytest.approx(np_rkd(s, t, 1.0, 0.0), rel=1e-8)


def test_cc_matches_numpy():
    rng = _rng(7)
    s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    assert losses.cc(_t(s), _t(t)).item() == pytest.approx(np_cc(s, t), rel=1e-12)
    assert losses.cc(_t(s[:1]), _t(t[:1])).item() == 0.0


def test_factor_transfer_matches_numpy():
    rng = _rng(8)
    s, t = _maps(rng, [(6, 4, 4)])[0], _maps(rng, [(8, 8, 8)])[0]
    assert losses.factor_transfer(_t(s), _t(t)).item() == pytest.approx(np_ft(s, t), rel=1e-10)


def test_activation_boundary_matches_numpy():
    rng = _rng(9)
    s = _maps(rng, [(3, 4, 4), (5, 2, 2)], relu=False)
    t = _maps(rng, [(3, 4, 4), (5, 2, 2)], relu=False)
    assert losses.activation_boundary(_t(s), _t(t)).item() == pytest.approx(np_ab(s, t), rel=1e-10)
    assert losses.activation_boundary(_t(s), _t(t), margin=0.5).item() == pytest.approx(np_ab(s, t, 0.5), rel=1e-10)


def test_fsp_matches_numpy_and_needs_equal_channels():
    rng = _rng(10)
    shapes = [(3, 8, 8), (3, 8, 8), (5, 4, 4)]
    s, t = _maps(rng, shapes, relu=False), _maps(rng, [(3, 8, 8), (3, 4, 4), (5, 4, 4)], relu=False)
    assert losses.fsp(_t(s), _t(t)).item() == pytest.approx(np_fsp(s, t), rel=1e-10)
    with pytest.raises(ValueError, match="channels"):
        losses.fsp(_t(s), _t(_maps(rng, [(3, 8, 8), (4, 8, 8), (5, 4, 4)])))


def test_kdsvd_matches_numpy_with_canonical_signs():
    rng = _rng(11)
    shapes = [(4, 8, 8), (6, 4, 4), (6, 4, 4)]
    s, t = _maps(rng, shapes, relu=False), _maps(rng, [(4, 4, 4), (6, 4, 4), (6, 2, 2)], relu=False)
    assert losses.kdsvd(_t(s), _t(t)).item() == pytest.approx(np_kdsvd(s, t), rel=1e-9)
    assert losses.kdsvd(_t(s), _t(t), k=2).item() == pytest.approx(np_kdsvd(s, t, k=2), rel=1e-9)


# ------------------------------------------------------------------------------------------ invariances


def _perm(n, seed=0):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _stage_pairs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(B, *sh, generator=g, dtype=torch.float64).relu().to(dtype) for sh in S_SHAPES]
    t = [torch.randn(B, *sh, generator=g, dtype=torch.float64).relu().to(dtype) for sh in T_SHAPES]
    return s, t


def test_at_and_nst_are_invariant_to_channel_permutations_and_pair_batch_permutations():
    s, t = _stage_pairs()
    s_perm = [f[:, _perm(f.shape[1], i)] for i, f in enumerate(s)]
    t_perm = [f[:, _perm(f.shape[1], 10 + i)] for i, f in enumerate(t)]
    order = _perm(B, 99)
    for fn in (losses.at, losses.nst):
        ref = fn(s, t)
        assert fn(s_perm, t_perm).item() == pytest.approx(ref.item(), rel=1e-12)
        assert fn([f[order] for f in s], [f[order] for f in t]).item() == pytest.approx(ref.item(), rel=1e-12)
    # AT: positive scaling of a map does not change its attention map
    assert losses.at([3 * f for f in s], t).item() == pytest.approx(losses.at(s, t).item(), rel=1e-12)


def test_sp_is_invariant_to_feature_permutation_scale_and_paired_batch_order():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(B, 6, 4, 4, generator=g, dtype=torch.float64), torch.randn(B, 8, 2, 2, dtype=torch.float64)
    ref = losses.sp(s, t).item()
    flat = s.reshape(B, -1)[:, _perm(96)]
    assert losses.sp(flat, t).item() == pytest.approx(ref, rel=1e-12)
    assert losses.sp(5 * s, 0.2 * t).item() == pytest.approx(ref, rel=1e-12)
    order = _perm(B, 3)
    assert losses.sp(s[order], t[order]).item() == pytest.approx(ref, rel=1e-12)


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_pkt_is_invariant_to_rotation_per_sample_scale_and_paired_batch_order():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 7, generator=g, dtype=torch.float64)
    ref = losses.pkt(s, t).item()
    assert losses.pkt(s @ _orthogonal(5, 0), t @ _orthogonal(7, 1)).item() == pytest.approx(ref, rel=1e-10)
    scale = torch.rand(6, 1, generator=g, dtype=torch.float64) + 0.5
    assert losses.pkt(s * scale, t).item() == pytest.approx(ref, rel=1e-5)  # up to the eps of the normalisation
    order = _perm(6, 4)
    assert losses.pkt(s[order], t[order]).item() == pytest.approx(ref, rel=1e-10)


def test_rkd_is_invariant_to_similarity_transforms_and_paired_batch_order():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    ref = losses.rkd(s, t).item()
    moved = 2.5 * s @ _orthogonal(4, 0) + torch.randn(1, 4, generator=g, dtype=torch.float64)
    assert losses.rkd(moved, t).item() == pytest.approx(ref, rel=1e-8)
    order = _perm(5, 5)
    assert losses.rkd(s[order], t[order]).item() == pytest.approx(ref, rel=1e-10)


def _svd_pairs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(B, *sh, generator=g, dtype=dtype) for sh in [(4, 8, 8), (6, 4, 4), (6, 4, 4)]]
    t = [torch.randn(B, *sh, generator=g, dtype=dtype) for sh in [(4, 4, 4), (6, 4, 4), (6, 2, 2)]]
    return s, t


def test_kdsvd_is_invariant_to_singular_vector_signs():
    s, t = _svd_pairs()
    ref = losses.kdsvd(s, t).item()
    assert ref > 0
    # negating a map negates its singular vectors (whatever sign the SVD routine then returns)
    for i in range(3):
        s_flip = [-f if j == i else f for j, f in enumerate(s)]
        t_flip = [-f if j == i else f for j, f in enumerate(t)]
        assert losses.kdsvd(s_flip, t).item() == pytest.approx(ref, rel=1e-10)
        assert losses.kdsvd(s, t_flip).item() == pytest.approx(ref, rel=1e-10)


def test_kdsvd_alignment_is_invariant_to_order_and_signs_of_the_student_vectors():
    g = torch.Generator().manual_seed(4)
    v_s = torch.linalg.qr(torch.randn(B, 6, 4, generator=g, dtype=torch.float64))[0]
    v_t = torch.linalg.qr(torch.randn(B, 6, 2, generator=g, dtype=torch.float64))[0]
    ref = _align(v_s, v_t)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    shuffled = v_s[..., _perm(4, 6)] * signs
    assert torch.allclose(_align(shuffled, v_t), ref)
    assert (torch.einsum("bdk,bdk->bk", ref, v_t) >= 0).all()  # aligned to a non-negative cosine


def test_kdsvd_is_invariant_to_a_shared_channel_permutation_and_paired_batch_order():
    s, t = _svd_pairs(1)
    ref = losses.kdsvd(s, t).item()
    perms = [_perm(f.shape[1], i) for i, f in enumerate(s)]
    s_perm = [f[:, p] for f, p in zip(s, perms)]
    t_perm = [f[:, p] for f, p in zip(t, perms)]
    assert losses.kdsvd(s_perm, t_perm).item() == pytest.approx(ref, rel=1e-10)
    order = _perm(B, 7)
    assert losses.kdsvd([f[order] for f in s], [f[order] for f in t]).item() == pytest.approx(ref, rel=1e-10)


def test_kdsvd_width_layout_is_the_channel_layout_of_transposed_maps():
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(B, *sh, generator=g, dtype=torch.float64) for sh in [(4, 8, 4), (6, 4, 4), (6, 2, 4)]]
    t = [torch.randn(B, *sh, generator=g, dtype=torch.float64) for sh in [(5, 4, 4), (3, 4, 4), (6, 6, 4)]]
    width = losses.kdsvd(s, t, layout="width")  # equal widths, different channel counts
    moved = losses.kdsvd([f.permute(0, 3, 1, 2) for f in s], [f.permute(0, 3, 1, 2) for f in t])
    assert width.item() == pytest.approx(moved.item(), rel=1e-10)
    with pytest.raises(ValueError, match="stage 0 channel counts differ"):
        losses.kdsvd(s, t)


# ------------------------------------------------------------------------------------------ zeros, dtypes, grads


def test_zero_loss_for_identical_inputs():
    s, _ = _stage_pairs(5)
    e = torch.randn(6, 5, dtype=torch.float64)
    assert losses.at(s, s).item() == 0.0
    assert losses.nst(s, s).item() == pytest.approx(0.0, abs=1e-14)
    assert losses.sp(s[0], s[0]).item() == 0.0
    assert losses.hint(s[0], s[0]).item() == 0.0
    assert losses.pkt(e, e).item() == 0.0
    assert losses.rkd(e, e).item() == 0.0
    assert losses.cc(e, e).item() == 0.0
    assert losses.factor_transfer(s[0], s[0]).item() == 0.0
    assert losses.fsp(s, s).item() == 0.0
    v, _ = _svd_pairs(3)
    assert losses.kdsvd(v, v).item() == pytest.approx(0.0, abs=1e-14)


CASES = {
    "at": lambda s, t, e, f: losses.at(s, t),
    "nst": lambda s, t, e, f: losses.nst(s, t),
    "sp": lambda s, t, e, f: losses.sp(s[-1], t[-1]),
    "hint": lambda s, t, e, f: losses.hint(s[1], s[1].flip(0)),
    "pkt": lambda s, t, e, f: losses.pkt(e, f),
    "rkd": lambda s, t, e, f: losses.rkd(e, f),
    "cc": lambda s, t, e, f: losses.cc(e, e.flip(0)),
    "factor_transfer": lambda s, t, e, f: losses.factor_transfer(s[0], t[0]),
    "activation_boundary": lambda s, t, e, f: losses.activation_boundary([x - 0.5 for x in s], s),
    "fsp": lambda s, t, e, f: losses.fsp(s, [x.flip(0) for x in s]),
    "kdsvd": lambda s, t, e, f: losses.kdsvd(s[1:], [x.flip(0) for x in s[1:]]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float32_matches_float64_and_keeps_its_dtype(name):
    values = {}
    for dtype in (torch.float32, torch.float64):
        s, t = _stage_pairs(6, dtype)
        g = torch.Generator().manual_seed(7)
        e, f = (torch.randn(6, d, generator=g, dtype=torch.float64).to(dtype) for d in (5, 7))
        out = CASES[name](s, t, e, f)
        assert out.dim() == 0 and out.dtype == dtype
        values[dtype] = out.item()
    assert values[torch.float32] == pytest.approx(values[torch.float64], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", ["rkd", "nst"])
def test_gradients_reach_the_student_only(name):
    s, t = _stage_pairs(8)
    e, f = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    if name == "rkd":
        e.requires_grad_(True)
        f.requires_grad_(True)
        losses.rkd(e, f).backward()
        assert e.grad is not None and f.grad is None
    else:
        for x in s + t:
            x.requires_grad_(True)
        losses.nst(s, t).backward()
        assert all(x.grad is not None for x in s)


@pytest.mark.parametrize("shape", [(2, 12, 5), (2, 5, 12)])  # tall (M > C) and wide (null space in channel space)
def test_top_right_singular_vectors_gradient_is_exact(shape):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[2], shape[2], 3, generator=g, dtype=torch.float64)

    def projectors(v):  # sign-invariant: v_j v_j^T, weighted
        return (v[:, :, None, :] * v[:, None, :, :] * w).sum()

    assert torch.autograd.gradcheck(lambda a: projectors(losses.top_right_singular_vectors(a, 3)[0]), (x,))
    ours = torch.autograd.grad(projectors(losses.top_right_singular_vectors(x, 3)[0]), x)[0]
    theirs = torch.autograd.grad(projectors(torch.linalg.svd(x, full_matrices=False)[2].mT[..., :3]), x)[0]
    assert torch.allclose(ours, theirs, atol=1e-10)


def test_kdsvd_gradient_is_finite_with_dead_channels():
    s, t = _svd_pairs(10)
    s = [f.relu() for f in s]
    for f in s:
        f[:, -2:] = 0  # dead channels: repeated zero singular values, where the full SVD backward gives NaN
        f.requires_grad_(True)
    x = s[1].detach().reshape(B, 6, -1).mT.clone().requires_grad_(True)
    torch.linalg.svd(x, full_matrices=False)[2][..., :4, :].sum().backward()
    assert not torch.isfinite(x.grad).all()  # what the references' backward does here
    losses.kdsvd(s, t).backward()
    assert all(torch.isfinite(f.grad).all() for f in s)
    assert any(f.grad.abs().sum() > 0 for f in s)


def test_match_spatial_pools_the_larger_map():
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    pa, pb = losses.match_spatial(a, b)
    assert pa.shape == (2, 3, 4, 4) and pb is b
    pb2, pa2 = losses.match_spatial(b, a)
    assert pa2.shape == (2, 3, 4, 4) and pb2 is b
    assert torch.allclose(pa, torch.nn.functional.avg_pool2d(a, 2))


def test_mismatched_stage_lists_are_an_error():
    s, t = _stage_pairs()
    with pytest.raises(ValueError, match="3 student maps but 2 teacher maps"):
        losses.at(s, t[:2])
