"""SimKD (``simkd``) and its extensions: projector sizes, the reused frozen teacher classifier, the deployable export,
multi/all projectors, the KL loss, label gating, resume, the CLI, and errors."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
import torch.nn.functional as F
from test_cli import TINY, kdlab_in_process
from test_cli import kdlab as run_cli

from kdlab import losses, models
from kdlab.config import ConfigError, build_config
from kdlab.methods import build_method
from kdlab.methods.simkd import SimKDStudent, stage_pairs
from kdlab.models.base import TapError
from kdlab.train.build import build_context, build_run
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import Batch, Outputs, StepIO

from conftest import REPO, sigterm_during_step, tiny_config

K = 4


def simkd(ctx, **fields):
    return build_method(build_config({"method": {"name": "simkd", **fields}}).method, ctx)


def models_ctx(student: str, teacher: str, size=(3, 8, 8), k: int = K, device: str = "cpu"):
    dev = torch.device(device)
    with dev:
        s = models.create(student, num_classes=k)
        t = models.create(teacher, num_classes=k)
    return s, t, build_context(s, [t], k, size, dev)


def step_io(student, teacher, method, x, y) -> StepIO:
    """One batch through both models with the taps ``method`` needs (the teacher in eval mode, no grad)."""
    needs = method.needs()
    s_logits, s_taps = student.forward_taps(x, tuple(needs.student_taps))
    teacher.eval()
    with torch.no_grad():
        t_logits, t_taps = teacher.forward_taps(x, tuple(needs.teacher_taps))
    batch = Batch(x=x, y=y, index=torch.arange(len(y)))
    return StepIO({"x": Outputs(s_logits, s_taps)}, ({"x": Outputs(t_logits, t_taps)},), batch)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ sizes, pairing


@pytest.fixture(scope="module")
def cifar_ctx():
    """resnet32x4 -> resnet8x4 on CIFAR-100 shapes, on the meta device (shapes only)."""
    return models_ctx("resnet8x4", "resnet32x4", (3, 32, 32), 100, "meta")[2]


@pytest.mark.parametrize(("factor", "expected"), [(2, 214_016), (4, 70_400), (8, 26_240)])
def test_projector_parameter_counts_equal_the_reference(cifar_ctx, factor, expected):
    m = simkd(cifar_ctx, factor=factor)
    assert m.projector_parameters() == {"stage3": expected}
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == expected  # nothing trainable but adapters
    # the reused classifier: buffers in the state dict (checkpoints rebuild the deployable model), not parameters
    assert {"head.weight", "head.bias"} <= set(m.state_dict())
    assert not any(name.startswith("head") for name, _ in m.named_parameters())


def test_projector_layout_is_conv_bn_relu_three_times_without_bias(cifar_ctx):
    body = simkd(cifar_ctx).adapters["projectors"]["stage3"].body
    kinds = [type(layer).__name__ for layer in body]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 3
    convs = [layer for layer in body if isinstance(layer, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 128), (128, 128), (128, 256)]
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize(
    ("n", "m", "mode", "expected"),
    [
        (3, 3, "last", [(3, 3)]),
        (3, 3, "multi", [(2, 2), (3, 3)]),  # 2/3 of 3 stages
        (4, 3, "multi", [(3, 2), (4, 3)]),  # mobilenetv2 -> resnet32x4: round(8/3) = 3, round(3 * 3/4) = 2
        (2, 3, "multi", [(1, 2), (2, 3)]),  # round(4/3) = 1, round(1.5) = 2 (halves round up)
        (1, 3, "multi", [(1, 3)]),  # a one-stage student has only the last projector
        (4, 3, "all", [(1, 1), (2, 2), (3, 2), (4, 3)]),
        (3, 4, "all", [(1, 1), (2, 3), (3, 4)]),
    ],
)
def test_stage_pairs_match_the_same_relative_depth(n, m, mode, expected):
    assert stage_pairs(n, m, mode) == expected


def test_multi_projectors_of_the_documents_pair_match_teacher_stages_of_the_same_depth():
    ctx = models_ctx("mobilenetv2_1_0", "resnet32x4", (3, 32, 32), 100, "meta")[2]
    m = simkd(ctx, projectors="multi")
    assert m.pairs == [("stage3", "stage2"), ("stage4", "stage3")]
    body = m.adapters["projectors"]
    assert body["stage3"].body[0].in_channels == 96 and body["stage3"].body[-2].num_features == 128
    assert body["stage4"].body[0].in_channels == 320 and body["stage4"].body[-2].num_features == 256
    assert m.needs().student_taps == {"stage3", "stage4"} and m.needs().teacher_taps == {"stage2", "stage3"}
    assert simkd(ctx, projectors="all").pairs == [
        ("stage1", "stage1"),
        ("stage2", "stage2"),
        ("stage3", "stage2"),
        ("stage4", "stage3"),
    ]


# ------------------------------------------------------------------------------------------------ loss values


def _reference_terms(m, io, temperature: float = 4.0):
    """The loss recomputed from the formulas: pool the larger map, project, MSE; classifier on the pooled map."""
    out = []
    for s_tap, t_tap in m.pairs:
        s_map, t_map = io.s.taps[s_tap], io.t.taps[t_tap]
        if s_map.shape[-1] > t_map.shape[-1]:
            s_map = F.adaptive_avg_pool2d(s_map, t_map.shape[-2:])
        elif s_map.shape[-1] < t_map.shape[-1]:
            t_map = F.adaptive_avg_pool2d(t_map, s_map.shape[-2:])
        p = m.adapters["projectors"][s_tap](s_map)
        out.append((p, t_map))
    last, target = out[-1]
    return out, last, target


def test_l2_loss_is_the_mse_to_the_teachers_last_map_and_ce_is_kept_at_weight_zero():
    student, teacher, ctx = models_ctx("convnet_xs", "resnet8")  # student 4x4 map, teacher 2x2: student pooled
    m = simkd(ctx)
    assert m.pool_to == (2, 2)
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6) % K
    io = step_io(student, teacher, m, x, y)
    m.eval()  # BN running statistics: the reference recomputation below sees the same projector outputs
    out = m.loss(io)
    _, last, target = _reference_terms(m, io)
    assert out.terms["simkd"].item() == pytest.approx(F.mse_loss(last, target).item(), rel=1e-6)
    assert out.terms["ce"].item() == 0.0 and set(out.terms) == {"ce", "simkd"}
    # the prediction through the reused classifier gives the logged training accuracy
    pred = teacher.classifier(last.mean(dim=(2, 3)))
    assert out.metrics["top1"].item() == pytest.approx(100.0 * (pred.argmax(1) == y).float().mean().item())
    # every student parameter is in the graph (zero-weighted CE on its own logits, as the reference's 0 * loss_cls)
    out.total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert torch.count_nonzero(student.classifier.weight.grad) == 0


def test_kl_loss_is_kd_between_teacher_logits_and_the_reused_classifier_prediction():
    student, teacher, ctx = models_ctx("convnet_xs", "convnet_s")
    m = simkd(ctx, loss="kl", temperature=2.0, kd_weight=0.5, ce_weight=0.25)
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6) % K
    io = step_io(student, teacher, m, x, y)
    # teacher logits far from uniform (a random teacher's are nearly uniform and the KL nearly 0)
    io = io.replace(teachers=({"x": io.t.replace(logits=3 * torch.randn(6, K))},))
    m.eval()
    out = m.loss(io)
    _, last, _ = _reference_terms(m, io)
    pred = teacher.classifier(last.mean(dim=(2, 3)))

    def kl(s, t, temp):  # T^2 * sum p_t (log p_t - log p_s), batch mean
        p_t = torch.softmax(t / temp, dim=1)
        return (p_t * (p_t.log() - torch.log_softmax(s / temp, dim=1))).sum(1).mean() * temp**2

    assert out.terms["simkd"].item() == pytest.approx(kl(pred, io.t.logits, 2.0).item(), rel=1e-5)
    assert out.terms["kd"].item() == pytest.approx(0.5 * kl(io.s.logits, io.t.logits, 2.0).item(), rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(0.25 * F.cross_entropy(io.s.logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("loss", ["l2", "kl"])
def test_multi_and_all_add_one_mse_per_intermediate_projector(loss):
    student, teacher, ctx = models_ctx("resnet8", "resnet8")
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6) % K
    for mode, n_inner in (("multi", 1), ("all", 2)):
        m = simkd(ctx, projectors=mode, loss=loss, simkd_weight=2.0)
        io = step_io(student, teacher, m, x, y)
        m.eval()
        out = m.loss(io)
        projected, _, _ = _reference_terms(m, io)
        assert len(projected) == n_inner + 1
        inner = sum(F.mse_loss(p, t) for p, t in projected[:-1])
        assert out.terms["inner"].item() == pytest.approx(2.0 * inner.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ label gating


def _gating_io(m, student, teacher, x, y, wrong):
    """A StepIO whose teacher logits are rewritten so that the teacher is wrong exactly on the samples ``wrong``."""
    io = step_io(student, teacher, m, x, y)
    t_logits = torch.full((len(y), K), -5.0)
    right = y.clone()
    right[wrong] = (y[wrong] + 1) % K
    t_logits[torch.arange(len(y)), right] = 5.0
    return io.replace(teachers=({"x": io.t.replace(logits=t_logits)},))


@pytest.mark.parametrize("loss", ["l2", "kl"])
def test_label_gating_masks_exactly_the_samples_the_teacher_gets_wrong(loss):
    student, teacher, ctx = models_ctx("convnet_xs", "convnet_s")
    m = simkd(ctx, loss=loss, label_gating=True, projectors="all", kd_weight=1.0)
    m.eval()
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % K
    wrong = torch.tensor([1, 4, 5])
    io = _gating_io(m, student, teacher, x, y, wrong)
    out = m.loss(io)
    assert out.metrics["gated_fraction"].item() == pytest.approx(3 / 8)

    # the kept samples' mean of the per-sample losses (computed without the method)
    keep = torch.ones(8, dtype=torch.bool)
    keep[wrong] = False
    _, last, target = _reference_terms(m, io)
    if loss == "l2":
        per_sample = (last - target).pow(2).flatten(1).mean(1)
    else:
        per_sample = losses.kd(m.predict(last), io.t.logits, 4.0, reduction="none")
    assert out.terms["simkd"].item() == pytest.approx(per_sample[keep].mean().item(), rel=1e-5)
    kd = losses.kd(io.s.logits, io.t.logits, 4.0, reduction="none")
    assert out.terms["kd"].item() == pytest.approx(kd[keep].mean().item(), rel=1e-5)

    # changing the teacher's maps of the masked samples changes nothing, of a kept sample changes the loss
    def perturbed(rows):
        taps = {k: v.clone() for k, v in io.t.taps.items()}
        for v in taps.values():
            v[rows] += 3.0
        return io.replace(teachers=({"x": io.t.replace(taps=taps)},))

    same = m.loss(perturbed(wrong))
    for name in ("simkd", "inner"):
        if loss == "kl" and name == "simkd":
            continue  # the KL reads the teacher's logits, not its maps
        assert torch.equal(same.terms[name], out.terms[name]), name
    assert not torch.equal(m.loss(perturbed(torch.tensor([0]))).terms["inner"], out.terms["inner"])


def test_label_gating_with_an_always_right_teacher_is_the_ungated_loss_and_never_right_gives_zero():
    student, teacher, ctx = models_ctx("convnet_xs", "convnet_s")
    gated, plain = simkd(ctx, label_gating=True), simkd(ctx)
    plain.load_state_dict(gated.state_dict())
    gated.eval()
    plain.eval()
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % K
    io = _gating_io(gated, student, teacher, x, y, torch.tensor([], dtype=torch.long))
    a, b = gated.loss(io), plain.loss(io)
    assert a.terms["simkd"].item() == pytest.approx(b.terms["simkd"].item(), rel=1e-6)
    assert a.metrics["gated_fraction"].item() == 0.0
    none = gated.loss(_gating_io(gated, student, teacher, x, y, torch.arange(8)))
    assert none.terms["simkd"].item() == 0.0 and none.metrics["gated_fraction"].item() == 1.0


# ------------------------------------------------------------------------------------------------ export, teacher


def test_export_predicts_like_the_training_path_and_runs_without_the_teacher():
    student, teacher, ctx = models_ctx("convnet_xs", "resnet8")  # the export pools the student map to 2x2
    m = simkd(ctx, projectors="multi")
    opt = torch.optim.SGD([*student.parameters(), *m.adapters.parameters()], lr=0.1, momentum=0.9)
    for _ in range(3):  # move the weights and the BN statistics away from their initial values
        x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % K
        out = m.loss(step_io(student, teacher, m, x, y))
        opt.zero_grad()
        out.total.backward()
        opt.step()
    exported = m.export(student)
    assert isinstance(exported, SimKDStudent)
    exported.eval()
    m.eval()
    x, y = torch.randn(5, 3, 8, 8), torch.arange(5) % K
    io = step_io(student, teacher, m, x, y)
    training_path = m.predict(m.project(io.s.taps, io.t.taps)[-1][0])
    with torch.no_grad():
        deployed = exported(x)
    torch.testing.assert_close(deployed, training_path.detach(), rtol=1e-5, atol=1e-6)
    # the deployable parameters: backbone (without the student's own classifier) + last projector + teacher head
    cost = exported.cost()
    s_fc = n_params(student.classifier)
    assert cost["backbone"] == n_params(student) - s_fc
    assert cost["projector"] == m.projector_parameters()["stage2"]
    assert cost["classifier"] == n_params(teacher.classifier)
    assert cost["total"] == n_params(exported) == cost["backbone"] + cost["projector"] + cost["classifier"]
    assert cost["added"] == cost["total"] - n_params(student)
    # rebuilt from scratch (another random teacher and student), the export's state dict alone restores it
    student2, _, ctx2 = models_ctx("convnet_xs", "resnet8")
    m2 = simkd(ctx2, projectors="multi")
    again = m2.export(student2)
    again.load_state_dict(exported.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), deployed)
    assert not any(k.startswith("backbone.classifier") for k in exported.state_dict())


def test_export_cost_of_the_readme_pair_is_the_projector():
    """resnet32x4 -> resnet8x4: the teacher's classifier replaces one of the same size, so SimKD adds exactly the
    projector (214,016 parameters at factor 2)."""
    student, _, ctx = models_ctx("resnet8x4", "resnet32x4", (3, 32, 32), 100, "meta")
    cost = simkd(ctx).export(student).cost()
    assert cost["added"] == 214_016 and cost["total"] == cost["student"] + 214_016


def test_teacher_classifier_is_never_changed_by_training(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.max_steps=4", "optim.lr=0.5", method="simkd"))
    classifier = trainer.run.teachers[0].model.classifier
    before = [p.detach().clone() for p in classifier.parameters()]
    head = trainer.run.method.head
    assert torch.equal(head.weight, classifier.weight) and torch.equal(head.bias, classifier.bias)
    trainer.fit()
    assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, classifier.parameters()))
    assert torch.equal(head.weight, before[0]) and torch.equal(head.bias, before[1])
    exported = trainer.run.method.export(trainer.run.student)
    assert torch.equal(exported.classifier.weight, before[0])
    assert all(not p.requires_grad for p in exported.classifier.parameters())
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert summary["exported_parameters"] == exported.cost()["total"]


# ------------------------------------------------------------------------------------------------ resume


def test_interrupted_multi_projector_run_resumes_bitwise(tmp_path):
    base = ("train.epochs=2", "method.projectors=multi", "method.label_gating=true")
    full = Trainer(tiny_config(tmp_path, "train.name=full", "model.student=resnet8", *base, method="simkd"))
    full.fit()
    part = Trainer(tiny_config(tmp_path, "train.name=cut", "model.student=resnet8", *base, method="simkd"))
    sigterm_during_step(part, 5)  # mid-epoch (6 steps per epoch)
    with pytest.raises(TrainingInterrupted):
        part.fit()
    rest = Trainer(tiny_config(tmp_path, "train.name=cut", "model.student=resnet8", *base, method="simkd"), resume=True)
    rest.fit()
    for a, b in ((full.run.student, rest.run.student), (full.run.method, rest.run.method)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(rest.run.method.adapters["projectors"]) == 2
    assert [h["test"]["top1"] for h in full.history] == [h["test"]["top1"] for h in rest.history]


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"factor": 0}, "method.factor must be >= 1, got 0"),
        ({"projectors": "every"}, "method.projectors must be one of 'last', 'multi', 'all'"),
        ({"loss": "l1"}, "method.loss must be one of 'l2', 'kl'"),
        ({"temperature": 0}, "method.temperature must be > 0, got 0.0"),
        ({"simkd_weight": -1}, "method.simkd_weight must be >= 0"),
    ],
)
def test_bad_config_values_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"method": {"name": "simkd", **fields}})


def test_teacher_whose_classifier_does_not_read_its_last_stage_is_a_clear_error():
    _, _, ctx = models_ctx("resnet8", "mobilenetv2")
    with pytest.raises(TapError, match=r"feeds the teacher.s classifier 160 features, but it takes 1280.*MobileNetV2"):
        simkd(ctx)


def test_no_teacher_is_a_clear_error():
    with torch.device("meta"):
        s = models.create("convnet_xs", num_classes=K)
    ctx = build_context(s, [], K, (3, 8, 8), torch.device("meta"))
    with pytest.raises(TapError, match=r"exactly one teacher; model\.teachers has none"):
        simkd(ctx)


# ------------------------------------------------------------------------------------------------ CLI


def kdlab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=REPO, check=check)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("simkd_teacher")
    trainer = Trainer(tiny_config(tmp, "model.student=convnet_s", "train.epochs=2"))
    trainer.fit()
    return str(trainer.ckpt_path)


@pytest.mark.parametrize(
    ("variant", "term"),
    [
        (["method.projectors=multi", "method.factor=4"], "inner"),
        (["method.projectors=all", "method.loss=kl", "model.student=resnet8"], "inner"),
        (["method.loss=kl", "method.label_gating=true", "method.temperature=2"], "gated_fraction"),
    ],
    ids=["multi-l2-f4", "all-kl", "last-kl-gated"],
)
def test_variant_trains_two_steps_through_the_cli_and_its_export_evaluates(tmp_path, teacher_ckpt, variant, term):
    # the CLI's entry point in this process (a fresh interpreter per command was most of this test's time)
    def kdlab(*args: str):
        return kdlab_in_process(*args, cwd=REPO)

    proc = kdlab(
        "train",
        str(REPO / "configs/debug/digits_kd.yaml"),
        *TINY,
        "method.name=simkd",
        *variant,
        "train.max_steps=2",
        "train.name=r",
        f"train.run_dir={tmp_path}",
        f"model.teachers.0.checkpoint={teacher_ckpt}",
    )
    assert "simkd: the deployable model has" in proc.stderr
    run = tmp_path / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["method"] == "simkd"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert term in record["train"] and "top1" in record["train"]
    ev = json.loads(kdlab("eval", str(run / "student.pt")).stdout)
    assert ev["top1"] == pytest.approx(summary["last"]["top1"]) and ev["n"] == 48
    assert ev["loss"] == pytest.approx(summary["last"]["loss"], rel=1e-5)
    if "method.projectors=all" in variant:  # a checkpoint alone (no teacher file) rebuilds the same model
        ev2 = json.loads(kdlab("eval", str(run / "checkpoint.pt")).stdout)
        assert ev2["top1"] == pytest.approx(ev["top1"]) and ev2["loss"] == pytest.approx(ev["loss"], rel=1e-5)


def test_cli_rejects_a_teacher_it_cannot_reuse_in_process_with_exit_code_2(tmp_path, monkeypatch):
    """Fast sibling of the real-process test below: the CLI entry point in this process, the pair explanation
    limited to two benchmark pairs (each costs a build on the meta device; all 13 take several CPU-seconds)."""
    from kdlab.train import pairs

    monkeypatch.setattr(pairs, "BENCHMARK_PAIRS", (("resnet56", "resnet20"), ("vgg13", "mobilenetv2")))
    proc = kdlab_in_process(
        "train",
        str(REPO / "configs/debug/digits_kd.yaml"),
        *TINY,
        "method.name=simkd",
        "model.teachers.0.name=mobilenetv2",
        "model.teachers.0.checkpoint=null",
        f"train.run_dir={tmp_path}",
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    flat = " ".join(proc.stderr.split())  # the message is wrapped at 100 columns
    assert "reuses the classifier on the teacher's last stage map" in flat and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_rejects_a_teacher_it_cannot_reuse_with_exit_code_2(tmp_path):
    proc = kdlab(
        "train",
        str(REPO / "configs/debug/digits_kd.yaml"),
        *TINY,
        "method.name=simkd",
        "model.teachers.0.name=mobilenetv2",
        "model.teachers.0.checkpoint=null",
        f"train.run_dir={tmp_path}",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    flat = " ".join(proc.stderr.split())  # the message is wrapped at 100 columns
    assert "reuses the classifier on the teacher's last stage map" in flat and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ recipes, sweep


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_simkd_configs", REPO / "scripts" / "make_simkd_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_recipes_and_sweep_spec_are_the_generators_output():
    import yaml

    gen = _generator()
    shipped = {p.name for p in (REPO / "configs" / "cifar100" / "simkd").glob("*.yaml")}
    recipes = gen.recipes()
    assert shipped == set(recipes) and len(recipes) == 3 * 3 + 1 + 6
    for name, cfg in recipes.items():
        assert yaml.safe_load((REPO / "configs" / "cifar100" / "simkd" / name).read_text()) == cfg, name
    assert yaml.safe_load((REPO / "configs" / "sweeps" / "simkd_extensions.yaml").read_text()) == gen.sweep_spec()
    # the README's numbers per (student, factor) and the study's six rows
    assert recipes["resnet32x4__resnet8x4.yaml"]["target"]["top1"] == 78.08
    assert recipes["resnet32x4__vgg8__f8.yaml"]["method"]["factor"] == 8
    assert recipes["resnet32x4__shufflenetv2_1_5__f4.yaml"]["optim"]["lr"] == 0.01


def test_sweep_spec_expands_to_the_studys_grid():
    from kdlab.experiments.spec import expand, load_spec

    spec = load_spec(REPO / "configs" / "sweeps" / "simkd_extensions.yaml")
    runs = expand(spec)
    assert len(runs) == 7 * 5 * 3  # rows x learning rates x seeds
    assert {r.grid["optim.lr"] for r in runs} == {0.001, 0.005, 0.01, 0.05, 0.1} and {r.seed for r in runs} == {0, 1, 2}
    methods = {(m["projectors"], m["loss"], m["label_gating"]) for m in (r.config["method"] for r in runs)}
    assert methods == {
        ("last", "l2", False),
        ("multi", "l2", False),
        ("multi", "kl", False),
        ("all", "l2", False),
        ("all", "kl", False),
        ("last", "l2", True),
        ("last", "kl", True),
    }
    assert {r.config["model"]["student"] for r in runs} == {"mobilenetv2_1_0"}
    assert all(r.config["optim"]["lr"] == r.grid["optim.lr"] for r in runs)


def test_reused_head_on_a_renormalised_teachers_map_gives_the_teachers_logits(tmp_path):
    """Issue 22: a pretrained teacher whose inputs are re-normalised (``input_mean``/``input_std``) sees the same
    re-normalised images for its map and its logits, so simkd's frozen head on the teacher's pooled last map is the
    teacher's own prediction (what the projected student map is trained to stand in for)."""
    run = build_run(
        tiny_config(
            tmp_path,
            "model.teachers.0.input_mean=[0.4,0.45,0.5]",
            "model.teachers.0.input_std=[0.2,0.25,0.3]",
            method="simkd",
        )
    )
    teacher, method = run.teachers[0], run.method
    assert teacher.renormalize
    t_tap = method.pairs[-1][1]
    batch = next(run.data.eval_batches("test"))
    out = teacher.outputs(batch, ("x",), (t_tap,))["x"]
    torch.testing.assert_close(method.predict(out.taps[t_tap]), out.logits, rtol=1e-5, atol=1e-5)
    plain = teacher.model.forward_taps(batch.x, (t_tap,))[1][t_tap]  # the same teacher without re-normalisation
    assert not torch.allclose(plain, out.taps[t_tap])
