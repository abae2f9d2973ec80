"""The bad-input catalogue: every case runs the real ``kdlab`` entry point and must end in a clear error.

Each case asserts the exit code (2: bad input), that no traceback reaches the output, that the message names the
offending key, path or value, and that the fixture tree (a config, a finished run, a results store, data files)
is byte-identical afterwards (SHA-256, mode and mtime of every file). Three groups:

- ``SCHEMA_CASES``: generated from the config schema. Every declared range of every run section and of every
  registered method's ``Config`` (nested ``inner``/``terms`` configs of wrappers included) gets a value just outside
  it; adding a field with a range adds its case.
- ``CASES``: hand-written cases for config values, overrides, config files, CLI arguments, unknown names, run
  directories, results stores and CSV exports.
- ``DATA_CASES``: malformed ``.npz`` data files (layout, dtype, lengths, empty arrays, labels), which fail when the
  run is built; they train in a fresh run directory and must leave no run record in it.

A few cases also run in a child process (``python -m kdlab``) to prove that no traceback reaches stderr there.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from catalogue_util import run_case, run_subprocess, snapshot

from kdlab.config import MethodConfig, RunConfig
from kdlab.methods import METHODS
from kdlab.ranges import field_range

TINY_YAML = """\
model: {student: convnet_xs}
data: {name: synthetic, num_classes: 4, image_size: 8, train_size: 32, test_size: 16, batch_size: 16}
method: {name: ce}
optim: {lr: 0.05, schedule: constant}
train: {epochs: 1, device: cpu, threads: 1, run_dir: RUNS, name: r}
log: {progress: "off"}
"""


@dataclass
class Fixture:
    """The files every case runs against (under ``root``, fingerprinted around each case)."""

    root: Path
    cfg: Path
    runs: Path
    run: Path
    store: Path
    npz: Path

    def fmt(self, text: str, tmp: Path) -> str:
        return text.format(
            cfg=self.cfg, runs=self.runs, run=self.run, store=self.store, npz=self.npz, root=self.root, tmp=tmp
        )


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fixture:
    root = tmp_path_factory.mktemp("catalogue")
    runs = root / "runs"
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_YAML.replace("RUNS", str(runs)))
    code, out, err = run_case(["train", str(cfg)])
    assert code == 0, out + err
    store = root / "results.sqlite"
    code, out, err = run_case(["results", "--store", str(store), "--import", str(runs / "r")])
    assert code == 0, out + err
    # files that are not results stores
    (root / "folder.sqlite").mkdir()
    (root / "junk.sqlite").write_bytes(b"this is not a database\n" * 10)
    (root / "empty.sqlite").write_bytes(b"")
    con = sqlite3.connect(root / "other.sqlite")
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'a')")
    con.commit()
    con.close()
    (root / "a_file").write_text("a plain file\n")
    (root / "not_yaml.yaml").write_text("model: [unclosed\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "sci.yaml").write_text(TINY_YAML.replace("RUNS", str(runs)).replace("lr: 0.05", "lr: -1e-3"))
    spec = "name: t\nseeds: [0]\n{grid}rows:\n  - label: A\n    config: tiny.yaml\n    overrides: {{{row}}}\n"
    (root / "bad_row.yaml").write_text(spec.format(grid="", row="optim.lr: -1e-2"))
    (root / "bad_grid.yaml").write_text(spec.format(grid="grid: {optim.lr: [1e-2, 0]}\n", row="optim.momentum: 0.9"))
    npz = root / "npz"
    npz.mkdir()
    _write_npz_files(npz)
    return Fixture(root=root, cfg=cfg, runs=runs, run=runs / "r", store=store, npz=npz)


def _images(n: int, hw: int = 8, c: int = 3) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, hw, hw, c), dtype=np.uint8)


def _write_npz_files(d: Path) -> None:
    x, y = _images(8), np.array([0, 1, 2, 3, 0, 1, 2, 3])
    np.savez(d / "good.npz", x=x, y=y)
    files = {
        "nchw": dict(x=x.transpose(0, 3, 1, 2).copy(), y=y),
        "float01": dict(x=x.astype(np.float32) / 255, y=y),
        "float255": dict(x=x.astype(np.float64), y=y),
        "int16": dict(x=x.astype(np.int16), y=y),
        "gray": dict(x=x[..., 0], y=y),
        "five_dims": dict(x=x[None], y=y),
        "short_y": dict(x=x, y=y[:5]),
        "long_y": dict(x=x, y=np.concatenate([y, y])),
        "y_2d": dict(x=x, y=y[:, None]),
        "empty": dict(x=x[:0], y=y[:0]),
        "zero_width": dict(x=np.zeros((8, 8, 0, 3), np.uint8), y=y),
        "huge_label": dict(x=x, y=np.array([0, 1, 2, 3, 0, 1, 100000, 3])),
        "negative_label": dict(x=x, y=np.array([0, 1, 2, 3, 0, -1, 2, 3])),
        "float_labels": dict(x=x, y=y.astype(np.float32)),
        "one_class": dict(x=x, y=np.zeros(8, np.int64)),
        "test_label_5": dict(x=x, y=np.array([0, 1, 2, 3, 0, 1, 5, 3])),
        "no_x": dict(images=x, y=y),
        "no_y": dict(x=x, labels=y),
        "short_classes": dict(x=x, y=y, classes=np.array(["a", "b", "c"])),
    }
    for name, arrays in files.items():
        np.savez(d / f"{name}.npz", **arrays)
    (d / "not_zip.npz").write_bytes(b"this is not a zip archive")
    np.save(d / "single.npy", x)
    (d / "sub").mkdir()


def _check(fx: Fixture, tmp: Path, argv: list[str], code: int, needles: list[str], ignore=frozenset()) -> str:
    """Run one case; assert code, no traceback, the needles, and an unchanged fixture tree. Returns the output."""
    before = snapshot(fx.root, ignore)
    got, out, err = run_case([fx.fmt(a, tmp) for a in argv], cwd=tmp)
    text = out + err
    assert got == code, f"exit code {got}, expected {code}:\n{text}"
    assert "Traceback" not in text, text
    for needle in needles:
        assert fx.fmt(needle, tmp) in text, f"{fx.fmt(needle, tmp)!r} not in:\n{text}"
    assert snapshot(fx.root, ignore) == before, "the fixture tree changed"
    return text


# --------------------------------------------------------------------------------------------------------------
# Generated from the schema: a value just outside every declared range


def _yaml_number(v: float, is_int: bool) -> str:
    if math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    return str(int(v)) if is_int else repr(float(v))


def _numeric_kind(tp) -> tuple[bool, bool, bool] | None:
    """(is_int, is_list, is_dict) of an int/float field (optional and list/dict of numbers included), else None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [_numeric_kind(a) for a in typing.get_args(tp) if a is not type(None)]
        return next((k for k in kinds if k), None)
    if origin is list:
        k = _numeric_kind(typing.get_args(tp)[0])
        return (k[0], True, False) if k else None
    if origin is dict:
        k = _numeric_kind(typing.get_args(tp)[1])
        return (k[0], False, True) if k else None
    if tp in (int, float):
        return (tp is int, False, False)
    return None


