"""The run header's ``data.val`` count on every loader kind: it was 0 for detection and segmentation runs (the header
read ``val.y``, which box and pair sets do not have); it is now the held-out split's length."""

from __future__ import annotations

import pytest
import torch
from segmentation_util import make_cityscapes

from kdlab.config import load_config
from kdlab.train.header import build_header, split_size
from kdlab.train.trainer import Trainer

from conftest import REPO, tiny_config

RUN = ["data.workers=0", "train.device=cpu", "train.threads=1", "log.progress=off", "train.name=h"]


def _val(cfg) -> tuple[int, int]:
    trainer = Trainer(cfg)
    return build_header(trainer, measure=False)["data"]["val"], len(trainer.run.data.val)


def test_detection_header_counts_the_held_out_images(coco_tiny, tmp_path) -> None:
    cfg = load_config(
        str(REPO / "configs/coco/ce/retinanet_r50.yaml"),
        [f"data.root={coco_tiny}", "model.student=retinanet_tiny", "model.student_backbone=null", "data.min_size=64",
         "data.max_size=64", "data.val_fraction=0.25", f"train.run_dir={tmp_path}", *RUN],
    )  # fmt: skip
    assert _val(cfg) == (6, 6)  # 24 training images, a quarter held out


def test_segmentation_header_counts_the_held_out_images(tmp_path) -> None:
    root = make_cityscapes(tmp_path / "cs", n_train=6, n_val=2)
    cfg = load_config(
        str(REPO / "configs/cityscapes/ce/deeplabv3_r101.yaml"),
        [f"data.root={root}", "model.student=deeplabv3_tiny", "model.student_backbone=null", "data.crop_size=[32,48]",
         "data.batch_size=2", "data.val_fraction=0.5", f"train.run_dir={tmp_path}", *RUN],
    )  # fmt: skip
    assert _val(cfg) == (3, 3)


def test_classification_header_count_unchanged(tmp_path) -> None:
    trainer = Trainer(tiny_config(tmp_path, "data.val_fraction=0.25", "train.name=c"))
    val = trainer.run.data.val
    assert build_header(trainer, measure=False)["data"]["val"] == int(val.y.shape[0]) > 0


def test_split_size_rules() -> None:
    class Labels:  # an in-memory split: labels only, no __len__
        y = torch.zeros(7)

    assert split_size(None) == 0
    assert split_size(Labels()) == 7
    assert split_size([1, 2, 3]) == 3
    with pytest.raises(AttributeError):
        split_size(object())
