"""In-memory sources beyond CIFAR (Tiny-ImageNet, STL-10) in their official layouts, and long-tailed splits."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import TINY, kdlab

from kdlab.config import DataConfig
from kdlab.data import DataError, load_dataset
from kdlab.data.imbalance import long_tail_counts, long_tail_subset
from kdlab.data.sources import tiny_imagenet as tiny

from conftest import REPO

# ------------------------------------------------------------------------------------------------ Tiny-ImageNet

WNIDS = ("n09", "n02", "n05")  # wnids.txt is not sorted; the class index follows sorted order


def _make_tiny(root, per_class=3, val_per_class=2):
    """A fake tiny-imagenet-200 folder; returns {relative path: (label, pixels)} of every image."""
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    label = {w: i for i, w in enumerate(sorted(WNIDS))}
    images = {}

    def save(rel, wnid, gray=False, size=64):
        arr = rng.integers(0, 256, (size, size) if gray else (size, size, 3), dtype=np.uint8)
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(base / rel)
        decoded = Image.open(base / rel).convert("RGB")  # JPEG is lossy: the golden is Pillow's own decoding
        if decoded.size != (64, 64):
            decoded = decoded.resize((64, 64), Image.Resampling.BILINEAR)
        images[rel] = (label[wnid], np.asarray(decoded))

    for wnid in WNIDS:
        for k in range(per_class):
            save(f"train/{wnid}/images/{wnid}_{k}.JPEG", wnid, gray=(k == 0))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for k in range(val_per_class * len(WNIDS)):
        wnid = WNIDS[k % len(WNIDS)]
        save(f"val/images/val_{k}.JPEG", wnid, size=60 if k == 0 else 64)
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base, images


def test_tiny_imagenet_layout_labels_and_pixels(tmp_path):
    base, images = _make_tiny(tmp_path)
    splits = load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path)))
    assert splits.classes == ("n02", "n05", "n09") and splits.num_classes == 3
    assert splits.train.x.shape == (9, 64, 64, 3) and splits.test.x.shape == (6, 64, 64, 3)
    train = sorted((p, v) for p, v in images.items() if p.startswith("train/"))
    train.sort(key=lambda item: item[1][0])  # grouped by class in class order, files sorted within a class
    for i, (_, (label, pixels)) in enumerate(train):
        assert int(splits.train.y[i]) == label and np.array_equal(splits.train.x[i].numpy(), pixels)
    val = sorted((p, v) for p, v in images.items() if p.startswith("val/"))
    for i, (_, (label, pixels)) in enumerate(val):
        assert int(splits.test.y[i]) == label and np.array_equal(splits.test.x[i].numpy(), pixels)
    x = splits.train.x.double() / 255.0
    assert splits.mean == pytest.approx(tuple(x.mean((0, 1, 2)).tolist()))
    assert splits.std == pytest.approx(tuple(x.std((0, 1, 2), correction=0).tolist()))
    # data.root may also be the tiny-imagenet-200 folder itself
    again = load_dataset(DataConfig(name="tiny_imagenet", root=str(base)))
    assert torch.equal(again.train.x, splits.train.x)


def test_tiny_imagenet_cache_is_used_then_rebuilt_when_files_change(tmp_path, monkeypatch):
    base, _ = _make_tiny(tmp_path)
    cache = tmp_path / "cache"
    first = tiny.load_tiny_imagenet(tmp_path, str(cache))
    assert (cache / "tiny-imagenet-200.kdlab.npz").is_file()

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(tiny, "decode", no_decoding)
    cached = tiny.load_tiny_imagenet(tmp_path, str(cache))
    assert torch.equal(cached.train.x, first.train.x) and torch.equal(cached.test.y, first.test.y)
    assert cached.mean == first.mean
    monkeypatch.undo()
    new = np.full((64, 64, 3), 7, dtype=np.uint8)
    Image.fromarray(new).save(base / "train/n02/images/n02_9.JPEG")  # a new image: the cache is stale
    rebuilt = tiny.load_tiny_imagenet(tmp_path, str(cache))
    assert rebuilt.train.x.shape[0] == 10


def test_tiny_imagenet_default_cache_sits_next_to_the_folder(tmp_path):
    _make_tiny(tmp_path, per_class=1, val_per_class=1)
    load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path)))
    assert (tmp_path / "tiny-imagenet-200.kdlab.npz").is_file()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_folder", "no wnids.txt"),
        ("missing_class", "n05/images does not exist"),
        ("bad_annotation", "val_annotations.txt line 1 should be"),
        ("missing_val_image", "annotated validation image\\(s\\) are missing"),
    ],
)
def test_tiny_imagenet_errors_name_the_layout(tmp_path, breakage, message):
    import shutil

    if breakage != "no_folder":
        base, _ = _make_tiny(tmp_path, per_class=1, val_per_class=1)
        if breakage == "missing_class":
            shutil.rmtree(base / "train" / "n05")
        elif breakage == "bad_annotation":
            (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999\n")
        else:
            (base / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path), cache_dir=str(tmp_path / "c")))


# -------------------------------------------------------------------------------------------------------- STL-10


def _write_stl(folder, n_train=4, n_test=3):
    """Images in the official byte order, written pixel by pixel from the documented offset formula."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)  # [N, H(y), W(x), C]
        raw = np.empty(n * 3 * 96 * 96, dtype=np.uint8)
        n_, y_, x_, c_ = np.meshgrid(np.arange(n), np.arange(96), np.arange(96), np.arange(3), indexing="ij")
        raw[((n_ * 3 + c_) * 96 + x_) * 96 + y_] = img  # byte ((n*3 + c)*96 + x)*96 + y is pixel (y, x, c)
        raw.tofile(folder / f"{split}_X.bin")
        labels = rng.integers(1, 11, n, dtype=np.uint8)
        labels.tofile(folder / f"{split}_y.bin")
        out[split] = (img, labels)
    return out


