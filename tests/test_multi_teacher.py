"""Several teachers: mt_kd, dgkd, ca_mkd, TeKAP over them, and teacher-assistant chains (kdlab chain).

Golden values are computed here from the formulas; one teacher reduces each method to its single-teacher form; DGKD's
dropping is reproducible and resumes identically; a chain re-run reuses finished links; real CLI runs.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_cli import TINY, kdlab, kdlab_in_process

from kdlab import losses, models
from kdlab.chain import chain_links, run_chain
from kdlab.config import ConfigError, MethodConfig
from kdlab.losses.logit import confidence_weights, mean_teacher_kd
from kdlab.methods import METHODS, build_method
from kdlab.methods.base import BuildContext
from kdlab.methods.dgkd import kept_guides
from kdlab.methods.tekap import _SEED_TAG as TEKAP_SEED_TAG
from kdlab.seeding import derive_seed
from kdlab.train.build import build_context
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import Batch, Outputs, Progress, StepIO

from conftest import REPO, sigterm_during_step, tiny_config

B, K = 6, 5


def _cfg(name: str, **fields) -> MethodConfig:
    return METHODS.get(name).Config(**fields)


def _logit_io(s: torch.Tensor, teachers: list[torch.Tensor], y: torch.Tensor, step: int = 0) -> StepIO:
    batch = Batch(x=torch.zeros(len(y), 3, 8, 8), y=y, index=torch.arange(len(y)))
    return StepIO({"x": Outputs(s)}, tuple({"x": Outputs(t)} for t in teachers), batch, Progress(step=step))


def _logit_ctx(m: int, seed: int = 0) -> BuildContext:
    return BuildContext(num_classes=K, teacher_shapes=[{"logits": (K,)}] * m, seed=seed)


def _logits(m: int, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, K, generator=g, dtype=torch.float64, requires_grad=True)
    ts = [3 * torch.randn(B, K, generator=g, dtype=torch.float64) for _ in range(m)]
    y = torch.randint(K, (B,), generator=g)
    return s, ts, y


def _kl_golden(p_t: torch.Tensor, s: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_b sum_k p_t (log p_t - log softmax(s/T))``, written out."""
    log_q = s / temperature - torch.logsumexp(s / temperature, dim=1, keepdim=True)
    return (p_t * (p_t.log() - log_q)).sum(dim=1).mean() * temperature**2


# --------------------------------------------------------------------------------------------- losses


def test_mean_teacher_kd_is_kl_against_the_mean_distribution():
    s, ts, _ = _logits(3)
    p_mean = sum(F.softmax(t / 4.0, dim=1) for t in ts) / 3
    got = mean_teacher_kd(s, torch.stack(ts), 4.0)
    assert got.item() == pytest.approx(_kl_golden(p_mean, s, 4.0).item(), rel=1e-10)
    # not the mean of per-teacher KLs (that is kd's several-teacher ensemble)
    assert got.item() < losses.kd(s, torch.stack(ts), 4.0).mean().item()


def test_mean_teacher_kd_of_one_teacher_is_kd_bit_for_bit():
    s, ts, _ = _logits(1)
    assert torch.equal(mean_teacher_kd(s, ts[0], 4.0), losses.kd(s, ts[0], 4.0))
    assert torch.equal(mean_teacher_kd(s, ts[0][None], 4.0, "none"), losses.kd(s, ts[0], 4.0, reduction="none"))


def test_confidence_weights_follow_the_ca_mkd_formula():
    _, ts, y = _logits(3)
    w = confidence_weights(torch.stack(ts), y)
    ce = torch.stack([-(t.log_softmax(dim=1).gather(1, y[:, None]).squeeze(1)) for t in ts])  # [M, B]
    golden = (1 - ce.exp() / ce.exp().sum(dim=0)) / 2
    assert torch.allclose(w, golden, atol=1e-12)
    assert torch.allclose(w.sum(dim=0), torch.ones(B, dtype=w.dtype))
    # the teacher with the lowest CE on a sample gets the largest weight there
    assert torch.equal(w.argmax(dim=0), ce.argmin(dim=0))
    assert torch.equal(confidence_weights(ts[0][None], y), torch.ones(1, B, dtype=ts[0].dtype))