def schema_cases(cls: type, prefix: str, setup: tuple[str, ...] = ()) -> list[tuple[str, list[str], str]]:
    """``(case id, overrides, key named in the message)`` for each bound of each ranged field of ``cls``."""
    cases = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        r, kind = field_range(f), _numeric_kind(hints[f.name])
        key = f"{prefix}.{f.name}" if prefix else f.name
        if r is not None and kind is not None:
            is_int, is_list, is_dict = kind
            for v in r.outside():
                text = _yaml_number(v, is_int)
                if is_list:
                    cases.append((f"{key}=[{text}]", [*setup, f"{key}=[{text}]"], f"{key}.0"))
                elif is_dict:
                    cases.append((f"{key}.x={text}", [*setup, f"{key}.x={text}"], f"{key}.x"))
                else:
                    cases.append((f"{key}={text}", [*setup, f"{key}={text}"], key))
        default = None
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        nested = [default] if dataclasses.is_dataclass(default) and not isinstance(default, type) else []
        if isinstance(default, list) and default and all(isinstance(d, MethodConfig) for d in default):
            nested, key = default[:1], f"{key}.0"
        for inner in nested:  # sub-sections (data.tabular) and the inner methods of wrappers (tekap, sum, fusion)
            select = (f"{key}.name={inner.name}",) if isinstance(inner, MethodConfig) else ()
            cases += schema_cases(type(inner), key, (*setup, *select))
    return cases


