"""Detection distillation (issue 20) on small hand-made tensors: the losses against the formulas written out here
(DIST on sigmoid scores per anchor and on softmax scores per RoI, KD on sigmoid scores, the mimic MSE and its box
mask), the layout of per-anchor rows against the reference's per-level map, and the methods on fake detection
outputs shaped as the detection contract says (kdlab/models/detection), with their build-time refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab import losses
from kdlab.losses.detection import anchor_rows, box_mask, detection_dist, mimic_mse, sigmoid_kd
from kdlab.methods import METHODS, build_method
from kdlab.methods._detection import (
    DetectionOutputError,
    accepts_detection,
    check_detection_pair,
    detection_kind,
)
from kdlab.methods.base import BuildContext
from kdlab.types import Batch, Outputs, StepIO, TapInfo


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (z - mb) for x, z in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((z - mb) ** 2 for z in b))
    return num / (den + 1e-8)


def _dist_formula(ps: list[list[float]], pt: list[list[float]], beta: float = 1.0, gamma: float = 1.0) -> float:
    """DIST on probability rows, written out: inter over rows, intra over columns."""
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ps, pt)) / len(ps)
    cols = len(ps[0])
    intra = 1 - sum(_pearson([r[c] for r in ps], [r[c] for r in pt]) for c in range(cols)) / cols
    return beta * inter + gamma * intra


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------------------- losses


def test_dist_on_sigmoid_scores_matches_the_formula():
    """use_sigmoid (hunto/MasKD DIST for RetinaNet): every entry through a sigmoid, Pearson over each row (inter) and
    each column (intra), beta * inter + gamma * intra, no temperature."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    ps = [[_sig(v) for v in row] for row in s.tolist()]
    pt = [[_sig(v) for v in row] for row in t.tolist()]
    want = _dist_formula(ps, pt, 0.7, 1.3)
    got = detection_dist(s, t, beta=0.7, gamma=1.3, use_sigmoid=True)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # the sigmoid form is not the softmax form
    assert float(detection_dist(s, t, 0.7, 1.3)) != pytest.approx(want, rel=1e-3)


