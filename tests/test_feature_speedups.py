"""Faster forms of KDSVD and VID give the numbers of the implementations they replaced.

KDSVD: the singular vectors from the smaller Gram matrix (:func:`kdlab.losses.feature.right_singular`) against the
batched SVD (vectors, values, the stable backward, the loss and its gradient). VID: the negative log-likelihood with
``log var`` added once against the broadcast expression. The references are the earlier implementations, written out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab import losses
from kdlab.losses import feature
from kdlab.losses.feature import _align, _canonical_signs, _svd_layout, right_singular, top_right_singular_vectors


class _SvdTopRight(torch.autograd.Function):
    """The earlier forward (``torch.linalg.svd``) with the same stable backward."""

    @staticmethod
    def forward(ctx, x, n):
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh.transpose(-2, -1)
        ctx.save_for_backward(x, v, s)
        ctx.mark_non_differentiable(s)
        return v[..., :n], s

    @staticmethod
    def backward(ctx, grad_v, grad_s):
        return feature._TopRightSingular.backward(ctx, grad_v, grad_s)


def svd_kdsvd(s_feats, t_feats, k=1, layout="channels"):
    """The earlier :func:`kdlab.losses.kdsvd` (teacher and student through ``torch.linalg.svd``)."""
    terms, prev = [], None
    for s, t in zip(s_feats, t_feats):
        with torch.no_grad():
            _, sv_t, vh_t = torch.linalg.svd(_svd_layout(t, layout), full_matrices=False)
            v_t = _canonical_signs(vh_t.transpose(-2, -1)[..., :k])
            weight = F.normalize(sv_t[..., :k], dim=-1)[..., None, :]
        v_s, _ = _SvdTopRight.apply(_svd_layout(s, layout), k + 3)
        v_s = _align(v_s, v_t) * weight
        v_t = v_t * weight
        if prev is not None:
            s_prev, t_prev = prev
            s_rbf = torch.exp(-(v_s[:, :, None, :] - s_prev[:, None, :, :]).pow(2) / 8)
            t_rbf = torch.exp(-(v_t[:, :, None, :] - t_prev[:, None, :, :]).pow(2) / 8)
            sq = (s_rbf - t_rbf).pow(2)
            terms.append(torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum() / s.shape[0])
        prev = (v_s, v_t)
    return sum(terms)


def _relu_matrices(b, m, c, seed, dead):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(b, m, c, generator=g, dtype=torch.float64))
    if dead:
        x[..., :dead] = 0  # dead ReLU channels: repeated zero singular values
    return x, g


@pytest.mark.parametrize(("m", "c"), [(64, 16), (16, 64), (24, 24)])
@pytest.mark.parametrize("dead", [0, 5])
def test_right_singular_equals_the_svd(m, c, dead):
    x, _ = _relu_matrices(6, m, c, m + c + dead, dead)
    v, s = right_singular(x)
    _, s_ref, vh = torch.linalg.svd(x, full_matrices=False)
    v_ref = vh.transpose(-2, -1)
    assert v.shape == v_ref.shape and s.shape == s_ref.shape
    torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-6 * s_ref[..., 0].max().item())
    # the leading vectors (distinct singular values) agree up to sign
    cos = (v[..., :8] * v_ref[..., :8]).sum(-2).abs()
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-8)
    # together they reconstruct x: x = x V V^T
    torch.testing.assert_close(x @ v @ v.transpose(-2, -1), x, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("m", "c"), [(64, 16), (16, 64)])
@pytest.mark.parametrize("dead", [0, 5])
def test_top_right_singular_vectors_backward_equals_the_svd_form(m, c, dead):
    x, g = _relu_matrices(4, m, c, 7 * m + c + dead, dead)
    x.requires_grad_(True)
    v, _ = top_right_singular_vectors(x, 4)
    v_ref, _ = _SvdTopRight.apply(x, 4)
    signs = torch.sign((v * v_ref).sum(-2, keepdim=True)).detach()
    torch.testing.assert_close(v, v_ref * signs, rtol=0, atol=1e-9)
    w = torch.randn(v.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((v * w).sum(), x)
    (grad_ref,) = torch.autograd.grad((v_ref * signs * w).sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-9)


def _maps(shapes, batch, seed, dead=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for c, h in shapes:
        m = torch.relu(torch.randn(batch, c, h, h, generator=g, dtype=torch.float64))
        if dead:
            m[:, :dead] = 0
        out.append(m)
    return out


@pytest.mark.parametrize("layout", ["channels", "width"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kdsvd_loss_and_gradient_equal_the_svd_implementation(layout, dtype):
    # resnet32x4 -> resnet8x4 stage shapes (channels 64/128/256) at a small spatial size: M >= C and M < C both occur
    shapes = [(64, 16), (128, 8), (256, 4)] if layout == "channels" else [(8, 16), (12, 16), (16, 16)]
    s_feats = [m.to(dtype).requires_grad_(True) for m in _maps(shapes, 5, 0, dead=3)]
    t_feats = [m.to(dtype) for m in _maps(shapes, 5, 1)]
    value = losses.kdsvd(s_feats, t_feats, 1, layout=layout)
    ref = svd_kdsvd(s_feats, t_feats, 1, layout=layout)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert value.item() == pytest.approx(ref.item(), rel=tol)
    grads = torch.autograd.grad(value, s_feats)
    grads_ref = torch.autograd.grad(ref, s_feats)
    for g, r in zip(grads, grads_ref):
        scale = r.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(g, r, rtol=tol * 10, atol=tol * 10 * scale)


# ------------------------------------------------------------------------------------------------- VID's NLL


def _vid_broadcast(pred, target, log_scale, eps):
    """The earlier :func:`kdlab.losses.vid_nll`: ``log var`` broadcast over the map (RepDistiller's expression)."""
    var = (F.softplus(log_scale) + eps).view(1, -1, *([1] * (pred.dim() - 2)))
    return (0.5 * ((pred - target) ** 2 / var + torch.log(var))).mean()


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (7, 6)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vid_nll_and_gradients_equal_the_broadcast_form(shape, dtype):
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True)
    target = torch.randn(shape, generator=g, dtype=dtype)
    log_scale = torch.randn(shape[1], generator=g, dtype=dtype).requires_grad_(True)
    value = losses.vid_nll(pred, target, log_scale, 1e-5)
    ref = _vid_broadcast(pred, target, log_scale, 1e-5)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert value.item() == pytest.approx(ref.item(), rel=tol)
    for g_new, g_ref in zip(torch.autograd.grad(value, [pred, log_scale]), torch.autograd.grad(ref, [pred, log_scale])):
        torch.testing.assert_close(g_new, g_ref, rtol=tol, atol=tol)
