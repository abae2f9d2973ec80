"""``kdlab eval`` on every checkpoint form (run directory, student.pt, checkpoint.pt, raw state dicts in the usual
wrappings, known public files), its metrics against reference formulas, and the students' input normalisation
(``model.student_input_mean/std``)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kdlab.analysis.calibration import expected_calibration_error
from kdlab.cli.main import main
from kdlab.config import ConfigError
from kdlab.evaluate import evaluate_file, load_model_for_eval, score
from kdlab.models import create
from kdlab.models.input_norm import InputNorm, set_input_normalization
from kdlab.train.build import build_run
from kdlab.train.trainer import Trainer
from kdlab.types import Batch

from conftest import SHARED_DATA, tiny_config

DATA = ["name=synthetic", "num_classes=4", "image_size=8", "channels=3", "train_size=96", "test_size=48"]
OWN_MEAN, OWN_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _eval(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch ce run whose student expects its own (ImageNet) normalisation."""
    tmp = tmp_path_factory.mktemp("eval_run")
    cfg = tiny_config(
        tmp,
        "train.epochs=2",
        "train.name=r",
        f"model.student_input_mean={OWN_MEAN}",
        f"model.student_input_std={OWN_STD}",
    )
    trainer = Trainer(cfg)
    return trainer.fit(), trainer.run_dir


def test_run_dir_student_pt_and_checkpoint_pt_score_the_trained_model(trained, capsys):
    summary, run_dir = trained
    for target in (run_dir, run_dir / "student.pt", run_dir / "checkpoint.pt"):
        ev = _eval(capsys, str(target))
        assert ev["top1"] == pytest.approx(summary["last"]["top1"]) and ev["n"] == 48
        assert ev["nll"] == pytest.approx(summary["last"]["loss"], rel=1e-5)
        assert 0.0 <= ev["ece"] <= 1.0 and ev["top5"] >= ev["top1"]
    assert _eval(capsys, str(run_dir), "--data", "test_limit=10")["n"] == 10