def test_dist_on_softmax_rows_matches_the_formula_and_the_classification_dist():
    """Faster R-CNN: softmax over the K + 1 RoI classes; at tau 2 the factor tau^2 as mmrazor's DISTLoss; equal to
    kdlab's classification DIST on the same rows."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    ps = [F.softmax(torch.tensor(r) / 2, 0).tolist() for r in s.tolist()]
    pt = [F.softmax(torch.tensor(r) / 2, 0).tolist() for r in t.tolist()]
    got = detection_dist(s, t, tau=2.0)
    assert float(got) == pytest.approx(4 * _dist_formula(ps, pt), rel=1e-5)
    assert torch.allclose(got, losses.dist(s, t, tau=2.0), atol=1e-7)


def test_dist_with_stacked_teachers_is_one_value_per_teacher():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    both = detection_dist(s, t, use_sigmoid=True)
    assert both.shape == (2,)
    for m in range(2):
        assert torch.allclose(both[m], detection_dist(s, t[m], use_sigmoid=True))
    with pytest.raises(ValueError, match="student rows must be"):
        detection_dist(s, t[:, :4], use_sigmoid=True)


def test_anchor_rows_hold_a_position_per_row_as_the_reference_level_map():
    """torchvision's per-anchor order (level, position, anchor, class) regrouped per level equals mmdetection's
    ``retina_cls`` map ``[B, a*K, h, w]`` read as ``transpose(1, 3).reshape(-1, a*K)`` (the DIST authors' rows), up to
    the order of the rows, which DIST does not see."""
    g = torch.Generator().manual_seed(3)
    b, a, k = 2, 3, 4
    sizes = [(4, 6), (2, 3), (1, 2)]
    maps_s = [torch.randn(b, a * k, h, w, generator=g) for h, w in sizes]  # the reference's per-level maps
    maps_t = [torch.randn(b, a * k, h, w, generator=g) for h, w in sizes]

    def torchvision_order(maps):  # RetinaNet head: view(B, a, K, h, w) -> permute(0, 3, 4, 1, 2) -> [B, h*w*a, K]
        return torch.cat([m.view(b, a, k, *m.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(b, -1, k) for m in maps], 1)

    cls_s, cls_t = torchvision_order(maps_s), torchvision_order(maps_t)
    rows_s, rows_t = anchor_rows(cls_s, sizes), anchor_rows(cls_t, sizes)
    assert [tuple(r.shape) for r in rows_s] == [(b * h * w, a * k) for h, w in sizes]
    for level, (ms, mt) in enumerate(zip(maps_s, maps_t)):
        ref_s = ms.transpose(1, 3).reshape(-1, a * k)
        ref_t = mt.transpose(1, 3).reshape(-1, a * k)
        want = detection_dist(ref_s, ref_t, use_sigmoid=True)
        got = detection_dist(rows_s[level], rows_t[level], use_sigmoid=True)
        assert torch.allclose(got, want, atol=1e-6)
        # same multiset of rows, the same columns
        assert torch.equal(rows_s[level][0], ms[0, :, 0, 0])
    stacked = anchor_rows(torch.stack([cls_t, cls_s]), sizes)
    assert torch.equal(stacked[1][0], rows_t[1]) and torch.equal(stacked[1][1], rows_s[1])
    with pytest.raises(ValueError, match="do not split over FPN levels"):
        anchor_rows(cls_s[:, 1:], sizes)


def test_sigmoid_kd_matches_the_bernoulli_kl_formula():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 4, generator=g) * 2, torch.randn(3, 4, generator=g) * 2
    temp = 2.0
    total = 0.0
    for rs, rt in zip(s.tolist(), t.tolist()):
        for zs, zt in zip(rs, rt):
            p, q = _sig(zt / temp), _sig(zs / temp)
            total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    want = temp**2 * total / 3
    assert float(sigmoid_kd(s, t, temp)) == pytest.approx(want, rel=1e-5)
    assert float(sigmoid_kd(s, s, temp)) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(sigmoid_kd(torch.full((1, 2), 80.0), torch.full((1, 2), -80.0)))  # saturated scores


def test_box_mask_keeps_the_cells_whose_centre_lies_in_a_box():
    boxes = torch.tensor([[[0.0, 0.0, 12.0, 4.0], [0.0, 0.0, 0.0, 0.0]], [[20.0, 20.0, 31.0, 31.0], [1, 1, 30, 30]]])
    labels = torch.tensor([[2, -1], [0, -1]])  # padding / crowd rows (-1) never count
    mask = box_mask(boxes, labels, (4, 4), stride=8.0)  # centres at 4, 12, 20, 28
    want0 = torch.zeros(4, 4, dtype=torch.bool)
    want0[0, 0] = want0[0, 1] = True  # x in {4, 12} <= 12, y = 4 <= 4
    want1 = torch.zeros(4, 4, dtype=torch.bool)
    want1[2:, 2:] = True
    assert torch.equal(mask[0], want0) and torch.equal(mask[1], want1)


def test_mimic_mse_is_the_plain_mean_or_the_mean_over_kept_positions():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    assert torch.allclose(mimic_mse(s, t), ((s - t) ** 2).mean())
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[0, 1, 0] = mask[1, 0, 1] = True
    want = (((s[0, :, 1, 0] - t[0, :, 1, 0]) ** 2).sum() + ((s[1, :, 0, 1] - t[1, :, 0, 1]) ** 2).sum()) / (2 * 3)
    assert torch.allclose(mimic_mse(s, t, mask), want)
    assert float(mimic_mse(s, t, torch.zeros_like(mask))) == 0.0
    with pytest.raises(ValueError, match="differ"):
        mimic_mse(s, t[:, :2])


# ---------------------------------------------------------------------------------------------------------- methods
# Fake detectors shaped as the contract says: training-mode student outputs (logits = class outputs, "loss.*" taps),
# eval-mode teacher outputs (logits = detections [B, D, 6], raw outputs only as taps).

B, K, A_LOC, C = 2, 3, 2, 4
LEVELS = [(4, 4), (2, 2)]
A = A_LOC * sum(h * w for h, w in LEVELS)


def _fpn_info(width: int = C) -> dict:
    return {f"fpn.{i}": TapInfo(f"fpn.{i}", width, 8 * 2**i) for i in range(len(LEVELS))}


def _one_stage_ctx(teacher_width: int = C, teacher_cls: bool = True) -> BuildContext:
    s_shapes = {"logits": (A, K), "cls": (A, K), **{f"fpn.{i}": (C, h, w) for i, (h, w) in enumerate(LEVELS)}}
    t_shapes = {"logits": (100, 6), **{f"fpn.{i}": (teacher_width, h, w) for i, (h, w) in enumerate(LEVELS)}}
    t_taps = dict(_fpn_info(teacher_width))
    if teacher_cls:
        t_shapes["cls"] = (A, K)
        t_taps["cls"] = TapInfo("cls", K, 1)
    return BuildContext(
        K,
        student_taps={**_fpn_info(), "cls": TapInfo("cls", K, 1)},
        teacher_taps=[t_taps],
        student_shapes=s_shapes,
        teacher_shapes=[t_shapes],
    )


def _batch() -> Batch:
    x = {
        "images": torch.zeros(B, 3, 32, 32),
        "image_sizes": torch.tensor([[32, 32], [30, 28]]),
        "boxes": torch.tensor([[[0.0, 0.0, 16.0, 16.0]], [[8.0, 8.0, 31.0, 31.0]]]),
        "labels": torch.tensor([[1], [0]]),
    }
    return Batch(x=x, y=torch.zeros(B, 1, 7), index=torch.arange(B))


def _one_stage_io(seed: int = 0, teacher_width: int = C) -> StepIO:
    g = torch.Generator().manual_seed(seed)
    s_cls = torch.randn(B, A, K, generator=g, requires_grad=True)
    t_cls = torch.randn(B, A, K, generator=g)
    s_fpn = {f"fpn.{i}": torch.randn(B, C, h, w, generator=g, requires_grad=True) for i, (h, w) in enumerate(LEVELS)}
    t_fpn = {f"fpn.{i}": torch.randn(B, teacher_width, h, w, generator=g) for i, (h, w) in enumerate(LEVELS)}
    s_losses = {"loss.classification": torch.tensor(1.25), "loss.bbox_regression": torch.tensor(0.5)}
    student = Outputs(s_cls, {**s_fpn, "cls": s_cls, **s_losses})
    teacher = Outputs(torch.zeros(B, 100, 6), {**t_fpn, "cls": t_cls})
    return StepIO({"x": student}, ({"x": teacher},), _batch())


def _task(io: StepIO) -> float:
    return float(sum(v for k, v in io.s.taps.items() if k.startswith("loss.")))


def test_detection_kind_from_the_taps():
    assert detection_kind({"cls": 1, "fpn.0": 1}) == "one_stage"
    assert detection_kind({"roi_logits": 1, "rois": 1}) == "two_stage"
    assert detection_kind({"stage1": 1, "pool": 1}) is None


def test_dist_on_a_one_stage_pair_sums_the_levels_sigmoid_dist():
    cfg = METHODS.get("dist").Config(tau=1.0, dist_weight=1.0, ce_weight=1.0)
    method = build_method(cfg, _one_stage_ctx())
    needs = method.needs()
    assert needs.teacher_taps == {"cls"} and needs.student_taps == {"fpn.0", "fpn.1"}
    io = _one_stage_io()
    out = method.loss(io)
    s_rows = anchor_rows(io.s.taps["cls"], LEVELS)
    t_rows = anchor_rows(io.t.taps["cls"], LEVELS)
    want = 0.0
    for rs, rt in zip(s_rows, t_rows):
        ps = [[_sig(v) for v in r] for r in rs.tolist()]
        pt = [[_sig(v) for v in r] for r in rt.tolist()]
        want += _dist_formula(ps, pt)
    assert float(out.terms["dist"].detach()) == pytest.approx(want, rel=1e-5)
    assert float(out.terms["ce"]) == pytest.approx(_task(io))  # the detector's own losses
    out.terms["dist"].backward()
    assert io.s.logits.grad is not None


def test_kd_on_a_one_stage_pair_is_the_per_anchor_sigmoid_kd():
    cfg = METHODS.get("kd").Config(temperature=2.0, kd_weight=1.5, ce_weight=1.0)
    method = build_method(cfg, _one_stage_ctx())
    io = _one_stage_io(1)
    out = method.loss(io)
    want = sigmoid_kd(io.s.taps["cls"].reshape(-1, K), io.t.taps["cls"].reshape(-1, K), 2.0)
    assert float(out.terms["kd"].detach()) == pytest.approx(1.5 * float(want.detach()), rel=1e-6)
    assert float(out.terms["ce"]) == pytest.approx(_task(io))


def test_cwd_on_a_detection_pair_has_one_term_per_fpn_level():
    cfg = METHODS.get("cwd").Config(tau=1.0, feature_weight=10.0)
    method = build_method(cfg, _one_stage_ctx())
    assert method.needs().student_taps == {"fpn.0", "fpn.1"} and not list(method.adapters)
    io = _one_stage_io(2)
    out = method.loss(io)
    assert set(out.terms) == {"ce", "cwd.fpn.0", "cwd.fpn.1"}
    for i in range(2):
        want = 10 * losses.channel_wise_divergence(io.s.taps[f"fpn.{i}"], io.t.taps[f"fpn.{i}"], 1.0)
        assert torch.allclose(out.terms[f"cwd.fpn.{i}"], want)
    with pytest.raises(DetectionOutputError, match=r"method\.student_tap to fpn"):
        build_method(METHODS.get("cwd").Config(student_tap="stage4"), _one_stage_ctx())


def test_mimic_adapts_every_level_and_masks_to_the_boxes():
    ctx = _one_stage_ctx(teacher_width=6)
    method = build_method(METHODS.get("mimic").Config(), ctx)
    assert sorted(method.adapters) == ["level0", "level1"]
    assert isinstance(method.adapters["level0"], nn.Conv2d) and method.adapters["level0"].out_channels == 6
    io = _one_stage_io(3, teacher_width=6)
    out = method.loss(io)
    want = sum(F.mse_loss(method.adapters[f"level{i}"](io.s.taps[f"fpn.{i}"]), io.t.taps[f"fpn.{i}"]) for i in range(2))
    assert torch.allclose(out.terms["mimic"], want)
    assert float(out.terms["ce"]) == pytest.approx(_task(io))

    masked = build_method(METHODS.get("mimic").Config(mask="boxes"), ctx)
    masked.load_state_dict(method.state_dict())
    out = masked.loss(io)
    want = 0.0
    for i, (h, _) in enumerate(LEVELS):
        mask = box_mask(io.batch.x["boxes"], io.batch.x["labels"], LEVELS[i], 32 / h)
        want = want + mimic_mse(method.adapters[f"level{i}"](io.s.taps[f"fpn.{i}"]), io.t.taps[f"fpn.{i}"], mask)
    assert torch.allclose(out.terms["mimic"], want)
    with pytest.raises(Exception, match="widths differ"):
        build_method(METHODS.get("mimic").Config(adapter=False), ctx)


def test_dist_plus_mimic_through_sum_keeps_the_task_term_once():
    cfgs = [METHODS.get("dist").Config(tau=1.0, dist_weight=1.0), METHODS.get("mimic").Config()]
    method = build_method(METHODS.get("sum").Config(terms=cfgs), _one_stage_ctx())
    io = _one_stage_io(4)
    out = method.loss(io)
    assert set(out.terms) == {"ce", "dist.dist", "mimic.mimic"}
    assert float(out.terms["ce"]) == pytest.approx(_task(io))
    assert method.needs().teacher_taps == {"cls", "fpn.0", "fpn.1"}


class _TwoStageTeacher(nn.Module):
    """A stand-in for a two-stage teacher's RoI head: logits from the RoI boxes and the mean of each FPN level."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def roi_class_logits(self, fpn_features, rois, image_sizes):
        self.calls.append((sorted(fpn_features), rois.shape, image_sizes.shape))
        level = sum(f.mean() for f in fpn_features.values())
        return torch.stack([rois[:, 1:].sum(1) * 0.01 * c + level for c in range(K + 1)], dim=1)


def _two_stage(teacher_model: nn.Module | None = None):
    r = 6
    shapes = {"logits": (K + 1,), "roi_logits": (K + 1,), "rois": (5,), "fpn.0": (C, 4, 4), "fpn.1": (C, 2, 2)}
    t_shapes = {"logits": (100, 6), "fpn.0": (C, 4, 4), "fpn.1": (C, 2, 2)}
    ctx = BuildContext(
        K,
        student_taps={**_fpn_info(), "rois": TapInfo("rois", 5, 1), "roi_logits": TapInfo("roi_logits", K + 1, 1)},
        teacher_taps=[_fpn_info()],
        student_shapes=shapes,
        teacher_shapes=[t_shapes],
    )
    ctx.teacher_models = [teacher_model] if teacher_model is not None else [nn.Identity()]
    g = torch.Generator().manual_seed(7)
    rois = torch.cat([torch.tensor([[0.0]] * 3 + [[1.0]] * 3), torch.rand(r, 4, generator=g) * 30], dim=1)
    s_logits = torch.randn(r, K + 1, generator=g, requires_grad=True)
    s_taps = {"rois": rois, "roi_logits": s_logits, "loss.classifier": torch.tensor(0.75)}
    t_taps = {"fpn.0": torch.randn(B, C, 4, 4, generator=g), "fpn.1": torch.randn(B, C, 2, 2, generator=g)}
    io = StepIO({"x": Outputs(s_logits, s_taps)}, ({"x": Outputs(torch.zeros(B, 100, 6), t_taps)},), _batch())
    return ctx, io


def test_dist_on_a_two_stage_pair_reads_the_teachers_roi_head_on_the_students_proposals():
    teacher = _TwoStageTeacher()
    ctx, io = _two_stage(teacher)
    method = build_method(METHODS.get("dist").Config(tau=1.0, dist_weight=1.0, ce_weight=1.0), ctx)
    assert method.needs().student_taps == {"rois"} and method.needs().teacher_taps == {"fpn.0", "fpn.1"}
    out = method.loss(io)
    assert teacher.calls == [(["fpn.0", "fpn.1"], (6, 5), (2, 2))]
    t_logits = teacher.roi_class_logits(dict(io.t.taps), io.s.taps["rois"], io.batch.x["image_sizes"])
    ps = [F.softmax(torch.tensor(r), 0).tolist() for r in io.s.logits.tolist()]
    pt = [F.softmax(torch.tensor(r), 0).tolist() for r in t_logits.tolist()]
    assert float(out.terms["dist"].detach()) == pytest.approx(_dist_formula(ps, pt), rel=1e-5)
    kd = build_method(METHODS.get("kd").Config(temperature=1.0, kd_weight=1.0, ce_weight=1.0), ctx).loss(io)
    assert torch.allclose(kd.terms["kd"], losses.kd(io.s.logits, t_logits, 1.0))


# ---------------------------------------------------------------------------------------------------------- refusals


DETECTION_METHODS = {"ce", "kd", "dist", "cwd", "mimic", "sum"}  # sum: its default terms ([kd]) all accept


@pytest.mark.parametrize("name", METHODS.names())
def test_methods_without_detection_support_are_refused_on_a_detector(name):
    """Generated from the registry: a method declares ``detection_outputs``; any other is refused on a detection
    student before it is built, with a message naming it, the model and the methods that work."""
    cfg = METHODS.get(name).Config()
    taps = {"cls": None, "fpn.0": None}
    check_detection_pair(cfg, {"stage1": None}, "resnet8")  # not a detector: never refused
    assert accepts_detection(cfg) == (name in DETECTION_METHODS), name
    if accepts_detection(cfg):
        check_detection_pair(cfg, taps, "retinanet_tiny")
        return
    with pytest.raises(DetectionOutputError) as err:
        check_detection_pair(cfg, taps, "retinanet_tiny")
    msg = str(err.value)
    assert repr(name) in msg and "'retinanet_tiny'" in msg and "dist" in msg and "mimic" in msg


def test_sum_accepts_detection_when_every_term_does():
    ok = METHODS.get("sum").Config(terms=[METHODS.get("dist").Config(), METHODS.get("mimic").Config()])
    bad = METHODS.get("sum").Config(terms=[METHODS.get("dist").Config(), METHODS.get("at").Config()])
    assert accepts_detection(ok) and not accepts_detection(bad)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("dist", "gather_logits", True),
        ("dist", "aux_weight", 0.4),
        ("kd", "standardize", True),
        ("kd", "label_smoothing", 0.1),
        ("cwd", "aux_weight", 0.4),
        ("mimic", "label_smoothing", 0.1),
    ],
)
def test_settings_that_do_not_apply_to_detection_are_refused_naming_the_field(name, field, value):
    cfg = METHODS.get(name).Config(**{field: value})
    with pytest.raises(DetectionOutputError, match=rf"method\.{field} does not apply to object-detection"):
        build_method(cfg, _one_stage_ctx())


