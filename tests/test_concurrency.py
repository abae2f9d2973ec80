"""Acceptance (issue #15): two sweeps on one spec train every run exactly once; a second trainer of a run is refused
while the first holds its lock, and no lock survives a kill; eight writers to one store lose no row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from runrecord_util import write_tiny_config

from kdlab.experiments.store import ResultsStore
from kdlab.runlock import RunLock, holder_pid, is_locked

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}


def _kdlab(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kdlab", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        **kw,
    )


def _wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------ the lock
def test_lock_is_reentrant_in_a_process_and_exclusive_across_processes(tmp_path):
    run = tmp_path / "run"
    with RunLock(run), RunLock(run):  # a sweep and the trainer it starts, in one process
        assert is_locked(run) and holder_pid(run) == os.getpid()
        code = textwrap.dedent(
            f"""
            from kdlab.runlock import RunLock, RunLockedError
            try:
                RunLock({str(run)!r}).acquire()
            except RunLockedError as err:
                print(err.pid, str(err))
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True).stdout
        assert out.startswith(f"{os.getpid()} ") and f"is being trained by pid {os.getpid()}" in out
    assert not is_locked(run)
    with RunLock(run, wait=True, timeout_s=1):  # free again at once
        assert holder_pid(run) == os.getpid()


@pytest.mark.slow
def test_a_second_trainer_of_a_run_is_refused_and_no_lock_survives_a_kill(tmp_path):
    cfg = write_tiny_config(tmp_path, epochs=400)
    run = tmp_path / "runs" / "r"
    first = _kdlab("train", cfg)
    try:
        _wait_for(lambda: (run / "checkpoint.pt").is_file(), what="the first checkpoint")
        assert holder_pid(run) == first.pid
        for extra in (["--force"], ["--resume"]):
            second = _kdlab("train", cfg, *extra)
            _out, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert f"is being trained by pid {first.pid}" in err and "Traceback" not in err
            assert not list(run.parent.glob("r.old-*"))  # --force moved nothing aside
        second = _kdlab("train", cfg)  # without a flag: refused before the lock is even asked for
        _out, err = second.communicate(timeout=120)
        assert second.returncode == 2 and "already holds a run" in err
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert not is_locked(run)  # the kernel released the dead process's lock: nothing stale to delete
    again = subprocess.run(
        [sys.executable, "-m", "kdlab", "train", cfg, "train.epochs=1", "--force"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert len(list(run.parent.glob("r.old-*"))) == 1


# ------------------------------------------------------------------------------------------------ two sweeps
@pytest.mark.slow
def test_two_sweeps_on_one_spec_train_every_run_exactly_once(tmp_path):
    config = yaml.safe_load(write_tiny_config(tmp_path, epochs=3).read_text())
    config["data"]["train_size"] = 96  # 6 steps per epoch
    config["train"].pop("name")
    config["train"].pop("run_dir")
    spec = {
        "name": "c",
        "run_dir": str(tmp_path / "sweeps"),
        "seeds": [0, 1, 2, 3],
        "rows": [{"label": "A", "config": config}],
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "results.sqlite"
    a = _kdlab("sweep", spec_path, "--store", store)
    b = _kdlab("sweep", spec_path, "--store", store)
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert [p.returncode for p in (a, b)] == [0, 0], outs
    lines = [line for out, _ in outs for line in out.splitlines() if line.startswith("[")]
    done = [line.split()[-1] for line in lines if " done " in line]
    runs = sorted((tmp_path / "sweeps" / "c").iterdir())
    assert len(runs) == 4 and not [r for r in runs if ".old-" in r.name]
    assert len(done) == 4, lines  # every run trained in exactly one of the two sweeps
    for run in runs:
        epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3], run  # no interleaved or repeated epochs
        assert json.loads((run / "summary.json").read_text())["finished"]
    rows = ResultsStore(store).query(sweep="c")
    assert len(rows) == 4


# ------------------------------------------------------------------------------------------------ the store
def test_eight_writers_to_one_store_lose_no_row(tmp_path):
    path = tmp_path / "shared.sqlite"
    script = textwrap.dedent(
        f"""
        import sys
        from kdlab.experiments.store import ResultsStore
        w = int(sys.argv[1])
        store = ResultsStore({str(path)!r})
        for i in range(25):
            store.record({{"run_dir": f"/w{{w}}/{{i}}", "sweep": "eight", "seed": i, "last_top1": w + i / 100}})
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=ENV) for w in range(8)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 8
    rows = ResultsStore(path).query(sweep="eight")
    assert {r["run_dir"] for r in rows} == {f"/w{w}/{i}" for w in range(8) for i in range(25)}
    assert len(rows) == 200


@pytest.mark.slow
def test_a_sweep_defers_a_run_another_process_holds_and_trains_it_once_the_lock_is_free(tmp_path):
    from kdlab.experiments.spec import parse_spec
    from kdlab.experiments.sweep import run_sweep

    config = yaml.safe_load(write_tiny_config(tmp_path, epochs=1).read_text())
    for key in ("name", "run_dir"):
        config["train"].pop(key)
    spec = parse_spec(
        {"name": "d", "run_dir": str(tmp_path / "sweeps"), "seeds": [0, 1], "rows": [{"label": "A", "config": config}]}
    )
    held = tmp_path / "sweeps" / "d" / "A__convnet_xs__s0"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom kdlab.runlock import RunLock\nRunLock(sys.argv[1]).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(float(sys.argv[2]))",
            str(held),
            "8",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert holder.stdout.readline().strip() == "locked"
    order = []
    outcomes = run_sweep(spec, store_path=tmp_path / "r.sqlite", on_outcome=lambda o, i, n: order.append(o.run.seed))
    holder.wait(timeout=60)
    assert order == [1, 0]  # the held run came last, after its lock was released
    assert [o.status for o in outcomes] == ["done", "done"]
    assert [json.loads(x)["epoch"] for x in (held / "metrics.jsonl").read_text().splitlines()] == [1]
