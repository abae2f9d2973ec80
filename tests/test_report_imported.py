"""``kdlab report`` on runs brought in with ``kdlab results --import``: rows labelled by their config (method and
pair), the teachers' measured accuracy in the store and in the report's "teacher" row; older stores gain the new
columns."""

from __future__ import annotations

import json
import sqlite3

import pytest

from kdlab.cli.main import main
from kdlab.experiments.store import COLUMNS, SCHEMA_VERSION, ResultsStore
from kdlab.train.trainer import Trainer

from conftest import tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imported")
    teacher = Trainer(tiny_config(tmp, "train.epochs=3", "train.name=teacher", "model.student=convnet_s"))
    teacher.fit()
    dirs = {}
    for name, method, seed, extra in (
        ("a", "kd", 0, []),
        ("b", "kd", 1, []),
        ("c", "kd", 0, ["method.temperature=2"]),
        ("d", "ce", 0, []),
    ):
        t = Trainer(
            tiny_config(
                tmp,
                "train.epochs=1",
                f"train.name={name}",
                f"train.seed={seed}",
                *extra,
                method=method,
                teacher_ckpt=str(teacher.ckpt_path),
            )
        )
        dirs[name] = (t.run_dir, t.fit())
    return tmp, dirs


def test_import_labels_rows_by_config_and_stores_the_teacher(runs, capsys):
    tmp, dirs = runs
    store = tmp / "store.sqlite"
    assert main(["results", "--store", str(store), "--import", *(str(d) for d, _ in dirs.values())]) == 0
    out = capsys.readouterr().out
    assert "kdlab report imported" in out
    rows = {r["run_dir"]: r for r in ResultsStore(store, create=False).query()}
    by_dir = {name: rows[str(d.resolve())] for name, (d, _) in dirs.items()}
    assert [by_dir[n]["row_label"] for n in "abcd"] == ["kd", "kd", "kd (temperature=2.0)", "ce"]
    assert by_dir["a"]["pair"] == "convnet_s→convnet_xs" and by_dir["a"]["sweep"] is None
    measured = dirs["a"][1]["header"]["teachers"][0]["test"]
    for n in "abcd":
        assert by_dir[n]["teacher_top1"] == pytest.approx(measured["top1"])
        assert by_dir[n]["teacher_top5"] == pytest.approx(measured["top5"])
        assert json.loads(by_dir[n]["teachers_test"])[0]["name"] == "convnet_s"


def test_report_on_imported_runs(runs, capsys):
    tmp, dirs = runs
    store = tmp / "store2.sqlite"
    assert main(["results", "--store", str(store), "--import", *(str(d) for d, _ in dirs.values())]) == 0
    capsys.readouterr()
    assert main(["report", "imported", "--store", str(store), "--out", str(tmp / "rep")]) == 0
    md = (tmp / "rep" / "report.md").read_text()
    kd = [dirs[n][1]["last"]["top1"] for n in "ab"]
    mean = sum(kd) / 2
    line = next(x for x in md.splitlines() if x.startswith("| kd |"))
    assert f"{mean:.2f} ±" in line and "(n=2)" in line
    assert any(x.startswith("| kd (temperature=2.0) |") for x in md.splitlines())
    teacher = next(x for x in md.splitlines() if x.startswith("| teacher (measured) |"))
    assert f"{dirs['a'][1]['header']['teachers'][0]['test']['top1']:.2f}" in teacher


def test_an_older_store_gains_the_new_columns_when_written(tmp_path, runs):
    _, dirs = runs
    path = tmp_path / "v1.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE schema (version INTEGER NOT NULL)")
    con.execute("INSERT INTO schema (version) VALUES (1)")
    old = [c for c in COLUMNS if c[0] not in ("teacher_top1", "teacher_top5", "teachers_test")]
    con.execute(f"CREATE TABLE runs ({', '.join(f'{n} {k}' for n, k, _ in old)})")
    con.execute("INSERT INTO runs (run_dir, method, seed, finished) VALUES ('/x', 'kd', 0, 1)")
    con.commit()
    con.close()
    assert ResultsStore(path, create=False).query()[0]["method"] == "kd"  # a reader leaves it as it is
    store = ResultsStore(path)  # a writer upgrades it
    store.record_run_dir(dirs["a"][0])
    rows = store.query()
    assert len(rows) == 2 and rows[0]["teacher_top1"] is None and rows[1]["teacher_top1"] is not None
    con = sqlite3.connect(path)
    assert con.execute("SELECT version FROM schema").fetchone()[0] == SCHEMA_VERSION
    con.close()
