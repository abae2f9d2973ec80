"""Training strategies through the trainer and the CLI (issue 18): the student EMA in runs (both accuracies, export,
bitwise resume), run-level label smoothing reaching the methods, refusals, and DIST's B2/B3 strategy files run on tiny
synthetic data with KD from a tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab.cli.main import main
from kdlab.config import load_config
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted

from conftest import REPO, sigterm_during_step, tiny_config

STRATEGY = ["optim.name=rmsprop_tf", "optim.lr=0.01", "optim.schedule=exp_step", "optim.gamma=0.9"]
STRATEGY += ["optim.decay_epochs=0.5", "optim.warmup_epochs=1", "optim.warmup_lr=0.001"]
STRATEGY += ["train.label_smoothing=0.1", "train.ema_decay=0.8", "train.ema_warmup=tf", "train.ema_export=true"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k


def test_ema_is_evaluated_beside_the_raw_weights_and_exported(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, *STRATEGY, "train.epochs=2"))
    summary = trainer.fit()
    records = _records(trainer.run_dir)
    assert all({"top1", "ema_top1", "ema_top5", "ema_loss"} <= rec["test"].keys() for rec in records)
    assert summary["last"]["ema_top1"] == records[-1]["test"]["ema_top1"]
    assert summary["ema"]["updates"] == summary["steps"] == 12 and summary["ema"]["exported"]
    assert summary["ema"]["best"]["top1"] == max(r["test"]["ema_top1"] for r in records)
    # student.pt holds the average (train.ema_export), which differs from the raw weights
    exported = read_file(trainer.run_dir / "student.pt")["state_dict"]
    _states_equal(exported, trainer.ema.module.state_dict())
    raw = trainer.run.student.state_dict()
    assert not all(torch.equal(exported[k], raw[k]) for k in raw)
    # the evaluation of the average is the evaluation of the exported file's weights
    from kdlab.train.evaluation import evaluate

    model = trainer.run.method.export(trainer.run.student)
    model.load_state_dict(exported)
    again = evaluate(model, trainer.run.data.eval_batches("test"), names=trainer.metric_names)
    assert again["top1"] == summary["last"]["ema_top1"]


def test_without_ema_export_the_raw_weights_are_exported(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.ema_decay=0.5", "train.max_steps=3"))
    trainer.fit()
    exported = read_file(trainer.run_dir / "student.pt")["state_dict"]
    _states_equal(exported, trainer.run.student.state_dict())


def test_ema_strategy_resumes_mid_epoch_bitwise(tmp_path):
    """RMSpropTF, a per-step exponential schedule with warm-up, label smoothing and the EMA with a decay warm-up:
    a run stopped mid-epoch and resumed ends exactly as the uninterrupted one (weights, optimiser, EMA, export,
    logged metrics)."""
    full = Trainer(tiny_config(tmp_path, *STRATEGY, "train.name=full", method="kd"))
    full.fit()
    part = Trainer(tiny_config(tmp_path, *STRATEGY, "train.name=part", method="kd"))
    sigterm_during_step(part, 9)  # epoch 2 of 3, step 3 of 6
    with pytest.raises(TrainingInterrupted):
        part.fit()
    assert read_file(part.ckpt_path)["progress"]["step_in_epoch"] == 3
    resumed = Trainer(tiny_config(tmp_path, *STRATEGY, "train.name=part", method="kd"), resume=True)
    resumed.fit()
    a, b = read_file(full.ckpt_path), read_file(resumed.ckpt_path)
    _states_equal(a["student"], b["student"])
    _states_equal(a["ema"], b["ema"])
    for pid, st in a["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][name]), (pid, name)
    _states_equal(
        read_file(full.run_dir / "student.pt")["state_dict"], read_file(resumed.run_dir / "student.pt")["state_dict"]
    )
    drop = ("images_per_s", "step_time_median_s")
    strip = lambda recs: [{k: v for k, v in r.items() if k not in drop} for r in recs]  # noqa: E731
    assert strip(_records(full.run_dir)) == strip(_records(resumed.run_dir))


def test_logged_learning_rates_are_the_ones_used(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, *STRATEGY))
    used: dict[int, list] = {}
    real = trainer.optimizer.step

    def step(*a, **kw):
        epoch = trainer.global_step // trainer.steps_per_epoch + 1
        used.setdefault(epoch, []).append(trainer.optimizer.param_groups[0]["lr"])
        return real(*a, **kw)

    trainer.optimizer.step = step
    trainer.fit()
    for rec in _records(trainer.run_dir):
        rates = used[rec["epoch"]]
        assert rec["lr"] == rates[0] and rec.get("lr_last", rates[0]) == rates[-1]
        assert len(set(rates)) > 1 and "lr_last" in rec  # warm-up, then decays every half epoch


def test_run_label_smoothing_reaches_the_methods_cross_entropy(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.label_smoothing=0.2", method="kd"))
    batch = next(trainer.run.data.train_batches(0))
    with torch.no_grad():
        out = trainer.step_module(batch, trainer.teacher_outputs(batch), trainer.start)
        logits = trainer.step_module.student_outputs(batch)["x"].logits
    ce_weight = trainer.cfg.method.ce_weight
    torch.testing.assert_close(out.terms["ce"], ce_weight * F.cross_entropy(logits, batch.y, label_smoothing=0.2))
    trainer.lock.release()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["train.ema_export=true"], ["train.ema_export", "train.ema_decay"]),
        (["train.ema_warmup=power"], ["train.ema_warmup", "train.ema_decay"]),
        (["train.label_smoothing=0.1", "method.name=kd", "method.label_smoothing=0.2"], ["disagree"]),
        (["optim.name=rmsprop"], ["optim.name", "rmsprop_tf"]),
        (["optim.eps=0"], ["optim.eps"]),
        (["train.select_by=ema_top1"], ["train.select_by", "with train.ema_decay"]),
    ],
)
def test_bad_strategy_settings_exit_2_and_write_nothing(tmp_path, capsys, overrides, words):
    cfg = REPO / "configs" / "debug" / "digits_ce.yaml"
    code = main(["train", str(cfg), f"train.run_dir={tmp_path / 'runs'}", "train.threads=1", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert all(w in err for w in words), err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ B2 / B3 files
def _tiny(strategy: str, tmp_path: Path, teacher: str, *extra: str) -> list[str]:
    """The strategy file's settings on synthetic 32-pixel data with tiny models, KD from a tiny teacher."""
    return [
        "train",
        str(REPO / "configs" / "imagenet" / "strategies" / f"{strategy}.yaml"),
        "data.name=synthetic",
        "data.image_size=32",
        "data.num_classes=4",
        "data.train_size=64",
        "data.test_size=32",
        "data.batch_size=16",
        "data.eval_batch_size=32",
        "model.student=convnet_xs",
        "model.student_drop_path=0",  # B3's 0.2 is Swin-T's; the tiny ConvNet has no stochastic depth
        "method.name=kd",
        "model.teachers.0.name=convnet_s",
        f"model.teachers.0.checkpoint={teacher}",
        "train.epochs=2",
        "train.device=cpu",
        "train.threads=1",
        f"train.run_dir={tmp_path / 'runs'}",
        "log.progress=off",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("strategy_teacher")
    cfg = tiny_config(tmp, "model.student=convnet_s", "data.image_size=32", "train.epochs=1")
    trainer = Trainer(cfg)
    trainer.fit()
    return str(trainer.ckpt_path)


@pytest.mark.parametrize("strategy", ["B2", "B3"])
def test_strategy_file_runs_kd_through_the_cli_and_resumes_bitwise_mid_epoch(tmp_path, tiny_teacher, strategy):
    """B2 (RMSpropTF, per-step x0.97 decay after a warm-up, LS, EMA exported, RandAugment, random erasing) and B3
    (AdamW, cosine after a warm-up, LS, colour jitter, Mixup/CutMix) run KD for a few steps through the CLI; a run
    stopped mid-epoch resumes through the CLI to the uninterrupted run's exact weights (and EMA for B2)."""
    args = _tiny(strategy, tmp_path, tiny_teacher, "train.name=full")
    assert main(args) == 0
    full = tmp_path / "runs" / "full"
    summary = json.loads((full / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["finished"]
    cfg = load_config(args[1], [*args[2:-1], "train.name=part"])
    assert cfg.train.label_smoothing == 0.1 and cfg.method.name == "kd"
    if strategy == "B2":
        assert cfg.optim.name == "rmsprop_tf" and cfg.train.ema_export and "ema_top1" in summary["last"]
    else:
        assert cfg.optim.name == "adamw" and cfg.data.mixup_alpha == 0.8 and cfg.data.cutmix_alpha == 1.0
        assert cfg.train.clip_grad_norm == 5.0  # B3 clips: the norms are logged
        last = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])["train"]
        assert last["grad_norm"] > 0 and 0 <= last["grad_clipped"] <= 1
        probe = Trainer(load_config(args[1], [*args[2:-1], "train.name=probe"]))
        batch = next(probe.run.data.train_batches(0))  # teacher and student see mixed images, CE the mixed labels
        assert batch.y_soft is not None and batch.y_soft.shape == (16, 4)
        probe.lock.release()
    part = Trainer(cfg)
    sigterm_during_step(part, 6)  # epoch 2, step 2 of 4
    with pytest.raises(TrainingInterrupted):
        part.fit()
    assert main([*_tiny(strategy, tmp_path, tiny_teacher, "train.name=part"), "--resume"]) == 0
    a, b = read_file(full / "checkpoint.pt"), read_file(tmp_path / "runs" / "part" / "checkpoint.pt")
    _states_equal(a["student"], b["student"])
    if strategy == "B2":
        _states_equal(a["ema"], b["ema"])
    _states_equal(
        read_file(full / "student.pt")["state_dict"], read_file(tmp_path / "runs" / "part" / "student.pt")["state_dict"]
    )


def test_the_store_and_the_report_carry_the_ema_accuracy(tmp_path):
    from kdlab.experiments.report import fmt, summarize
    from kdlab.experiments.stats import markdown_sections
    from kdlab.experiments.store import read_run_dir, record_from_run

    trainer = Trainer(tiny_config(tmp_path, "train.ema_decay=0.9", "train.epochs=1"))
    summary = trainer.fit()
    row = record_from_run(read_run_dir(trainer.run_dir))
    assert json.loads(row["metrics"])["last"]["ema_top1"] == summary["last"]["ema_top1"]
    lines = markdown_sections(summarize([row]), fmt)
    header = next(line for line in lines if line.startswith("| row |"))
    assert header.split(" | ")[3:] == ["top1", "top5", "ema_top1", "ema_top5 |"]
    assert lines[lines.index(header) + 2].endswith(
        f"| {summary['last']['ema_top1']:.2f} | {summary['last']['ema_top5']:.2f} |"
    )


def test_the_best_epoch_can_be_chosen_by_the_ema(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.ema_decay=0.5", "train.select_by=ema_top1", "train.epochs=3"))
    summary = trainer.fit()
    records = _records(trainer.run_dir)
    best = max(records, key=lambda r: r["test"]["ema_top1"])  # the first of equals, as max()
    assert summary["best"]["epoch"] == best["epoch"] == summary["ema"]["best"]["epoch"]
    assert summary["best"]["ema_top1"] == summary["ema"]["best"]["top1"] == best["test"]["ema_top1"]