def test_class_score_methods_need_a_teacher_of_the_students_kind():
    with pytest.raises(DetectionOutputError, match="one-stage teacher with a 'cls' tap"):
        build_method(METHODS.get("dist").Config(), _one_stage_ctx(teacher_cls=False))
    build_method(METHODS.get("mimic").Config(), _one_stage_ctx(teacher_cls=False))  # FPN only: any detector
    ctx, _ = _two_stage(None)  # a teacher without roi_class_logits
    with pytest.raises(DetectionOutputError, match="roi_class_logits"):
        build_method(METHODS.get("kd").Config(), ctx)
    other = _one_stage_ctx()
    other.teacher_shapes[0]["cls"] = (A + 2, K)
    with pytest.raises(DetectionOutputError, match="same anchors"):
        build_method(METHODS.get("dist").Config(), other)


def test_mimic_mask_needs_a_detector():
    from kdlab.methods._feature import PairError

    shapes = {"logits": (K,), "stage1": (C, 4, 4), "stage2": (C, 2, 2)}
    ctx = BuildContext(K, student_shapes=shapes, teacher_shapes=[shapes])
    build_method(METHODS.get("mimic").Config(), ctx)
    with pytest.raises(PairError, match="mask: boxes needs ground-truth boxes"):
        build_method(METHODS.get("mimic").Config(mask="boxes"), ctx)
