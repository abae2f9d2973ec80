"""A method that cannot take the run's pair fails with wrapped lines that list the benchmark pairs that work."""

from __future__ import annotations

import pytest

from kdlab.cli.main import main
from kdlab.methods._feature import PairError
from kdlab.train.build import build_run, check_on_meta
from kdlab.train.pairs import BENCHMARK_PAIRS, WIDTH

from conftest import tiny_config

IMAGE32 = ["data.image_size=32", "model.student=resnet8"]


@pytest.mark.parametrize(
    ("method", "teacher", "fits", "misfit"),
    [
        pytest.param("fsp", "wrn_16_2", ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_40_1"), marks=pytest.mark.slow),
        ("kdsvd", "resnet32x4", ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "shufflenetv1")),
    ],
)
def test_pair_error_is_wrapped_and_lists_working_pairs(tmp_path, method, teacher, fits, misfit):
    cfg = tiny_config(tmp_path, *IMAGE32, f"model.teachers.0.name={teacher}", method=method)
    with pytest.raises(PairError) as info:
        build_run(cfg)
    text = str(info.value)
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    assert f"The pair {teacher}→resnet8 does not fit method {method!r}" in text
    listed = text.split("benchmark that do:")[1]
    assert f"{fits[0]}→{fits[1]}" in listed and f"{misfit[0]}→{misfit[1]}" not in listed
    if method != "fsp":
        return
    # the list is the truth: every listed pair builds, every other benchmark pair does not
    shown = [p.strip(" .\n") for p in listed.replace("\n  ", " ").split(",")]
    for t, s in BENCHMARK_PAIRS:
        trial = tiny_config(
            tmp_path, "data.image_size=32", f"model.student={s}", f"model.teachers.0.name={t}", method=method
        )
        try:
            check_on_meta(trial, 4, (3, 32, 32))
            built = True
        except PairError:
            built = False
        assert built == (f"{t}→{s}" in shown), (t, s)


def test_cli_exit_code_stays_2_and_prints_the_pairs(tmp_path, capsys):
    code = main(
        [
            "train",
            "configs/debug/digits_ce.yaml",
            "method.name=fsp",
            "model.student=resnet8",
            "model.teachers.0.name=wrn_16_2",
            "data.name=synthetic",
            "data.num_classes=4",
            "data.image_size=32",
            "train.device=cpu",
            "train.threads=1",
            f"train.run_dir={tmp_path}",
            "log.progress=off",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "wrn_40_2→wrn_16_2" in err


@pytest.mark.slow
def test_an_error_that_is_not_about_the_pair_is_unchanged(tmp_path):
    cfg = tiny_config(tmp_path, *IMAGE32, "model.teachers.0.name=resnet8", "method.student_tap=stage9", method="fitnet")
    with pytest.raises(PairError) as info:
        build_run(cfg)
    assert "benchmark that do" not in str(info.value)  # no benchmark pair provides stage9 either
