"""Segmentation data: the Cityscapes layout and label mapping, the joint training transform, the seeded order,
evaluation at full resolution, bad input naming the file, and the poly learning-rate schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from segmentation_util import make_cityscapes

from kdlab.config import OptimConfig, build_config
from kdlab.data import load_dataset, make_loader
from kdlab.data.base import DataError
from kdlab.data.dense import IGNORE_INDEX, PairTransform, lookup_table
from kdlab.data.sources.cityscapes import TRAIN_IDS, label_table
from kdlab.train.schedule import learning_rate
from kdlab.types import Progress


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"), n_train=6, n_val=2)


def _cfg(root, *extra):
    return build_config(
        {
            "data": {"name": "cityscapes", "root": str(root), "crop_size": [24, 40], "batch_size": 2, "workers": 0},
            "model": {"student": "deeplabv3_tiny"},
            "train": {"device": "cpu"},
        },
        list(extra),
    )


def test_layout_and_train_ids(cs_root) -> None:
    splits = load_dataset(_cfg(cs_root).data)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (6, 2, 19)
    table = label_table()
    assert [int(table[r]) for r in (7, 8, 26, 33, 0, 1, 6, 255)] == [0, 1, 13, 18, 255, 255, 255, 255]
    assert sorted(TRAIN_IDS.values()) == list(range(19))


def test_training_batches_are_joint_crops_with_ignore_padding(cs_root) -> None:
    cfg = _cfg(cs_root)
    loader = make_loader(load_dataset(cfg.data), cfg.data, torch.device("cpu"), seed=3)
    batches = list(loader.train_batches(0))
    assert len(batches) == loader.steps_per_epoch() == 3  # 6 pairs, batch 2
    b = batches[0]
    assert b.x.shape == (2, 3, 24, 40) and b.y.shape == (2, 24, 40) and b.y.dtype == torch.int64
    values = set(torch.unique(torch.cat([bb.y.flatten() for bb in batches])).tolist())
    assert values <= {0, 2, 10, 13, IGNORE_INDEX} and len(values) > 2
    # the same (seed, epoch) gives the same batches; another epoch another order and other crops
    again = list(make_loader(load_dataset(cfg.data), cfg.data, torch.device("cpu"), seed=3).train_batches(0))
    assert all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(batches, again))
    resumed = list(loader.train_batches(0, start_step=1))  # a mid-epoch resume replays the rest exactly
    assert all(torch.equal(p.y, q.y) for p, q in zip(batches[1:], resumed))
    other = list(loader.train_batches(1))
    assert not all(torch.equal(p.y, q.y) for p, q in zip(batches, other))


def test_pair_transform_pads_labels_with_ignore_and_keeps_pairs_aligned(tmp_path) -> None:
    """A 6x8 image scaled (0.5..2) and cropped to 20x20: the padding is 255 in the labels and the mean colour in the
    image, and the labelled pixels keep their image colour (image and labels moved together, flips included)."""
    label = np.array([[1] * 4 + [2] * 4] * 6, dtype=np.uint8)  # left half class 1 (red), right half class 2 (green)
    colours = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10]], dtype=np.uint8)
    Image.fromarray(colours[label]).save(tmp_path / "img.png")
    Image.fromarray(label, mode="L").save(tmp_path / "lab.png")
    t = PairTransform(lookup_table({1: 0, 2: 1}), (20, 20), (0.5, 2.0), (1, 2, 3), train=True)
    for seed in range(6):
        image, lab = t(tmp_path / "img.png", tmp_path / "lab.png", np.random.default_rng(seed))
        assert image.shape == (20, 20, 3) and lab.shape == (20, 20)
        assert (lab == IGNORE_INDEX).any()  # at most 16x16 of content after a scale <= 2
        assert (image[lab == IGNORE_INDEX] == (1, 2, 3)).all()
        red = image[..., 0].astype(float)  # bilinear blurs the one boundary column; the halves stay apart
        assert red[lab == 0].mean() > 150 and red[lab == 1].mean() < 60


def test_evaluation_is_the_whole_image(cs_root) -> None:
    cfg = _cfg(cs_root, "data.eval_batch_size=4")
    loader = make_loader(load_dataset(cfg.data), cfg.data, torch.device("cpu"), seed=0)
    (batch,) = list(loader.eval_batches("test"))
    assert batch.x.shape == (2, 3, 32, 64) and batch.y.shape == (2, 32, 64)


def _write_label(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)


@pytest.mark.parametrize("problem", ["size", "value", "missing"])
def test_bad_label_maps_are_refused_naming_the_file(tmp_path, problem) -> None:
    root = make_cityscapes(tmp_path / "cs", n_train=2, n_val=1)
    label = next((root / "gtFine" / "train").rglob("*_labelIds.png"))
    if problem == "size":
        _write_label(label, np.full((10, 10), 7))
    elif problem == "value":
        _write_label(label, np.full((32, 64), 200))
    else:
        label.unlink()
    cfg = _cfg(root)
    with pytest.raises(DataError) as err:
        loader = make_loader(load_dataset(cfg.data), cfg.data, torch.device("cpu"), seed=0)
        list(loader.train_batches(0))
    msg = str(err.value)
    assert str(label) in msg
    assert {"size": "must have its image's size", "value": "[200]", "missing": "no label map"}[problem] in msg


def test_the_recipes_run_header_names_the_poly_schedule() -> None:
    from pathlib import Path

    from kdlab.config import load_config
    from kdlab.train.strategy import describe_strategy

    repo = Path(__file__).resolve().parents[1]
    line = describe_strategy(load_config(repo / "configs/cityscapes/dist/deeplabv3_r101__deeplabv3_r18.yaml"))
    assert "poly (power 0.9) to 0.0001 per step" in line


def test_poly_schedule_is_the_reference_formula() -> None:
    """CIRKD / DIST_KD ``adjust_lr``: ``1e-4 + (0.02 - 1e-4) * (1 - iter / max_iter) ** 0.9``, iter 0-based."""
    cfg = OptimConfig(schedule="poly", lr=0.02, min_lr=1e-4, power=0.9)
    total = 7 * 5
    for step in (0, 1, 17, 34):
        p = Progress(step=step, epoch=step // 7, step_in_epoch=step % 7, steps_per_epoch=7, total_epochs=5)
        want = 1e-4 + (0.02 - 1e-4) * (1 - step / total) ** 0.9
        assert learning_rate(cfg, p) == pytest.approx(want, rel=1e-12)
