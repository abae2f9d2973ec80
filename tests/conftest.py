"""Shared fixtures: tiny configs that train in a fraction of a second, and the optional shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlab.config import RunConfig, build_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _no_fsync():
    """Run files are not fsynced in tests (``KDLAB_FSYNC=0``, also in the subprocesses the tests start): they are
    thrown away, and each fsync waits ~10 ms for the disk (kdlab/train/checkpoint.py ``durable_writes``); a test of
    the fsync path sets ``KDLAB_FSYNC=1`` itself."""
    import os

    old = os.environ.get("KDLAB_FSYNC")
    os.environ["KDLAB_FSYNC"] = "0"
    yield
    if old is None:
        os.environ.pop("KDLAB_FSYNC", None)
    else:
        os.environ["KDLAB_FSYNC"] = old


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """kdlab's on-disk cache (teachers' measured accuracy) goes to a session temporary directory, never to the
    user's ~/.cache; subprocesses inherit it through the environment."""
    import os

    old = os.environ.get("KDLAB_CACHE_DIR")
    os.environ["KDLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("kdlab_cache"))
    yield
    if old is None:
        os.environ.pop("KDLAB_CACHE_DIR", None)
    else:
        os.environ["KDLAB_CACHE_DIR"] = old


def _xdist_worker() -> bool:
    """True in a pytest-xdist worker (``make test`` runs the suite on one worker per core: ``-n auto``)."""
    import os

    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def pytest_configure(config):
    """In an xdist worker: torch at one thread (the workers already use every core; more threads per worker only
    oversubscribe), also in the subprocesses the tests start (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``)."""
    if not _xdist_worker():
        return
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _torch_defaults():
    """Seed torch per test; restore the default dtype and the thread count afterwards (a run sets
    ``train.threads``, which would otherwise leak into the next test)."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def tiny_config(tmp_path: Path, *overrides: str, method: str = "ce", teacher_ckpt: str | None = None) -> RunConfig:
    """A run on synthetic 8x8 images with small ConvNets: a few steps per epoch."""
    data = {
        "model": {"student": "convnet_xs"},
        "data": {
            "name": "synthetic",
            "num_classes": 4,
            "image_size": 8,
            "channels": 3,
            "train_size": 96,
            "test_size": 48,
            "batch_size": 16,
            "augment": "crop_flip",
            "crop_padding": 2,
        },
        "method": {"name": method},
        "optim": {"lr": 0.05, "milestones": [2]},
        "train": {"epochs": 3, "device": "cpu", "run_dir": str(tmp_path / "runs"), "threads": 1},
        "log": {"progress": "off"},
    }
    if teacher_ckpt is not None or method != "ce":
        data["model"]["teachers"] = [{"name": "convnet_s", "checkpoint": teacher_ckpt}]
    return build_config(data, list(overrides))


def sigterm_during_step(trainer, stop_at: int) -> None:
    """Make ``trainer`` receive a SIGTERM during its ``stop_at``-th optimiser step (1-based, over all stages), as
    if the signal arrived then: the trainer finishes that step, checkpoints and raises ``TrainingInterrupted``."""
    import signal

    calls = {"n": 0}
    original = trainer._make_optimizer

    def make(stage):
        opt = original(stage)
        step = opt.step

        def step_then_signal(*a, **kw):
            calls["n"] += 1
            if calls["n"] == stop_at:
                trainer._on_signal(signal.SIGTERM, None)
            return step(*a, **kw)

        opt.step = step_then_signal
        return opt

    trainer._make_optimizer = make
    trainer.optimizer = make(trainer.stages[0])


@pytest.fixture
def coco_tiny(tmp_path) -> Path:
    """A tiny COCO-format set (tests/coco_tiny.py ``make_coco``: 24 train + 8 val images of 48x64, 3 classes with
    category ids 1, 3, 7) under ``tmp_path / "coco"``; use it as ``data.name=coco data.root=<it>``."""
    from coco_tiny import make_coco

    return make_coco(tmp_path / "coco")