# --------------------------------------------------------------------------------------------- mt_kd


def test_mt_kd_with_one_teacher_is_kd_exactly():
    s, ts, y = _logits(1)
    io = _logit_io(s, ts, y)
    kd = build_method(_cfg("kd"), _logit_ctx(1)).loss(io)
    mt = build_method(_cfg("mt_kd"), _logit_ctx(1)).loss(io)
    assert kd.terms.keys() == mt.terms.keys() and all(torch.equal(kd.terms[k], mt.terms[k]) for k in kd.terms)


def test_mt_kd_with_three_teachers_matches_the_golden_value():
    s, ts, y = _logits(3)
    out = build_method(_cfg("mt_kd", temperature=2.0), _logit_ctx(3)).loss(_logit_io(s, ts, y))
    p_mean = sum(F.softmax(t / 2.0, dim=1) for t in ts) / 3
    assert out.terms["kd"].item() == pytest.approx(0.9 * _kl_golden(p_mean, s, 2.0).item(), rel=1e-10)
    assert out.terms["ce"].item() == pytest.approx(0.1 * F.cross_entropy(s, y).item(), rel=1e-12)


# --------------------------------------------------------------------------------------------- dgkd


def test_dgkd_with_one_teacher_is_kd_exactly():
    s, ts, y = _logits(1)
    for step in range(5):  # nothing is ever dropped from one guide
        io = _logit_io(s, ts, y, step)
        kd = build_method(_cfg("kd"), _logit_ctx(1)).loss(io)
        dg = build_method(_cfg("dgkd", drop_count=1), _logit_ctx(1)).loss(io)
        assert all(torch.equal(kd.terms[k], dg.terms[k]) for k in ("ce", "kd"))


def test_dgkd_sums_the_kept_guides_kd_terms():
    s, ts, y = _logits(3)
    method = build_method(_cfg("dgkd", drop_count=1), _logit_ctx(3, seed=7))
    seen = set()
    for step in range(12):
        out = method.loss(_logit_io(s, ts, y, step))
        keep = kept_guides(3, 7, step, drop_count=1)
        assert int(keep.sum()) == 2
        seen.add(tuple(keep.tolist()))
        golden = sum(_kl_golden(F.softmax(t / 4.0, dim=1), s, 4.0) for t, k in zip(ts, keep) if k)
        assert out.terms["kd"].item() == pytest.approx(0.9 * golden.item(), rel=1e-10)
    assert len(seen) == 3  # every guide gets dropped at some step


def test_dgkd_dropping_is_a_pure_function_of_seed_and_step_and_never_drops_every_guide():
    masks = [kept_guides(3, 0, step, drop_rate=0.9) for step in range(300)]
    assert all(m.any() for m in masks)
    assert all(torch.equal(m, kept_guides(3, 0, step, drop_rate=0.9)) for step, m in enumerate(masks))
    other = [kept_guides(3, 1, step, drop_rate=0.9) for step in range(300)]
    assert any(not torch.equal(a, b) for a, b in zip(masks, other))
    # rate 0.5: each guide is kept about half the time (plus the forced keeps when all three were dropped)
    kept = torch.stack([kept_guides(3, 0, step, drop_rate=0.5) for step in range(2000)]).float().mean(dim=0)
    assert torch.all((kept > 0.45) & (kept < 0.65)), kept
    assert torch.equal(kept_guides(3, 0, 5), torch.ones(3, dtype=torch.bool))  # no dropping configured


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"drop_count": 2, "drop_rate": 0.0}, "would drop every one of the 2 guides"),
        ({"drop_count": 1, "drop_rate": 0.3}, "either drop_count or drop_rate"),
        ({"drop_count": 0, "drop_rate": 1.0}, "drop_rate must be in"),
    ],
)
def test_dgkd_rejects_bad_dropping(fields, message):
    with pytest.raises(ValueError, match=message):
        build_method(_cfg("dgkd", **fields), _logit_ctx(2))


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi_teacher")
    trainer = Trainer(tiny_config(tmp, "model.student=convnet_s", "train.epochs=2"))
    trainer.fit()
    return str(trainer.ckpt_path)


