"""Training strategies (issue 18, DIST Table 1): RMSpropTF, the schedules, label smoothing and the student EMA.

Golden values: RMSpropTF against timm's ``RMSpropTF`` on the same gradients and against the TensorFlow formulas
written out by hand; the exponential step schedule's values; the EMA's update and decay warm-ups against the
formulas and timm's ``ModelEmaV3``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.config import ConfigError, build_config
from kdlab.train.ema import ModelEMA, build_ema, ema_decay_at, ema_record, half_life_steps, with_ema_metrics
from kdlab.train.optim import RMSpropTF, make_optimizer
from kdlab.train.schedule import learning_rate, schedule_updates
from kdlab.types import Progress


def _gradients(steps: int, shapes=((5, 3), (3,)), seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(steps)]


def _run(opt_cls, grads, lrs, **kw) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    params = [nn.Parameter(torch.randn(t.shape, generator=g, dtype=torch.float64)) for t in grads[0]]
    opt = opt_cls(params, lr=lrs[0], **kw)
    for step_grads, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, gr in zip(params, step_grads):
            p.grad = gr.clone()
        opt.step()
    return [p.detach() for p in params]


# ------------------------------------------------------------------------------------------------ RMSpropTF
def test_rmsprop_tf_matches_the_tensorflow_formulas_written_out():
    grads, lrs = _gradients(6), [0.048, 0.048, 0.03, 0.03, 0.01, 0.02]  # a changing rate, as the schedule sets it
    alpha, eps, momentum, wd = 0.9, 1e-3, 0.9, 1e-5
    got = _run(RMSpropTF, grads, lrs, alpha=alpha, eps=eps, momentum=momentum, weight_decay=wd)
    g = torch.Generator().manual_seed(1)
    for i, shape in enumerate(t.shape for t in grads[0]):
        p = torch.randn(shape, generator=g, dtype=torch.float64)
        v, m = torch.ones_like(p), torch.zeros_like(p)  # TensorFlow starts the mean square at 1
        for step_grads, lr in zip(grads, lrs):
            grad = step_grads[i] + wd * p
            v = alpha * v + (1 - alpha) * grad**2
            m = momentum * m + lr * grad / torch.sqrt(v + eps)  # eps inside the root, lr inside the momentum
            p = p - m
        torch.testing.assert_close(got[i], p, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_rmsprop_tf_equals_timms_on_the_same_gradients(momentum):
    timm_optim = pytest.importorskip("timm.optim")
    grads, lrs = _gradients(8), [0.048 * 0.97**k for k in range(8)]
    kw = {"alpha": 0.9, "eps": 1e-3, "momentum": momentum, "weight_decay": 1e-5}
    ours = _run(RMSpropTF, grads, lrs, **kw)
    theirs = _run(timm_optim.RMSpropTF, grads, lrs, **kw)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_rmsprop_tf_differs_from_torchs_rmsprop_where_the_strategy_needs_it():
    # the first step from v = 1 (TensorFlow) against torch's v = 0 and eps outside the root
    grads = _gradients(1, shapes=((1000,),))
    g = grads[0][0]
    start = _run(RMSpropTF, grads, [0.0], alpha=0.9, eps=1e-3, momentum=0.0)[0]
    ours = start - _run(RMSpropTF, grads, [0.01], alpha=0.9, eps=1e-3, momentum=0.0)[0]
    torchs = start - _run(torch.optim.RMSprop, grads, [0.01], alpha=0.9, eps=1e-3, momentum=0.0)[0]
    torch.testing.assert_close(ours, 0.01 * g / torch.sqrt(0.9 + 0.1 * g**2 + 1e-3))
    torch.testing.assert_close(torchs, 0.01 * g / (torch.sqrt(0.1 * g**2) + 1e-3))
    assert (torchs.abs() / ours.abs()).median() > 3.0  # torch's first steps are several times larger


def test_make_optimizer_builds_each_name_with_its_documented_defaults():
    params = [nn.Parameter(torch.zeros(2))]
    cfg = build_config({"optim": {"name": "rmsprop_tf", "lr": 0.048, "weight_decay": 1e-5}}).optim
    opt = make_optimizer(cfg, params, cfg.lr)
    assert isinstance(opt, RMSpropTF)
    assert {k: opt.defaults[k] for k in ("alpha", "eps", "momentum")} == {"alpha": 0.9, "eps": 1e-3, "momentum": 0.9}
    adamw = make_optimizer(build_config({"optim": {"name": "adamw"}}).optim, params, 5e-4)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["eps"] == 1e-8
    eps = make_optimizer(build_config({"optim": {"name": "adamw", "eps": 1e-6}}).optim, params, 5e-4)
    assert eps.defaults["eps"] == 1e-6
    sgd = make_optimizer(build_config({}).optim, params, 0.05)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


def test_rmsprop_tf_state_round_trips_through_state_dict():
    grads = _gradients(4)
    params = [nn.Parameter(torch.zeros(t.shape, dtype=torch.float64)) for t in grads[0]]
    opt = RMSpropTF(params, lr=0.01)
    for p, gr in zip(params, grads[0]):
        p.grad = gr
    opt.step()
    again = RMSpropTF(params, lr=0.01)
    again.load_state_dict(opt.state_dict())
    for p in params:
        for key in ("square_avg", "momentum_buffer", "step"):
            assert torch.equal(opt.state[p][key], again.state[p][key])


# ------------------------------------------------------------------------------------------------ schedules
def _optim(**fields):
    return build_config({"optim": fields}).optim


def _lr(cfg, step: int, steps_per_epoch: int = 10, total_epochs: int = 450) -> float:
    p = Progress(
        step=step,
        epoch=step // steps_per_epoch,
        step_in_epoch=step % steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_epochs=total_epochs,
    )
    return learning_rate(cfg, p)


def test_exponential_step_decay_with_a_fractional_period_per_step():
    # B2: x0.97 every 2.4 epochs, per optimiser step (TensorFlow's staircase exponential_decay over the global step)
    cfg = _optim(lr=0.048, schedule="exp_step", gamma=0.97, decay_epochs=2.4)
    assert schedule_updates(cfg) == "step"
    spe = 10  # one period = 24 steps
    assert _lr(cfg, 0, spe) == 0.048 and _lr(cfg, 23, spe) == 0.048
    assert _lr(cfg, 24, spe) == pytest.approx(0.048 * 0.97, rel=1e-15)  # mid-epoch (epoch 2.4)
    assert _lr(cfg, 47, spe) == pytest.approx(0.048 * 0.97, rel=1e-15)
    assert _lr(cfg, 48, spe) == pytest.approx(0.048 * 0.97**2, rel=1e-15)
    for step in (0, 7, 24, 100, 1000, 4499):
        assert _lr(cfg, step, spe) == pytest.approx(0.048 * 0.97 ** math.floor(step / 24), rel=1e-12)
    # the end of a 450-epoch run: 187 decays (450 / 2.4 = 187.5)
    assert _lr(cfg, 450 * spe - 1, spe) == pytest.approx(0.048 * 0.97**187, rel=1e-12)


def test_exponential_step_decay_per_epoch_when_asked():
    # timm's StepLRScheduler(decay_t=2.4) updated per epoch: epoch e runs at lr * 0.97 ** floor(e / 2.4)
    cfg = _optim(lr=0.048, schedule="exp_step", gamma=0.97, decay_epochs=2.4, schedule_updates="epoch")
    for epoch, k in ((0, 0), (2, 0), (3, 1), (4, 1), (5, 2), (7, 2), (8, 3)):
        assert _lr(cfg, epoch * 10 + 9) == pytest.approx(0.048 * 0.97**k, rel=1e-15), epoch


def test_step_schedule_per_step_moves_at_the_milestone_epoch_start():
    # B1: x0.1 every 30 epochs; per step it is the same as per epoch (milestones are whole epochs)
    per_epoch = _optim(lr=0.1, schedule="step", milestones=[30, 60, 90])
    per_step = _optim(lr=0.1, schedule="step", milestones=[30, 60, 90], schedule_updates="step")
    for step in (0, 299, 300, 301, 599, 600, 999):
        assert _lr(per_epoch, step) == _lr(per_step, step), step
    assert _lr(per_epoch, 299) == 0.1 and _lr(per_epoch, 300) == pytest.approx(0.01)


def test_cosine_per_epoch_when_asked():
    cfg = _optim(lr=5e-4, schedule="cosine", min_lr=1e-5, schedule_updates="epoch")
    for step in (0, 5, 9, 10, 155):
        t = (step // 10) / 300
        assert _lr(cfg, step, total_epochs=300) == pytest.approx(
            1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + math.cos(math.pi * t))
        )


def test_warmup_from_a_start_rate_reaches_the_schedule_without_shifting_it():
    cfg = _optim(lr=5e-4, schedule="cosine", min_lr=0.0, warmup_epochs=2, warmup_lr=1e-6)
    cosine = _optim(lr=5e-4, schedule="cosine", min_lr=0.0)
    for step in (0, 1, 10, 18):
        expected = 1e-6 + (_lr(cosine, step, total_epochs=300) - 1e-6) * (step + 1) / 20
        assert _lr(cfg, step, total_epochs=300) == pytest.approx(expected, rel=1e-12)
    for step in (19, 20, 500):
        assert _lr(cfg, step, total_epochs=300) == _lr(cosine, step, total_epochs=300)


def test_exp_step_with_warmup():
    cfg = _optim(lr=0.048, schedule="exp_step", gamma=0.97, decay_epochs=2.4, warmup_epochs=1)
    assert _lr(cfg, 0) == pytest.approx(0.048 / 10) and _lr(cfg, 4) == pytest.approx(0.048 / 2)
    assert _lr(cfg, 9) == 0.048 and _lr(cfg, 24) == pytest.approx(0.048 * 0.97)


# ------------------------------------------------------------------------------------------------ EMA
def test_ema_decay_warmups_golden_values():
    assert ema_decay_at(0.9999, 0) == 0.9999 and ema_decay_at(0.9999, 10**6) == 0.9999
    # TensorFlow: min(decay, (1 + n) / (10 + n))
    assert [ema_decay_at(0.9999, n, "tf") for n in (0, 1, 90)] == pytest.approx([0.1, 2 / 11, 0.91])
    assert ema_decay_at(0.9999, 10**6, "tf") == 0.9999
    # timm ModelEmaV3 (gamma 1): 1 - (1 + n) ** -power; the first update copies
    assert ema_decay_at(0.9999, 0, "power", 0.75) == 0.0
    assert ema_decay_at(0.9999, 1, "power", 0.75) == pytest.approx(1 - 2**-0.75)
    assert ema_decay_at(0.9999, 215_443, "power", 0.75) == pytest.approx(0.9999, abs=1e-8)  # timm's "215.4k steps"
    assert half_life_steps(0.9999) == pytest.approx(6931.1, abs=0.1)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 2))


def test_ema_update_is_the_formula_on_parameters_and_buffers():
    live = _net(0)
    live(torch.randn(2, 3, 5, 5))  # materialise, move the BN statistics
    ema = ModelEMA(live, 0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    live(torch.randn(2, 3, 5, 5))
    assert ema.update(live) == 0.9
    for k, v in ema.module.state_dict().items():
        w = live.state_dict()[k]
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * start[k] + 0.1 * w)
        else:
            assert torch.equal(v, w)  # num_batches_tracked is copied
    assert ema.updates == 1 and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("warmup", ["off", "power"])
def test_ema_equals_timms_model_ema_v3(warmup):
    timm_utils = pytest.importorskip("timm.utils")
    live = _net(0)
    live(torch.randn(2, 3, 5, 5))
    ours = ModelEMA(live, 0.99, warmup, power=2 / 3)
    theirs = timm_utils.ModelEmaV3(live, decay=0.99, use_warmup=warmup == "power", warmup_power=2 / 3)
    for step in range(1, 6):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
        live(torch.randn(2, 3, 5, 5))
        ours.update(live)
        # timm's train loop passes the 1-based update count (its first update then copies, warm-up or not)
        theirs.update(live, step=step if warmup == "power" else None)
    a, b = ours.module.state_dict(), theirs.module.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_ema_state_round_trips_and_reset_copies():
    live = _net(0)
    live(torch.randn(2, 3, 5, 5))
    ema = ModelEMA(live, 0.5, "tf")
    with torch.no_grad():
        next(live.parameters()).add_(1.0)
    ema.update(live)
    again = ModelEMA(_net(1).requires_grad_(True), 0.5, "tf")
    again.load_state_dict(ema.state_dict())
    assert again.updates == 1
    assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(), again.module.state_dict().values()))
    again.reset(live)
    assert again.updates == 0
    assert all(torch.equal(a, b) for a, b in zip(live.state_dict().values(), again.module.state_dict().values()))


def test_ema_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        build_ema(build_config({"train": {"ema_export": True}}).train, nn.Linear(1, 1))
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        build_ema(build_config({"train": {"ema_warmup": "tf"}}).train, nn.Linear(1, 1))
    assert build_ema(build_config({}).train, nn.Linear(1, 1)) is None
    with pytest.raises(ConfigError, match="ema_decay"):
        build_config({"train": {"ema_decay": 1.0}})


def test_ema_metrics_are_recorded_beside_the_raw_ones():
    rec = with_ema_metrics({"top1": 50.0, "top5": 90.0, "n": 10}, {"top1": 52.0, "top5": 91.0, "n": 10})
    assert rec == {"top1": 50.0, "top5": 90.0, "n": 10, "ema_top1": 52.0, "ema_top5": 91.0}
    assert ema_record(rec) == {"top1": 52.0, "top5": 91.0}


# ------------------------------------------------------------------------------------------------ label smoothing
def test_step_io_cross_entropy_is_the_smoothed_target_formula():
    from kdlab.types import Batch, Outputs, StepIO

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    io = StepIO({"x": Outputs(logits)}, (), Batch(x=torch.zeros(6, 1), y=y, index=torch.arange(6)), label_smoothing=0.1)
    q = 0.9 * torch.nn.functional.one_hot(y, 5) + 0.1 / 5
    expected = -(q * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(io.cross_entropy(logits, reduction="none"), expected)
    torch.testing.assert_close(io.cross_entropy(logits), expected.mean())
    # a method's own non-zero value wins (the build refuses a disagreement: test_label_smoothing_conflict_is_refused)
    q2 = 0.8 * torch.nn.functional.one_hot(y, 5) + 0.2 / 5
    torch.testing.assert_close(io.cross_entropy(logits, 0.2), -(q2 * logits.log_softmax(-1)).sum(-1).mean())
    plain = io.replace(label_smoothing=0.0).cross_entropy(logits)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, y))


def test_label_smoothing_conflict_is_refused():
    from kdlab.train.strategy import check_label_smoothing

    ok = build_config({"method": {"name": "kd", "label_smoothing": 0.1}, "train": {"label_smoothing": 0.1}})
    check_label_smoothing(ok)
    bad = build_config({"method": {"name": "kd", "label_smoothing": 0.2}, "train": {"label_smoothing": 0.1}})
    with pytest.raises(ConfigError, match=r"train.label_smoothing=0.1 and method.label_smoothing=0.2"):
        check_label_smoothing(bad)
    nested = build_config(
        {
            "method": {"name": "tekap", "inner": {"name": "kd", "label_smoothing": 0.3}},
            "train": {"label_smoothing": 0.1},
        }
    )
    with pytest.raises(ConfigError, match=r"method.inner.label_smoothing=0.3"):
        check_label_smoothing(nested)


def _all_methods():
    from kdlab.methods import METHODS

    return METHODS.names()


@pytest.mark.parametrize("method", _all_methods())
def test_every_methods_cross_entropy_term_honours_the_run_label_smoothing(tmp_path, method, monkeypatch):
    """Generated from the method registry: in the main stage, every method's cross-entropy with the labels goes through
    ``StepIO.cross_entropy`` with the run's smoothing, and its ``ce`` term changes with it."""
    import dataclasses

    import kdlab.losses
    from kdlab.methods import METHODS
    from kdlab.methods.base import MAIN_STAGE
    from kdlab.train.trainer import Trainer
    from kdlab.types import StepIO

    from conftest import tiny_config

    extra = [f"model.student={s}"] if (s := METHODS.meta(method).get("test_student")) else []
    if method == "simkd":
        extra.append("method.ce_weight=1.0")  # SimKD weights its CE 0 by default, as its reference
    trainer = Trainer(tiny_config(tmp_path, *extra, method=method))
    try:
        batch = next(trainer.run.data.train_batches(0))
        teachers = trainer.teacher_outputs(batch) if trainer.run.teachers else ()
        student = trainer.step_module.student_outputs(batch)
        progress = dataclasses.replace(trainer.start, stage=MAIN_STAGE, epoch=1, step=7, step_in_epoch=1)
        io = StepIO(student, teachers, batch, progress)
        calls = []
        real = kdlab.losses.cross_entropy

        def spy(logits, y, label_smoothing=0.0, reduction="mean"):
            calls.append(label_smoothing)
            return real(logits, y, label_smoothing, reduction)

        monkeypatch.setattr(kdlab.losses, "cross_entropy", spy)
        with torch.no_grad():
            torch.manual_seed(0)
            plain = trainer.run.method.loss(io)
            plain_calls, calls[:] = list(calls), []
            torch.manual_seed(0)
            smoothed = trainer.run.method.loss(io.replace(label_smoothing=0.1))
        assert plain_calls and all(eps == 0.0 for eps in plain_calls)
        assert calls and all(eps == 0.1 for eps in calls), calls
        assert "ce" in plain.terms, f"{method}: its cross-entropy term should be named 'ce'"
        assert not torch.equal(plain.terms["ce"], smoothed.terms["ce"])
    finally:
        trainer.lock.release()


