"""Defects found while gathering real-data evidence (issue 22), each with the test that failed before its fix.

- A method with a held-out split (tgeo_kd, rw_kd) on a training set too small to hold out anything spun forever in
  its outer loop, at full CPU and deaf to SIGTERM: the run must fail when it is built, with exit code 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.config import build_config
from kdlab.train.build import BuildError
from kdlab.train.trainer import Trainer

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _tiny_many_classes(tmp_path: Path, method: str, *extra: str) -> list[str]:
    """The issue's case: 64 training samples over 100 classes (most classes hold 0 or 1 sample)."""
    return [
        "data.name=synthetic",
        "data.num_classes=100",
        "data.image_size=8",
        "data.train_size=64",
        "data.test_size=32",
        "data.batch_size=16",
        "model.student=convnet_xs",
        "model.teachers.0.name=convnet_s",
        "model.teachers.0.checkpoint=null",
        f"method.name={method}",
        "train.epochs=1",
        "train.device=cpu",
        "train.threads=1",
        f"train.run_dir={tmp_path / 'runs'}",
        "train.name=tiny",
        "log.progress=off",
        *extra,
    ]


@pytest.mark.parametrize("method", ["tgeo_kd", "rw_kd"])
def test_an_empty_heldout_split_is_an_error_when_the_run_is_built(tmp_path, method):
    cfg = build_config({}, _tiny_many_classes(tmp_path, method))
    with pytest.raises(BuildError, match=r"holds out 0 sample\(s\), fewer than the 100 classes"):
        Trainer(cfg)


def test_a_heldout_split_smaller_than_the_classes_is_an_error(tmp_path):
    # 120 samples over 100 classes: the classes with one sample stay in training, so fewer than 100 are held out
    cfg = build_config({}, _tiny_many_classes(tmp_path, "tgeo_kd", "data.train_size=120", "data.val_fraction=0.1"))
    message = r"data.val_fraction=0.1 .* holds out [1-9]\d? sample\(s\), fewer than the 100"
    with pytest.raises(BuildError, match=message):
        Trainer(cfg)


def test_the_cli_exits_2_at_once_with_a_clear_message_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = str(REPO / "configs/debug/digits_kd.yaml")
    args = [sys.executable, "-m", "kdlab", "train", config, *_tiny_many_classes(tmp_path, "tgeo_kd")]
    # before the fix this never returned (the outer loop waited forever for a held-out batch)
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "held-out split" in proc.stderr and "data.train_per_class" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "tiny" / "checkpoint.pt").exists()
    assert not (tmp_path / "runs" / "tiny" / "summary.json").exists()


def test_a_large_enough_heldout_split_still_builds(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="tgeo_kd"))
    assert trainer.run.data.val.y.shape[0] == round(0.1 * 96)


# ------------------------------------------------------------------------------------------ held-out order


def _class_sorted_splits(per_class: int = 40, k: int = 4):
    import torch

    from kdlab.data.base import DatasetSplits, ImageSet

    g = torch.Generator().manual_seed(0)
    y = torch.arange(k).repeat_interleave(per_class)  # sorted by class, like every file of the CIFAR-10 JPEG copy
    x = torch.randint(0, 256, (k * per_class, 8, 8, 3), generator=g, dtype=torch.uint8)
    test = ImageSet(x[:16], y[:16])
    return DatasetSplits("sorted", ImageSet(x, y), test, k, (0.5,) * 3, (0.25,) * 3)


def test_the_heldout_stream_of_a_class_sorted_training_set_mixes_classes():
    import torch

    from kdlab.config import DataConfig
    from kdlab.data.loader import DeviceLoader
    from kdlab.data.split import stratified_split

    splits = _class_sorted_splits()
    cfg = DataConfig(name="sorted", batch_size=8, eval_batch_size=8)
    data = DeviceLoader(splits, cfg, torch.device("cpu"), seed=0, holdout_fraction=0.2)
    labels = torch.cat([b.y for b in data.eval_batches("val")])
    # the same held-out samples as the stratified split (8 per class) ...
    _, val_idx = stratified_split(splits.train.y, 0.2, cfg.split_seed)
    assert sorted(labels.tolist()) == sorted(splits.train.y[val_idx].tolist())
    # ... but not in class order: before, the outer loop's held-out batches of 8 were one class each
    firsts = [set(b.y.tolist()) for b in data.eval_batches("val")]
    assert all(len(classes) > 1 for classes in firsts), firsts
    # the order is fixed by data.split_seed (the same for every training seed, so runs stay paired and resumable)
    again = DeviceLoader(splits, cfg, torch.device("cpu"), seed=1, holdout_fraction=0.2)
    assert torch.equal(torch.cat([b.y for b in again.eval_batches("val")]), labels)
