"""Feature-level methods (fitnet, at, nst, sp, cc, rkd, pkt, kdsvd; ft's parts): adapter parameter counts of the
references for the real zoo models (built on the meta device), cross-architecture pairs that build or fail clearly,
the method terms against the functional API, and FT's init-stage pieces."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab import losses, models
from kdlab.errors import USER_ERRORS
from kdlab.methods import METHODS, build_method
from kdlab.methods._feature import PairError
from kdlab.methods.fitnet import ConvReg
from kdlab.methods.ft import FT, Paraphraser, Translator
from kdlab.train.build import build_context
from kdlab.types import Batch, Outputs, StepIO

FEATURE = ["fitnet", "at", "nst", "sp", "cc", "rkd", "pkt", "kdsvd"]
META = torch.device("meta")


def _ctx(student: str, *teachers: str, size=(3, 32, 32), k: int = 100):
    """The build context of zoo models created on the meta device (shapes only, no compute)."""
    with META:
        s = models.create(student, num_classes=k, in_channels=size[0])
        ts = [models.create(t, num_classes=k, in_channels=size[0]) for t in teachers]
    return build_context(s, ts, k, size, META)


def _method(name: str, ctx, **fields):
    cfg = METHODS.get(name).Config(**fields)
    return build_method(cfg, ctx)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _random_io(method, ctx, b: int = 4, seed: int = 0) -> StepIO:
    """Random outputs with the shapes of the context's taps (what the trainer would hand over)."""
    g = torch.Generator().manual_seed(seed)
    needs = method.needs()
    k = ctx.student_shapes["logits"][0]

    def outputs(shapes, taps, grad):
        feats = {t: torch.randn(b, *shapes[t], generator=g).relu().requires_grad_(grad) for t in taps}
        return {"x": Outputs(torch.randn(b, k, generator=g).requires_grad_(grad), feats)}

    batch = Batch(torch.zeros(b, 3, 2, 2), torch.randint(0, k, (b,), generator=g), torch.arange(b))
    return StepIO(
        outputs(ctx.student_shapes, needs.student_taps, True),
        (outputs(ctx.teacher_shapes[0], needs.teacher_taps, False),),
        batch,
    )


# ------------------------------------------------------------------------------------------ parameter counts


@pytest.fixture(scope="module")
def res32x4_res8x4():
    return _ctx("resnet8x4", "resnet32x4")


def test_adapter_parameter_counts_resnet32x4_to_resnet8x4(res32x4_res8x4):
    ctx = res32x4_res8x4
    counts = {name: _params(_method(name, ctx).adapters) for name in FEATURE}
    # methods.md, "Extra parameter counts": FitNet ConvReg 16,768; CC: two LinearEmbed(256 -> 128)
    assert counts == {"fitnet": 16_768, "at": 0, "nst": 0, "sp": 0, "cc": 2 * (256 * 128 + 128), "rkd": 0, "pkt": 0,
                      "kdsvd": 0}  # fmt: skip
    assert counts["cc"] == 65_792
    fitnet = _method("fitnet", ctx)
    conv = fitnet.adapters["regressor"].conv
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None
    assert fitnet.needs().student_taps == {"stage2"} and fitnet.needs().teacher_taps == {"stage2"}


def test_ft_translator_and_paraphraser_counts(res32x4_res8x4):
    ft = FT(FT.Config(), res32x4_res8x4)
    assert ft.needs().student_taps == {"stage3"} and ft.needs().teacher_taps == {"stage3"}

    def conv(c_in, c_out):
        return c_in * c_out * 9 + c_out

    enc = conv(256, 256) + conv(256, 128) + conv(128, 128)
    assert _params(ft.adapters["paraphraser"]) == enc + conv(128, 128) + conv(128, 256) + conv(256, 256)
    assert _params(ft.adapters["translator"]) == enc + 2 * (256 + 128 + 128)  # + BN after each conv
    assert _params(ft.adapters["paraphraser"]) == 2_065_536 and _params(ft.adapters["translator"]) == 1_033_728