def test_no_weight_decay_on_norm_and_bias_when_asked():
    from kdlab.train.optim import parameter_groups

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    params = list(net.parameters())
    cfg = build_config({"optim": {"name": "rmsprop_tf", "weight_decay": 1e-5, "decay_norm_and_bias": False}}).optim
    groups = parameter_groups(cfg, params)
    assert [len(g["params"]) for g in groups] == [4, 2] and groups[0]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in groups[0]["params"]) and all(p.ndim > 1 for p in groups[1]["params"])
    opt = make_optimizer(cfg, params, 0.048)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-5]
    assert len(parameter_groups(build_config({}).optim, params)) == 1  # the default decays everything


def test_schedule_after_warmup_starts_the_clock_when_the_warmup_ends():
    # DIST's reference: GradualWarmupScheduler(after_scheduler=StepLR(2.4 epochs, 0.97)) counts from the warm-up's end
    cfg = _optim(
        lr=0.048,
        schedule="exp_step",
        gamma=0.97,
        decay_epochs=2.4,
        warmup_epochs=3,
        warmup_lr=1e-6,
        schedule_after_warmup=True,
    )
    assert _lr(cfg, 0) == pytest.approx(1e-6 + (0.048 - 1e-6) / 30)
    assert _lr(cfg, 29) == 0.048 and _lr(cfg, 30 + 23) == 0.048  # no decay until 2.4 epochs after the warm-up
    assert _lr(cfg, 30 + 24) == pytest.approx(0.048 * 0.97)
    cos = _optim(lr=5e-4, schedule="cosine", min_lr=1e-5, warmup_epochs=20, schedule_after_warmup=True)
    assert _lr(cos, 200, total_epochs=300) == 5e-4  # step 200 = the end of the 20-epoch warm-up
    assert _lr(cos, 200 + 1400, total_epochs=300) == pytest.approx(1e-5 + 0.5 * (5e-4 - 1e-5))  # half of 280 epochs
    assert _lr(cos, 2999, total_epochs=300) == pytest.approx(1e-5, abs=1e-9)