def _two_teachers(tmp_path, teacher_ckpt, method: str, *extra: str):
    return tiny_config(
        tmp_path,
        "model.teachers.1.name=convnet_s",
        f"model.teachers.1.checkpoint={teacher_ckpt}",
        *extra,
        method=method,
        teacher_ckpt=teacher_ckpt,
    )


def test_dgkd_run_is_reproducible_and_resumes_identically(tmp_path, teacher_ckpt):
    def make(name, *extra, resume=False):
        cfg = _two_teachers(tmp_path, teacher_ckpt, "dgkd", "train.epochs=2", f"train.name={name}", *extra)
        return Trainer(cfg, resume=resume)

    full, again = make("full"), make("again")
    full.fit()
    again.fit()
    a, b = full.run.student.state_dict(), again.run.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    part = make("part")
    sigterm_during_step(part, 5)  # mid-epoch 1 (6 steps per epoch)
    with pytest.raises(TrainingInterrupted):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["step"] == 5
    resumed = make("part", resume=True)
    resumed.fit()
    c = resumed.run.student.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    # the dropping matters: without it the same run ends elsewhere
    nodrop = make("nodrop", "method.drop_count=0")
    nodrop.fit()
    d = nodrop.run.student.state_dict()
    assert any(not torch.equal(a[k], d[k]) for k in a)


# --------------------------------------------------------------------------------------------- ca_mkd


def _feature_setup(m: int, seed: int = 0):
    torch.manual_seed(seed)
    student = models.create("convnet_xs", num_classes=4, in_channels=3)
    teachers = [models.create("convnet_s", num_classes=4, in_channels=3).eval() for _ in range(m)]
    ctx = build_context(student, teachers, 4, (3, 8, 8), torch.device("cpu"))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(4, (8,))
    s_logits, s_taps = student.forward_taps(x, ("stage2",))
    outs = []
    with torch.no_grad():
        for t in teachers:
            logits, taps = t.forward_taps(x, ("stage2",))
            outs.append({"x": Outputs(logits, taps)})
    batch = Batch(x=x, y=y, index=torch.arange(8))
    return ctx, teachers, StepIO({"x": Outputs(s_logits, s_taps)}, tuple(outs), batch, Progress(epoch=1))


def test_ca_mkd_with_one_teacher_is_kd_plus_a_hint_through_its_adapter():
    ctx, _, io = _feature_setup(1)
    method = build_method(_cfg("ca_mkd", feature_weight=3.0), ctx)
    out = method.loss(io)
    kd = build_method(_cfg("kd", ce_weight=1.0, kd_weight=1.0), ctx).loss(io)
    assert torch.equal(out.terms["ce"], kd.terms["ce"]) and torch.equal(out.terms["kd"], kd.terms["kd"])
    hint = losses.hint(method.adapters["embed0"](io.s.taps["stage2"]), io.t.taps["stage2"])
    assert out.terms["feature"].item() == pytest.approx(3.0 * hint.item(), rel=1e-5)
    # without the feature term: no adapters, and exactly kd's terms
    plain = build_method(_cfg("ca_mkd", feature_weight=0.0), ctx)
    assert len(plain.adapters) == 0 and set(plain.loss(io).terms) == {"ce", "kd"}


