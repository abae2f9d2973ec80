"""The SQLite results store: rows, queries, concurrent writers, schema version, run-directory import via the CLI."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from test_cli import kdlab
from test_report import TINY_RAW, fake_run, sample_std

from kdlab.experiments.store import (
    SCHEMA_VERSION,
    ResultsStore,
    RunDirError,
    StoreError,
    read_run_dir,
)

from conftest import REPO


def _row(i: int, **kw) -> dict:
    return {
        "run_dir": f"/r/{i}",
        "sweep": "s",
        "row_label": f"m{i % 2}",
        "pair": "a→b",
        "seed": i,
        "grid": '{"optim.lr": 0.01}' if i % 2 else '{"optim.lr": 0.1}',
        "last_top1": float(i),
        **kw,
    }


def test_record_query_filter_and_replace(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    assert store.record([_row(i) for i in range(6)]) == 6
    assert [r["seed"] for r in store.query(sweep="s", where=["row_label=m1"])] == [1, 3, 5]
    assert [r["seed"] for r in store.query(where=["seed=4"])] == [4]  # numeric column: "4" compares as 4
    assert [r["seed"] for r in store.query(where=["optim.lr=0.1"])] == [0, 2, 4]  # a grid key
    assert store.query(sweep="other") == []
    store.record(_row(2, last_top1=99.0))  # re-recording a run directory replaces its row
    assert store.count() == 6 and store.query(where=["seed=2"])[0]["last_top1"] == 99.0
    with pytest.raises(StoreError, match=r"unknown column 'methd'.*Did you mean 'method'"):
        store.query(where=["methd=kd"])
    with pytest.raises(StoreError, match="key=value"):
        store.query(where=["method"])
    with pytest.raises(StoreError, match="unknown store column"):
        store.record({"run_dir": "/x", "colour": 1})


def test_concurrent_writers_lose_no_rows(tmp_path):
    """Four processes, started together, each record 40 runs one transaction at a time into one file."""
    path = tmp_path / "shared.sqlite"
    script = textwrap.dedent(
        f"""
        import sys
        from kdlab.experiments.store import ResultsStore
        w = int(sys.argv[1])
        store = ResultsStore({str(path)!r}, timeout=2.0)
        for i in range(40):
            store.record({{"run_dir": f"/w{{w}}/{{i}}", "sweep": "c", "seed": i, "last_top1": w + i / 100}})
        """
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=env) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    rows = ResultsStore(path).query(sweep="c")
    assert len(rows) == 160
    assert {r["run_dir"] for r in rows} == {f"/w{w}/{i}" for w in range(4) for i in range(40)}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_schema_version_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "old.sqlite"
    ResultsStore(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE schema SET version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, this kdlab uses version"):
        ResultsStore(path)
    proc = kdlab("results", "--store", str(path), check=False)
    assert proc.returncode == 2 and "schema version" in proc.stderr
    (tmp_path / "junk.sqlite").write_text("not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite file"):
        ResultsStore(tmp_path / "junk.sqlite")


def test_read_run_dir_names_what_is_missing_or_corrupt(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        read_run_dir(tmp_path / "nope")
    fake_run(tmp_path / "ok", TINY_RAW, [10.0, 20.0])
    files = read_run_dir(tmp_path / "ok")
    assert files.summary["last"]["top1"] == 20.0 and len(files.config_hash) == 16
    (tmp_path / "ok" / "summary.json").unlink()
    with pytest.raises(RunDirError, match=r"no summary\.json"):
        read_run_dir(tmp_path / "ok")
    fake_run(tmp_path / "bad", TINY_RAW, [10.0])
    (tmp_path / "bad" / "config.yaml").write_text("model: {student: convnet_xs, wings: 2}\n")
    with pytest.raises(RunDirError, match=r"config\.yaml.*does not load"):
        read_run_dir(tmp_path / "bad")


def test_cli_import_query_group_and_csv(tmp_path, capsys):
    values = {0: 61.0, 1: 64.5, 2: 70.0}
    dirs = []
    for seed, v in values.items():
        d = tmp_path / f"kd_s{seed}"
        fake_run(d, {**TINY_RAW, "train": {**TINY_RAW["train"], "seed": seed}}, [v - 1, v])
        dirs.append(str(d))
    (tmp_path / "broken").mkdir()
    store = str(tmp_path / "r.sqlite")
    proc = kdlab("results", "--store", store, "--import", *dirs, str(tmp_path / "broken"), check=False)
    assert proc.returncode == 1 and "3 run(s) recorded" in proc.stdout and "broken" in proc.stderr
    out = tmp_path / "g.csv"
    proc = kdlab(
        "results", "--store", store, "--where", "method=kd", "--group-by", "method", "student", "--csv", str(out)
    )
    assert "1 row(s) from 3 run(s)" in proc.stdout
    (row,) = list(csv.DictReader(out.open()))
    assert row["method"] == "kd" and row["student"] == "convnet_xs" and row["n"] == "3"
    assert float(row["last_top1_mean"]) == pytest.approx(sum(values.values()) / 3)
    assert float(row["last_top1_std"]) == pytest.approx(sample_std(list(values.values())))
    # the same command line in-process (no interpreter start-up): a filter, and a bad key
    from kdlab.cli.main import main

    assert main(["results", "--store", store, "--where", "seed=1"]) == 0
    out_text = capsys.readouterr().out
    assert "64.50" in out_text and "1 row(s)" in out_text
    assert main(["results", "--store", store, "--group-by", "colour"]) == 2
    assert "unknown column 'colour'" in capsys.readouterr().err


def test_a_run_trained_before_a_config_field_existed_still_imports(tmp_path):
    """A run's config.yaml written by an older kdlab lacks fields added since (they resolve to their defaults): the
    hash recorded at training time matches the file as written, so the run imports; a stale summary still fails."""
    import json

    import yaml

    from kdlab.experiments.spec import config_hash

    d = tmp_path / "old"
    fake_run(d, TINY_RAW, [10.0, 20.0])
    raw = yaml.safe_load((d / "config.yaml").read_text())
    new = read_run_dir(d).config_hash
    del raw["data"]["last_batch_min_fraction"]  # a field this run's kdlab did not have yet
    (d / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    summary = json.loads((d / "summary.json").read_text())
    summary["config_hash"] = config_hash(raw)  # what that trainer recorded: the hash of the config it dumped
    (d / "summary.json").write_text(json.dumps(summary))
    assert config_hash(raw) != new
    files = read_run_dir(d)
    assert files.config_hash == new  # the row carries the resolved config's hash, comparable with today's specs
    summary["config_hash"] = "0123456789abcdef"  # the summary of another run
    (d / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(RunDirError, match="belongs to another config"):
        read_run_dir(d)