def _all_schema_cases() -> list:
    from kdlab.config import TeacherConfig

    cases = schema_cases(RunConfig, "")  # every section, its sub-sections and the top-level fields (target)
    cases += schema_cases(TeacherConfig, "model.teachers.0", ("model.teachers.0.name=convnet_s",))
    for name in METHODS.names():
        config = METHODS.get(name).Config
        cases += [(f"{name}:{c[0]}", c[1], c[2]) for c in schema_cases(config, "method", (f"method.name={name}",))]
    return [pytest.param(ov, key, id=cid) for cid, ov, key in cases]


SCHEMA_CASES = _all_schema_cases()


@pytest.mark.parametrize(("overrides", "key"), SCHEMA_CASES)
def test_value_outside_a_declared_range_is_refused(fx, tmp_path, overrides, key):
    text = _check(fx, tmp_path, ["train", "{cfg}", *overrides], 2, [key])
    assert f"{key} must be " in text and ", got " in text and "Fix: set" in text, text


def test_schema_cases_cover_every_section_and_method():
    ids = {p.id for p in SCHEMA_CASES}
    for section in ("model.teachers.0.", "data.", "data.tabular.", "optim.", "train.", "log.", "target."):
        assert any(i.startswith(section) for i in ids), section
    for name in METHODS.names():  # every method with a numeric field (all but a few) has cases
        numeric = any(_numeric_kind(t) for t in typing.get_type_hints(METHODS.get(name).Config).values())
        assert not numeric or any(i.startswith(f"{name}:") for i in ids), name
    assert any(".inner." in i for i in ids) and any(".terms.0." in i for i in ids)  # wrappers reach their inner


# --------------------------------------------------------------------------------------------------------------
# Hand-written cases: (id, argv, needles); exit code 2 unless the id says otherwise


def _train(*overrides: str) -> list[str]:
    return ["train", "{cfg}", *overrides]