def test_ca_mkd_with_three_teachers_matches_the_golden_terms():
    ctx, teachers, io = _feature_setup(3)
    method = build_method(_cfg("ca_mkd"), ctx)
    out = method.loss(io)
    y, s = io.y, io.s.logits
    t_logits = [t["x"].logits for t in io.teachers]
    ce = torch.stack([F.cross_entropy(t, y, reduction="none") for t in t_logits])
    w = (1 - F.softmax(ce, dim=0)) / 2
    kl = torch.stack(
        [(F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(s / 4, 1))).sum(1) * 16 for t in t_logits]
    )
    assert out.terms["kd"].item() == pytest.approx(((w * kl).sum() / (8 * 3)).item(), rel=1e-5)
    # feature weights: each teacher's classifier reads the adapted student feature
    mse, ce_h = [], []
    for m, teacher in enumerate(teachers):
        h = method.adapters[f"embed{m}"](io.s.taps["stage2"])
        mse.append(((h - io.teachers[m]["x"].taps["stage2"]) ** 2).flatten(1).mean(1))
        ce_h.append(F.cross_entropy(teacher.classifier(h.mean(dim=(2, 3))), y, reduction="none"))
    v = (1 - F.softmax(torch.stack(ce_h), dim=0)) / 2
    golden = 50.0 * (v * torch.stack(mse)).sum() / (8 * 3)
    assert out.terms["feature"].item() == pytest.approx(golden.item(), rel=1e-5)
    assert set(method.logit_free_terms) == {"feature"}


def test_ca_mkd_feature_term_starts_after_the_first_epoch_and_trains_the_adapters():
    ctx, _, io = _feature_setup(2)
    method = build_method(_cfg("ca_mkd"), ctx)
    early = method.loss(io.replace(progress=Progress(epoch=0)))
    assert early.terms["feature"].item() == 0.0
    method.loss(io).total.backward()
    assert all(p.grad is not None for p in method.adapters.parameters())


def test_ca_mkd_names_a_tap_the_teacher_lacks():
    ctx, _, _ = _feature_setup(2)
    with pytest.raises(ValueError, match="cannot provide tap 'stage9'"):
        build_method(_cfg("ca_mkd", teacher_tap="stage9"), ctx)


# ------------------------------------------------------------------------------------- TeKAP on several teachers


def _tekap(inner: MethodConfig, **fields) -> MethodConfig:
    return _cfg("tekap", inner=inner, **fields)


def test_tekap_over_mt_kd_perturbs_every_teacher_with_single_teacher_weights():
    s, ts, y = _logits(2)
    method = build_method(_tekap(_cfg("mt_kd")), _logit_ctx(2, seed=3))
    out = method.loss(_logit_io(s, ts, y))
    # the same noise stream: per teacher, one [N, B, K] draw
    g = torch.Generator().manual_seed(derive_seed(3, TEKAP_SEED_TAG))
    noise = [torch.randn((3, B, K), generator=g, dtype=torch.float64) for _ in ts]
    views = [[0.9 * t + 0.1 * n[i] for t, n in zip(ts, noise)] for i in range(3)]
    golden_views = sum(mean_teacher_kd(s, torch.stack(v), 4.0) for v in views)
    assert out.terms["kd"].item() == pytest.approx(0.9 * mean_teacher_kd(s, torch.stack(ts), 4.0).item(), rel=1e-12)
    assert out.terms["kd.views"].item() == pytest.approx(0.8 * 0.9 * golden_views.item(), rel=1e-10)


@pytest.mark.parametrize("inner", ["mt_kd", "dgkd", "ca_mkd"])
def test_tekap_over_a_multi_teacher_method_with_one_teacher_is_tekap_over_kd(inner):
    ctx, _, io = _feature_setup(1)
    if inner == "ca_mkd":  # ca_mkd's logit part with kd's weights, no feature term
        inner_cfg = _cfg("ca_mkd", ce_weight=0.1, kd_weight=0.9, feature_weight=0.0)
    else:
        inner_cfg = _cfg(inner)
    got = build_method(_tekap(inner_cfg), ctx).loss(io)
    ref = build_method(_tekap(_cfg("kd")), ctx).loss(io)
    assert got.terms.keys() == ref.terms.keys()
    for k in ref.terms:
        assert got.terms[k].item() == pytest.approx(ref.terms[k].item(), rel=1e-5), k


