"""Dense (segmentation) losses and methods on small tensors: golden values against the formulas written out here,
ignored pixels excluded from every term, the auxiliary-head terms, and the registry-generated refusal of methods
without dense support."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab import losses
from kdlab.methods import METHODS, build_method
from kdlab.methods._dense import DenseOutputError, check_output_kind
from kdlab.methods.base import BuildContext
from kdlab.types import Batch, Outputs, StepIO

IGN = 255


def _data(seed: int = 0, b: int = 2, k: int = 4, h: int = 3, w: int = 5):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, k, h, w, generator=g)
    t = torch.randn(b, k, h, w, generator=g)
    y = torch.randint(0, k, (b, h, w), generator=g)
    y[0, 0, :3] = IGN
    y[1, -1, -1] = IGN
    return s, t, y


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (z - mb) for x, z in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((z - mb) ** 2 for z in b))
    return num / (den + 1e-8)


def _labelled_pixels(y: torch.Tensor) -> list[tuple[int, int, int]]:
    b, h, w = y.shape
    return [(n, i, j) for n in range(b) for i in range(h) for j in range(w) if int(y[n, i, j]) != IGN]


def _io(s, t, y, s_taps=None, t_taps=None) -> StepIO:
    batch = Batch(x=torch.zeros(y.shape[0], 3, *y.shape[1:]), y=y, index=torch.arange(y.shape[0]))
    return StepIO({"x": Outputs(s, s_taps or {})}, ({"x": Outputs(t, t_taps or {})},), batch)


def test_dense_dist_matches_the_formula_with_ignored_pixels_left_out() -> None:
    """Dense DIST (hunto/DIST_KD segmentation ``DIST``, tau 1): per-pixel class distributions; inter = 1 - mean over
    labelled pixels of the Pearson correlation over classes; intra = 1 - mean over classes of the correlation over
    labelled pixels."""
    s, t, y = _data()
    pix = _labelled_pixels(y)
    ps = [F.softmax(s[n, :, i, j], 0).tolist() for n, i, j in pix]
    pt = [F.softmax(t[n, :, i, j], 0).tolist() for n, i, j in pix]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ps, pt)) / len(pix)
    k = s.shape[1]
    intra = 1 - sum(_pearson([r[c] for r in ps], [r[c] for r in pt]) for c in range(k)) / k
    method = build_method(METHODS.get("dist").Config(tau=1.0, dist_weight=1.0, ce_weight=1.0), BuildContext(k))
    out = method.loss(_io(s, t, y))
    assert out.terms["dist"].item() == pytest.approx(inter + intra, rel=1e-5)
    # ignored pixels do not matter: change their logits arbitrarily
    s2, t2 = s.clone(), t.clone()
    s2[0, :, 0, :3] = 50.0
    t2[1, :, 2, 4] = -50.0
    assert method.loss(_io(s2, t2, y)).terms["dist"].item() == pytest.approx(out.terms["dist"].item(), rel=1e-6)


def test_dense_dist_on_all_pixels_is_the_reference_reshape() -> None:
    """With no ignored pixel the rows are the reference's ``transpose(1, 3).reshape(-1, C)`` (order aside)."""
    s, t, _ = _data(1)
    rows_s = s.transpose(1, 3).reshape(-1, s.shape[1])
    rows_t = t.transpose(1, 3).reshape(-1, t.shape[1])
    want = losses.dist(rows_s, rows_t, 1.0, 1.0, 1.0)
    got = losses.dist(losses.pixel_rows(s), losses.pixel_rows(t), 1.0, 1.0, 1.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_pixelwise_kd_matches_the_formula() -> None:
    s, t, y = _data(2)
    temp = 2.0
    pix = _labelled_pixels(y)
    total = 0.0
    for n, i, j in pix:
        p_t = F.softmax(t[n, :, i, j] / temp, 0)
        total += float((p_t * (p_t.log() - F.log_softmax(s[n, :, i, j] / temp, 0))).sum())
    want = temp**2 * total / len(pix)
    method = build_method(METHODS.get("kd").Config(temperature=temp, kd_weight=1.0), BuildContext(4))
    assert method.loss(_io(s, t, y)).terms["kd"].item() == pytest.approx(want, rel=1e-5)


def test_dense_cross_entropy_upsamples_and_ignores() -> None:
    s, _, _ = _data(3, h=2, w=3)
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 4, (2, 4, 6), generator=g)
    y[:, 0] = IGN
    up = F.interpolate(s, (4, 6), mode="bilinear", align_corners=True)
    terms = []
    for n in range(2):
        for i in range(4):
            for j in range(6):
                if int(y[n, i, j]) != IGN:
                    terms.append(-float(F.log_softmax(up[n, :, i, j], 0)[y[n, i, j]]))
    assert losses.cross_entropy(s, y).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    per_image = losses.cross_entropy(s, y, reduction="none")
    assert per_image.shape == (2,)