CASES: list[tuple[str, list[str], list[str]]] = [
    # the values the issue names (they ended in "finished" or in a traceback)
    ("batch_size=-8", _train("data.batch_size=-8"), ["data.batch_size must be", "got -8", ">= 1"]),
    ("epochs=-2", _train("train.epochs=-2"), ["train.epochs must be", "got -2", ">= 1"]),
    ("epochs=0 says eval", _train("train.epochs=0"), ["train.epochs must be", "got 0", "kdlab eval"]),
    ("lr<0", _train("optim.lr=-0.1"), ["optim.lr must be", "got -0.1", "> 0"]),
    ("lr<0 sci", _train("optim.lr=-1e-3"), ["optim.lr must be", "got -0.001", "> 0"]),
    ("lr<0 in a YAML file", ["train", "{root}/sci.yaml"], ["optim.lr must be", "got -0.001"]),
    ("lr=0", _train("optim.lr=0"), ["optim.lr must be", "got 0.0", "> 0"]),
    ("batch_size=0", _train("data.batch_size=0"), ["data.batch_size must be", "got 0"]),
    ("eval_every=0", _train("train.eval_every=0"), ["train.eval_every must be", "got 0"]),
    ("checkpoint_every=0", _train("train.checkpoint_every=0"), ["train.checkpoint_every must be", "got 0"]),
    ("lr=nan", _train("optim.lr=.nan"), ["optim.lr must be", "got nan", "a finite number"]),
    ("lr=inf", _train("optim.lr=.inf"), ["optim.lr must be", "got inf", "a finite number"]),
    ("lr=1e999", _train("optim.lr=1e999"), ["optim.lr must be", "got inf"]),
    ("weight_decay=-5e-4", _train("optim.weight_decay=-5e-4"), ["optim.weight_decay must be", "got -0.0005"]),
    ("val_fraction=1", _train("data.val_fraction=1"), ["data.val_fraction must be", "got 1.0", "in [0, 1)"]),
    ("num_classes=1", _train("data.num_classes=1"), ["data.num_classes must be", "got 1", "at least 2 classes"]),
    ("seed=-1", _train("train.seed=-1"), ["train.seed must be", "got -1"]),
    ("seed too big", _train("train.seed=99999999999"), ["train.seed must be", "got 99999999999"]),
    (
        "temperature=0",
        _train("method.name=kd", "method.temperature=0"),
        ["method.temperature must be", "got 0.0", "> 0"],
    ),
    ("kd_weight<0", _train("method.name=kd", "method.kd_weight=-1e-1"), ["method.kd_weight must be", "got -0.1"]),
    (
        "tekap inner T",
        _train("method.name=tekap", "method.inner.name=kd", "method.inner.temperature=-4"),
        ["method.inner.temperature"],
    ),
    ("sum term weight", _train("method.name=sum", "method.weights=[1, -1]"), ["method.weights.1 must be", "got -1.0"]),
    (
        "milestones decreasing",
        _train("optim.milestones=[3, 2]"),
        ["optim.milestones must be", "got [3, 2]", "increasing"],
    ),
    (
        "milestones repeated",
        _train("optim.milestones=[2, 2]"),
        ["optim.milestones must be", "got [2, 2]", "increasing"],
    ),
    ("milestone 0", _train("optim.milestones=[0, 2]"), ["optim.milestones.0 must be", "got 0"]),
    (
        "crop_scale reversed",
        _train("data.crop_scale=[0.9, 0.1]"),
        ["data.crop_scale must be", "got [0.9, 0.1]", "min <= max"],
    ),
    ("crop_scale one value", _train("data.crop_scale=[0.5]"), ["data.crop_scale must be", "got [0.5]"]),
    ("betas one value", _train("optim.betas=[0.9]"), ["optim.betas must be", "got [0.9]"]),
    ("cosine min_lr > lr", _train("optim.schedule=cosine", "optim.min_lr=1", "optim.lr=0.1"), ["optim.min_lr"]),
    (
        "input_std 0",
        _train("model.teachers.0.name=convnet_s", "model.teachers.0.input_std=[0.2, 0, 0.2]"),
        ["model.teachers.0.input_std.1 must be", "got 0.0"],
    ),
    # wrong types
    ("epochs=abc", _train("train.epochs=abc"), ["train.epochs must be an integer, got 'abc'"]),
    ("epochs=1.5", _train("train.epochs=1.5"), ["train.epochs must be an integer, got 1.5"]),
    ("lr=fast", _train("optim.lr=fast"), ["optim.lr must be a number, got 'fast'"]),
    ("lr=true", _train("optim.lr=true"), ["optim.lr must be a number, got True"]),
    ("lr=1e-3e", _train("optim.lr=1e-3e"), ["optim.lr must be a number, got '1e-3e'"]),
    ("download=maybe", _train("data.download=maybe"), ["data.download must be a boolean"]),
    ("schedule=linear", _train("optim.schedule=linear"), ["optim.schedule must be one of"]),
    ("milestones=5", _train("optim.milestones=5"), ["optim.milestones must be a list"]),
    ("teacher name=3", _train("model.teachers.0.name=3"), ["model.teachers.0.name must be a string"]),
    ("data=5", _train("data=5"), ["data must be a mapping"]),
    ("precision=fp8", _train("train.precision=fp8"), ["train.precision must be one of"]),
    # unknown keys and names
    ("optim.lrr", _train("optim.lrr=0.1"), ["'optim.lrr'", "Did you mean 'lr'"]),
    ("trian", _train("trian.epochs=1"), ["'trian'", "Did you mean 'train'"]),
    ("method.temprature", _train("method.name=kd", "method.temprature=2"), ["'method.temprature'", "'temperature'"]),
    ("unknown method", _train("method.name=kdd"), ["unknown method 'kdd'", "'kd'"]),
    ("method name 3", _train("method.name=3"), ["method.name must be a method name"]),
    ("teacher without name", _train("model.teachers.0.checkpoint=t.pt"), ["missing required config key", "name"]),
    ("chain config in train", _train("chain.assistants.0.model=resnet8"), ["kdlab chain"]),
    # override syntax
    ("override without =", _train("train.epochs"), ["'train.epochs'", "key=value"]),
    ("override empty key", _train("=5"), ["'=5'", "empty key"]),
    ("override index past end", _train("model.teachers.3.name=a"), ["index 3 is past the end"]),
    ("override into a number", _train("optim.lr.x=1"), ["optim.lr", "not a section"]),
    ("override bad YAML", _train("optim.milestones=[1, 2"), ["not valid YAML"]),
    # config files
    ("config missing", ["train", "{root}/nope.yaml"], ["'{root}/nope.yaml' does not exist"]),
    ("config is a folder", ["train", "{runs}"], ["'{runs}' is a folder, not a file"]),
    (
        "config under a file",
        ["train", "{root}/a_file/c.yaml"],
        ["c.yaml' cannot be reached: '{root}/a_file' on its path is a file"],
    ),
    ("config bad YAML", ["train", "{root}/not_yaml.yaml"], ["not_yaml.yaml' is not valid YAML"]),
    ("config is a list", ["train", "{root}/list.yaml"], ["list.yaml' must hold a mapping"]),
    ("show bad value", ["show", "{cfg}", "optim.momentum=1"], ["optim.momentum must be", "got 1.0", "in [0, 1)"]),
    ("show missing config", ["show", "{root}/nope.yaml"], ["nope.yaml' does not exist"]),
    # CLI arguments
    ("no command", [], ["COMMAND"]),
    ("unknown command", ["trian"], ["invalid choice: 'trian'"]),
    ("train without config", ["train"], ["config"]),
    ("unknown flag", ["train", "{cfg}", "--bogus"], ["unrecognized arguments: --bogus"]),
    ("list bogus", ["list", "bogus"], ["invalid choice: 'bogus'"]),
    ("demo seeds abc", ["demo", "--seeds", "abc"], ["invalid int value: 'abc'"]),
    ("eval missing checkpoint", ["eval", "{root}/nope.pt"], ["nope.pt"]),
    (
        "eval batch 0",
        ["eval", "{run}/student.pt", "--data", "eval_batch_size=0"],
        ["data.eval_batch_size must be >= 1"],
    ),
    ("eval test_limit 0", ["eval", "{run}/student.pt", "--data", "test_limit=0"], ["data.test_limit must be >= 1"]),
    ("eval unknown data key", ["eval", "{run}/student.pt", "--data", "bogus=1"], ["unknown config key 'data.bogus'"]),
    ("eval data without =", ["eval", "{run}/student.pt", "--data", "noequals"], ["'data.noequals' must look like"]),
    ("eval a folder", ["eval", "{runs}"], ["'{runs}' holds no student.pt or checkpoint.pt"]),
    ("eval under a file", ["eval", "{root}/a_file/checkpoint.pt"], ["on its path is a file"]),
    ("sweep row override", ["sweep", "{root}/bad_row.yaml"], ["row 'A'", "optim.lr must be > 0, got -0.01"]),
    ("sweep grid value", ["sweep", "{root}/bad_grid.yaml"], ["row 'A'", "optim.lr must be > 0, got 0.0"]),
    ("sweep grid dry run", ["sweep", "{root}/bad_grid.yaml", "--dry-run"], ["optim.lr must be > 0, got 0.0"]),
    ("sweep missing spec", ["sweep", "{root}/nope.yaml"], ["nope.yaml"]),
    ("report missing target", ["report", "nosuchsweep", "--store", "{store}"], ["nosuchsweep"]),
    # run directories
    ("run_dir is a file", _train("train.run_dir={root}/a_file"), ["a_file"]),
    ("run_dir under a file", _train("train.run_dir={root}/a_file/sub"), ["a_file"]),
    ("--run-dir is a file", ["train", "{cfg}", "--run-dir", "{root}/a_file"], ["'{root}/a_file' is a file"]),
    ("existing run without --force", _train(), ["already holds a run", "--resume"]),
    (
        "resume with a bad value",
        ["train", "{cfg}", "data.batch_size=0", "--resume"],
        ["data.batch_size must be", "got 0"],
    ),
    ("force with a bad value", ["train", "{cfg}", "optim.lr=-1", "--force"], ["optim.lr must be", "got -1.0"]),
    ("resume without a checkpoint", ["train", "{cfg}", "train.name=never", "--resume"], ["no checkpoint", "never"]),
    # results stores: refused without writing a byte
    ("store missing (query)", ["results", "--store", "{tmp}/typo.sqlite"], ["typo.sqlite' does not exist"]),
    ("store missing (where)", ["results", "--store", "{tmp}/typo.sqlite", "--where", "method=kd"], ["does not exist"]),
    ("store is a folder", ["results", "--store", "{root}/folder.sqlite"], ["folder.sqlite' is a folder"]),
    ("store is junk", ["results", "--store", "{root}/junk.sqlite"], ["junk.sqlite' is not a usable SQLite file"]),
    ("store is empty", ["results", "--store", "{root}/empty.sqlite"], ["empty.sqlite' is an empty file"]),
    (
        "store is foreign",
        ["results", "--store", "{root}/other.sqlite"],
        ["other.sqlite' is an SQLite database but not", "customers"],
    ),
    ("store is the config", ["results", "--store", "{cfg}"], ["tiny.yaml' is not a usable SQLite file"]),
    ("import into foreign", ["results", "--store", "{root}/other.sqlite", "--import", "{run}"], ["other.sqlite"]),
    ("import into junk", ["results", "--store", "{root}/junk.sqlite", "--import", "{run}"], ["junk.sqlite"]),
    ("import into folder", ["results", "--store", "{root}/folder.sqlite", "--import", "{run}"], ["is a folder"]),
    (
        "import store under a file",
        ["results", "--store", "{root}/a_file/r.sqlite", "--import", "{run}"],
        ["a_file' is a file, not a folder"],
    ),
    ("report store folder", ["report", "somesweep", "--store", "{root}/folder.sqlite"], ["is a folder"]),
    ("report store foreign", ["report", "somesweep", "--store", "{root}/other.sqlite"], ["not a kdlab results store"]),
    ("report store missing", ["report", "somesweep", "--store", "{tmp}/typo.sqlite"], ["typo.sqlite"]),
    ("where unknown column", ["results", "--store", "{store}", "--where", "colour=red"], ["unknown column 'colour'"]),
    ("where without =", ["results", "--store", "{store}", "--where", "method"], ["'method' must look like key=value"]),
    ("group-by unknown", ["results", "--store", "{store}", "--group-by", "colour"], ["unknown column 'colour'"]),
    (
        "csv into missing folder",
        ["results", "--store", "{store}", "--csv", "{tmp}/no/such/out.csv"],
        ["--csv", "out.csv", "does not exist"],
    ),
    ("csv onto a folder", ["results", "--store", "{store}", "--csv", "{tmp}"], ["--csv", "is a folder"]),
    (
        "csv under a file",
        ["results", "--store", "{store}", "--csv", "{root}/a_file/out.csv"],
        ["--csv", "is a file, not a folder"],
    ),
]