def test_tekap_over_ca_mkd_counts_the_feature_term_once():
    ctx, _, io = _feature_setup(2)
    inner = build_method(_cfg("ca_mkd"), ctx)
    wrapped = build_method(_tekap(_cfg("ca_mkd")), ctx)
    wrapped.inner.load_state_dict(inner.state_dict())
    got, ref = wrapped.loss(io), inner.loss(io)
    assert set(got.terms) == {"ce", "kd", "feature", "kd.views"}
    assert torch.equal(got.terms["feature"], ref.terms["feature"]) and torch.equal(got.terms["kd"], ref.terms["kd"])


def test_tekap_with_no_views_is_the_multi_teacher_method_exactly():
    s, ts, y = _logits(3)
    io = _logit_io(s, ts, y, step=4)
    for name in ("mt_kd", "dgkd"):
        inner = build_method(_cfg(name), _logit_ctx(3)).loss(io)
        wrapped = build_method(_tekap(_cfg(name), view_weight=0.0), _logit_ctx(3)).loss(io)
        assert inner.terms.keys() == wrapped.terms.keys()
        assert all(torch.equal(inner.terms[k], wrapped.terms[k]) for k in inner.terms)


# --------------------------------------------------------------------------------------------- chains


def _chain_cfg(tmp_path, teacher_ckpt, *overrides):
    return tiny_config(
        tmp_path,
        "model.teachers.0.name=convnet_s",
        "chain.assistants.0.model=convnet_s",
        "train.epochs=1",
        *overrides,
        method="kd",
        teacher_ckpt=teacher_ckpt,
    )


def test_chain_links_wire_each_checkpoint_to_the_next_teacher(tmp_path, teacher_ckpt):
    cfg = _chain_cfg(
        tmp_path, teacher_ckpt, "chain.assistants.1.model=convnet_m", "chain.assistants.1.overrides=[optim.lr=0.01]"
    )
    links = chain_links(cfg)
    assert [(link.teacher, link.model) for link in links] == [
        ("convnet_s", "convnet_s"),
        ("convnet_s", "convnet_m"),
        ("convnet_m", "convnet_xs"),
    ]
    assert links[0].cfg.model.teachers[0].checkpoint == teacher_ckpt
    assert links[2].cfg.model.teachers[0].checkpoint == str(links[1].run_dir / "checkpoint.pt")
    assert [link.cfg.optim.lr for link in links] == [0.05, 0.01, 0.05]
    assert all(link.cfg.chain is None for link in links) and links[-1].run_dir.name == "3-convnet_xs"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["chain.assistants=[]"], "chain.assistants is empty"),
        (["model.teachers.1.name=convnet_s"], "exactly one teacher"),
        (["chain.assistants.0.overrides=[optim.lrr=1]"], "Did you mean 'lr'"),
    ],
)
def test_bad_chains_are_config_errors(tmp_path, teacher_ckpt, overrides, message):
    with pytest.raises(ConfigError, match=message):
        chain_links(_chain_cfg(tmp_path, teacher_ckpt, *overrides))


def test_train_refuses_a_chain_config(tmp_path, teacher_ckpt):
    with pytest.raises(ConfigError, match="kdlab chain"):
        Trainer(_chain_cfg(tmp_path, teacher_ckpt))


def test_chain_rerun_reuses_finished_links_and_retrains_after_a_changed_link(tmp_path, teacher_ckpt):
    cfg = _chain_cfg(tmp_path, teacher_ckpt)
    first = run_chain(cfg)
    assert [e["status"] for e in first["links"]] == ["trained", "trained"] and first["finished"]
    links = chain_links(cfg)
    stamps = [(link.run_dir / "checkpoint.pt").stat().st_mtime_ns for link in links]
    again = run_chain(cfg)
    assert [e["status"] for e in again["links"]] == ["reused", "reused"]
    assert [(link.run_dir / "checkpoint.pt").stat().st_mtime_ns for link in links] == stamps
    record = json.loads((links[0].run_dir.parent / "chain.json").read_text())
    assert record["models"] == ["convnet_s", "convnet_xs"] and record["student"]["status"] == "reused"
    # placement settings do not count as a different config
    assert [e["status"] for e in run_chain(_chain_cfg(tmp_path, teacher_ckpt, "train.eval_every=2"))["links"]] == [
        "reused",
        "reused",
    ]
    # a changed link is an error without --force; with it, the link and every later one are retrained
    changed = _chain_cfg(tmp_path, teacher_ckpt, "chain.assistants.0.overrides=[optim.lr=0.01]")
    with pytest.raises(ConfigError, match=r"differs in: optim\.lr"):
        run_chain(changed)
    forced = run_chain(changed, force=True)
    assert [e["status"] for e in forced["links"]] == ["retrained", "retrained"]


