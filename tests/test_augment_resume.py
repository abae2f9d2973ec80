"""The shipped B3 strategy (RandAugment, colour jitter, random erasing, Mixup/CutMix) on synthetic 32-pixel data with
KD from a tiny teacher: a run stopped mid-epoch and resumed ends bitwise equal to an uninterrupted one (the per-sample
draws and the mixing are functions of (seed, epoch, step), nothing to checkpoint)."""

from __future__ import annotations

import torch

from kdlab.config import load_config
from kdlab.train.trainer import Trainer

from conftest import REPO


def _b3(tmp_path, *overrides: str):
    return load_config(
        REPO / "configs/imagenet/strategies/B3.yaml",
        [
            "data.name=synthetic", "data.image_size=32", "data.num_classes=5", "data.train_size=80",
            "data.test_size=20", "data.batch_size=16", "data.workers=0", "model.student=convnet_xs",
            "model.student_drop_path=null",  # B3's Swin-T stochastic depth: convnet_xs has none (refused)
            "model.teachers.0.name=convnet_xs", "method.name=kd", "optim.warmup_epochs=0", "train.epochs=2",
            "train.ema_decay=0.9", "train.device=cpu", "train.threads=1", f"train.run_dir={tmp_path}",
            "log.progress=off", *overrides,
        ],
    )  # fmt: skip


def test_b3_kd_resumes_bitwise_mid_epoch(tmp_path) -> None:
    whole = Trainer(_b3(tmp_path, "train.max_steps=4", "train.name=whole"))
    batch = next(whole.run.data.train_batches(0))
    assert batch.y_soft is not None and batch.y_soft.shape == (16, 5)
    whole.fit()
    first = Trainer(_b3(tmp_path, "train.max_steps=2", "train.name=split"))
    first.fit()
    second = Trainer(_b3(tmp_path, "train.max_steps=4", "train.name=split"), resume=True)
    second.fit()
    for (name, a), b in zip(whole.run.student.state_dict().items(), second.run.student.state_dict().values()):
        assert torch.equal(a, b), name