@pytest.mark.parametrize("wrapping", ["bare", "state_dict", "model", "net", "module_prefix"])
def test_raw_checkpoint_of_a_zoo_model(trained, capsys, tmp_path, wrapping):
    summary, run_dir = trained
    state = torch.load(run_dir / "student.pt", weights_only=False)["state_dict"]
    assert not any("input_norm" in k for k in state)  # the normalisation lives in the config, not the weights
    if wrapping == "module_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        obj = state if wrapping == "bare" else {wrapping: state, "epoch": 2}
    path = tmp_path / "raw.pth"
    torch.save(obj, path)
    ev = _eval(
        capsys,
        str(path),
        "--model",
        "convnet_xs",
        "--data",
        *DATA,
        "--input-mean",
        *map(str, OWN_MEAN),
        "--input-std",
        *map(str, OWN_STD),
    )
    assert ev["kind"] == "raw" and ev["model"] == "convnet_xs"
    assert ev["top1"] == pytest.approx(summary["last"]["top1"])
    assert ev["nll"] == pytest.approx(summary["last"]["loss"], rel=1e-5)
    if wrapping == "bare":  # the same weights with the dataset's normalisation are another model
        other = _eval(capsys, str(path), "--model", "convnet_xs", "--data", *DATA)
        assert other["nll"] != pytest.approx(ev["nll"], rel=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "is not a kdlab checkpoint or export; to score a raw checkpoint, name its architecture"),
        (["--model", "convnet_xs"], "give it with --data name=DATASET"),
        (["--model", "convnet_s", "--data", *DATA], "does not fit model 'convnet_s'"),
        (["--model", "convnet_xs", "--data", *DATA, "--input-mean", "0.5"], "has 1 values but the data has 3"),
    ],
)
def test_raw_checkpoint_errors_name_the_fix(trained, capsys, tmp_path, args, message):
    _, run_dir = trained
    path = tmp_path / "raw.pth"
    torch.save(torch.load(run_dir / "student.pt", weights_only=False)["state_dict"], path)
    code = main(["eval", str(path), *args, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and "Traceback" not in err
    assert code == (1 if "does not fit" in message else 2)


def test_options_for_raw_checkpoints_are_refused_for_kdlab_files(trained):
    _, run_dir = trained
    with pytest.raises(ConfigError, match="drop --model"):
        load_model_for_eval(run_dir / "student.pt", model="convnet_xs", device="cpu")


def test_eval_builds_no_teacher_and_no_training_loader(tmp_path, monkeypatch, capsys):
    """Scoring a distilled run's file needs the student and the test split only (no teacher file is read)."""
    teacher = Trainer(tiny_config(tmp_path, "train.epochs=1", "train.name=t", "model.student=convnet_s"))
    teacher.fit()
    student = Trainer(
        tiny_config(tmp_path, "train.epochs=1", "train.name=s", method="kd", teacher_ckpt=str(teacher.ckpt_path))
    )
    summary = student.fit()
    teacher.ckpt_path.unlink()  # the teacher's weights are gone: scoring must not need them

    import kdlab.train.build as build

    def refuse(*a, **k):
        raise AssertionError("eval built a whole run")

    monkeypatch.setattr(build, "build_run", refuse)
    ev = evaluate_file(student.run_dir / "checkpoint.pt", device="cpu")
    assert ev["top1"] == pytest.approx(summary["last"]["top1"])


def test_score_matches_reference_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=g) * 3
    y = torch.randint(0, 7, (300,), generator=g)
    model = torch.nn.Identity()
    batches = [
        Batch(x=logits[i : i + 64], y=y[i : i + 64], index=torch.arange(i, min(i + 64, 300))) for i in range(0, 300, 64)
    ]
    out = score(model, iter(batches))
    assert out["n"] == 300
    assert out["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))
    top5 = logits.topk(5, dim=1).indices
    assert out["top5"] == pytest.approx(100.0 * float((top5 == y[:, None]).any(1).float().mean()))
    assert out["nll"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert out["ece"] == pytest.approx(expected_calibration_error(logits, y), abs=1e-12)


# ---- input normalisation of students ---------------------------------------------------------------------------


def test_input_norm_maps_dataset_normalisation_to_the_models_own():
    torch.manual_seed(0)
    raw = torch.rand(4, 3, 8, 8)
    d_mean, d_std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    x_data = (raw - torch.tensor(d_mean).view(1, 3, 1, 1)) / torch.tensor(d_std).view(1, 3, 1, 1)
    x_own = (raw - torch.tensor(OWN_MEAN).view(1, 3, 1, 1)) / torch.tensor(OWN_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(InputNorm(d_mean, d_std, OWN_MEAN, OWN_STD)(x_data), x_own)
    model = create("convnet_xs", num_classes=4).eval()
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(x_own)
        set_input_normalization(model, d_mean, d_std, OWN_MEAN, OWN_STD)
        assert list(model.state_dict()) == keys  # no new state-dict entries
        torch.testing.assert_close(model(x_data), expected)
        torch.testing.assert_close(model.forward_taps(x_data, ("pool",))[0], expected)
        set_input_normalization(model, d_mean, d_std)  # back to the dataset's
        torch.testing.assert_close(model(x_own), expected)


def test_student_normalisation_from_the_config(tmp_path):
    run = build_run(tiny_config(tmp_path, f"model.student_input_mean={OWN_MEAN}", f"model.student_input_std={OWN_STD}"))
    norm = run.student.input_norm
    assert norm.model_mean == pytest.approx(tuple(OWN_MEAN)) and norm.model_std == pytest.approx(tuple(OWN_STD))
    assert "input_norm" not in build_run(tiny_config(tmp_path)).student._modules  # default: the dataset's
    with pytest.raises(ConfigError, match=r"model\.student_input_mean.*one per channel"):
        build_run(tiny_config(tmp_path, "model.student_input_mean=[0.5]"))


CKPT = SHARED_DATA / "cifar10_resnets_akamaster" / "resnet20-12fca82f.th"
JPG = SHARED_DATA / "cifar10_jpg"


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not (CKPT.is_file() and (JPG / "test.npz").is_file()), reason="../shared data not present")
def test_pretrained_resnet20_reproduces_its_accuracy_as_a_student_and_through_eval(tmp_path, capsys):
    """The akamaster ResNet-20 (trained with ImageNet mean/std) scores 81.03 % on the JPEG CIFAR-10 test copy:
    evaluated as a student with model.student_input_mean/std, and through ``kdlab eval`` on the raw file (a known
    checkpoint: model and normalisation come from its sha256)."""
    data = [f"root={JPG}", "train_files=[train_0.npz]", "test_file=test.npz"]
    cfg = tiny_config(
        tmp_path,
        "model.student=resnet20_a",
        f"model.student_checkpoint={CKPT}",
        f"model.student_input_mean={OWN_MEAN}",
        f"model.student_input_std={OWN_STD}",
        "data.name=npz",
        *(f"data.{d}" for d in data),
    )
    assert Trainer(cfg).evaluate("test")["top1"] == pytest.approx(81.03, abs=0.005)
    ev = _eval(capsys, str(CKPT), "--data", "name=npz", *data)
    assert ev["model"] == "resnet20_a" and ev["top1"] == pytest.approx(81.03, abs=0.005)


def test_a_known_public_checkpoint_needs_no_model_or_normalisation(trained, capsys, tmp_path, monkeypatch):
    """A file registered by its SHA-256 (as the akamaster ResNets are) brings its architecture and mean/std."""
    from kdlab.models import checkpoints

    summary, run_dir = trained
    path = tmp_path / "public.th"
    state = torch.load(run_dir / "student.pt", weights_only=False)["state_dict"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 50.0}, path)
    known = checkpoints.KnownCheckpoint(
        checkpoints.file_sha256(path), "convnet_xs", 4, tuple(OWN_MEAN), tuple(OWN_STD), "a test file"
    )
    monkeypatch.setitem(checkpoints.KNOWN_CHECKPOINTS, known.sha256, known)
    ev = _eval(capsys, str(path), "--data", *DATA)
    assert ev["model"] == "convnet_xs" and ev["top1"] == pytest.approx(summary["last"]["top1"])
    assert ev["nll"] == pytest.approx(summary["last"]["loss"], rel=1e-5)