def test_taps_default_to_the_crd_benchmark_maps(res32x4_res8x4):
    ctx = res32x4_res8x4
    stages = {"stage1", "stage2", "stage3"}
    for name, taps in {"at": stages, "nst": stages, "kdsvd": stages, "sp": {"stage3"}, "cc": {"pool"},
                       "rkd": {"pool"}, "pkt": {"pool"}}.items():  # fmt: skip
        needs = _method(name, ctx).needs()
        assert needs.student_taps == taps and needs.teacher_taps == taps, name


def test_default_weights_are_the_references():
    weights = {
        "fitnet": ("hint_weight", 100.0),
        "at": ("at_weight", 1000.0),
        "nst": ("nst_weight", 50.0),
        "sp": ("sp_weight", 3000.0),
        "cc": ("cc_weight", 0.02),
        "rkd": ("rkd_weight", 1.0),
        "pkt": ("pkt_weight", 30000.0),
        "kdsvd": ("kdsvd_weight", 1.0),
    }
    for name, (field, value) in weights.items():
        cfg = METHODS.get(name).Config()
        assert getattr(cfg, field) == value and cfg.ce_weight == 1.0 and cfg.label_smoothing == 0.0, name
    rkd = METHODS.get("rkd").Config()
    assert (rkd.distance_weight, rkd.angle_weight) == (25.0, 50.0)
    assert METHODS.get("cc").Config().embed_dim == 128 and METHODS.get("kdsvd").Config().k == 1
    assert FT.Config().ft_weight == 200.0


# ------------------------------------------------------------------------------------------ cross-architecture


@pytest.mark.parametrize(("teacher", "student"), [("resnet32x4", "shufflenetv1"), ("vgg13", "mobilenetv2")])
@pytest.mark.parametrize("name", [m for m in FEATURE if m != "kdsvd"])
def test_cross_architecture_pairs_build_and_give_finite_terms(teacher, student, name):
    ctx = _ctx(student, teacher)
    method = _method(name, ctx)
    io = _random_io(method, ctx)
    out = method.loss(io)
    assert set(out.terms) == {"ce", {"fitnet": "hint"}.get(name, name)}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.terms.values())
    out.total.backward()
    assert all(p.grad is not None for p in method.adapters.parameters())
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in io.s.taps.values())


def test_fitnet_regressor_for_cross_architecture_pairs():
    # resnet32x4 stage2 [128, 16, 16] <- shufflenetv1 stage2 [480, 8, 8]: the transposed conv
    conv = _method("fitnet", _ctx("shufflenetv1", "resnet32x4")).adapters["regressor"].conv
    assert isinstance(conv, nn.ConvTranspose2d) and (conv.in_channels, conv.out_channels) == (480, 128)
    assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
    # vgg13 stage2 [256, 8, 8] <- mobilenetv2 stage2 [16, 8, 8]: 1x1
    conv = _method("fitnet", _ctx("mobilenetv2", "vgg13")).adapters["regressor"].conv
    assert (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and (conv.in_channels, conv.out_channels)
        == (
            16,
            256,
        )
    )


def test_kdsvd_cross_architecture_fails_clearly_and_suggests_the_other_layout_when_it_fits():
    with pytest.raises(PairError, match=r"kdsvd.*equal channel counts.*student: stage1 \[240, 16, 16\]"):
        _method("kdsvd", _ctx("shufflenetv1", "resnet32x4"))
    ctx = _ctx("wrn_40_1", "wrn_40_2")  # channels 16/32/64 vs 32/64/128, equal widths
    with pytest.raises(PairError, match=r"method\.layout=width would fit"):
        _method("kdsvd", ctx)
    method = _method("kdsvd", ctx, layout="width")
    assert torch.isfinite(method.loss(_random_io(method, ctx, b=2)).total)