@pytest.mark.parametrize(("argv", "needles"), [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_is_a_clear_error(fx, tmp_path, argv, needles):
    _check(fx, tmp_path, argv, 2, needles)


# --------------------------------------------------------------------------------------------------------------
# Data files (refused when the run is built: in a fresh run directory that must get no run record)

NPZ = ["data.name=npz", "data.root={npz}"]

DATA_CASES = [
    ("nchw", "nchw.npz", "good.npz", ["nchw.npz", "'x'", "channels-first", "transpose(0, 2, 3, 1)"]),
    ("float in [0,1]", "float01.npz", "good.npz", ["float01.npz", "'x' must be uint8", "* 255"]),
    ("float 0..255", "float255.npz", "good.npz", ["float255.npz", "'x' must be uint8", "astype(np.uint8)"]),
    ("int16", "int16.npz", "good.npz", ["int16.npz", "'x' must be uint8", "int16"]),
    ("gray", "gray.npz", "good.npz", ["gray.npz", "'x'", "add a channel axis"]),
    ("five dims", "five_dims.npz", "good.npz", ["five_dims.npz", "'x'", "5 dimensions"]),
    ("y shorter", "short_y.npz", "good.npz", ["short_y.npz", "'y' must be [N] with N=8", "(5,)"]),
    ("y longer", "long_y.npz", "good.npz", ["long_y.npz", "'y' must be [N] with N=8", "(16,)"]),
    ("y 2-D", "y_2d.npz", "good.npz", ["y_2d.npz", "'y' must be [N]"]),
    ("empty", "empty.npz", "good.npz", ["empty.npz", "'x' is empty"]),
    ("zero width", "zero_width.npz", "good.npz", ["zero_width.npz", "'x' is empty"]),
    ("label 100000", "huge_label.npz", "good.npz", ["huge_label.npz", "'y'", "100000", "0..K-1"]),
    ("negative label", "negative_label.npz", "good.npz", ["negative_label.npz", "labels must be >= 0", "-1"]),
    ("float labels", "float_labels.npz", "good.npz", ["float_labels.npz", "'y' must hold integer labels"]),
    ("one class", "one_class.npz", "good.npz", ["one_class.npz", "at least 2"]),
    ("test label outside", "good.npz", "test_label_5.npz", ["test_label_5.npz", "'y'", "outside 0..3", "5"]),
    ("test nchw", "good.npz", "nchw.npz", ["nchw.npz", "channels-first"]),
    ("no x", "no_x.npz", "good.npz", ["no_x.npz", "no array 'x'", "images"]),
    ("no y", "no_y.npz", "good.npz", ["no_y.npz", "no array 'y'", "labels"]),
    ("classes short", "short_classes.npz", "good.npz", ["short_classes.npz", "'y'", "outside 0..2", "'classes'"]),
    ("not a zip", "not_zip.npz", "good.npz", ["not_zip.npz", "not a readable .npz file"]),
    ("single array", "single.npy", "good.npz", ["single.npy", "single array"]),
    ("missing train file", "nope.npz", "good.npz", ["nope.npz", "does not exist"]),
    ("missing test file", "good.npz", "nope.npz", ["nope.npz", "does not exist"]),
    ("train file is a folder", "sub", "good.npz", ["sub is a folder, not a file"]),
]


@pytest.mark.parametrize(("train", "test", "needles"), [pytest.param(a, b, n, id=i) for i, a, b, n in DATA_CASES])
def test_bad_data_file_is_a_clear_error(fx, tmp_path, train, test, needles):
    runs = tmp_path / "runs"
    argv = _train(*NPZ, f"data.train_files=[{train}]", f"data.test_file={test}", f"train.run_dir={runs}")
    _check(fx, tmp_path, argv, 2, needles)
    written = [p.name for p in runs.rglob("*") if p.is_file() and p.name != ".lock"]
    assert written == [], written  # no config, metrics, checkpoint or summary of a run that never started


def test_catalogue_size():
    assert len(SCHEMA_CASES) + len(CASES) + len(DATA_CASES) >= 150


# --------------------------------------------------------------------------------------------------------------
# Accepted: scientific notation is a number everywhere


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "1.0e-3", "+1e-3", ".1e-2"])
def test_scientific_notation_is_a_float(fx, tmp_path, text):
    code, out, err = run_case(["show", str(fx.cfg), f"optim.lr={text}", f"optim.weight_decay={text}"])
    assert code == 0, out + err
    assert "  lr: 0.001\n" in out and "  weight_decay: 0.001\n" in out


