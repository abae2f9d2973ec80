"""Run records that nothing silently rewrites (issue #15): resume allow-list, --force, crash windows, full disks,
file modes, true messages, and the learning rate logged for the epoch it was used in."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch
from catalogue_util import assert_clean_error, run_case
from runrecord_util import record_bytes, write_tiny_config

from kdlab.config import load_config
from kdlab.train import checkpoint as ckpt_module
from kdlab.train.checkpoint import RunWriteError, append_line, atomic_save, read_file
from kdlab.train.runrecord import RESUME_ALLOWED, config_differences, truncate_metrics
from kdlab.train.trainer import NonFiniteLossError, Trainer, TrainingInterrupted


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def finished(tmp_path):
    """A finished 2-epoch run ``tmp_path/runs/r`` and its config file."""
    cfg = write_tiny_config(tmp_path)
    code, _out, err = run_case(["train", cfg])
    assert code == 0, err
    return cfg, tmp_path / "runs" / "r"


# ------------------------------------------------------------------------------------------------ resume
def test_resume_with_changed_seed_and_lr_is_refused_listing_the_keys_and_nothing_is_rewritten(finished):
    cfg, run = finished
    before = record_bytes(run)
    code, out, err = run_case(["train", cfg, "train.seed=3", "optim.lr=0.1", "train.epochs=3", "--resume"])
    assert_clean_error(code, out, err, 2, "optim.lr: 0.05 -> 0.1", "train.seed: 0 -> 3", "2 key(s)")
    assert "train.epochs" not in err.split("Keys that may change")[0]  # an allowed key is not listed as a difference
    assert record_bytes(run) == before


def test_resume_with_only_allowed_changes_continues(finished):
    cfg, run = finished
    args = ["train.epochs=3", "train.eval_every=2", "train.checkpoint_every=2", "log.every_steps=7", "train.threads=1"]
    code, _out, err = run_case(["train", cfg, *args, "--resume"])
    assert code == 0, err
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert "train.epochs: 3" in (run / "config.yaml").read_text().replace("epochs: 3", "train.epochs: 3")


def test_resume_to_fewer_epochs_than_trained_is_refused(finished):
    cfg, run = finished
    before = record_bytes(run)
    code, out, err = run_case(["train", cfg, "train.epochs=1", "--resume"])
    assert_clean_error(code, out, err, 2, "train.epochs=1", "2 epoch(s)")
    assert record_bytes(run) == before


def test_config_differences_and_allow_list_are_documented():
    assert config_differences({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 3]}}) == ["a.c.1"]
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 1, "d": 2}}) == ["a.d"]
    readme = (ckpt_module.Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key in RESUME_ALLOWED:
        assert key in readme, f"README does not document the resume allow-list key {key}"


# ------------------------------------------------------------------------------------------------ --force
def test_force_moves_the_old_run_aside_and_an_interrupted_new_run_leaves_nothing_to_import(finished, monkeypatch):
    cfg, run = finished
    old = record_bytes(run)
    trainer = Trainer(load_config(str(cfg), ["optim.lr=0.02"]), force=True)

    def killed(progress):  # the process dies before its first checkpoint is written
        raise SystemExit(137)

    monkeypatch.setattr(trainer, "save_checkpoint", killed)
    with pytest.raises(SystemExit):
        trainer.fit()
    assert not (run / "summary.json").exists() and not (run / "student.pt").exists()
    assert not (run / "checkpoint.pt").exists()
    (aside,) = run.parent.glob("r.old-*")
    assert record_bytes(aside) == old  # the old run is kept whole, beside
    store = run.parent / "results.sqlite"
    code, _out, err = run_case(["results", "--store", store, "--import", run])
    assert code == 1 and "no summary.json" in err and "Traceback" not in err


def test_a_new_run_beside_results_without_a_checkpoint_moves_them_aside_first(finished):
    cfg, run = finished
    (run / "checkpoint.pt").unlink()  # the results stay, the checkpoint is gone: the same config starts anew
    old = record_bytes(run)
    code, _out, err = run_case(["train", cfg, "train.max_steps=1"])
    assert code == 0, err
    (aside,) = run.parent.glob("r.old-*")
    assert record_bytes(aside) == old
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


def test_import_refuses_a_summary_that_belongs_to_another_config(finished):
    _cfg, run = finished
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["config_hash"]) == 16
    store = run.parent / "results.sqlite"
    code, _out, err = run_case(["results", "--store", store, "--import", run])
    assert code == 0, err  # its own config: recorded
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("lr: 0.05", "lr: 0.07"))
    code, _out, err = run_case(["results", "--store", store, "--import", run])
    assert code == 1 and "belongs to another config" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ crash windows
def test_kill_between_metrics_line_and_checkpoint_rename_leaves_one_line_per_epoch(tmp_path, monkeypatch):
    cfg = write_tiny_config(tmp_path, epochs=3)
    run = tmp_path / "runs" / "r"
    trainer = Trainer(load_config(str(cfg)))
    calls = {"n": 0}
    real = trainer.save_checkpoint

    def save_then_die(progress):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's metrics line is appended; the process dies before its checkpoint exists
            raise SystemExit(137)
        real(progress)

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(SystemExit):
        trainer.fit()
    assert [m["epoch"] for m in _metrics(run)] == [1, 2]
    (run / ".checkpoint.pt.deadbeef.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    code, _out, err = run_case(["train", cfg, "--resume"])
    assert code == 0, err
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_resume_writes_lost_metrics_lines_again_from_the_checkpoint(finished):
    cfg, run = finished
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0])  # the second epoch's line is lost
    code, _out, err = run_case(["train", cfg, "train.epochs=3", "--resume"])
    assert code == 0, err
    now = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert now[0] == lines[0] and [json.loads(x)["epoch"] for x in now] == [1, 2, 3]
    assert json.loads(now[1]) == json.loads(lines[1])


def test_truncate_metrics_drops_lines_after_the_checkpoint_and_a_half_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert truncate_metrics(path, 1) == 2
    assert path.read_bytes() == b'{"epoch": 1}\n'
    assert truncate_metrics(path, 1) == 0


def test_mid_epoch_resume_logs_means_over_the_whole_epoch(tmp_path):
    from conftest import sigterm_during_step

    cfg = write_tiny_config(tmp_path, epochs=2)
    whole = Trainer(load_config(str(cfg), ["train.name=whole"]))
    whole.fit()
    part = Trainer(load_config(str(cfg), ["train.name=part"]))
    sigterm_during_step(part, 5)  # step 2 of epoch 2 (3 steps per epoch)
    with pytest.raises(TrainingInterrupted):
        part.fit()
    resumed = Trainer(load_config(str(cfg), ["train.name=part"]), resume=True)
    resumed.fit()
    a, b = _metrics(tmp_path / "runs" / "whole"), _metrics(tmp_path / "runs" / "part")
    assert [m["epoch"] for m in b] == [1, 2]
    assert a[1]["train"] == b[1]["train"]  # the same floats: the running sums were checkpointed
    assert a[1]["lr"] == b[1]["lr"]


# ------------------------------------------------------------------------------------------------ full disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_no_space_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_continues(tmp_path, monkeypatch):
    cfg = write_tiny_config(tmp_path, epochs=3)
    run = tmp_path / "runs" / "r"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("format") == ckpt_module.CHECKPOINT_FORMAT:
            calls["n"] += 1
            if calls["n"] == 2:
                f.write(b"partial")
                _enospc()
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt_module.torch, "save", save)
    code, out, err = run_case(["train", cfg])
    assert_clean_error(code, out, err, 1, str(run / "checkpoint.pt"), "No space left on device", "--resume")
    state = read_file(run / "checkpoint.pt")
    assert state["progress"]["epoch"] == 1  # the previous checkpoint, intact
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(ckpt_module.torch, "save", real_save)  # space is back
    code, out, err = run_case(["train", cfg, "--resume"])
    assert code == 0, err
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]


def test_no_space_while_appending_metrics_names_the_file_and_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n')

    class Full:
        def __init__(self, p, mode):
            self.f = open(p, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:5])
            self.f.flush()
            _enospc()

        def flush(self):
            pass

    monkeypatch.setattr(ckpt_module, "open", Full, raising=False)
    with pytest.raises(RunWriteError, match=r"metrics file .*metrics\.jsonl.*No space left"):
        append_line(path, '{"epoch": 2}')
    assert path.read_text() == '{"epoch": 1}\n'


def test_no_space_while_writing_the_summary_is_a_clear_error(tmp_path, monkeypatch):
    cfg = write_tiny_config(tmp_path, epochs=1)
    real = ckpt_module._atomic_write

    def atomic_write(path, write, what):
        if path.name == "summary.json":
            return real(path, lambda f: _enospc(), what)
        return real(path, write, what)

    monkeypatch.setattr(ckpt_module, "_atomic_write", atomic_write)
    code, out, err = run_case(["train", cfg])
    assert_clean_error(code, out, err, 1, "summary", "summary.json", "No space left on device")
    assert not (tmp_path / "runs" / "r" / "summary.json").exists()


def test_atomic_save_error_names_the_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    atomic_save({"a": 1}, target)
    before = target.read_bytes()
    monkeypatch.setenv("KDLAB_FSYNC", "1")  # the suite turns fsync off (tests/conftest.py)
    monkeypatch.setattr(ckpt_module.os, "fsync", _enospc)
    with pytest.raises(RunWriteError, match=r"checkpoint.*checkpoint\.pt.*No space left.*intact"):
        atomic_save({"a": 2}, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize(("setting", "fsyncs"), [("1", 2), (None, 2), ("0", 0)])
def test_atomic_writes_fsync_file_and_directory_unless_turned_off(tmp_path, monkeypatch, setting, fsyncs):
    calls = []
    monkeypatch.setattr(ckpt_module.os, "fsync", lambda fd: calls.append(fd))
    if setting is None:
        monkeypatch.delenv("KDLAB_FSYNC", raising=False)
    else:
        monkeypatch.setenv("KDLAB_FSYNC", setting)
    atomic_save({"a": 1}, tmp_path / "checkpoint.pt")
    assert len(calls) == fsyncs and torch.load(tmp_path / "checkpoint.pt") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


# ------------------------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_run_files_get_the_users_umask(tmp_path, umask, mode):
    cfg = write_tiny_config(tmp_path, epochs=1)
    old = os.umask(umask)
    try:
        code, _out, err = run_case(["train", cfg])
    finally:
        os.umask(old)
    assert code == 0, err
    run = tmp_path / "runs" / "r"
    for name in ("checkpoint.pt", "student.pt", "summary.json", "config.yaml", "metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == mode, name


# ------------------------------------------------------------------------------------------------ NaN message
def _nan_at(trainer, step: int) -> None:
    """The loss becomes NaN at the ``step``-th training step (1-based)."""
    real = trainer.step_call
    calls = {"n": 0}

    def call(*args):
        calls["n"] += 1
        out = real(*args)
        if calls["n"] == step:
            out.terms = {k: v * float("nan") for k, v in out.terms.items()}
        return out

    trainer.step_call = call


def test_nan_before_any_checkpoint_says_none_was_written(tmp_path):
    trainer = Trainer(load_config(str(write_tiny_config(tmp_path))))
    _nan_at(trainer, 2)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    assert "No checkpoint was written yet" in str(info.value) and "is kept" not in str(info.value)
    assert not (tmp_path / "runs" / "r" / "checkpoint.pt").exists()


def test_nan_after_a_checkpoint_names_it_with_its_epoch(tmp_path):
    trainer = Trainer(load_config(str(write_tiny_config(tmp_path, epochs=3))))
    _nan_at(trainer, 5)  # epoch 2
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    msg = str(info.value)
    assert str(tmp_path / "runs" / "r" / "checkpoint.pt") in msg and "1 epoch(s)" in msg and "is kept" in msg
    assert read_file(tmp_path / "runs" / "r" / "checkpoint.pt")["progress"]["epoch"] == 1


# ------------------------------------------------------------------------------------------------ lr logging
def test_metrics_log_the_learning_rate_used_during_each_epoch(tmp_path):
    cfg = write_tiny_config(tmp_path, epochs=4, optim={"lr": 0.1, "milestones": [2, 3], "gamma": 0.1})
    trainer = Trainer(load_config(str(cfg)))
    used: dict[int, set] = {}
    real = trainer.optimizer.step

    def step(*a, **kw):
        epoch = trainer.global_step // trainer.steps_per_epoch + 1
        used.setdefault(epoch, set()).add(trainer.optimizer.param_groups[0]["lr"])
        return real(*a, **kw)

    trainer.optimizer.step = step
    trainer.fit()
    logged = [m["lr"] for m in _metrics(tmp_path / "runs" / "r")]
    assert logged == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert [used[e] for e in (1, 2, 3, 4)] == [{logged[0]}, {logged[1]}, {logged[2]}, {logged[3]}]


# ------------------------------------------------------------------------------------------------ signals (unit)
def test_a_second_signal_while_the_checkpoint_is_written_waits_for_it(tmp_path, monkeypatch):
    from kdlab import interrupts

    from conftest import sigterm_during_step

    trainer = Trainer(load_config(str(write_tiny_config(tmp_path))))
    real = ckpt_module.atomic_save

    def save_with_signal(obj, path, what="checkpoint"):
        if what == "checkpoint":
            trainer._on_signal(signal.SIGTERM, None)  # the second signal arrives while the checkpoint is written
        return real(obj, path, what)

    monkeypatch.setattr("kdlab.train.trainer.atomic_save", save_with_signal)
    sigterm_during_step(trainer, 1)  # the first signal: stop after step 1
    with pytest.raises(interrupts.Interrupted, match=r"second signal.*checkpoint\.pt"):
        trainer.fit()
    state = read_file(tmp_path / "runs" / "r" / "checkpoint.pt")  # complete and loadable
    assert state["progress"]["step"] == 1
