"""``kdlab sweep``: spec expansion, skip / resume / restart, failures and corrupt runs reported, the shipped specs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_cli import kdlab

from kdlab.config import ConfigError, build_config
from kdlab.experiments.spec import config_hash, expand, load_spec, parse_spec
from kdlab.experiments.store import ResultsStore
from kdlab.experiments.sweep import plan_action, run_sweep

from conftest import REPO, sigterm_during_step

SYNTH = {"name": "synthetic", "num_classes": 4, "image_size": 8, "train_size": 64, "test_size": 32, "batch_size": 16}


def tiny(method: str = "ce", teacher_ckpt: str | None = None, **train) -> dict:
    """A raw config that trains in a fraction of a second (4 steps per epoch)."""
    raw = {
        "model": {"student": "convnet_xs"},
        "data": dict(SYNTH),
        "method": {"name": method},
        "optim": {"lr": 0.05, "milestones": [2]},
        "train": {"epochs": 2, "device": "cpu", "threads": 1, **train},
    }
    if method != "ce":
        raw["model"]["teachers"] = [{"name": "convnet_s", "checkpoint": teacher_ckpt}]
    return raw


def spec_of(tmp_path, rows, seeds=(0, 1), **extra):
    return parse_spec({"name": "t", "run_dir": str(tmp_path / "runs"), "seeds": list(seeds), "rows": rows, **extra})


def test_expand_crosses_rows_grid_and_seeds_with_override_precedence(tmp_path):
    cfg_b = {**tiny("kd"), "target": {"top1": 40.0}}
    spec = spec_of(
        tmp_path,
        [
            {"label": "A", "config": tiny("kd"), "overrides": {"optim.lr": 0.3}, "target": 50},
            {"label": "B", "config": cfg_b, "pair": "big→small"},
        ],
        overrides={"optim.lr": 0.2, "train.epochs": 3},
        grid={"method.temperature": [2, 4]},
    )
    runs = expand(spec, threads=7)
    assert len(runs) == 2 * 2 * 2
    assert [(r.label, r.grid["method.temperature"], r.seed) for r in runs[:4]] == [
        ("A", 2, 0),
        ("A", 2, 1),
        ("A", 4, 0),
        ("A", 4, 1),
    ]
    a, b = runs[0], runs[4]
    assert a.config["optim"]["lr"] == 0.3 and b.config["optim"]["lr"] == 0.2  # the row's override wins
    assert a.config["method"]["temperature"] == 2.0 and runs[2].config["method"]["temperature"] == 4.0
    assert all(r.config["train"]["epochs"] == 3 and r.config["train"]["threads"] == 7 for r in runs)
    assert (a.target, b.target) == (50.0, 40.0)  # the row's target, else the config's target.top1
    assert (a.pair, b.pair) == ("convnet_s→convnet_xs", "big→small")
    assert a.run_dir == tmp_path / "runs" / "t" / "A__convnet_s-convnet_xs__temperature2__s0"
    assert a.config["train"]["seed"] == 0 and runs[1].config["train"]["seed"] == 1
    assert len({r.run_dir for r in runs}) == 8 and len({r.config_hash for r in runs}) == 8
    # operational keys do not change the hash; what the run computes does
    again = expand(spec, threads=1)[0]
    assert again.config_hash == a.config_hash
    changed = {**a.config, "optim": {**a.config["optim"], "lr": 0.31}}
    assert config_hash(changed) != a.config_hash


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "t", "rwos": []}, r"unknown key 'rwos'.*Did you mean 'rows'"),
        ({"name": "t", "rows": [{"label": "A", "config": "nope.yaml"}]}, r"row 'A'.*nope\.yaml.*does not exist"),
        ({"name": "t", "seeds": [0, 0], "rows": [{"label": "A", "config": {}}]}, "repeat a seed"),
        ({"name": "t", "seeds": "0", "rows": [{"label": "A", "config": {}}]}, "seeds must be a non-empty list"),
        ({"name": "t", "grid": {"optim.lr": 0.1}, "rows": [{"label": "A", "config": {}}]}, r"grid\.optim\.lr must"),
        ({"name": "t", "rows": [{"label": "A", "config": {}}] * 2}, "two runs map to"),
        ({"name": "t", "rows": [{"label": "A", "config": {}, "overrides": {"optim.lr": "x"}}]}, "optim.lr must be"),
        ({"name": "a b", "rows": [{"label": "A", "config": {}}]}, "name must be"),
        ({"name": "t", "rows": [{"label": "A", "config": {}, "target": "high"}]}, "target must be a number"),
    ],
)
def test_spec_errors_name_the_problem(tmp_path, raw, message):
    with pytest.raises(ConfigError, match=message):
        expand(parse_spec(raw, tmp_path / "spec.yaml"))


def _summary(run) -> dict:
    return json.loads((run.run_dir / "summary.json").read_text())


def test_sweep_skips_finished_runs_reports_failures_and_corrupt_dirs(tmp_path):
    store = tmp_path / "r.sqlite"
    rows = [
        {"label": "ce", "config": tiny()},
        {"label": "kd", "config": tiny("kd")},
        {"label": "broken", "config": tiny("kd", teacher_ckpt=str(tmp_path / "missing.pt"))},
    ]
    spec = spec_of(tmp_path, rows, seeds=[3])
    first = run_sweep(spec, store_path=store)
    assert [o.status for o in first] == ["done", "done", "failed"]  # the failing row did not stop the others
    assert "missing.pt" in first[2].message and (first[2].run.run_dir / "sweep_error.txt").is_file()
    assert ResultsStore(store).count() == 2
    row = ResultsStore(store).query(sweep="t", where=["row_label=kd", "seed=3"])[0]
    assert row["last_top1"] == _summary(first[1].run)["last"]["top1"] and row["finished"] == 1
    assert json.loads(row["grid"]) == {} and row["wall_time_s"] > 0 and row["config_hash"] == first[1].run.config_hash
    assert (row["method"], row["teachers"], row["student"], row["pair"]) == (
        "kd",
        "convnet_s",
        "convnet_xs",
        "convnet_s→convnet_xs",
    )

    stamp = (first[0].run.run_dir / "summary.json").stat().st_mtime_ns
    (first[1].run.run_dir / "summary.json").write_text("{ truncated")  # corrupt one finished run
    second = run_sweep(spec, store_path=store)
    assert [o.status for o in second] == ["skipped", "corrupt", "failed"]
    assert "not readable JSON" in second[1].message
    assert (first[0].run.run_dir / "summary.json").stat().st_mtime_ns == stamp  # skipped: not trained again


def test_interrupted_run_is_resumed_and_ends_as_an_uninterrupted_one(tmp_path):
    from kdlab.train.trainer import Trainer, TrainingInterrupted

    spec = spec_of(tmp_path, [{"label": "ce", "config": tiny(epochs=3)}], seeds=[0])
    (run,) = expand(spec)
    trainer = Trainer(build_config(run.config), run_dir=run.run_dir)
    sigterm_during_step(trainer, 5)  # 4 steps per epoch: stops inside epoch 2
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    assert plan_action(run) == ("resume", "checkpoint present")
    epoch1 = (run.run_dir / "metrics.jsonl").read_text()
    (out,) = run_sweep(spec, store_path=tmp_path / "r.sqlite")
    assert (out.action, out.status) == ("resume", "done")
    metrics = (run.run_dir / "metrics.jsonl").read_text()
    assert metrics.startswith(epoch1) and len(metrics.splitlines()) == 3  # continued, not restarted
    assert _summary(out.run)["steps"] == 12 and _summary(out.run)["finished"]

    ref_spec = parse_spec({**_raw(spec), "run_dir": str(tmp_path / "ref")})
    (ref,) = run_sweep(ref_spec, store_path=tmp_path / "r.sqlite")
    assert ref.action == "fresh"
    a = torch.load(out.run.run_dir / "student.pt", weights_only=False)["state_dict"]
    b = torch.load(ref.run.run_dir / "student.pt", weights_only=False)["state_dict"]
    # the trainer's own tests prove bitwise resume; runs later in one process can differ in float rounding (the
    # CPU kernels chosen), so here the resumed run must match the uninterrupted one to rounding
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert _summary(out.run)["last"]["top1"] == _summary(ref.run)["last"]["top1"]


def _raw(spec) -> dict:
    rows = [{"label": r.label, "config": r.config} for r in spec.rows]
    return {"name": spec.name, "run_dir": spec.run_dir, "seeds": spec.seeds, "rows": rows}


def test_changed_config_restarts_the_run(tmp_path):
    spec = spec_of(tmp_path, [{"label": "ce", "config": tiny()}], seeds=[0])
    run_sweep(spec, store_path=tmp_path / "r.sqlite")
    longer = parse_spec({**_raw(spec), "overrides": {"train.epochs": 3}})
    (run,) = expand(longer)
    action, reason = plan_action(run)
    assert action == "restart" and "config changed" in reason
    (out,) = run_sweep(longer, store_path=tmp_path / "r.sqlite")
    assert out.status == "done" and _summary(out.run)["epochs"] == 3
    (again,) = ResultsStore(tmp_path / "r.sqlite").query()  # the same run directory: one row, replaced
    assert again["epochs"] == 3


def test_sweep_cli_with_two_workers_then_dry_run(tmp_path, capsys):
    raw = {"name": "cli", "run_dir": str(tmp_path / "runs"), "seeds": [0, 1]}
    raw["rows"] = [{"label": "ce", "config": tiny(), "target": 30}]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    store = str(tmp_path / "r.sqlite")
    proc = kdlab("sweep", str(spec), "--workers", "2", "--store", store)
    assert "sweep cli: 2 done" in proc.stdout and proc.stdout.count("done ") >= 2
    assert {r["seed"] for r in ResultsStore(store).query(sweep="cli")} == {0, 1}
    from kdlab.cli.main import main

    assert main(["sweep", str(spec), "--dry-run", "--store", store]) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 2 and "2 runs (1 rows x 1 grid points x 2 seeds)" in out
    assert main(["sweep", str(spec), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


SPECS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_sweep_spec_expands_and_its_configs_load(path):
    spec = load_spec(path)
    assert spec.description and spec.name == path.stem
    for row in spec.rows:
        assert row.config.is_file(), f"{row.label}: {row.config}"
    runs = expand(spec)  # loads and strictly checks every row config with every override
    assert len(runs) == len(spec.rows) * len(spec.grid_points()) * len(spec.seeds)
    assert all(r.config["train"]["seed"] in spec.seeds for r in runs)