def test_scientific_notation_in_a_yaml_file(fx, tmp_path):
    path = tmp_path / "sci.yaml"
    path.write_text(fx.cfg.read_text().replace("lr: 0.05", "lr: 1e-3, weight_decay: 5E-4"))
    code, out, err = run_case(["show", str(path), "train.epochs=1e1"])
    assert code == 0, out + err
    assert "  lr: 0.001\n" in out and "  weight_decay: 0.0005\n" in out and "  epochs: 10\n" in out


# --------------------------------------------------------------------------------------------------------------
# The console script's path: a child process, no traceback on stderr

SUBPROCESS_CASES = [
    (_train("data.batch_size=-8"), "data.batch_size must be >= 1, got -8"),
    (["results", "--store", "{root}/other.sqlite"], "not a kdlab results store"),
    (_train(*NPZ, "data.train_files=[nchw.npz]", "data.test_file=good.npz", "train.run_dir={tmp}/runs"), "nchw.npz"),
    (["list", "bogus"], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "needle"), SUBPROCESS_CASES, ids=["range", "store", "data", "argparse"])
def test_subprocess_prints_no_traceback(fx, tmp_path, argv, needle):
    before = snapshot(fx.root)
    code, out, err = run_subprocess([fx.fmt(a, tmp_path) for a in argv], cwd=tmp_path)
    assert code == 2, out + err
    assert "Traceback" not in out + err and fx.fmt(needle, tmp_path) in err, err
    assert snapshot(fx.root) == before


