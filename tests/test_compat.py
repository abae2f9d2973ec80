"""torch/torchvision mismatch: a clear error naming both versions and the pinned pair, exit code 2 through the CLI.

The mismatch is simulated: the import of torchvision (and of timm, which imports it) raises the RuntimeError a
torchvision wheel built for another torch raises while registering its operators."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

from kdlab import compat, models
from kdlab.compat import PINNED_PAIR, TorchvisionMismatchError

REPO = Path(__file__).resolve().parents[1]
NMS_ERROR = "operator torchvision::nms does not exist"


@pytest.fixture
def mismatched(monkeypatch):
    """torchvision and timm fail to import as beside a torch of another release."""
    real = importlib.import_module

    def fake(name, package=None):
        if name.split(".")[0] in ("torchvision", "timm"):
            raise RuntimeError(NMS_ERROR)
        return real(name, package)

    monkeypatch.setattr(compat.importlib, "import_module", fake)


def test_mismatch_message_names_versions_and_fix(mismatched):
    with pytest.raises(TorchvisionMismatchError) as info:
        compat.import_torchvision()
    msg = str(info.value)
    assert re.search(r"torchvision \S+ does not match torch " + re.escape(torch.__version__), msg)
    assert NMS_ERROR in msg
    assert f"pip install torch=={PINNED_PAIR[0]} torchvision=={PINNED_PAIR[1]}" in msg
    assert isinstance(info.value, ImportError)


def test_timm_model_reports_the_mismatch_not_a_missing_timm(mismatched):
    with pytest.raises(TorchvisionMismatchError, match="does not match torch"):
        models.create("timm:resnet18", num_classes=10)


def test_other_import_errors_pass_through(monkeypatch):
    def fake(name, package=None):
        raise RuntimeError("something else entirely")

    monkeypatch.setattr(compat.importlib, "import_module", fake)
    with pytest.raises(RuntimeError, match="something else"):
        compat.import_torchvision()


def test_cli_exits_2_with_one_line_and_writes_nothing(mismatched, tmp_path, capsys):
    from kdlab.cli.main import main

    code = main(
        [
            "train",
            str(REPO / "configs/debug/digits_ce.yaml"),
            "model.student=timm:resnet18",
            f"train.run_dir={tmp_path}",
            "train.name=r",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "does not match torch" in err and "pip install torch==" in err
    # no run is written (the run lock, if any, is not a run)
    assert not [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]


def test_makefile_pins_the_pair_named_in_the_message():
    makefile = (REPO / "Makefile").read_text()
    (spec,) = re.findall(r"^TORCH_SPEC \?= (.+)$", makefile, flags=re.M)
    assert spec.split() == [f"torch=={PINNED_PAIR[0]}", f"torchvision=={PINNED_PAIR[1]}"]