def test_cwd_matches_the_formula_and_masks_positions() -> None:
    s, t, y = _data(5)
    tau = 4.0
    b, c = s.shape[:2]
    # reference (all positions): tau^2 / (B C) sum_{b,c} KL(softmax_hw(t/tau) || softmax_hw(s/tau))
    total = 0.0
    for n in range(b):
        for ch in range(c):
            p_t = F.softmax(t[n, ch].flatten() / tau, 0)
            total += float((p_t * (p_t.log() - F.log_softmax(s[n, ch].flatten() / tau, 0))).sum())
    assert losses.channel_wise_divergence(s, t, tau).item() == pytest.approx(tau**2 * total / (b * c), rel=1e-5)
    # masked: the softmax runs over the labelled positions only
    mask = y != IGN
    total = 0.0
    for n in range(b):
        keep = mask[n].flatten()
        for ch in range(c):
            p_t = F.softmax(t[n, ch].flatten()[keep] / tau, 0)
            total += float((p_t * (p_t.log() - F.log_softmax(s[n, ch].flatten()[keep] / tau, 0))).sum())
    got = losses.channel_wise_divergence(s, t, tau, mask)
    assert got.item() == pytest.approx(tau**2 * total / (b * c), rel=1e-5)
    s2 = s.clone()
    s2[0, :, 0, :3] = 30.0
    assert losses.channel_wise_divergence(s2, t, tau, mask).item() == pytest.approx(got.item(), rel=1e-6)


def test_cwd_method_on_dense_logits() -> None:
    s, t, y = _data(6)
    cfg = METHODS.get("cwd").Config(feature_weight=0.0, tau=1.0, cwd_weight=3.0)
    method = build_method(cfg, BuildContext(4))
    out = method.loss(_io(s, t, y))
    want = 3.0 * losses.channel_wise_divergence(s, t, 1.0, y != IGN)
    assert out.terms["cwd"].item() == pytest.approx(want.item(), rel=1e-6)
    assert out.terms["ce"].item() == pytest.approx(losses.cross_entropy(s, y).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "kd", "dist"])
def test_aux_weight_adds_the_terms_on_the_auxiliary_heads(name: str) -> None:
    s, t, y = _data(7)
    s_aux, t_aux, _ = _data(8)
    plain = build_method(METHODS.get(name).Config(), BuildContext(4))
    cfg = METHODS.get(name).Config(aux_weight=0.4)
    method = build_method(cfg, BuildContext(4))
    assert "aux" in method.needs().student_taps
    assert ("aux" in method.needs().teacher_taps) == (name != "ce")
    out = method.loss(_io(s, t, y, {"aux": s_aux}, {"aux": t_aux}))
    main = plain.loss(_io(s, t, y))
    aux = plain.loss(_io(s_aux, t_aux, y))
    for term, value in main.terms.items():
        assert torch.equal(out.terms[term], value)
        assert out.terms[f"{term}.aux"].item() == pytest.approx(0.4 * aux.terms[term].item(), rel=1e-6)


def test_tekap_over_dense_dist_with_no_noise_is_dense_dist() -> None:
    s, t, y = _data(9)
    inner = METHODS.get("dist").Config(tau=1.0)
    tekap = build_method(METHODS.get("tekap").Config(inner=inner, view_weight=0.0), BuildContext(4))
    assert tekap.dense_outputs
    plain = build_method(inner, BuildContext(4))
    a, b = tekap.loss(_io(s, t, y)), plain.loss(_io(s, t, y))
    assert all(torch.equal(a.terms[k], b.terms[k]) for k in b.terms)


DENSE_METHODS = {"ce", "kd", "dist", "cwd", "at", "fitnet"}


@pytest.mark.parametrize("name", METHODS.names())
def test_methods_without_dense_support_refuse_a_segmentation_pair(name: str) -> None:
    """Generated from the registry: a method declares ``dense_outputs``; any other is refused on dense logits
    ``(K, h, w)`` with a message naming it, the model and the methods that work."""
    cls = METHODS.get(name)
    assert cls.dense_outputs == (name in DENSE_METHODS), name
    fake = type("M", (), {"dense_outputs": cls.dense_outputs})()
    check_output_kind(fake, (19, 64, 128)[:1], name, "resnet8")  # classification logits: never refused
    if cls.dense_outputs:
        check_output_kind(fake, (19, 64, 128), name, "deeplabv3_r18")
        return
    with pytest.raises(DenseOutputError) as err:
        check_output_kind(fake, (19, 64, 128), name, "deeplabv3_r18")
    msg = str(err.value)
    assert repr(name) in msg and "'deeplabv3_r18'" in msg and "dist" in msg and "cwd" in msg
