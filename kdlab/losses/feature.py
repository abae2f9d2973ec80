"""Feature-level distillation losses (student first, teacher second).

Plain functions over tensors, like ``torch.nn.functional``. Each docstring gives the formula, the shapes and the
reference implementation it matches; each returns the reference's scalar. Functions over several stages take
sequences of maps in tap order (``stage1``, ``stage2``, ...), one per stage, student and teacher paired by
position. Where the reference compares maps of different spatial size it average-pools the larger map to the size
of the smaller first (:func:`match_spatial`).

References: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/`` and megvii-research/mdistiller@a08d46f
``mdistiller/distillers/`` (values identical between the two unless a docstring says otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "activation_boundary",
    "at",
    "attention_map",
    "cc",
    "factor_transfer",
    "fsp",
    "fsp_matrices",
    "hint",
    "kdsvd",
    "match_spatial",
    "nst",
    "pkt",
    "rkd",
    "simkd",
    "sp",
    "top_right_singular_vectors",
]


# ------------------------------------------------------------------------------------------ helpers


def match_spatial(s_feat: Tensor, t_feat: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the spatially larger of two maps to the size of the smaller one.

    The references compare the heights only and pool to a square ``(H, H)``; this pools to the smaller map's
    ``(H, W)``, which is the same for the square maps of every CIFAR/ImageNet model.

    Args:
        s_feat: ``[B, C_s, H_s, W_s]``.
        t_feat: ``[B, C_t, H_t, W_t]``.

    Returns:
        ``(s_feat, t_feat)`` with equal ``H`` and ``W`` (the inputs themselves when they already match).
    """
    s_size, t_size = tuple(s_feat.shape[-2:]), tuple(t_feat.shape[-2:])
    if s_size == t_size:
        return s_feat, t_feat
    if s_size[0] > t_size[0]:
        return F.adaptive_avg_pool2d(s_feat, t_size), t_feat
    if s_size[0] < t_size[0]:
        return s_feat, F.adaptive_avg_pool2d(t_feat, s_size)
    raise ValueError(f"maps of equal height but different width cannot be paired: {s_size} and {t_size}")


