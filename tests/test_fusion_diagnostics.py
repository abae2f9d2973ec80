"""Fusion diagnostics (issue 22): the logged per-epoch statistics of the fusion ratio and of the ratio network's
inputs, checked against direct computation on a fixed batch, on a tiny run, and through ``kdlab analyze fusion``."""

from __future__ import annotations

import json

import pytest
import torch

from kdlab.analysis import AnalysisError
from kdlab.analysis.fusion import epoch_table, fusion, read_epochs
from kdlab.cli.main import main
from kdlab.config import build_config
from kdlab.losses import fusion as fusion_losses
from kdlab.methods import build_method
from kdlab.methods.base import BuildContext
from kdlab.train.trainer import Trainer
from kdlab.types import Batch, Outputs, Progress, StepIO

from conftest import tiny_config

K = 4


def _io(b: int = 16, seed: int = 0) -> StepIO:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, K, generator=g) * 2, torch.randn(b, K, generator=g) * 3
    y = torch.arange(b) % K
    batch = Batch(x=torch.zeros(b, 3, 4, 4), y=y, index=torch.arange(b))
    return StepIO({"x": Outputs(s)}, ({"x": Outputs(t)},), batch, Progress(steps_per_epoch=10, total_epochs=2))


def _tgeo(**fields):
    cfg = build_config({"method": {"name": "tgeo_kd", **fields}}).method
    method = build_method(cfg, BuildContext(num_classes=K))
    with torch.no_grad():  # a ratio that differs per sample
        last = method.ratio_net.net[-1]
        last.weight.normal_(generator=torch.Generator().manual_seed(1))
    return method


def test_logged_ratio_statistics_match_direct_computation():
    method, io = _tgeo(), _io()
    metrics = method.loss(io).metrics
    ratio = method.sample_weights(io).double()
    assert float(metrics["alpha.mean"]) == pytest.approx(float(ratio.mean()), abs=1e-6)
    assert float(metrics["alpha.std"]) == pytest.approx(float(ratio.std(unbiased=False)), abs=1e-6)
    for c in range(K):
        mean_c = float(metrics[f"alpha.class_mass.{c}"]) / float(metrics[f"alpha.class_share.{c}"])
        assert mean_c == pytest.approx(float(ratio[io.y == c].mean()), abs=1e-6)
    assert sum(float(metrics[f"alpha.class_share.{c}"]) for c in range(K)) == pytest.approx(1.0)
    # each input block of the ratio network: batch mean and std of its per-sample L2 norm
    s_probs = io.s.logits.softmax(-1)
    t_probs = io.teacher_logits().softmax(-1).mean(0)
    g = torch.nn.functional.one_hot(io.y, K).float()
    blocks = {"e_sg": g - s_probs, "e_tg": g - t_probs, "e_st": t_probs - s_probs, "s": s_probs, "t": t_probs, "g": g}
    tbar = method.t_class_mean[io.y]
    blocks.update({"e_bg": g - tbar, "e_sb": tbar - s_probs, "tbar": tbar})
    assert set(fusion_losses.FEATURE_SETS["intra_inter"]) == set(blocks)
    for name, block in blocks.items():
        norms = block.norm(dim=-1)
        assert float(metrics[f"feature.{name}.mean"]) == pytest.approx(float(norms.mean()), abs=1e-5)
        assert float(metrics[f"feature.{name}.std"]) == pytest.approx(float(norms.std(unbiased=False)), abs=1e-5)


def test_rw_kd_logs_its_two_loss_inputs():
    cfg = build_config({"method": {"name": "rw_kd"}}).method
    method, io = build_method(cfg, BuildContext(num_classes=K)), _io()
    metrics = method.loss(io).metrics
    terms = method.sample_terms(io)
    assert float(metrics["feature.gt_loss.mean"]) == pytest.approx(float(terms.gt.mean()), rel=1e-5)
    assert float(metrics["feature.kd_loss.mean"]) == pytest.approx(float(terms.kd.mean()), rel=1e-5)


def test_no_per_class_statistics_beyond_the_limit():
    cfg = build_config({"method": {"name": "ada_kd"}}).method
    method = build_method(cfg, BuildContext(num_classes=40))
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(8, 40, generator=g), torch.randn(8, 40, generator=g), torch.arange(8)
    io = StepIO({"x": Outputs(s)}, ({"x": Outputs(t)},), Batch(x=torch.zeros(8, 3, 4, 4), y=y, index=y), Progress())
    metrics = method.loss(io).metrics
    assert "alpha.std" in metrics and not any(k.startswith("alpha.class_") for k in metrics)


def test_a_tiny_run_logs_per_epoch_statistics_and_the_fusion_view_reads_them(tmp_path, capsys):
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=2", "method.meta_lr=0.05", method="tgeo_kd"))
    trainer.fit()
    run_dir = trainer.ckpt_path.parent
    records = read_epochs(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]  # metrics.jsonl counts epochs from 1
    main_rows, per_class, features = epoch_table(records)
    assert len(main_rows) == len(per_class) == len(features) == 2
    for row, cls in zip(main_rows, per_class):
        assert 0.0 < row["alpha_mean"] < 1.0 and row["alpha_std"] >= 0.0
        assert row["q10"] <= row["q50"] <= row["q90"]
        assert not torch.isnan(torch.tensor(row["heldout_ce"]))
        # the class masses add up to the overall mean ratio
        raw = next(r for r in records if r["epoch"] == row["epoch"])
        total = sum(raw[f"alpha.class_mass.{c}"] for c in range(K))
        assert total == pytest.approx(row["alpha_mean"], rel=1e-5)
        assert len([k for k in cls if k.startswith("class_")]) == K
    assert {k.rsplit(".", 1)[0] for k in features[0] if k != "epoch"} == set(fusion_losses.FEATURE_SETS["intra_inter"])
    result = fusion(run_dir)
    assert result.rows == main_rows and "moves from" in result.notes[1]
    # through the CLI: table printed, files written (PNG included)
    assert main(["analyze", "fusion", str(run_dir), "--out", str(tmp_path / "view")]) == 0
    out = capsys.readouterr().out
    assert "Fusion ratio over training" in out and "teacher-right" in out
    for name in ("fusion.md", "fusion.csv", "fusion.json", "fusion.png", "fusion_per_class.csv", "fusion_features.csv"):
        assert (tmp_path / "view" / name).is_file(), name
    payload = json.loads((tmp_path / "view" / "fusion.json").read_text())
    assert len(payload["rows"]) == 2 and len(payload["tables"]["per_class"]["rows"]) == 2


def test_the_fusion_view_of_a_run_without_a_ratio_is_a_clear_error(tmp_path, capsys):
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=1", method="kd"))
    trainer.fit()
    run_dir = trainer.ckpt_path.parent
    with pytest.raises(AnalysisError, match="logs no fusion ratio"):
        fusion(run_dir)
    assert main(["analyze", "fusion", str(run_dir)]) == 2
    assert "logs no fusion ratio" in capsys.readouterr().err