def test_the_run_header_states_the_strategy():
    from kdlab.config import load_config
    from kdlab.train.header import format_header
    from kdlab.train.strategy import describe_strategy

    from conftest import REPO

    b2 = load_config(REPO / "configs" / "imagenet" / "strategies" / "B2.yaml")
    assert describe_strategy(b2) == (
        "rmsprop_tf lr 0.048 (alpha 0.9, eps 0.001, momentum 0.9); exp_step x0.97 every 2.4 epochs per step after a "
        "3-epoch warm-up from 1e-06; wd 1e-05 (not on biases/norms); label smoothing 0.1; EMA 0.9999 (exported)"
    )
    header = {
        "data": {"name": "d", "train": 1, "val": 0, "test": 1, "classes": 2, "input_size": [3, 8, 8]},
        "student": {"name": "s", "parameters": 1, "macs": 1, "input_mean": None, "input_std": None, "checkpoint": None},
        "method": {"name": "ce", "changed": {}},
        "system": {"device": "cpu", "precision": "fp32", "teacher_precision": "fp32", "threads": 1},
        "schedule": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 1},
        "teachers": [],
        "strategy": describe_strategy(b2),
    }
    header["system"].update(allocator="default", seed=0, processes=1)
    assert format_header(header).splitlines()[-1] == f"  strategy {describe_strategy(b2)}"