# --------------------------------------------------------------------------------------------------------------
# No space left while writing the store: a clear error naming the file, the store unchanged


def test_store_full_is_a_clear_error(fx, tmp_path, monkeypatch):
    import shutil

    from kdlab.experiments import store as store_mod

    store = tmp_path / "full.sqlite"
    shutil.copy(fx.store, store)
    con = sqlite3.connect(store)
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.close()
    original = store_mod._Connection.__init__

    def limited(self, path, timeout):  # SQLite's own SQLITE_FULL: the file may not grow past its current pages
        original(self, path, timeout)
        self.con.execute(f"PRAGMA max_page_count={pages}")

    monkeypatch.setattr(store_mod._Connection, "__init__", limited)
    rows = [{"run_dir": f"/x/{i}", "method": "kd", "grid": "x" * 2000} for i in range(50)]
    before = sqlite3.connect(store).execute("SELECT * FROM runs").fetchall()
    with pytest.raises(store_mod.StoreError, match=r"cannot write the results store '.*full\.sqlite'.*no space left"):
        store_mod.ResultsStore(store).record(rows)
    assert sqlite3.connect(store).execute("SELECT * FROM runs").fetchall() == before
    # through the CLI: importing runs into the full store (one transaction, larger than the free space)
    copies = [tmp_path / f"copy{i}" for i in range(40)]
    for run in copies:
        shutil.copytree(fx.run, run, ignore=shutil.ignore_patterns("*.pt"))
    saved = snapshot(store)
    code, out, err = run_case(["results", "--store", str(store), "--import", *map(str, copies)])
    assert code == 2 and "Traceback" not in out + err, out + err
    assert "full.sqlite" in err and "no space left" in err, err
    assert snapshot(store) == saved or sqlite3.connect(store).execute("SELECT * FROM runs").fetchall() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_places_are_clear_errors(fx, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _check(fx, tmp_path, _train(f"train.run_dir={locked}"), 2, ["locked"])
        _check(fx, tmp_path, ["results", "--store", f"{locked}/r.sqlite", "--import", "{run}"], 2, ["permission"])
        _check(fx, tmp_path, ["results", "--store", "{store}", "--csv", f"{locked}/o.csv"], 2, ["permission denied"])
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