def test_a_smoke_chain_with_max_steps_is_reused_once_it_took_them(tmp_path, teacher_ckpt):
    cfg = _chain_cfg(tmp_path, teacher_ckpt, "train.epochs=3", "train.max_steps=2")
    first = run_chain(cfg)
    assert [e["steps"] for e in first["links"]] == [2, 2] and not first["finished"]
    assert [e["status"] for e in run_chain(cfg)["links"]] == ["reused", "reused"]


def test_an_interrupted_chain_resumes_its_link(tmp_path, teacher_ckpt):
    cfg = _chain_cfg(tmp_path, teacher_ckpt, "train.epochs=2")
    links = chain_links(cfg)
    part = Trainer(links[0].cfg, run_dir=links[0].run_dir)
    sigterm_during_step(part, 3)
    with pytest.raises(TrainingInterrupted):
        part.fit()
    record = run_chain(cfg)
    assert [e["status"] for e in record["links"]] == ["resumed", "trained"] and record["finished"]


# --------------------------------------------------------------------------------------------- CLI


# every registered method already runs through the CLI with one teacher (tests/test_cli.py); these use three
@pytest.mark.parametrize(
    "method",
    [["method.name=dgkd"], ["method.name=tekap", "method.inner.name=ca_mkd"]],
    ids=["dgkd", "tekap_ca_mkd"],
)
def test_cli_two_step_run_with_three_teachers(tmp_path, teacher_ckpt, method):
    teachers = [
        a
        for i in range(3)
        for a in (f"model.teachers.{i}.name=convnet_s", f"model.teachers.{i}.checkpoint={teacher_ckpt}")
    ]
    proc = kdlab_in_process(  # the CLI's entry point in this process (an interpreter start-up saved)
        "train",
        str(REPO / "configs/debug/digits_kd.yaml"),
        *TINY,
        *teachers,
        *method,
        "train.max_steps=2",
        "train.name=r",
        f"train.run_dir={tmp_path}",
    )
    assert "test top1" in proc.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["teachers"] == ["convnet_s"] * 3


def test_cli_chain_runs_end_to_end_and_reuses_finished_links(tmp_path, teacher_ckpt):
    args = [
        "chain",
        str(REPO / "configs/debug/digits_kd.yaml"),
        *TINY,
        f"model.teachers.0.checkpoint={teacher_ckpt}",
        "chain.assistants.0.model=convnet_s",
        "train.epochs=1",
        f"train.run_dir={tmp_path}",
    ]
    first = kdlab(*args)  # a real process first; the re-run in this one
    assert "link 1/2 convnet_s -> convnet_s: trained" in first.stdout
    assert "link 2/2 convnet_s -> convnet_xs: trained" in first.stdout
    again = kdlab_in_process(*args)
    assert (
        "link 1/2 convnet_s -> convnet_s: reused" in again.stdout
        and "2/2 convnet_s -> convnet_xs: reused" in again.stdout
    )
    (record,) = tmp_path.glob("chain-kd__*/chain.json")
    data = json.loads(record.read_text())
    assert data["finished"] and [e["status"] for e in data["links"]] == ["reused", "reused"]
    assert (record.parent / "2-convnet_xs" / "student.pt").is_file()
    bad = kdlab_in_process(*args, "chain.assistants=[]", check=False)
    assert bad.returncode == 2 and "chain.assistants is empty" in bad.stderr and "Traceback" not in bad.stderr