def flat_per_sample(x: Tensor) -> Tensor:
    """``[B, ...] -> [B, D]``, each sample's elements in the order they lie in memory: a view for NCHW- and for
    channels-last-contiguous maps (``reshape`` would copy the latter).

    Only for consumers that do not depend on the order of a sample's elements, as long as both operands of a
    product come from the same map (Gram matrices ``F F^T``, norms): the order is (H, W, C) for a channels-last map
    and (C, H, W) otherwise.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x.reshape(x.shape[0], -1)


def _as_list(feats: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [feats] if isinstance(feats, Tensor) else list(feats)


def _paired(s_feats: Tensor | Sequence[Tensor], t_feats: Tensor | Sequence[Tensor], name: str) -> list:
    s_list, t_list = _as_list(s_feats), _as_list(t_feats)
    if len(s_list) != len(t_list):
        raise ValueError(f"{name}: {len(s_list)} student maps but {len(t_list)} teacher maps; they pair one to one")
    if not s_list:
        raise ValueError(f"{name}: no feature maps given")
    return list(zip(s_list, t_list))


def _sum(values: list[Tensor]) -> Tensor:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


# ------------------------------------------------------------------------------------------ attention, FT


def attention_map(feat: Tensor, p: float = 2) -> Tensor:
    """The spatial attention map of AT and the "factor" of FT: ``normalize(mean_c(f^p))``, flattened.

    Args:
        feat: ``[B, C, H, W]``.
        p: power applied element-wise before the channel mean.

    Returns:
        ``[B, H*W]``, each row of unit L2 norm (``F.normalize``, eps 1e-12).
    """
    return F.normalize(feat.pow(p).mean(dim=1).reshape(feat.shape[0], -1), dim=1)


def at(s_feats: Tensor | Sequence[Tensor], t_feats: Tensor | Sequence[Tensor], p: float = 2) -> Tensor:
    """Attention transfer: ``sum_stages mean_{b, hw} (a(f_s) - a(f_t))^2`` with ``a`` = :func:`attention_map`.

    Zagoruyko & Komodakis, ICLR 2017. The larger map of each pair is pooled to the smaller first. Matches
    mdistiller ``AT.py::at_loss`` and RepDistiller ``distiller_zoo/AT.py`` (the "code" form, not the paper's
    per-sample norm).

    Args:
        s_feats: student maps, one ``[B, C_s, H, W]`` per stage (or a single tensor).
        t_feats: teacher maps, paired by position; channel counts may differ.
        p: the power of :func:`attention_map`.

    Returns:
        A scalar: the sum over stages.
    """
    terms = []
    for s, t in _paired(s_feats, t_feats, "at"):
        s, t = match_spatial(s, t)
        terms.append((attention_map(s, p) - attention_map(t, p)).pow(2).mean())
    return _sum(terms)


def factor_transfer(s_factor: Tensor, t_factor: Tensor, p: float = 2) -> Tensor:
    """Factor transfer (FT): ``mean_{b, hw} |a(F_s) - a(F_t)|`` with ``a`` = :func:`attention_map`.

    Kim, Park & Kwak, NeurIPS 2018. ``F_s`` is the student's translator output, ``F_t`` the teacher's paraphraser
    factor; the larger map is pooled to the smaller. Matches RepDistiller ``distiller_zoo/FT.py`` (p1=2, p2=1).

    Args:
        s_factor: ``[B, C_s, H, W]`` student factor.
        t_factor: ``[B, C_t, H', W']`` teacher factor.
        p: the power of :func:`attention_map`.

    Returns:
        A scalar.
    """
    s, t = match_spatial(s_factor, t_factor)
    return (attention_map(s, p) - attention_map(t, p)).abs().mean()


# ------------------------------------------------------------------------------------------ NST, SP, FitNet


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{b, i, j} (a_i . b_j)^2`` over the rows of ``a [B, N, D]`` and ``b [B, M, D]``."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst(s_feats: Tensor | Sequence[Tensor], t_feats: Tensor | Sequence[Tensor]) -> Tensor:
    """Neuron selectivity transfer: the squared MMD with the polynomial kernel ``k(a, b) = (a . b)^2``.

    Huang & Wang, arXiv 1707.01219. Per stage (larger map pooled to the smaller), every channel's map is flattened
    over ``H*W`` and L2-normalised, then ``mean k(t, t) [detached] + mean k(s, s) - 2 mean k(s, t)`` with means
    over ``B * C * C'``. Matches mdistiller ``NST.py::nst_loss`` and RepDistiller ``NSTLoss`` (``full_loss``).

    Args:
        s_feats: student maps, one ``[B, C_s, H, W]`` per stage (or a single tensor).
        t_feats: teacher maps, paired by position; channel counts may differ.

    Returns:
        A scalar: the sum over stages.
    """
    terms = []
    for s, t in _paired(s_feats, t_feats, "nst"):
        s, t = match_spatial(s, t)
        s = F.normalize(s.reshape(s.shape[0], s.shape[1], -1), dim=2)
        t = F.normalize(t.reshape(t.shape[0], t.shape[1], -1), dim=2)
        terms.append(_poly_kernel_mean(t, t).detach() + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t))
    return _sum(terms)


def sp(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """Similarity-preserving KD: ``||normalize(G_t) - normalize(G_s)||_F^2 / B^2`` with ``G = F F^T``.

    Tung & Mori, ICCV 2019. ``F`` is the map flattened per sample (``[B, C*H*W]``), ``G`` the ``[B, B]`` Gram
    matrix and ``normalize`` the row-wise L2 normalisation. Matches mdistiller ``SP.py::similarity_loss`` and
    RepDistiller ``Similarity`` (torchdistill's ``SPKDLoss`` normalises with L1 instead).

    Args:
        s_feat: ``[B, ...]`` student feature (the last stage map in the references).
        t_feat: ``[B, ...]`` teacher feature; sizes may differ.

    Returns:
        A scalar.
    """
    s, t = flat_per_sample(s_feat), flat_per_sample(t_feat)
    b = s.shape[0]
    g_s = F.normalize(s @ s.t(), dim=1)
    g_t = F.normalize(t @ t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


def hint(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """FitNet's hint loss: ``mean (r(f_s) - f_t)^2`` over all elements, on an already-regressed student map.

    Romero et al., ICLR 2015. ``s_feat`` is the output of the regressor (``ConvReg``) and has the teacher map's
    shape. Matches mdistiller ``FitNet.py`` and RepDistiller ``HintLoss`` (``F.mse_loss``).

    Args:
        s_feat: ``[B, C, H, W]`` regressed student map.
        t_feat: ``[B, C, H, W]`` teacher map.

    Returns:
        A scalar.
    """
    if s_feat.shape != t_feat.shape:
        raise ValueError(
            f"hint: the regressed student map {tuple(s_feat.shape)} must have the teacher map's shape "
            f"{tuple(t_feat.shape)}"
        )
    return F.mse_loss(s_feat, t_feat)


# ------------------------------------------------------------------------------------------ embeddings


def pkt(s_embed: Tensor, t_embed: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer: a KL divergence between cosine-similarity distributions.

    Passalis & Tefas, ECCV 2018. With ``x_i / (||x_i|| + eps)`` rows (NaN set to 0), ``S = (x x^T + 1) / 2``,
    ``P = S / S.sum(1)`` per row; the loss is ``mean_{i, j} P_t log((P_t + eps) / (P_s + eps))`` over ``B^2``
    entries. Matches mdistiller ``PKT.py::pkt_loss`` and RepDistiller ``PKT`` (the author's code).

    Args:
        s_embed: ``[B, D_s]`` student embedding (``[B, ...]`` is flattened).
        t_embed: ``[B, D_t]`` teacher embedding.
        eps: the reference's 1e-7 in the normalisation and the logarithm.

    Returns:
        A scalar.
    """

    def probs(x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        sim = (x @ x.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    p_s, p_t = probs(s_embed), probs(t_embed)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """``[B, B]`` Euclidean distances ``sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, eps))`` with a zero diagonal (RKD)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * (e @ e.t())).clamp(min=eps)
    return d2.sqrt() * (1 - torch.eye(e.shape[0], dtype=e.dtype, device=e.device))


def _angles(e: Tensor) -> Tensor:
    """``[B^3]`` cosines ``<n(e_i - e_j), n(e_k - e_j)>`` for every triple (RKD's angle potential)."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return (diff @ diff.transpose(1, 2)).reshape(-1)


def rkd(s_embed: Tensor, t_embed: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """Relational KD: ``distance_weight * L_dist + angle_weight * L_angle``.

    Park et al., CVPR 2019. ``L_dist = smooth_l1(d_s / mean(d_s > 0), d_t / mean(d_t > 0))`` over the ``[B, B]``
    pairwise distances (zero diagonal); ``L_angle = smooth_l1(cos_s, cos_t)`` over the ``B^3`` angles
    ``<n(e_i - e_j), n(e_k - e_j)>``; smooth-L1 with beta 1, mean reduction; no gradient to the teacher. Matches
    mdistiller ``RKD.py::rkd_loss`` and RepDistiller ``RKDLoss``.

    Args:
        s_embed: ``[B, D_s]`` student embedding (``[B, ...]`` is flattened).
        t_embed: ``[B, D_t]`` teacher embedding.
        distance_weight: weight of the distance term.
        angle_weight: weight of the angle term.

    Returns:
        A scalar.
    """
    s = s_embed.reshape(s_embed.shape[0], -1)
    with torch.no_grad():
        t = t_embed.reshape(t_embed.shape[0], -1)
        t_d = _pairwise_distances(t)
        t_d = t_d / t_d[t_d > 0].mean()
        t_angle = _angles(t)
    d = _pairwise_distances(s)
    d = d / d[d > 0].mean()
    loss_distance = F.smooth_l1_loss(d, t_d)
    loss_angle = F.smooth_l1_loss(_angles(s), t_angle)
    return distance_weight * loss_distance + angle_weight * loss_angle


def cc(s_embed: Tensor, t_embed: Tensor) -> Tensor:
    """Correlation congruence as in the CRD benchmark's code: ``mean_{i<B-1} sum_d delta_{i,d} delta_{i+1,d}``.

    Peng et al., ICCV 2019. ``delta = |e_s - e_t|`` of the embedded features (``LinearEmbed`` outputs, no
    normalisation); consecutive samples of the batch are multiplied. Matches RepDistiller
    ``distiller_zoo/CC.py::Correlation`` (the original authors' code; torchdistill's ``CCKDLoss`` differs).

    Args:
        s_embed: ``[B, D]`` embedded student feature.
        t_embed: ``[B, D]`` embedded teacher feature.

    Returns:
        A scalar (0 for a batch of one).
    """
    delta = (s_embed - t_embed).abs()
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


# ------------------------------------------------------------------------------------------ AB, FSP


def activation_boundary(
    s_feats: Tensor | Sequence[Tensor], t_preacts: Tensor | Sequence[Tensor], margin: float = 1.0
) -> Tensor:
    """Activation-boundary transfer (AB): the margin-``m`` alternative L2 loss, weighted per stage.

    Heo et al., AAAI 2019. Per stage ``i`` of ``n`` (``s`` the connector's output, ``t`` the teacher's
    pre-activation map): ``L_i = sum (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]``; the total is
    ``sum_i 2^(i - n + 1) * L_i / B * 3 / 1000``. Matches RepDistiller ``distiller_zoo/AB.py::ABLoss``.

    Args:
        s_feats: connector outputs of the student, one ``[B, C, H, W]`` per stage (teacher-shaped).
        t_preacts: the teacher's pre-activation maps, paired by position.
        margin: the margin ``m``.

    Returns:
        A scalar.
    """
    pairs = _paired(s_feats, t_preacts, "activation_boundary")
    n = len(pairs)
    b = pairs[0][0].shape[0]
    terms = []
    for i, (s, t) in enumerate(pairs):
        if s.shape != t.shape:
            raise ValueError(f"activation_boundary: stage {i} shapes differ: {tuple(s.shape)} vs {tuple(t.shape)}")
        off = ((s > -margin) & (t <= 0)).to(s.dtype)
        on = ((s <= margin) & (t > 0)).to(s.dtype)
        stage = ((s + margin).pow(2) * off + (s - margin).pow(2) * on).sum()
        terms.append(2.0 ** (i - n + 1) * stage / b * 3 / 1000)
    return _sum(terms)


def fsp_matrices(feats: Sequence[Tensor]) -> list[Tensor]:
    """FSP ("flow of solution procedure") matrices of consecutive maps: ``G[b, i, j] = mean_hw top_i * bot_j``.

    For each consecutive pair ``(bot, top)`` = ``(feats[k], feats[k + 1])`` the larger map is pooled to the smaller.

    Args:
        feats: maps ``[B, C_k, H_k, W_k]`` in network order.

    Returns:
        ``len(feats) - 1`` matrices ``[B, C_{k+1}, C_k]``.
    """
    out = []
    for bot, top in pairwise(feats):
        bot, top = match_spatial(bot, top)
        bot = bot.reshape(bot.shape[0], bot.shape[1], -1)
        top = top.reshape(top.shape[0], top.shape[1], -1)
        out.append(top @ bot.transpose(1, 2) / bot.shape[-1])
    return out


def fsp(s_feats: Sequence[Tensor], t_feats: Sequence[Tensor]) -> Tensor:
    """FSP loss: ``sum_k mean (G_s^k - G_t^k)^2`` over the FSP matrices of consecutive maps (:func:`fsp_matrices`).

    Yim et al., CVPR 2017. Needs equal channel counts of student and teacher at every map. Matches RepDistiller
    ``distiller_zoo/FSP.py`` (the sum of its per-pair losses).

    Args:
        s_feats: student maps ``[B, C_k, H_k, W_k]`` in network order (at least two).
        t_feats: teacher maps with the same channel counts.

    Returns:
        A scalar.
    """
    pairs = _paired(s_feats, t_feats, "fsp")
    if len(pairs) < 2:
        raise ValueError("fsp: needs at least two maps per network (it compares consecutive pairs)")
    for i, (s, t) in enumerate(pairs):
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"fsp: map {i} has {s.shape[1]} student channels but {t.shape[1]} teacher channels")
    g_s = fsp_matrices([s for s, _ in pairs])
    g_t = fsp_matrices([t for _, t in pairs])
    return _sum([(s - t).pow(2).mean() for s, t in zip(g_s, g_t)])


# ------------------------------------------------------------------------------------------ KDSVD


@contextlib.contextmanager
def single_threaded_lapack(device: torch.device) -> Iterator[None]:
    """Run the enclosed CPU LAPACK calls on one thread, then restore the thread count.

    A batch of small symmetric eigenproblems (KDSVD's ``[64, 128, 128]`` Gram matrices) on two MKL threads was
    measured at 54x the CPU time of one thread (3.0 s against 0.056 s per call, and 15 s of wall clock on a loaded
    2-core machine): the threads spin waiting on each other for work too small to split. The LAPACK routine does
    the same arithmetic on one thread. No-op on other devices or when one thread is already set.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def right_singular(x: Tensor) -> tuple[Tensor, Tensor]:
    """All right singular vectors and singular values of each ``x[b]``, from the smaller Gram matrix.

    ``x^T x = V S^2 V^T`` (``M >= C``) or ``x x^T = U S^2 U^T`` and ``V = x^T U S^-1`` (``M < C``): one batched matrix
    product and a symmetric eigendecomposition of ``[B, min(M, C), min(M, C)]``, much cheaper on CPU than the batched
    SVD of the tall maps KDSVD decomposes (``[H*W, C]``). The leading vectors and values equal the SVD's (up to the
    sign of each vector); singular values far below the largest (relative ``sqrt(eps)``) lose relative precision, and
    when ``M < C`` the vectors of (numerically) zero singular values are returned as zeros instead of an arbitrary
    orthonormal completion (they span no part of ``x`` and cancel out of :func:`top_right_singular_vectors`'s
    backward, see there).

    Args:
        x: ``[B, M, C]``.

    Returns:
        ``(v [B, C, r], s [B, r])`` with ``r = min(M, C)``, singular values descending.
    """
    m, c = x.shape[-2:]
    xt = x.transpose(-2, -1)
    gram = xt @ x if m >= c else x @ xt
    with single_threaded_lapack(x.device):
        lam, vec = torch.linalg.eigh(gram)
    lam, vec = lam.flip(-1).clamp_min(0), vec.flip(-1)  # descending
    s = lam.sqrt()
    if m >= c:
        return vec, s
    tol = 10 * torch.finfo(x.dtype).eps * lam[..., :1].clamp(min=torch.finfo(x.dtype).tiny)
    keep = lam > tol
    v = (xt @ vec) / torch.where(keep, s, torch.ones_like(s))[..., None, :]
    return torch.where(keep[..., None, :], v, torch.zeros_like(v)), s


class _TopRightSingular(torch.autograd.Function):
    """The ``n`` leading right singular vectors of ``x [B, M, C]`` with a stable backward (see the public function)."""

    @staticmethod
    def forward(ctx, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        v, s = right_singular(x)
        ctx.save_for_backward(x, v, s)
        ctx.mark_non_differentiable(s)
        return v[..., :n], s

    @staticmethod
    def backward(ctx, grad_v: Tensor, grad_s: Tensor | None) -> tuple[Tensor | None, None]:
        x, v, s = ctx.saved_tensors
        n = grad_v.shape[-1]
        lam = s.pow(2)  # eigenvalues of x^T x, [B, r]
        lam_n = lam[..., :n]
        tol = 10 * torch.finfo(x.dtype).eps * lam.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
        w = v.transpose(-2, -1) @ grad_v  # [B, r, n]: w[i, j] = v_i . g_j
        gap = lam_n[..., None, :] - lam[..., :, None]  # [B, r, n]: lam_j - lam_i
        ok = gap.abs() > tol[..., None]
        coef = torch.where(ok, w / torch.where(ok, gap, torch.ones_like(gap)), torch.zeros_like(w))
        # the part of g outside span(v) (the null space of x when M < C): eigenvalue 0, gap lam_j
        outside = grad_v - v @ w
        ok_n = lam_n > tol
        outside = torch.where(ok_n[..., None, :], outside / torch.where(ok_n, lam_n, 1.0)[..., None, :], 0.0)
        v_n = v[..., :n]
        a = v @ coef + outside  # d(x^T x) = a v_n^T, [B, C, n]
        if x.shape[-2] < x.shape[-1]:
            # M < C: x (a v_n^T + v_n a^T) from its rank-n factors, never forming the [B, C, C] matrix (the same
            # sum; measured slower than the square form when M >= C, where x's rows outnumber C)
            return (x @ a) @ v_n.transpose(-2, -1) + (x @ v_n) @ a.transpose(-2, -1), None
        grad_gram = a @ v_n.transpose(-2, -1)  # [B, C, C]
        return x @ (grad_gram + grad_gram.transpose(-2, -1)), None


def top_right_singular_vectors(x: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The ``n`` leading right singular vectors of each ``x[b]`` and all its singular values.

    The forward is :func:`right_singular` (the smaller Gram matrix's eigenvectors); the backward differentiates the
    kept vectors only, as eigenvectors of ``x^T x`` (``dv_j = sum_{i != j} v_i v_i^T d(x^T x) v_j / (s_j^2 - s_i^2)``,
    the null space included). Unlike the full SVD backward it stays finite when discarded singular values repeat
    (e.g. the zero singular values of ReLU maps with dead channels); pairs of numerically equal singular values
    contribute nothing.

    Args:
        x: ``[B, M, C]``.
        n: number of vectors to keep (at most ``min(M, C)`` are returned).

    Returns:
        ``(v [B, C, min(n, M, C)], s [B, min(M, C)])``, singular values descending, ``s`` without gradient.
    """
    return _TopRightSingular.apply(x, n)


def _svd_layout(feat: Tensor, layout: str) -> Tensor:
    b, c, h, w = feat.shape
    if layout == "channels":
        return feat.reshape(b, c, h * w).transpose(1, 2)
    if layout == "width":
        return feat.reshape(b, c * h, w)
    raise ValueError(f"kdsvd: layout must be 'channels' or 'width', got {layout!r}")


def _canonical_signs(v: Tensor) -> Tensor:
    """Flip each column of ``v [B, D, k]`` so that its largest-magnitude entry is positive."""
    idx = v.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(v.gather(-2, idx))
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def _align(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For every teacher vector, the student vector of largest ``|cos|``, sign-flipped to a positive cosine.

    Args:
        v_s: ``[B, D, m]`` student vectors; ``v_t``: ``[B, D, k]`` teacher vectors.

    Returns:
        ``[B, D, k]``.
    """
    cosine = v_s.transpose(-2, -1) @ v_t  # [B, m, k]
    idx = cosine.abs().argmax(dim=-2, keepdim=True)  # [B, 1, k]
    sign = torch.sign(cosine.gather(-2, idx))  # [B, 1, k]
    chosen = v_s.gather(-1, idx.expand(-1, v_s.shape[-2], -1))  # [B, D, k]
    return chosen * sign


class _RbfRelation(torch.autograd.Function):
    """KDSVD's relation term of two consecutive stages, fused: the pair tensors are formed once, in place.

    ``sum_{b, c, c', j} (exp(-(a[b, c, j] - p[b, c', j])^2 / 8) - exp(-(u[b, c, j] - q[b, c', j])^2 / 8))^2`` over
    ``a, u [B, C, k]`` and ``p, q [B, C', k]``, non-finite entries counted as 0; gradients reach ``a`` and ``p``
    (the student's) only. The same value and gradient as the unfused expression (``exp``, ``pow``, ``where``,
    ``sum`` over ``[B, C, C', k]``, eight full-size temporaries forward and as many backward) with three: in the
    channels layout ``C x C'`` is 256 x 128 per sample and vector, so these element-wise passes were a large part of
    the loss.
    """

    @staticmethod
    def forward(ctx, a: Tensor, p: Tensor, u: Tensor, q: Tensor) -> Tensor:
        diff = a[:, :, None, :] - p[:, None, :, :]  # [B, C, C', k]
        s_rbf = diff.square().mul_(-0.125).exp_()
        d = (u[:, :, None, :] - q[:, None, :, :]).square_().mul_(-0.125).exp_()
        torch.sub(s_rbf, d, out=d)  # in [-1, 1], or NaN: its square is finite exactly where d is not NaN
        d.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        value = d.square().sum()
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # d value / d diff = 2 d * d s_rbf / d diff = -d * s_rbf * diff / 2
            ctx.save_for_backward(diff.mul_(s_rbf).mul_(d))
        return value

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        (h,) = ctx.saved_tensors
        g = h * (-0.5 * grad)
        ga = g.sum(2) if ctx.needs_input_grad[0] else None
        gp = -g.sum(1) if ctx.needs_input_grad[1] else None
        return ga, gp, None, None


def kdsvd(s_feats: Sequence[Tensor], t_feats: Sequence[Tensor], k: int = 1, layout: str = "channels") -> Tensor:
    """KDSVD (Lee, Kim & Song, ECCV 2018): RBF relations between the singular vectors of consecutive stages.

    Per stage, each sample's map is reshaped to a matrix ``X`` (``layout``) and decomposed. The teacher keeps its
    ``k`` leading right singular vectors ``v_t`` and the student ``k + 3``; every teacher vector picks the student
    vector of largest ``|cos|``, sign-aligned (``v_s``); both are scaled by the L2-normalised ``k`` leading teacher
    singular values. For consecutive stages ``i - 1, i``:
    ``L_i = sum_{b, c, c', j} (exp(-(v_s^i[c, j] - v_s^{i-1}[c', j])^2 / 8) - (same for v_t))^2 / B``; the result
    is ``sum_i L_i`` (non-finite entries count 0 and get no gradient).

    Layouts: ``"channels"`` (default) reshapes ``[C, H, W]`` to ``[H*W, C]``, so the vectors live in channel space,
    as in the paper's TensorFlow code (NHWC maps reshaped to ``[HW, C]``) and RepDistiller
    ``distiller_zoo/KDSVD.py``; it needs equal channel counts of student and teacher at every stage.
    ``"width"`` reshapes to ``[C*H, W]`` as mdistiller ``KDSVD.py`` does (the NHWC reshape applied to an NCHW map);
    it needs equal widths.

    Sign conventions: the student vectors are aligned to the teacher's, so the value does not depend on their
    signs; the teacher's vectors are given a canonical sign (largest-magnitude entry positive), so the value does
    not depend on the SVD routine's sign convention either (the references use whatever LAPACK returns, which
    makes their values not portable). Gradients reach the student only (:func:`top_right_singular_vectors`).

    Args:
        s_feats: student maps, one ``[B, C_i, H_i, W_i]`` per stage (at least two).
        t_feats: teacher maps, paired by position.
        k: number of teacher singular vectors.
        layout: ``"channels"`` or ``"width"`` (see above).

    Returns:
        A scalar.
    """
    pairs = _paired(s_feats, t_feats, "kdsvd")
    dim = 1 if layout == "channels" else 3
    for i, (s, t) in enumerate(pairs):
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(f"kdsvd: stage {i} maps must be [B, C, H, W], got {tuple(s.shape)}, {tuple(t.shape)}")
        if s.shape[dim] != t.shape[dim]:
            what = "channel counts" if layout == "channels" else "widths"
            raise ValueError(f"kdsvd: stage {i} {what} differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
    terms = []
    prev: tuple[Tensor, Tensor] | None = None
    for s, t in pairs:
        with torch.no_grad():
            full_t, sv_t = right_singular(_svd_layout(t, layout))
            v_t = _canonical_signs(full_t[..., :k])
            weight = F.normalize(sv_t[..., :k], dim=-1)[..., None, :]  # [B, 1, k]
        v_s, _ = top_right_singular_vectors(_svd_layout(s, layout), k + 3)
        v_s = _align(v_s, v_t) * weight
        v_t = v_t * weight
        if prev is not None:
            s_prev, t_prev = prev
            terms.append(_RbfRelation.apply(v_s, s_prev, v_t, t_prev) / s.shape[0])
        prev = (v_s, v_t)
    if not terms:
        raise ValueError("kdsvd: needs at least two stages (it relates consecutive stages)")
    return _sum(terms)


# ------------------------------------------------------------------------------------------ SimKD


def simkd(s_feat: Tensor, t_feat: Tensor, reduction: str = "mean") -> Tensor:
    """SimKD's feature loss: the mean squared error between the projected student map and the teacher's map.

    Chen et al., "Knowledge Distillation with the Reused Teacher Classifier", CVPR 2022, arXiv 2203.14001.
    ``s_feat`` is the projector's output, already at the teacher map's size (:func:`match_spatial` before the
    projector). Per sample ``l_i = mean_{c,h,w} (s_i - t_i)^2``; the batch mean equals DefangChen/SimKD's
    ``nn.MSELoss()`` on the two maps.

    Args:
        s_feat: ``[B, C, H, W]`` projected student map.
        t_feat: ``[B, C, H, W]`` teacher map.
        reduction: ``"mean"`` (the reference's scalar), ``"sum"`` or ``"none"`` (``[B]``, e.g. for a per-sample mask).

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"``.
    """
    if s_feat.shape != t_feat.shape:
        raise ValueError(
            f"simkd: the projected student map {tuple(s_feat.shape)} must have the teacher map's shape "
            f"{tuple(t_feat.shape)}"
        )
    per_sample = (s_feat - t_feat).pow(2).flatten(1).mean(dim=1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