def test_stl10_binary_layout_and_labels(tmp_path):
    content = _write_stl(tmp_path / "stl10_binary")
    splits = load_dataset(DataConfig(name="stl10", root=str(tmp_path)))
    assert splits.num_classes == 10 and splits.input_size == (3, 96, 96)
    for split in ("train", "test"):
        img, labels = content[split]
        part = getattr(splits, split)
        assert part.x.shape == img.shape and np.array_equal(part.x.numpy(), img)
        assert part.y.tolist() == (labels.astype(np.int64) - 1).tolist()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "missing test_y.bin"),
        ("truncated", "not a positive multiple of 3\\*96\\*96"),
        ("label_count", "holds 2 labels but its image file holds 3 images"),
        ("label_range", "labels must lie in 1..10, found 0"),
    ],
)
def test_stl10_errors(tmp_path, breakage, message):
    folder = tmp_path / "stl10_binary"
    _write_stl(folder)
    if breakage == "missing":
        (folder / "test_y.bin").unlink()
    elif breakage == "truncated":
        (folder / "test_X.bin").write_bytes((folder / "test_X.bin").read_bytes()[:-5])
    elif breakage == "label_count":
        np.array([1, 2], dtype=np.uint8).tofile(folder / "test_y.bin")
    else:
        np.array([0, 2, 3], dtype=np.uint8).tofile(folder / "test_y.bin")
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(name="stl10", root=str(tmp_path)))


# -------------------------------------------------------------------------------------------------- long-tailed


def test_long_tail_counts_follow_the_exponential_profile():
    for n_max, k, ratio in ((500, 100, 100.0), (5000, 10, 50.0), (40, 7, 3.5)):
        expected = [int(np.floor(n_max * ratio ** (-c / (k - 1)) + 1e-9)) for c in range(k)]
        assert long_tail_counts(n_max, k, ratio) == expected
    # the published sizes of CIFAR-100-LT and CIFAR-10-LT (Cao et al. 2019) at ratios 100, 50, 10
    assert [sum(long_tail_counts(500, 100, r)) for r in (100, 50, 10)] == [10847, 12608, 19573]
    assert [sum(long_tail_counts(5000, 10, r)) for r in (100, 50, 10)] == [12406, 13996, 20431]
    assert long_tail_counts(50, 4, 10.0, "step") == [50, 50, 5, 5]
    assert long_tail_counts(10, 3, 1.0) == [10, 10, 10]


def test_long_tailed_dataset_counts_seed_and_untouched_test_split(caplog):
    base = dict(name="synthetic", num_classes=5, image_size=4, train_size=200, test_size=50)
    full = load_dataset(DataConfig(**base))
    with caplog.at_level(logging.INFO, logger="kdlab.data.imbalance"):
        lt = load_dataset(DataConfig(**base, imbalance_ratio=10.0))
    expected = [int(40 * 0.1 ** (c / 4)) for c in range(5)]
    assert torch.bincount(lt.train.y, minlength=5).tolist() == expected == [40, 22, 12, 7, 4]
    assert f"per class {expected}" in caplog.text and "data.imbalance_ratio=10" in caplog.text
    assert torch.equal(lt.test.x, full.test.x) and torch.equal(lt.test.y, full.test.y)
    assert (lt.mean, lt.std) == (full.mean, full.std)
    # the kept images are training images, chosen by data.split_seed; a larger quota keeps a smaller one's choice
    index = long_tail_subset(full.train.y, 5, 10.0, seed=0)
    assert torch.equal(lt.train.x, full.train.x[index])
    other = long_tail_subset(full.train.y, 5, 10.0, seed=1)
    assert not torch.equal(index, other)
    assert set(index.tolist()) <= set(long_tail_subset(full.train.y, 5, 2.0, seed=0).tolist())


def test_long_tail_on_top_of_a_class_balanced_subset_and_errors():
    lt = load_dataset(
        DataConfig(
            name="synthetic", num_classes=4, image_size=4, train_size=200, train_per_class=30, imbalance_ratio=30.0
        )
    )
    assert torch.bincount(lt.train.y).tolist() == [int(30 * (1 / 30) ** (c / 3)) for c in range(4)]
    with pytest.raises(DataError, match=r"imbalance_ratio=0\.5 must be a number >= 1"):
        load_dataset(DataConfig(name="synthetic", imbalance_ratio=0.5))
    with pytest.raises(DataError, match="class 1 has no training images"):
        long_tail_subset(torch.tensor([0, 0, 2, 2]), 3, 10.0)


def test_cli_long_tailed_run_and_bad_ratio(tmp_path):
    args = [
        "train",
        str(REPO / "configs/debug/digits_ce.yaml"),
        *TINY,
        "train.max_steps=1",
        f"train.run_dir={tmp_path}",
    ]
    proc = kdlab(*args, "data.imbalance_ratio=4", "train.name=lt")
    assert "long-tailed synthetic training split" in proc.stderr + proc.stdout
    config = (tmp_path / "lt" / "config.yaml").read_text()
    assert "imbalance_ratio: 4.0" in config and "imbalance_profile: exp" in config
    bad = kdlab(*args, "data.imbalance_ratio=0.5", "train.name=bad", check=False)
    assert bad.returncode == 2 and "data.imbalance_ratio must be >= 1, got 0.5" in bad.stderr + bad.stdout