@pytest.mark.parametrize("method", _all_methods())
def test_every_method_trains_with_the_ema_of_its_deployable_model(tmp_path, method):
    """Generated from the method registry: the EMA averages ``method.export(student)`` (SimKD's includes its projector
    and the teacher's classifier), moves after an optimiser step, and is evaluated beside the raw weights."""
    import dataclasses

    from kdlab.methods import METHODS
    from kdlab.methods.base import MAIN_STAGE
    from kdlab.train.trainer import Trainer

    from conftest import tiny_config

    extra = [f"model.student={s}"] if (s := METHODS.meta(method).get("test_student")) else []
    trainer = Trainer(tiny_config(tmp_path, *extra, "train.ema_decay=0.5", method=method))
    try:
        exported = trainer.run.method.export(trainer.run.student)
        assert trainer.ema.module.state_dict().keys() == exported.state_dict().keys()
        before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
        batch = next(trainer.run.data.train_batches(0))
        progress = dataclasses.replace(trainer.start, stage=MAIN_STAGE)
        trainer.optimizer = trainer._make_optimizer(trainer.stages[-1])
        out = trainer.step_module(batch, trainer.teacher_outputs(batch) if trainer.run.teachers else (), progress)
        out.total.backward()
        trainer.optimizer.step()
        trainer._ema_update(progress)
        live = exported.state_dict()
        for k, v in trainer.ema.module.state_dict().items():
            if v.is_floating_point():
                torch.testing.assert_close(v, 0.5 * before[k] + 0.5 * live[k])
        assert any(not torch.equal(before[k], v) for k, v in trainer.ema.module.state_dict().items())
        metrics = trainer.evaluate("test")
        assert {"top1", "ema_top1", "ema_top5"} <= metrics.keys()
    finally:
        trainer.lock.release()
