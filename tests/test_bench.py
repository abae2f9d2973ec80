"""``kdlab bench`` and the benchmark scripts on tiny models: the tables hold what the runs did."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kdlab import bench
from kdlab.allocator import OPT_OUT, find_tcmalloc
from kdlab.config import ConfigError

from conftest import REPO

TINY = {"teacher": "convnet_s", "student": "convnet_xs", "batch_size": 16, "threads": 1, "image_size": 8}


def _run(*args: str, script: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), OPT_OUT: "1"}
    cmd = [sys.executable, script] if script else [sys.executable, "-m", "kdlab"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_variants_table_records_each_variants_settings():
    names = ["fp32", "bf16+channels_last", "teacher_cache"]
    result = bench.run_variants(names, steps=2, epochs=3, rounds=1, repeats=2, num_classes=4, **TINY)
    assert [r["variant"] for r in result["rows"]] == names
    rows = {r["variant"]: r for r in result["rows"]}
    for r in rows.values():
        assert r["images_per_s"] == pytest.approx(16 / r["step_s"]) and r["step_s"] > 0
        assert r["student_step_s"] > 0 and r["loop_efficiency"] > 0
        assert r["images_per_s_rounds"] == [r["images_per_s_best"]]
    assert rows["fp32"]["speed"]["precision"] == "fp32" and rows["fp32"]["teacher_forward_s"] > 0
    mixed = rows["bf16+channels_last"]["speed"]
    assert mixed["precision"] == "bf16" and mixed["channels_last"] is True and mixed["compile"] == "off"
    cache = rows["teacher_cache"]["speed"]["teacher_cache"]
    # one replayed epoch: the first epoch fills the cache (2 batches of 16), the two later epochs reuse it
    assert cache["kind"] == "replay" and cache["misses"] == 32 and cache["hits"] == 64
    text = bench.format_table(result)
    assert all(n in text for n in names) and "convnet_s -> convnet_xs" in text


def test_methods_table_ratios_are_relative_to_kd():
    result = bench.run_methods("dkd,tekap(kd)", steps=2, warmup=1, rounds=2, num_classes=4, **TINY)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["kd", "dkd", "tekap(kd)"]  # kd is added first, as the reference
    assert rows["kd"]["ratio_to_kd"] == 1.0
    for r in rows.values():
        assert r["timed_steps"] == 4 and r["batches_per_s"] == pytest.approx(1 / r["median_step_s"])
        assert r["ratio_to_kd"] == pytest.approx(r["median_step_s"] / rows["kd"]["median_step_s"])
    assert rows["dkd"]["target_ratio"] == 1.05 and rows["tekap(kd)"]["config"]["inner"] == {"name": "kd"}
    assert "tekap(kd)" in bench.format_table(result)


@pytest.mark.parametrize(
    ("fn", "arg", "message"),
    [
        (bench.method_spec, "tekap(nope)", "unknown method 'nope'"),
        (bench.method_spec, "kd[2]", "is not a method spec"),
        (bench.parse_variants, "fp32,fp64", "unknown bench variant"),
        (bench.parse_variants, "", "unknown bench variant"),
    ],
)
def test_bad_bench_arguments_are_config_errors(fn, arg, message):
    with pytest.raises(ConfigError, match=message):
        fn(arg)


def test_method_spec_of_a_wrapper():
    assert bench.method_spec("tekap(dkd)") == ("tekap(dkd)", {"name": "tekap", "inner": {"name": "dkd"}})
    assert bench.method_spec(" kd ") == ("kd", {"name": "kd"})


def test_cli_bench_writes_json_and_rejects_bad_variants(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--teacher", "convnet_s", "--student", "convnet_xs", "--batch-size", "16", "--image-size", "8"]
    args += ["--num-classes", "4", "--steps", "2", "--epochs", "2", "--rounds", "1", "--threads", "1"]
    proc = _run("bench", *args, "--variants", "fp32,bf16", "--json", str(out))
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == ["fp32", "bf16"] and "bf16" in proc.stdout
    assert result["allocator"] == "system"  # KDLAB_NO_TCMALLOC=1
    from test_cli import kdlab_in_process  # the refusal through the entry point in this process (no interpreter)

    bad = kdlab_in_process("bench", *args, "--variants", "fp64", check=False)
    assert bad.returncode == 2 and "unknown bench variant" in bad.stderr and "Traceback" not in bad.stderr


def test_throughput_script_still_runs():
    args = ["--student", "convnet_xs", "--teacher", "convnet_s", "--batch-size", "16", "--steps", "2"]
    proc = _run(*args, "--epochs", "2", "--repeats", "2", "--threads", "1", script="benchmarks/throughput.py")
    result = json.loads(proc.stdout)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"ce", "kd"} and rows["ce"]["teacher_forward_s"] == 0.0 and rows["kd"]["teacher_forward_s"] > 0
    assert all(r["loop_efficiency"] > 0 for r in rows.values())


@pytest.mark.slow
@pytest.mark.skipif(find_tcmalloc() is None, reason="no tcmalloc library installed here")
def test_compare_allocators_runs_children_with_each_allocator():
    argv = ["variants", "--teacher", "convnet_s", "--student", "convnet_xs", "--batch-size", "16"]
    argv += ["--image-size", "8", "--num-classes", "4", "--steps", "2", "--epochs", "2", "--threads", "1"]
    result = bench.compare_allocators([*argv, "--variants", "fp32"], rounds=1)
    assert result["allocators"]["system"]["allocator"] == "system"
    assert result["allocators"]["tcmalloc"]["allocator"].startswith("tcmalloc (")
    assert "fp32" in bench.format_table(result)
