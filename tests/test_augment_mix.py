"""Mixup/CutMix (kdlab.data.augment_mix): golden values against timm's Mixup (images, soft labels with label
smoothing, CutMix boxes and the area-corrected lambda) and the distribution of the per-batch draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.data.augment_mix import MixParams, MixSettings, cutmix_box, draw_mix, mix_batch, mix_labels

mixup_mod = pytest.importorskip("timm.data.mixup")


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_box_matches_timm(seed: int) -> None:
    """Box corners and the clipped-area lambda equal timm's ``cutmix_bbox_and_lam`` for the same centre."""
    h, w = (32, 32) if seed % 2 else (17, 29)
    lam = float(np.random.default_rng(seed).beta(1.0, 1.0))
    np.random.seed(seed)
    (yl, yh, xl, xh), lam_t = mixup_mod.cutmix_bbox_and_lam((8, 3, h, w), lam, correct_lam=True)
    np.random.seed(seed)
    cy, cx = np.random.randint(0, h), np.random.randint(0, w)  # timm's rand_bbox draws, in its order
    box, lam_k = cutmix_box(h, w, lam, int(cy), int(cx))
    assert box == (int(yl), int(yh), int(xl), int(xh))
    assert lam_k == pytest.approx(float(lam_t), abs=1e-12)
    assert lam_k == pytest.approx(1 - (box[1] - box[0]) * (box[3] - box[2]) / (h * w))


def test_cutmix_box_clipped_at_the_border() -> None:
    """A centre in the corner clips the box; lambda counts only the pasted area."""
    box, lam = cutmix_box(10, 10, 0.36, 0, 0)  # sides int(10 * 0.8) = 8, centred at (0, 0)
    assert box == (0, 4, 0, 4)
    assert lam == pytest.approx(1 - 16 / 100)


@pytest.mark.parametrize(
    ("mixup_alpha", "cutmix_alpha", "seed"), [(0.8, 0.0, 1), (0.0, 1.0, 2), (0.8, 1.0, 3), (0.8, 1.0, 6)]
)
def test_mix_batch_matches_timm_mixup(mixup_alpha: float, cutmix_alpha: float, seed: int) -> None:
    """Given timm's draws, the mixed images equal timm's ``Mixup(mode='batch')``, and the soft labels smoothed by
    the cross-entropy (``(1 - eps) y_soft + eps / K``) equal timm's ``mixup_target`` with ``label_smoothing=eps``."""
    k, eps = 7, 0.1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 12, 14, generator=g)
    y = torch.randint(0, k, (8,), generator=g)
    timm_mix = mixup_mod.Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=eps, num_classes=k)
    np.random.seed(seed)
    x_t, y_t = timm_mix(x.clone(), y.clone())
    np.random.seed(seed)  # replay timm's draws to learn its lambda and box
    lam, use_cutmix = timm_mix._params_per_batch()
    box = None
    if use_cutmix:
        box, lam = mixup_mod.cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
        box = tuple(int(v) for v in box)
    x_k, y_soft, y_dom, _ = mix_batch(x, y, k, MixParams(float(lam), box))
    assert torch.allclose(x_k, x_t, atol=1e-6)
    assert torch.allclose((1 - eps) * y_soft + eps / k, y_t, atol=1e-6)
    logits = torch.randn(8, k, generator=g)
    timm_loss = torch.sum(-y_t * F.log_softmax(logits, dim=-1), dim=-1).mean()  # timm's SoftTargetCrossEntropy
    assert F.cross_entropy(logits, y_soft, label_smoothing=eps).item() == pytest.approx(timm_loss.item(), rel=1e-5)
    assert torch.equal(y_dom, y if lam >= 0.5 else y.flip(0))


def test_mix_labels_rows_and_dominant_label() -> None:
    y = torch.tensor([0, 1, 2, 3, 4])  # odd batch: the middle sample mixes with itself
    soft, dom = mix_labels(y, 5, 0.3)
    assert torch.allclose(soft.sum(dim=1), torch.ones(5))
    assert torch.allclose(soft[2], F.one_hot(torch.tensor(2), 5).float())
    assert soft[0, 0].item() == pytest.approx(0.3) and soft[0, 4].item() == pytest.approx(0.7)
    assert torch.equal(dom, y.flip(0))
    _, dom = mix_labels(y, 5, 0.5)
    assert torch.equal(dom, y)


def test_mix_views_share_pairs_and_box() -> None:
    """An extra view (MLKD's strong view) is mixed with the same pairs, lambda and box as the default view."""
    x = torch.randn(6, 3, 10, 10)
    params = MixParams(0.64, (2, 8, 1, 7))
    out, _, _, views = mix_batch(x, torch.arange(6), 6, params, {"strong": x.clone()})
    assert torch.equal(views["strong"], out)
    assert torch.equal(out[:, :, 2:8, 1:7], x.flip(0)[:, :, 2:8, 1:7]) and torch.equal(out[:, :, :2], x[:, :, :2])


