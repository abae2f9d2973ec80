"""One device, fast (issue 9): mixed precision, channels_last, compile, teacher-output reuse, tcmalloc re-exec."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdlab import allocator
from kdlab.config import ConfigError
from kdlab.train import precision as precision_mod
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted

from conftest import REPO, sigterm_during_step, tiny_config


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision_teacher")
    trainer = Trainer(tiny_config(tmp, "model.student=convnet_s", "train.epochs=2"))
    trainer.fit()
    return str(trainer.ckpt_path)


def _cfg(tmp_path, teacher_ckpt, *overrides, method="kd"):
    return tiny_config(tmp_path, *overrides, method=method, teacher_ckpt=teacher_ckpt)


def _record_loss_inputs(trainer):
    """Wrap the method's loss to record the dtypes it sees, the autocast state and its terms' dtypes."""
    seen = []
    inner = trainer.run.method.loss

    def loss(io):
        out = inner(io)
        seen.append(
            {
                "student": io.s.logits.dtype,
                "teacher": io.t.logits.dtype,
                "autocast": torch.is_autocast_enabled("cpu"),
                "terms": {k: v.dtype for k, v in out.terms.items()},
                "x_channels_last": io.batch.x.is_contiguous(memory_format=torch.channels_last),
                "values": {k: float(v.detach()) for k, v in out.terms.items()},
            }
        )
        return out

    trainer.run.method.loss = loss
    return seen


def _conv_dtypes(model):
    """Record the output dtype of the first convolution of ``model`` at each forward."""
    dtypes = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    return dtypes


def _train_losses(run_dir):
    return [json.loads(line)["train"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------- precision
def test_bf16_trains_in_bf16_with_fp32_losses_and_evaluates(tmp_path, teacher_ckpt):
    trainer = Trainer(_cfg(tmp_path, teacher_ckpt, "train.precision=bf16", "train.epochs=2"))
    seen = _record_loss_inputs(trainer)
    s_convs = _conv_dtypes(trainer.run.student)
    t_convs = _conv_dtypes(trainer.run.teachers[0].model)
    summary = trainer.fit()
    # the models ran in bf16 during training, the method saw fp32 outputs with autocast off, terms are fp32
    assert torch.bfloat16 in s_convs and torch.bfloat16 in t_convs
    assert all(s["student"] == s["teacher"] == torch.float32 for s in seen)
    assert not any(s["autocast"] for s in seen)
    assert all(dt == torch.float32 for s in seen for dt in s["terms"].values())
    # the parameters stay fp32; the run evaluates and records its settings
    assert all(p.dtype == torch.float32 for p in trainer.run.student.parameters())
    assert summary["finished"] and 0.0 <= summary["last"]["top1"] <= 100.0
    assert summary["speed"]["precision"] == "bf16" and summary["speed"]["teacher_precision"] == "bf16"
    assert (trainer.run_dir / "student.pt").is_file()


def test_bf16_first_loss_is_close_to_fp32(tmp_path, teacher_ckpt):
    values = {}
    for p in ("fp32", "bf16"):
        trainer = Trainer(_cfg(tmp_path, teacher_ckpt, f"train.precision={p}", "train.max_steps=1", f"train.name={p}"))
        seen = _record_loss_inputs(trainer)
        trainer.fit()
        values[p] = seen[0]["values"]
    for k in values["fp32"]:  # the same first batch and weights: bf16 rounding of the forwards only
        assert values["bf16"][k] == pytest.approx(values["fp32"][k], rel=0.05, abs=1e-3)


def test_bf16_resume_is_bitwise_exact(tmp_path, teacher_ckpt):
    full = Trainer(_cfg(tmp_path, teacher_ckpt, "train.precision=bf16", "train.name=full"))
    full.fit()
    cut = Trainer(_cfg(tmp_path, teacher_ckpt, "train.precision=bf16", "train.name=cut"))
    sigterm_during_step(cut, 8)
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    Trainer(_cfg(tmp_path, teacher_ckpt, "train.precision=bf16", "train.name=cut"), resume=True).fit()
    a = full.run.student.state_dict()
    b = read_file(cut.ckpt_path)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_may_run_lower_than_the_student(tmp_path, teacher_ckpt):
    trainer = Trainer(_cfg(tmp_path, teacher_ckpt, "train.teacher_precision=bf16", "train.max_steps=2"))
    seen = _record_loss_inputs(trainer)
    s_convs = _conv_dtypes(trainer.run.student)
    t_convs = _conv_dtypes(trainer.run.teachers[0].model)
    summary = trainer.fit()
    assert torch.bfloat16 in t_convs and torch.bfloat16 not in s_convs
    assert seen[0]["teacher"] == torch.float32
    assert summary["speed"]["precision"] == "fp32" and summary["speed"]["teacher_precision"] == "bf16"


def test_fp16_on_cpu_scales_the_loss_and_checkpoints_the_scaler(tmp_path, teacher_ckpt):
    trainer = Trainer(_cfg(tmp_path, teacher_ckpt, "train.precision=fp16", "train.max_steps=3"))
    s_convs = _conv_dtypes(trainer.run.student)
    summary = trainer.fit()
    assert torch.float16 in s_convs and summary["speed"]["precision"] == "fp16"
    state = read_file(trainer.ckpt_path)["grad_scaler"]
    assert state is not None and state["scale"] > 0
    # the scaler's state comes back on resume
    resumed = Trainer(_cfg(tmp_path, teacher_ckpt, "train.precision=fp16", "train.max_steps=3"), resume=True)
    resumed.load_state_dict(read_file(trainer.ckpt_path))
    assert resumed.scaler.get_scale() == state["scale"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.precision=fp8", "train.precision must be one of"),
        ("train.teacher_precision=int8", "train.teacher_precision"),
        ("train.teacher_cache=sometimes", "train.teacher_cache must be bool or one of 'auto'"),
        ("train.replay_epochs=-1", "train.replay_epochs must be >= 0, got -1"),
    ],
)
def test_bad_speed_settings_are_config_errors(tmp_path, teacher_ckpt, override, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(_cfg(tmp_path, teacher_ckpt, override))


def test_precision_policy_rejects_devices_without_autocast(monkeypatch):
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    from kdlab.config import TrainConfig

    with pytest.raises(ConfigError, match="autocast is not available"):
        precision_mod.Precision.from_config(TrainConfig(precision="bf16"), torch.device("cpu"))
    # fp32 needs no autocast
    assert precision_mod.Precision.from_config(TrainConfig(), torch.device("cpu")).name == "fp32"


# ------------------------------------------------------------------------------------------- channels_last
def test_channels_last_run_equals_contiguous_run(tmp_path, teacher_ckpt):
    base = Trainer(_cfg(tmp_path, teacher_ckpt, "train.max_steps=4", "train.name=nchw"))
    base.fit()
    cl = Trainer(_cfg(tmp_path, teacher_ckpt, "train.max_steps=4", "train.name=nhwc", "train.channels_last=true"))
    seen = _record_loss_inputs(cl)
    summary = cl.fit()
    assert all(s["x_channels_last"] for s in seen)
    conv = next(m for m in cl.run.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert summary["speed"]["channels_last"] is True
    a, b = base.run.student.state_dict(), cl.run.student.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    for x, y in zip(_train_losses(base.run_dir), _train_losses(cl.run_dir)):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)


# -------------------------------------------------------------------------------------------------- compile
def test_compile_falls_back_with_a_warning_when_unavailable(tmp_path, teacher_ckpt, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler on this machine")

    monkeypatch.setattr(torch, "compile", broken)
    eager = Trainer(_cfg(tmp_path, teacher_ckpt, "train.max_steps=2", "train.name=eager"))
    eager.fit()
    with caplog.at_level("WARNING", logger="kdlab"):
        trainer = Trainer(_cfg(tmp_path, teacher_ckpt, "train.max_steps=2", "train.name=c", "train.compile=true"))
        summary = trainer.fit()
    assert summary["speed"]["compile"].startswith("fallback: RuntimeError: no compiler")
    assert "runs eagerly" in caplog.text
    a, b = eager.run.student.state_dict(), trainer.run.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_step_failing_at_its_first_call_reruns_eagerly(caplog):
    calls = []

    class Step(torch.nn.Module):
        def forward(self, x):
            calls.append("eager")
            return x * 2

    def fake_compile(module):
        def compiled(*args):
            raise RuntimeError("inductor: C++ compile failed")

        return compiled

    step = Step()
    original = torch.compile
    torch.compile = fake_compile
    try:
        wrapped = precision_mod.CompiledStep(step, enabled=True)
    finally:
        torch.compile = original
    assert wrapped.status == "pending"
    with caplog.at_level("WARNING", logger="kdlab"):
        assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))
    assert wrapped.status.startswith("fallback: RuntimeError: inductor") and calls == ["eager"]
    assert torch.equal(wrapped(torch.ones(1)), torch.full((1,), 2.0)) and calls == ["eager", "eager"]
    assert precision_mod.CompiledStep(step, enabled=False).status == "off"


@pytest.mark.slow
def test_compiled_run_matches_eager(tmp_path, teacher_ckpt):
    eager = Trainer(_cfg(tmp_path, teacher_ckpt, "train.max_steps=3", "train.name=eager"))
    eager.fit()
    comp = Trainer(_cfg(tmp_path, teacher_ckpt, "train.max_steps=3", "train.name=comp", "train.compile=true"))
    summary = comp.fit()
    assert summary["speed"]["compile"] == "compiled"
    a, b = eager.run.student.state_dict(), comp.run.student.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- teacher cache
def test_teacher_cache_over_replayed_epochs_is_exact(tmp_path, teacher_ckpt):
    common = ("train.replay_epochs=2", "train.epochs=4", "data.augment=crop_flip")
    off = Trainer(_cfg(tmp_path, teacher_ckpt, *common, "train.name=nocache"))
    off.fit()
    on = Trainer(_cfg(tmp_path, teacher_ckpt, *common, "train.name=cache", "train.teacher_cache=on"))
    calls = []
    compute = on.teacher_cache.compute
    on.teacher_cache.compute = lambda batch: calls.append(batch.size) or compute(batch)
    summary = on.fit()
    # identical losses and weights; the teacher ran only in the first R=2 epochs (96 samples each)
    assert _train_losses(on.run_dir) == _train_losses(off.run_dir)
    a, b = off.run.student.state_dict(), on.run.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sum(calls) == 2 * 96
    cache = summary["speed"]["teacher_cache"]
    assert cache["kind"] == "replay" and cache["hits"] == 2 * 96 and cache["misses"] == 2 * 96


def test_replay_epochs_repeat_the_data_stream(tmp_path, teacher_ckpt):
    trainer = Trainer(_cfg(tmp_path, teacher_ckpt, "train.replay_epochs=2", "train.max_steps=1"))
    assert [trainer._data_epoch(e) for e in range(5)] == [0, 1, 0, 1, 0]
    b0 = next(trainer.run.data.train_batches(trainer._data_epoch(0)))
    b2 = next(trainer.run.data.train_batches(trainer._data_epoch(2)))
    assert torch.equal(b0.x, b2.x) and torch.equal(b0.index, b2.index)


def test_teacher_cache_per_sample_without_augmentation(tmp_path, teacher_ckpt):
    common = ("data.augment=none", "train.epochs=3")
    off = Trainer(_cfg(tmp_path, teacher_ckpt, *common, "train.name=nocache"))
    off.fit()
    on = Trainer(_cfg(tmp_path, teacher_ckpt, *common, "train.name=cache", "train.teacher_cache=auto"))
    summary = on.fit()
    cache = summary["speed"]["teacher_cache"]
    assert cache["kind"] == "sample" and cache["precomputed"] == 96 and cache["hits"] == 3 * 96
    assert cache["bytes"] == 96 * 4 * 4  # [T=1, N=96, K=4] float32
    for x, y in zip(_train_losses(off.run_dir), _train_losses(on.run_dir)):
        for k in x:  # each sample's teacher logits come from another batch composition: equal up to rounding
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-7)
    a, b = off.run.student.state_dict(), on.run.student.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


def test_teacher_cache_resume_matches_uninterrupted(tmp_path, teacher_ckpt):
    common = ("train.replay_epochs=1", "train.teacher_cache=on")
    full = Trainer(_cfg(tmp_path, teacher_ckpt, *common, "train.name=full"))
    full.fit()
    cut = Trainer(_cfg(tmp_path, teacher_ckpt, *common, "train.name=cut"))
    sigterm_during_step(cut, 9)  # mid-epoch 2: the resumed process refills the cache from the replayed batches
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    Trainer(_cfg(tmp_path, teacher_ckpt, *common, "train.name=cut"), resume=True).fit()
    a, b = full.run.student.state_dict(), read_file(cut.ckpt_path)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("fitnet", ("data.augment=none",), "reads teacher feature taps"),
        ("mlkd", ("data.augment=none",), "reads the views"),
        ("kd", ("data.augment=crop_flip",), "set data.augment=none, or train.replay_epochs=R"),
        ("ce", ("data.augment=none",), "reads no teacher"),
    ],
)
def test_teacher_cache_refuses_what_it_cannot_reuse(tmp_path, teacher_ckpt, method, overrides, message):
    from kdlab.methods import METHODS

    student = METHODS.meta(method).get("test_student")
    extra = (f"model.student={student}",) if student else ()
    ckpt = teacher_ckpt if method != "ce" else None
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config(tmp_path, *overrides, *extra, "train.teacher_cache=on", method=method, teacher_ckpt=ckpt))
    trainer = Trainer(
        tiny_config(tmp_path, *overrides, *extra, "train.teacher_cache=auto", method=method, teacher_ckpt=ckpt)
    )
    assert trainer.teacher_cache is None and message in trainer.teacher_cache_reason


def test_bad_speed_setting_exits_2_on_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), allocator.OPT_OUT: "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdlab",
            "train",
            "configs/debug/digits_kd.yaml",
            "train.teacher_cache=on",
            "data.augment=crop_flip",
            f"train.run_dir={tmp_path}",
            "model.teachers.0.checkpoint=null",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "train.teacher_cache=on" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------- tcmalloc
def test_reexec_plan_preloads_the_library_once():
    env = {"PATH": "/bin", "LD_PRELOAD": "libother.so"}
    new, reason = allocator.reexec_plan(env, platform="linux", library="/opt/lib/libtcmalloc_minimal.so.4")
    assert new["LD_PRELOAD"] == "/opt/lib/libtcmalloc_minimal.so.4 libother.so"
    assert new[allocator.MARKER] == "1" and new["PATH"] == "/bin" and "preloading" in reason
    assert int(new[allocator.REPORT_THRESHOLD]) >= 2**40
    assert env == {"PATH": "/bin", "LD_PRELOAD": "libother.so"}  # the caller's mapping is not modified
    # the re-executed process (marker set, library preloaded) does not re-exec again
    again, reason = allocator.reexec_plan(new, platform="linux", library="/opt/lib/libtcmalloc_minimal.so.4")
    assert again is None and reason == "already re-executed"


@pytest.mark.parametrize(
    ("env", "kwargs", "reason"),
    [
        ({allocator.OPT_OUT: "1"}, {}, "disabled"),
        ({}, {"opt_out": True}, "disabled"),
        ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, {}, "already preloaded"),
        ({}, {"platform": "darwin"}, "not used on darwin"),
        ({allocator.MARKER: "1"}, {}, "already re-executed"),
    ],
)
def test_reexec_plan_leaves_the_process_alone(env, kwargs, reason):
    kwargs = {"platform": "linux", "library": "/x/libtcmalloc.so.4", **kwargs}
    new, why = allocator.reexec_plan(env, **kwargs)
    assert new is None and reason in why


def test_reexec_plan_without_a_library_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda env=None: None)
    new, why = allocator.reexec_plan({}, platform="linux")
    assert new is None and "libgoogle-perftools4" in why


def test_find_tcmalloc_searches_override_ldconfig_and_dirs(tmp_path, monkeypatch):
    fake = tmp_path / "libtcmalloc_minimal.so.4"
    fake.write_bytes(b"")
    assert allocator.find_tcmalloc({allocator.OVERRIDE: str(fake)}) == str(fake)
    assert allocator.find_tcmalloc({allocator.OVERRIDE: str(tmp_path / "missing.so")}) is None
    monkeypatch.setattr(allocator, "_ldconfig_paths", lambda: [])
    assert allocator.find_tcmalloc({}, search_dirs=[str(tmp_path / "empty"), str(tmp_path)]) == str(fake)
    assert allocator.find_tcmalloc({}, search_dirs=[str(tmp_path / "empty")]) is None


def test_loaded_tcmalloc_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.9\n"
        "7f04-7f05 rw-p 00000000 00:00 0 [heap]\n"
    )
    assert allocator.loaded_tcmalloc(str(maps)) == "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.9"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator.loaded_tcmalloc(str(maps)) is None
    assert allocator.loaded_tcmalloc(str(tmp_path / "none")) is None


def _train_cli(tmp_path, name, *extra, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in (allocator.MARKER, allocator.OPT_OUT, "LD_PRELOAD")}
    env.update({"PYTHONPATH": str(REPO), **(env_extra or {})})
    args = ["configs/debug/digits_ce.yaml", "train.max_steps=1", f"train.run_dir={tmp_path}", f"train.name={name}"]
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab", "-v", *extra, "train", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((tmp_path / name / "summary.json").read_text())["speed"]["allocator"]


def test_cli_reexecs_once_with_a_fake_library_and_records_what_is_loaded(tmp_path):
    fake = tmp_path / "libtcmalloc_fake.so"  # not a shared object: the loader ignores it, the run goes on
    fake.write_bytes(b"not an ELF file")
    proc, alloc = _train_cli(tmp_path, "fake", env_extra={allocator.OVERRIDE: str(fake)})
    assert proc.stderr.count("re-executing") == 1  # the child saw the marker and did not re-exec again
    assert "is not loaded" in proc.stderr and alloc == "system"


@pytest.mark.parametrize(
    ("flag", "env", "reexec"), [([], {}, True), (["--no-tcmalloc"], {}, False), ([], {"opt": "1"}, False)]
)
def test_cli_reexec_decision_through_the_entry_point_in_process(tmp_path, monkeypatch, flag, env, reexec):
    """Fast sibling of the real-process tests around it: ``kdlab [--no-tcmalloc] train`` as the console script calls
    it (``main()`` reading ``sys.argv``), with a library found and ``os.execve`` recorded instead of run (its
    failure is the documented fallback: the run goes on with the system allocator)."""
    from kdlab.cli.main import main

    fake = tmp_path / "libtcmalloc_fake.so"
    fake.write_bytes(b"not an ELF file")
    for var in (allocator.MARKER, allocator.OPT_OUT, "LD_PRELOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(allocator.OVERRIDE, str(fake))
    if env:
        monkeypatch.setenv(allocator.OPT_OUT, env["opt"])
    calls: list[dict] = []

    def execve(path, args, new_env):
        calls.append(dict(new_env))
        raise OSError("recorded by the test")

    monkeypatch.setattr(allocator.os, "execve", execve)
    cfg = str(REPO / "configs/debug/digits_ce.yaml")
    monkeypatch.setattr(sys, "argv", ["kdlab", *flag, "train", cfg, "train.max_steps=1", f"train.run_dir={tmp_path}"])
    assert main() == 0
    assert len(calls) == int(reexec)
    if reexec:
        assert calls[0]["LD_PRELOAD"].split()[0] == str(fake) and calls[0][allocator.MARKER] == "1"


@pytest.mark.slow
def test_cli_opt_outs(tmp_path):
    for name, extra, env in (("flag", ["--no-tcmalloc"], None), ("env", [], {allocator.OPT_OUT: "1"})):
        proc, alloc = _train_cli(tmp_path, name, *extra, env_extra=env)
        assert "re-executing" not in proc.stderr and alloc == "system"


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="no tcmalloc library installed here")
def test_cli_runs_with_the_installed_tcmalloc(tmp_path):
    proc, alloc = _train_cli(tmp_path, "real")
    assert alloc.startswith("tcmalloc (") and "tcmalloc preloaded" in proc.stderr
