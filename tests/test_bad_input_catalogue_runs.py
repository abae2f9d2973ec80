"""The run-record cases of the bad-input catalogue (issue #15): resumes with a changed config, runs over runs, run
directories that are files, runs another process is training, corrupt checkpoints, stale summaries.

Every case runs the real ``kdlab`` entry point (:func:`catalogue_util.run_case`) and asserts the exit code, that no
traceback reaches the output, that the message names the offending key or path, and that the whole fixture tree
(finished runs, an interrupted run, a run locked by another process) is byte-identical afterwards (SHA-256, mode
and mtime of every file, ``catalogue_util.snapshot``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from catalogue_util import REPO, assert_clean_error, run_case, snapshot
from runrecord_util import write_tiny_config


@dataclass
class Runs:
    root: Path
    cfg: Path
    runs: Path


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue_runs")
    cfg = write_tiny_config(root, epochs=2)
    runs = root / "runs"
    code, out, err = run_case(["train", cfg])
    assert code == 0, out + err
    # a run another process is training (it holds the lock of a copy of the finished run)
    shutil.copytree(runs / "r", runs / "locked", ignore=shutil.ignore_patterns(".lock"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom kdlab.runlock import RunLock\nRunLock(sys.argv[1]).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(3600)",
            str(runs / "locked"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert holder.stdout.readline().strip() == "locked"
    # a corrupt checkpoint, a run directory that is a file, a stale summary (its config.yaml belongs to another run)
    shutil.copytree(runs / "r", runs / "corrupt", ignore=shutil.ignore_patterns(".lock"))
    (runs / "corrupt" / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    (runs / "afile").write_text("not a folder\n")
    shutil.copytree(runs / "r", runs / "stale", ignore=shutil.ignore_patterns(".lock"))
    text = (runs / "stale" / "config.yaml").read_text()
    (runs / "stale" / "config.yaml").write_text(text.replace("seed: 0", "seed: 9"))
    yield Runs(root, cfg, runs)
    holder.kill()
    holder.wait()


RESUME = "--resume"

#: (id, argv after ``train CONFIG``, exit code, needles); ``{runs}`` is the fixture's run folder.
CASES: list[tuple[str, list[str], int, list[str]]] = [
    # --resume with a config that differs outside the allow-list: refused, each differing key listed
    ("resume-seed", ["train.seed=1", RESUME], 2, ["train.seed: 0 -> 1", "--resume"]),
    ("resume-lr", ["optim.lr=0.1", RESUME], 2, ["optim.lr: 0.05 -> 0.1"]),
    ("resume-momentum", ["optim.momentum=0.5", RESUME], 2, ["optim.momentum: 0.9 -> 0.5"]),
    ("resume-weight-decay", ["optim.weight_decay=0.001", RESUME], 2, ["optim.weight_decay"]),
    ("resume-schedule", ["optim.schedule=cosine", RESUME], 2, ["optim.schedule: 'step' -> 'cosine'"]),
    ("resume-gamma", ["optim.gamma=0.5", RESUME], 2, ["optim.gamma"]),
    ("resume-warmup", ["optim.warmup_epochs=1", RESUME], 2, ["optim.warmup_epochs"]),
    ("resume-nesterov", ["optim.nesterov=true", RESUME], 2, ["optim.nesterov: False -> True"]),
    ("resume-optimizer", ["optim.name=adamw", RESUME], 2, ["optim.name: 'sgd' -> 'adamw'"]),
    ("resume-batch-size", ["data.batch_size=8", RESUME], 2, ["data.batch_size: 16 -> 8"]),
    ("resume-augment", ["data.augment=none", RESUME], 2, ["data.augment"]),
    ("resume-crop-padding", ["data.crop_padding=1", RESUME], 2, ["data.crop_padding: 2 -> 1"]),
    ("resume-train-size", ["data.train_size=32", RESUME], 2, ["data.train_size: 48 -> 32"]),
    ("resume-image-size", ["data.image_size=16", RESUME], 2, ["data.image_size: 8 -> 16"]),
    ("resume-classes", ["data.num_classes=5", RESUME], 2, ["data.num_classes: 4 -> 5"]),
    ("resume-val-fraction", ["data.val_fraction=0.25", RESUME], 2, ["data.val_fraction"]),
    ("resume-split-seed", ["data.split_seed=3", RESUME], 2, ["data.split_seed: 0 -> 3"]),
    ("resume-student", ["model.student=convnet_s", RESUME], 2, ["model.student: 'convnet_xs' -> 'convnet_s'"]),
    ("resume-method-field", ["method.label_smoothing=0.1", RESUME], 2, ["method.label_smoothing: 0.0 -> 0.1"]),
    ("resume-deterministic", ["train.deterministic=true", RESUME], 2, ["train.deterministic"]),
    ("resume-precision", ["train.precision=bf16", RESUME], 2, ["train.precision: 'fp32' -> 'bf16'"]),
    ("resume-replay", ["train.replay_epochs=1", RESUME], 2, ["train.replay_epochs: 0 -> 1"]),
    ("resume-sync-bn", ["train.sync_bn=true", RESUME], 2, ["train.sync_bn"]),
    (
        "resume-two-keys-and-an-allowed-one",
        ["train.seed=2", "optim.lr=0.2", "train.epochs=5", RESUME],
        2,
        ["2 key(s)", "train.seed: 0 -> 2", "optim.lr: 0.05 -> 0.2"],
    ),
    ("resume-fewer-epochs", ["train.epochs=1", RESUME], 2, ["train.epochs=1", "2 epoch(s)"]),
    # run directories
    ("resume-without-checkpoint", ["train.name=nothing", RESUME], 2, ["no checkpoint", "nothing"]),
    ("new-run-over-a-run", [], 2, ["already holds a run", "--force", "{runs}/r"]),
    ("new-run-over-a-run-cli-run-dir", ["--run-dir", "{runs}/r"], 2, ["already holds a run"]),
    ("run-dir-is-a-file", ["train.name=afile"], 2, ["{runs}/afile", "is a file"]),
    ("run-dir-is-a-file-resume", ["train.name=afile", RESUME], 2, ["{runs}/afile", "is a file"]),
    ("run-dir-is-a-file-force", ["train.name=afile", "--force"], 2, ["{runs}/afile", "is a file"]),
    ("cli-run-dir-is-a-file", ["--run-dir", "{runs}/afile"], 2, ["{runs}/afile", "is a file"]),
    # a run another process is training
    ("locked-force", ["train.name=locked", "--force"], 2, ["{runs}/locked", "is being trained by pid"]),
    ("locked-resume", ["train.name=locked", RESUME], 2, ["{runs}/locked", "is being trained by pid"]),
    ("locked-resume-more-epochs", ["train.name=locked", "train.epochs=4", RESUME], 2, ["is being trained by pid"]),
    # a corrupt checkpoint: a failure (exit 1), never a fresh start over it
    ("corrupt-checkpoint-resume", ["train.name=corrupt", RESUME], 1, ["{runs}/corrupt/checkpoint.pt", "corrupt"]),
    ("corrupt-checkpoint-new-run", ["train.name=corrupt"], 2, ["already holds a run"]),
]


@pytest.mark.parametrize(("argv", "code", "needles"), [pytest.param(a, c, n, id=i) for i, a, c, n in CASES])
def test_run_record_bad_input_is_refused_and_changes_nothing(fx, argv, code, needles):
    before = snapshot(fx.root)
    args = [a.format(runs=fx.runs) for a in argv]
    got, out, err = run_case(["train", str(fx.cfg), *args])
    assert_clean_error(got, out, err, code, *(n.format(runs=fx.runs) for n in needles))
    assert snapshot(fx.root) == before


@pytest.mark.parametrize("name", ["stale", "nothing-here"])
def test_import_of_a_stale_or_missing_run_is_refused(fx, tmp_path, name):
    before = snapshot(fx.root)
    store = tmp_path / "store.sqlite"
    code, out, err = run_case(["results", "--store", store, "--import", fx.runs / name])
    assert code == 1 and "Traceback" not in out + err
    assert str(fx.runs / name) in err
    assert ("belongs to another config" if name == "stale" else "does not exist") in err
    assert snapshot(fx.root) == before


def test_catalogue_has_at_least_30_cases():
    assert len(CASES) + 2 >= 30