def test_at_with_different_stage_counts_fails_at_build_naming_the_taps():
    ctx = _ctx("resnet8x4", "vgg13")
    with pytest.raises(PairError, match=r"method 'at'.*student gives 3 \(stage1.*teacher 4 \(stage1.*stage4"):
        _method("at", ctx)
    method = _method(
        "at", ctx, student_taps=["stage1", "stage2", "stage3"], teacher_taps=["stage1", "stage2", "stage4"]
    )
    assert method.needs().teacher_taps == {"stage1", "stage2", "stage4"}
    assert torch.isfinite(method.loss(_random_io(method, ctx)).total)


def test_unsupported_fitnet_sizes_and_unknown_taps_fail_at_build():
    ctx = _ctx("mobilenetv2", "resnet32x4")  # mobilenetv2 stage3 is 4x4, resnet32x4 stage1 32x32
    with pytest.raises(PairError, match=r"fitnet.*4x4 student map to a 32x32.*student: stage3 \[48, 4, 4\]"):
        _method("fitnet", ctx, student_tap="stage3", teacher_tap="stage1")
    with pytest.raises(PairError, match="the student cannot provide tap 'stage9'"):
        _method("sp", ctx, student_tap="stage9")
    assert issubclass(PairError, USER_ERRORS)  # the CLI exits with code 2 and the message; the demo lists it


def test_methods_need_exactly_one_teacher():
    with pytest.raises(PairError, match=r"exactly one teacher; model\.teachers has none"):
        _method("at", _ctx("convnet_xs", size=(3, 8, 8)))
    with pytest.raises(PairError, match="has 2"):
        _method("pkt", _ctx("convnet_xs", "convnet_s", "convnet_m", size=(3, 8, 8)))


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "kind", "kernel", "stride"),
    [
        ((8, 4, 4), (6, 4, 4), nn.Conv2d, (1, 1), (1, 1)),
        ((8, 8, 8), (6, 4, 4), nn.Conv2d, (3, 3), (2, 2)),
        ((8, 4, 4), (6, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),
        ((8, 7, 7), (6, 4, 4), nn.Conv2d, (4, 4), (1, 1)),
    ],
)
def test_convreg_layers_follow_the_reference(s_shape, t_shape, kind, kernel, stride):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is kind and reg.conv.kernel_size == kernel and reg.conv.stride == stride
    assert isinstance(reg.bn, nn.BatchNorm2d) and isinstance(reg.relu, nn.ReLU)
    out = reg(torch.randn(2, *s_shape))
    assert out.shape == (2, *t_shape) and (out >= 0).all()
    assert isinstance(ConvReg(s_shape, t_shape, relu=False).relu, nn.Identity)


def test_convreg_rejects_a_student_smaller_than_half_the_teacher():
    with pytest.raises(ValueError, match="cannot map a 2x2 student map to a 8x8"):
        ConvReg((4, 2, 2), (4, 8, 8))


# ------------------------------------------------------------------------------------------ terms


@pytest.fixture(scope="module")
def tiny_ctx():
    return _ctx("convnet_xs", "convnet_s", size=(3, 8, 8), k=4)


def _expected(name, method, io):
    s, t = io.s.taps, io.t.taps
    cfg = method.cfg
    if name == "fitnet":
        return cfg.hint_weight * losses.hint(method.adapters["regressor"](s["stage2"]), t["stage2"])
    if name in ("at", "nst"):
        fn = losses.at if name == "at" else losses.nst
        return getattr(cfg, f"{name}_weight") * fn([s["stage1"], s["stage2"]], [t["stage1"], t["stage2"]])
    if name == "sp":
        return cfg.sp_weight * losses.sp(s["stage2"], t["stage2"])
    if name == "cc":
        return cfg.cc_weight * losses.cc(
            method.adapters["embed_student"](s["pool"]), method.adapters["embed_teacher"](t["pool"])
        )
    if name == "rkd":
        return cfg.rkd_weight * losses.rkd(s["pool"], t["pool"])
    return cfg.pkt_weight * losses.pkt(s["pool"], t["pool"])


