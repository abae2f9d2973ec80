"""Strategy regularisers (issue 18, DIST Table 1's B2/B3 as their reference code runs them): gradient clipping by
global norm (``train.clip_grad_norm``), classifier dropout (``model.student_dropout``) and stochastic depth
(``model.student_drop_path``).

Golden: clipping equals ``torch.nn.utils.clip_grad_norm_`` on the same gradients (also after fp16 unscaling); a
clipping bound never reached leaves a run bitwise unchanged. Dropout and drop-path reach the built model (the
modules' rates, timm's and torchvision's own arguments); bad values and students without the mechanism exit 2
naming the fix.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdlab.cli.main import main
from kdlab.train.clipping import clip_gradients
from kdlab.train.strategy import describe_strategy
from kdlab.train.trainer import Trainer

from conftest import REPO, tiny_config


def _twin_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    b = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def _backward(model: nn.Module, scaler: torch.amp.GradScaler | None = None) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    loss = nn.functional.cross_entropy(model(x), y)
    (loss if scaler is None else scaler.scale(loss)).backward()


# ------------------------------------------------------------------------------------------------ clipping
@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clipping_equals_torchs_clip_grad_norm_on_the_same_gradients(max_norm):
    ours, ref = _twin_models()
    _backward(ours)
    _backward(ref)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    logs = clip_gradients(opt, max_norm)
    want = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert logs["grad_norm"] == pytest.approx(float(want), rel=1e-7)
    assert logs["grad_clipped"] == (1.0 if max_norm < float(want) else 0.0)
    if max_norm < float(want):  # the clipped gradients have the bound's norm
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ours.parameters()]))
        assert float(total) == pytest.approx(max_norm, rel=1e-5)


def test_clipping_under_a_loss_scaler_unscales_first_and_the_step_does_not_unscale_again():
    ours, ref = _twin_models()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    _backward(ours, scaler)  # gradients 1024 times the true ones
    _backward(ref)
    logs = clip_gradients(opt, 0.05, scaler)
    want = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    assert logs["grad_norm"] == pytest.approx(float(want), rel=1e-6) and logs["grad_clipped"] == 1.0
    before = [p.detach().clone() for p in ours.parameters()]
    scaler.step(opt)  # already unscaled: the update is lr * clipped gradient
    for p, b, q in zip(ours.parameters(), before, ref.parameters()):
        torch.testing.assert_close(p.detach(), b - 0.1 * q.grad, rtol=1e-6, atol=1e-9)


def test_clipping_reports_a_non_finite_norm_without_a_number():
    model, _ = _twin_models()
    _backward(model)
    next(model.parameters()).grad[0, 0] = float("inf")
    assert clip_gradients(torch.optim.SGD(model.parameters(), lr=0.1), 1.0) == {"grad_nonfinite": 1.0}


def test_clipping_in_a_run_is_logged_and_an_unreached_bound_changes_nothing(tmp_path):
    plain = Trainer(tiny_config(tmp_path, "train.max_steps=4", "train.epochs=1", "train.name=plain"))
    plain.fit()
    loose = Trainer(
        tiny_config(tmp_path, "train.max_steps=4", "train.epochs=1", "train.name=loose", "train.clip_grad_norm=1e9")
    )
    loose.fit()
    for k, v in plain.run.student.state_dict().items():  # the factor is exactly 1: the same weights, bit for bit
        assert torch.equal(v, loose.run.student.state_dict()[k]), k
    tight = Trainer(
        tiny_config(tmp_path, "train.max_steps=4", "train.epochs=1", "train.name=tight", "train.clip_grad_norm=1e-3")
    )
    tight.fit()
    rec = [json.loads(x) for x in (tight.run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert rec["train"]["grad_clipped"] == 1.0 and rec["train"]["grad_norm"] > 1e-3
    moved = [(tight.run.student.state_dict()[k] - v).abs().max() for k, v in plain.run.student.state_dict().items()]
    assert max(float(m) for m in moved) > 0  # clipping changed the updates
    loose_rec = [json.loads(x) for x in (loose.run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert loose_rec["train"]["grad_clipped"] == 0.0
    assert describe_strategy(tight.cfg).endswith("; gradients clipped to norm 0.001")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_bad_clipping_bound_exits_2_naming_the_fix(tmp_path, capsys, value):
    cfg = REPO / "configs" / "debug" / "digits_ce.yaml"
    code = main(["train", str(cfg), f"train.run_dir={tmp_path / 'runs'}", f"train.clip_grad_norm={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "train.clip_grad_norm" in err and "null" in err, err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ dropout, drop-path
def _takers(keyword: str) -> list[str]:
    from kdlab.models.regularization import _takers as takers

    return takers(keyword)


def _dropout_rates(model: nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]


def test_the_zoo_models_taking_each_setting_are_the_documented_ones():
    assert _takers("classifier_dropout") == [
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "efficientnet_b0"
    ]  # fmt: skip
    assert _takers("drop_path") == ["efficientnet_b0"]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2"])
def test_student_dropout_reaches_every_zoo_model_that_takes_it(name):
    from kdlab.config import ModelConfig
    from kdlab.models.regularization import create_student

    with torch.device("meta"):
        default = create_student(ModelConfig(student=name), 10, 3)
        model = create_student(ModelConfig(student=name, student_dropout=0.37), 10, 3)
    assert _dropout_rates(default) == [0.2 if name == "mobilenet_v2" else 0.0]  # the architecture's own
    assert _dropout_rates(model) == [0.37] and model.dropout.p == 0.37


def test_dropout_acts_on_the_classifier_input_in_training_only():
    from kdlab.config import ModelConfig
    from kdlab.models.regularization import create_student

    torch.manual_seed(0)
    model = create_student(ModelConfig(student="resnet18", student_dropout=0.5), 10, 3)
    seen = []
    model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.randn(4, 3, 32, 32)
    model.train()
    _, taps = model.forward_taps(x, ("pool",))
    kept = seen[-1] != 0
    assert 0.3 < kept.float().mean() < 0.7  # half of the 4 x 512 inputs dropped
    torch.testing.assert_close(seen[-1][kept], taps["pool"][kept] / 0.5)  # inverted dropout: survivors scaled by 2
    model.eval()
    _, taps = model.forward_taps(x, ("pool",))
    assert torch.equal(seen[-1], taps["pool"])


def test_efficientnet_drop_path_is_torchvisions_stochastic_depth_rule():
    from torchvision.ops import StochasticDepth

    from kdlab.config import ModelConfig
    from kdlab.models.regularization import create_student

    with torch.device("meta"):
        default = create_student(ModelConfig(student="efficientnet_b0"), 10, 3)
        model = create_student(
            ModelConfig(student="efficientnet_b0", student_drop_path=0.3, student_dropout=0.1), 10, 3
        )
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    n = len(rates)  # 16 MBConv blocks; block i (0-based) drops with probability 0.3 * i / n
    assert n == 16 and rates == pytest.approx([0.3 * i / n for i in range(n)])
    assert [m.p for m in default.modules() if isinstance(m, StochasticDepth)] == pytest.approx(
        [0.2 * i / n for i in range(n)]
    )
    assert model.dropout.p == 0.1 and default.dropout.p == 0.2


def test_timm_students_take_drop_rate_and_drop_path_rate():
    pytest.importorskip("timm")
    from kdlab.config import ModelConfig
    from kdlab.models.regularization import create_student

    with torch.device("meta"):
        model = create_student(ModelConfig(student="timm:test_vit", student_dropout=0.3, student_drop_path=0.2), 10, 3)
    assert model.model.head_drop.p == 0.3
    drop_path = [float(m.drop_prob) for m in model.modules() if type(m).__name__ == "DropPath"]
    assert drop_path and max(drop_path) == pytest.approx(0.2)  # timm's linear rule up to the last block


@pytest.mark.parametrize(
    ("student", "setting", "words"),
    [
        ("resnet18", "model.student_drop_path=0.2", ["model.student_drop_path", "'resnet18'", "efficientnet_b0"]),
        ("convnet_s", "model.student_dropout=0.2", ["model.student_dropout", "'convnet_s'", "resnet18"]),
        ("timm:vgg11", "model.student_drop_path=0.2", ["model.student_drop_path", "timm:vgg11", "drop_path_rate"]),
        ("convnet_s", "model.student_dropout=1", ["model.student_dropout", "null"]),
        ("convnet_s", "model.student_drop_path=-0.1", ["model.student_drop_path"]),
    ],
)
def test_a_student_without_the_setting_or_a_bad_rate_exits_2_naming_the_fix(tmp_path, capsys, student, setting, words):
    if student.startswith("timm:"):
        pytest.importorskip("timm")
    cfg = REPO / "configs" / "debug" / "digits_ce.yaml"
    args = ["train", str(cfg), f"train.run_dir={tmp_path / 'runs'}", f"model.student={student}", setting]
    code = main([*args, "train.threads=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert all(w in err for w in words), err
    assert not (tmp_path / "runs").exists()


def test_zero_is_accepted_for_any_student():
    from kdlab.config import ModelConfig
    from kdlab.models.regularization import regularization_kwargs

    assert regularization_kwargs(ModelConfig(student="convnet_s", student_dropout=0.0, student_drop_path=0.0)) == {}
    assert regularization_kwargs(ModelConfig(student="resnet18", student_dropout=0.0)) == {"classifier_dropout": 0.0}


def test_a_run_builds_its_student_with_the_settings(tmp_path):
    from kdlab.train.build import build_run

    cfg = tiny_config(tmp_path, "model.student=resnet18", "data.image_size=32", "model.student_dropout=0.25")
    run = build_run(cfg)
    assert run.student.dropout.p == 0.25
    assert describe_strategy(cfg).endswith("; student dropout 0.25")


def test_an_fp16_run_clips_the_unscaled_gradients(tmp_path):
    """Under fp16 the loss scaler multiplies the gradients by 65536 at first: the logged norm is the true one (the
    trainer unscales before clipping), as the fp32 run of the same steps measures it to fp16 rounding."""
    runs = {}
    for precision in ("fp32", "fp16"):
        trainer = Trainer(
            tiny_config(
                tmp_path, f"train.precision={precision}", "train.clip_grad_norm=0.01", "train.max_steps=1",
                "train.epochs=1", f"train.name={precision}",
            )
        )  # fmt: skip
        trainer.fit()
        runs[precision] = trainer.history[-1]["train"]
    assert (runs["fp16"]["grad_clipped"], runs["fp32"]["grad_clipped"]) == (1.0, 1.0)
    assert runs["fp16"]["grad_norm"] == pytest.approx(runs["fp32"]["grad_norm"], rel=0.05)
