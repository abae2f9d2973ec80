"""Command-line parsing: no silent abbreviations, overrides accepted after flags, unknown arguments refused."""

from __future__ import annotations

import pytest
from catalogue_util import REPO, run_case, snapshot

CFG = str(REPO / "configs/debug/digits_kd.yaml")


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", CFG, "--resum"], "--resum"),
        (["train", CFG, "--forc"], "--forc"),
        (["eval", "x.pt", "--mod", "resnet8"], "--mod"),
        (["demo", "--seed", "1"], "--seed"),
        (["list", "methods", "extra=1"], "extra=1"),
    ],
)
def test_abbreviated_or_unknown_arguments_are_usage_errors(argv, named, tmp_path):
    before = snapshot(tmp_path)
    code, _, err = run_case(argv, cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert "unrecognized arguments" in err and named in err
    assert snapshot(tmp_path) == before


def test_overrides_after_a_flag_are_applied(tmp_path):
    """`kdlab train CFG --force optim.lr=-1`: the override after the flag is read (and here refused by its range)."""
    run_dir = tmp_path / "run"
    code, _, err = run_case(["train", CFG, "--force", f"train.run_dir={run_dir}", "optim.lr=-1"], cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert "optim.lr" in err and "-1" in err
    assert not run_dir.exists()


def test_show_takes_overrides_anywhere(tmp_path):
    code, out, err = run_case(["show", CFG, "train.epochs=7"], cwd=tmp_path)
    assert code == 0, err
    assert "epochs: 7" in out


@pytest.mark.parametrize(
    "override",
    ["model.student=nonexist", "data.name=npz", "model.teachers.0.name=nonexist"],
)
def test_a_run_refused_while_it_is_built_leaves_no_folder_or_lock(override, tmp_path):
    """Errors found while the run is built (after its lock is taken) remove the folders the lock created."""
    runs = tmp_path / "runs" / "deeper"
    code, _, err = run_case(["train", CFG, f"train.run_dir={runs}", override], cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_refused_build_keeps_an_existing_run_folder(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, _, _err = run_case(["train", CFG, f"train.run_dir={runs}", "model.student=nonexist"], cwd=tmp_path)
    assert code == 2
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.select_by=foo", "train.select_by"),
        ("train.metrics=[foo]", "train.metrics"),
        ("model.student_input_mean=[0.5,0.5]", "model.student_input_mean"),
        ("model.student_input_std=[0]", "model.student_input_std"),
    ],
)
def test_new_run_fields_refuse_bad_values_through_the_cli(override, named, tmp_path):
    """Fields added for metrics and student normalisation: exit 2, the key named, nothing left behind."""
    runs = tmp_path / "runs"
    argv = ["train", CFG, f"train.run_dir={runs}", "model.teachers.0.checkpoint=null", override]
    code, _, err = run_case(argv, cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert named in err
    assert not runs.exists()