@pytest.mark.parametrize("name", [m for m in FEATURE if m != "kdsvd"])
def test_terms_are_the_functional_api_times_the_weights(tiny_ctx, name):
    method = _method(name, tiny_ctx, ce_weight=0.5, label_smoothing=0.1)
    io = _random_io(method, tiny_ctx, seed=1)
    out = method.loss(io)
    term = {"fitnet": "hint"}.get(name, name)
    assert out.terms["ce"].item() == pytest.approx(0.5 * losses.cross_entropy(io.s.logits, io.y, 0.1).item())
    assert out.terms[term].item() == pytest.approx(_expected(name, method, io).item(), rel=1e-6)


def test_kdsvd_term_and_its_test_pair():
    ctx = _ctx("convnet_s", "convnet_s", size=(3, 8, 8), k=4)
    method = _method("kdsvd", ctx, kdsvd_weight=2.0)
    io = _random_io(method, ctx)
    s, t = io.s.taps, io.t.taps
    expected = 2.0 * losses.kdsvd([s["stage1"], s["stage2"]], [t["stage1"], t["stage2"]])
    assert method.loss(io).terms["kdsvd"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert METHODS.meta("kdsvd")["test_student"] == "convnet_s"  # the contract tests' student for kdsvd


def test_tekap_perturbs_the_taps_a_feature_method_reads(tiny_ctx):
    tekap = METHODS.get("tekap")
    inner = METHODS.get("at").Config()
    plain = tekap(tekap.Config(inner=inner, perturb="features", view_weight=0.0), tiny_ctx)
    io = _random_io(plain.inner, tiny_ctx)
    assert plain.loss(io).terms.keys() == {"ce", "at"}
    assert plain.loss(io).terms["at"].item() == pytest.approx(plain.inner.loss(io).terms["at"].item())
    views = tekap(tekap.Config(inner=inner, perturb="features", num_views=2, noise_std=0.1), tiny_ctx)
    out = views.loss(io)
    assert out.terms.keys() == {"ce", "at", "at.views"} and torch.isfinite(out.terms["at.views"])


# ------------------------------------------------------------------------------------------ FT parts


def test_ft_init_loss_trains_the_paraphraser_and_the_main_loss_does_not(tiny_ctx):
    ft = FT(FT.Config(), tiny_ctx)
    io = _random_io(ft, tiny_ctx)
    init = ft.init_loss(io).terms["reconstruction"]
    init.backward()
    assert all(p.grad is not None for p in ft.adapters["paraphraser"].parameters())
    assert all(p.grad is None for p in ft.adapters["translator"].parameters())
    ft.zero_grad(set_to_none=True)
    out = ft.loss(io)
    assert out.terms.keys() == {"ce", "ft"}
    out.total.backward()
    assert all(p.grad is None for p in ft.adapters["paraphraser"].parameters())
    assert all(p.grad is not None for p in ft.adapters["translator"].parameters())
    t_factor = ft.adapters["paraphraser"].encode(io.t.taps["stage2"])
    s_factor = ft.adapters["translator"](io.s.taps["stage2"])
    assert out.terms["ft"].item() == pytest.approx(200 * losses.factor_transfer(s_factor, t_factor).item(), rel=1e-6)


def test_paraphraser_and_translator_shapes():
    para = Paraphraser((8, 4, 4), rate=0.5)
    factor, rec = para(torch.randn(2, 8, 4, 4))
    assert factor.shape == (2, 4, 4, 4) and rec.shape == (2, 8, 4, 4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in para.modules())
    trans = Translator((6, 8, 8), (8, 4, 4))
    assert trans(torch.randn(2, 6, 8, 8)).shape == (2, 4, 8, 8)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trans.modules()) == 3
    assert math.isclose(losses.factor_transfer(factor, factor).item(), 0.0)