def test_draw_mix_distribution() -> None:
    """Per batch: mixed with probability mix_prob; CutMix with probability switch_prob; lambda ~ Beta(alpha, alpha)
    (mean 1/2; CutMix's after the area correction), CutMix boxes inside the image."""
    s = MixSettings(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.7, switch_prob=0.4)
    rng = np.random.default_rng(0)
    n = 6000
    draws = [draw_mix(s, rng, 32, 32) for _ in range(n)]
    mixed = [d for d in draws if d.lam != 1.0 or d.box is not None]
    cut = [d for d in mixed if d.box is not None]
    assert abs(len(mixed) / n - 0.7) < 4 * math.sqrt(0.21 / n)
    assert abs(len(cut) / len(mixed) - 0.4) < 4 * math.sqrt(0.24 / len(mixed))
    lam_mixup = np.array([d.lam for d in mixed if d.box is None])
    assert abs(lam_mixup.mean() - 0.5) < 0.02 and abs(lam_mixup.var() - 1 / (4 * 2.6)) < 0.01  # Beta(0.8, 0.8)
    for d in cut:
        y0, y1, x0, x1 = d.box
        assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 32
        assert d.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 1024)
    assert draw_mix(MixSettings(), rng, 8, 8) == MixParams()
    only_cut = [draw_mix(MixSettings(cutmix_alpha=1.0), rng, 8, 8) for _ in range(50)]
    assert all(d.box is not None for d in only_cut)


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha", "seed"), [(0.8, 1.0, 1), (0.0, 1.0, 2), (0.8, 0.0, 3)])
def test_mix_batch_elem_matches_timm_elem_mode(mixup_alpha: float, cutmix_alpha: float, seed: int) -> None:
    """``data.mix_mode: elem``: given timm's per-image draws, images and smoothed soft labels equal timm's
    ``Mixup(mode='elem')`` image by image."""
    from kdlab.data.augment_mix import ElemMixParams, mix_batch_elem

    k, eps, b = 7, 0.1, 10
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 12, 14, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    timm_mix = mixup_mod.Mixup(
        mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=0.8, mode="elem", label_smoothing=eps, num_classes=k
    )
    np.random.seed(seed)
    x_t, y_t = timm_mix(x.clone(), y.clone())
    np.random.seed(seed)  # replay timm's draws: per-image parameters, then a box per CutMix image in order
    lam, use_cutmix = timm_mix._params_per_elem(b)
    lam = lam.astype(np.float64)
    boxes, cut = np.zeros((b, 4), dtype=np.int64), np.zeros(b, dtype=bool)
    for i in range(b):
        if lam[i] != 1.0 and use_cutmix[i]:
            box, lam[i] = mixup_mod.cutmix_bbox_and_lam(x[i].shape, lam[i], correct_lam=True)
            boxes[i], cut[i] = [int(v) for v in box], True
    assert 0 < (lam != 1.0).sum() < b or mixup_alpha == 0.0
    x_k, y_soft, y_dom, _ = mix_batch_elem(x, y, k, ElemMixParams(lam, boxes, cut))
    assert torch.allclose(x_k, x_t, atol=1e-5)
    assert torch.allclose((1 - eps) * y_soft + eps / k, y_t, atol=1e-6)
    lam_t = torch.as_tensor(lam)
    assert torch.equal(y_dom, torch.where(lam_t >= 0.5, y, y.flip(0)))


def test_draw_mix_elem_is_per_image() -> None:
    """Per image: mixed with probability mix_prob, CutMix with probability switch_prob, its own lambda and box."""
    from kdlab.data.augment_mix import draw_mix_elem

    s = MixSettings(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.7, switch_prob=0.4, mode="elem")
    n = 8000
    p = draw_mix_elem(s, np.random.default_rng(0), n, 32, 32)
    mixed = p.lam != 1.0
    assert abs(mixed.mean() - 0.7) < 4 * math.sqrt(0.21 / n)
    assert abs(p.cutmix[mixed].mean() - 0.4) < 4 * math.sqrt(0.24 / mixed.sum())
    blended = mixed & ~p.cutmix
    assert len(np.unique(p.lam[blended])) == blended.sum()  # a lambda per image (CutMix's are box-area quantised)
    area = (p.boxes[:, 1] - p.boxes[:, 0]) * (p.boxes[:, 3] - p.boxes[:, 2])
    assert np.allclose(p.lam[p.cutmix], 1 - area[p.cutmix] / 1024)
    assert (area[~p.cutmix] == 0).all()
