"""Streamed image-folder datasets (`imagenet`, `imagefolder`) and the streaming loader, on a tiny JPEG folder."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import kdlab

from kdlab.config import DataConfig, build_config
from kdlab.data import DataError, StreamingSplits, is_streaming, load_dataset, make_loader
from kdlab.data.streaming import ImageTransform, StreamingLoader, center_crop_box, random_resized_crop_box

from conftest import REPO

CLASSES = ("n03", "n01", "n02")  # created out of order: the class index must follow sorted names
CPU = torch.device("cpu")


def _write_images(folder, count, rng, start=0, ext=".JPEG"):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + count):
        w, h = (int(v) for v in rng.integers(36, 80, 2))  # varying sizes and aspect ratios
        name = f"{folder.name}_{i}{ext}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """``train/<class>/`` with 5 images per class (one PNG, one in a subfolder) and ``val/<class>/`` with 2."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        _write_images(root / "train" / c, 3, rng)
        _write_images(root / "train" / c, 1, rng, start=3, ext=".png")
        _write_images(root / "train" / c / "extra", 1, rng, start=4, ext=".jpg")
        (root / "train" / c / "notes.txt").write_text("not an image")
        _write_images(root / "val" / c, 2, rng)
    return root


def _cfg(root, **kw) -> DataConfig:
    base = dict(
        name="imagenet", root=str(root), crop_size=32, resize_size=40, batch_size=4, eval_batch_size=5, workers=0
    )
    return DataConfig(**{**base, **kw})


def test_class_mapping_follows_sorted_folder_names(folder):
    splits = load_dataset(_cfg(folder))
    assert isinstance(splits, StreamingSplits) and is_streaming("imagenet") and is_streaming("imagefolder")
    assert not is_streaming("cifar100")
    assert splits.classes == ("n01", "n02", "n03") and splits.num_classes == 3
    assert splits.input_size == (3, 32, 32)
    assert len(splits.train) == 15 and len(splits.test) == 6
    for i in range(len(splits.train)):
        path = splits.train.paths[i].decode()
        assert path.startswith("train/") and splits.train.path(i).is_file()
        assert splits.classes[int(splits.train.y[i])] == path.split("/")[1]
    # files in sorted order within a class, then subfolders (torchvision's sorted os.walk), non-image files skipped
    n01 = [p.decode() for p, y in zip(splits.train.paths, splits.train.y) if int(y) == 0]
    assert n01 == [
        "train/n01/n01_0.JPEG",
        "train/n01/n01_1.JPEG",
        "train/n01/n01_2.JPEG",
        "train/n01/n01_3.png",
        "train/n01/extra/extra_4.jpg",
    ]
    assert splits.test.y.tolist() == [0, 0, 1, 1, 2, 2]


def test_flat_val_folder_with_label_files(folder, tmp_path):
    reference = load_dataset(_cfg(folder)).test
    expected = {splits_path.decode().split("/")[-1]: int(y) for splits_path, y in zip(reference.paths, reference.y)}
    for label_file in ("LOC_val_solution.csv", "val_labels.txt"):
        root = tmp_path / label_file
        shutil.copytree(folder / "train", root / "train")
        (root / "val").mkdir()
        lines = []
        for c in CLASSES:
            for f in sorted((folder / "val" / c).iterdir()):
                shutil.copy(f, root / "val" / f.name)
                lines.append((f.stem, c))
        if label_file.endswith(".csv"):
            text = "ImageId,PredictionString\n" + "".join(f"{s},{c} 1 2 30 40 {c} 3 4 5 6\n" for s, c in lines)
            (root / label_file).write_text(text)
        else:
            (root / "val" / label_file).write_text("".join(f"{s}.JPEG {c}\n" for s, c in lines))
        test = load_dataset(_cfg(root)).test
        got = {p.decode().split("/")[-1]: int(y) for p, y in zip(test.paths, test.y)}
        assert got == expected


def test_eval_transform_equals_resize_then_center_crop(folder):
    """Golden: torchvision's Resize(shorter side)+CenterCrop rule, done as two separate Pillow steps."""
    cfg = _cfg(folder, resize_size=40, crop_size=32)
    loader = make_loader(load_dataset(cfg), cfg, CPU, seed=0)
    batch = next(loader.eval_batches("test"))
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    for k in range(batch.size):
        img = Image.open(loader.test.path(int(batch.index[k]))).convert("RGB")
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new = (40, int(40 * long / short)) if w <= h else (int(40 * long / short), 40)
        resized = img.resize(new, Image.Resampling.BILINEAR)
        top, left = round((new[1] - 32) / 2.0), round((new[0] - 32) / 2.0)
        expected = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.float32)
        got = (batch.x[k] * std + mean) * 255.0
        diff = (got - torch.from_numpy(expected).permute(2, 0, 1)).abs()
        assert diff.max() <= 2.01 and diff.mean() < 0.5  # one Pillow call with a box vs two: rounding only


def test_random_resized_crop_box_range_and_fallback():
    rng = np.random.default_rng(1)
    for _ in range(300):
        left, top, w, h = random_resized_crop_box(200, 150, (0.08, 1.0), rng)
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 150
        assert 0.08 * 200 * 150 * 0.9 <= w * h <= 200 * 150
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # a 1000x10 strip cannot hold a crop of 90 % of its area with ratio <= 4/3: centre crop of the clamped ratio
    assert random_resized_crop_box(1000, 10, (0.9, 1.0), rng) == ((1000 - 13) // 2, 0, 13, 10)
    assert random_resized_crop_box(10, 1000, (0.9, 1.0), rng) == (0, (1000 - 13) // 2, 10, 13)  # h = w / (3/4)


def test_center_crop_box_matches_torchvision_rule():
    # 100x50 (w x h): shorter side 50 -> 40, longer -> int(40*100/50) = 80; crop 32 at left 24, top 4
    left, top, right, bottom = center_crop_box(100, 50, 40, 32)
    assert (left, top, right, bottom) == pytest.approx((24 * 1.25, 4 * 1.25, 56 * 1.25, 36 * 1.25))


def test_train_transform_is_a_function_of_the_sample_seed(folder):
    img = Image.open(next((folder / "train" / "n01").glob("*.JPEG"))).convert("RGB")
    t = ImageTransform(24, 28, (0.08, 1.0), train=True)
    a = t(img, np.random.default_rng(5))
    assert a.shape == (24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, t(img, np.random.default_rng(5)))
    assert any(not np.array_equal(a, t(img, np.random.default_rng(s))) for s in range(6, 10))


def _batches(loader, epoch, start=0):
    return [(b.x.clone(), b.y.clone(), b.index.clone()) for b in loader.train_batches(epoch, start)]


def _same(a, b):
    return len(a) == len(b) and all(all(torch.equal(u, v) for u, v in zip(p, q)) for p, q in zip(a, b))


def test_batches_shapes_labels_and_determinism(folder):
    cfg = _cfg(folder)
    splits = load_dataset(cfg)
    loader = make_loader(splits, cfg, CPU, seed=3)
    assert isinstance(loader, StreamingLoader) and loader.steps_per_epoch() == math.ceil(15 / 4)
    epoch0 = _batches(loader, 0)
    assert [x.shape for x, _, _ in epoch0] == [(4, 3, 32, 32)] * 3 + [(3, 3, 32, 32)]
    assert all(x.dtype == torch.float32 for x, _, _ in epoch0)
    index = torch.cat([i for _, _, i in epoch0])
    assert sorted(index.tolist()) == list(range(15))  # one epoch = one permutation
    assert torch.equal(torch.cat([y for _, y, _ in epoch0]), splits.train.y[index])
    assert _same(epoch0, _batches(make_loader(splits, cfg, CPU, seed=3), 0))  # same seed, new loader
    assert not _same(epoch0, _batches(loader, 1))  # another epoch: new order and crops
    assert not _same(epoch0, _batches(make_loader(splits, cfg, CPU, seed=4), 0))
    # worker processes change nothing: randomness is per (seed, epoch, sample)
    with_workers = make_loader(splits, _cfg(folder, workers=2), CPU, seed=3)
    assert _same(epoch0, _batches(with_workers, 0))


def test_mid_epoch_resume_replays_the_remaining_batches(folder):
    cfg = _cfg(folder)
    splits = load_dataset(cfg)
    full = _batches(make_loader(splits, cfg, CPU, seed=0), 2)
    resumed = _batches(make_loader(splits, cfg, CPU, seed=0), 2, start=2)
    assert _same(full[2:], resumed)


def test_ranks_split_the_global_batch(folder):
    """Rank r loads the r-th contiguous half of every global batch; the last partial batch (3 of 15 samples) is
    trimmed to 2; evaluation shards cover the split once."""
    from kdlab.config import ConfigError

    cfg = _cfg(folder)
    splits = load_dataset(cfg)
    single = _batches(make_loader(splits, cfg, CPU, seed=0), 0)
    ranks = []
    for r in (0, 1):
        loader = make_loader(splits, cfg, CPU, seed=0)
        loader.shard(r, 2)
        ranks.append(_batches(loader, 0))
        assert loader.steps_per_epoch() == 4
        assert torch.equal(
            torch.cat([b.index for b in loader.eval_batches("test", shard=True)]), torch.arange(3 * r, 3 * r + 3)
        )
    assert [x.shape[0] for x, _, _ in ranks[0]] == [2, 2, 2, 1]
    for step, whole in enumerate(single):
        joined = [torch.cat([ranks[0][step][k], ranks[1][step][k]]) for k in range(3)]
        keep = 4 if step < 3 else 2
        assert all(torch.equal(u[:keep], v) for u, v in zip(whole, joined))
    assert _same(ranks[1], _batches(make_loader(splits, cfg, CPU, seed=0, rank=1, world_size=2), 0))
    with pytest.raises(ConfigError, match="must be divisible by the 3 processes"):
        make_loader(splits, cfg, CPU, seed=0).shard(0, 3)


def test_held_out_split_and_subsets_apply_to_file_lists(folder):
    cfg = _cfg(folder, val_fraction=0.2, test_limit=3, train_per_class=4)
    splits = load_dataset(cfg)
    assert torch.bincount(splits.train.y).tolist() == [4, 4, 4] and len(splits.test) == 3
    loader = make_loader(splits, cfg, CPU, seed=0)
    train = {p.decode() for p in loader.train.paths}
    val = {p.decode() for p in loader.val.paths}
    assert not train & val and len(train) + len(val) == 12 and len(val) >= 3
    assert sum(b.size for b in loader.eval_batches("val")) == len(val)
    assert all(int(b.index.max()) < loader.num_train for b in loader.train_batches(0))
    lt = load_dataset(_cfg(folder, imbalance_ratio=5.0))
    assert torch.bincount(lt.train.y).tolist() == [5, int(5 * 0.2**0.5), 1]


def test_strong_view_is_a_randaugment_of_the_batch(folder):
    cfg = _cfg(folder)
    loader = make_loader(load_dataset(cfg), cfg, CPU, seed=0, views=("x", "strong"))
    a = next(loader.train_batches(0))
    b = next(loader.train_batches(0))
    assert a.views["strong"].shape == a.x.shape and torch.equal(a.views["strong"], b.views["strong"])
    assert not torch.equal(a.views["strong"], a.x)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_root", "is not a folder; expected layout under data.root: train/<class>/<image>"),
        ("no_train", "train does not exist; expected layout"),
        ("empty_class", "class folder\\(s\\) without images .*: n02"),
        ("flat_val_unlabelled", "no label file \\(LOC_val_solution.csv or val_labels.txt\\)"),
        ("val_class_unknown", "class folder\\(s\\) that train/ lacks \\(n09\\)"),
        ("no_val", "no evaluation folder"),
    ],
)
def test_malformed_folders_say_what_layout_is_expected(tmp_path, setup, message):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    if setup != "no_root":
        root.mkdir()
    if setup not in ("no_root", "no_train"):
        for c in ("n01", "n02"):
            (root / "train" / c).mkdir(parents=True)
            if not (setup == "empty_class" and c == "n02"):
                _write_images(root / "train" / c, 1, rng)
        if setup == "flat_val_unlabelled":
            _write_images(root / "val", 1, rng)
        elif setup == "val_class_unknown":
            _write_images(root / "val" / "n09", 1, rng)
        elif setup != "no_val":
            _write_images(root / "val" / "n01", 1, rng)
    with pytest.raises(DataError, match=message):
        load_dataset(_cfg(root))


def test_option_errors_and_corrupt_images(folder, tmp_path):
    splits = load_dataset(_cfg(folder))
    with pytest.raises(DataError, match="crop_size <= resize_size"):
        make_loader(splits, _cfg(folder, crop_size=64, resize_size=40), CPU, seed=0)
    with pytest.raises(DataError, match="crop_scale"):
        make_loader(splits, _cfg(folder, crop_scale=[0.5, 0.2]), CPU, seed=0)
    root = tmp_path / "bad"
    shutil.copytree(folder, root)
    (root / "val" / "n01" / "val_0.JPEG").write_bytes(b"not a jpeg")  # sorts first in the test split
    bad = load_dataset(_cfg(root))
    with pytest.raises(DataError, match=r"could not decode image .*val_0\.JPEG"):
        next(make_loader(bad, _cfg(root), CPU, seed=0).eval_batches("test"))


def _run_config(folder, tmp_path, *overrides):
    data = {
        "model": {"student": "convnet_xs"},
        "data": {
            "name": "imagenet",
            "root": str(folder),
            "crop_size": 32,
            "resize_size": 36,
            "batch_size": 4,
            "workers": 0,
        },
        "method": {"name": "ce"},
        "optim": {"lr": 0.05, "milestones": [2]},
        "train": {"epochs": 2, "device": "cpu", "run_dir": str(tmp_path / "runs"), "threads": 1},
        "log": {"progress": "off"},
    }
    return build_config(data, list(overrides))


def test_trainer_resume_mid_epoch_is_bitwise(folder, tmp_path):
    """A streamed run stopped after 2 steps (mid-epoch) and resumed ends identical to an uninterrupted one."""
    from kdlab.train.trainer import Trainer

    whole = Trainer(_run_config(folder, tmp_path, "train.max_steps=5", "train.name=whole"))
    whole.fit()
    first = Trainer(_run_config(folder, tmp_path, "train.max_steps=2", "train.name=split"))
    first.fit()
    second = Trainer(_run_config(folder, tmp_path, "train.max_steps=5", "train.name=split"), resume=True)
    second.fit()
    for (name, a), b in zip(whole.run.student.state_dict().items(), second.run.student.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_trains_two_steps_on_a_jpeg_folder(folder, tmp_path):
    proc = kdlab(
        "train",
        str(REPO / "configs/debug/digits_ce.yaml"),
        "data.name=imagefolder",
        f"data.root={folder}",
        "data.crop_size=32",
        "data.resize_size=36",
        "data.batch_size=4",
        "data.workers=1",
        "model.student=convnet_xs",
        "train.max_steps=2",
        "train.device=cpu",
        "train.threads=1",
        "train.name=r",
        f"train.run_dir={tmp_path}",
        "log.progress=plain",
    )
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["dataset"] == "imagefolder" and summary["last"]["n"] == 6, proc.stdout
    bad = kdlab(
        "train",
        str(REPO / "configs/debug/digits_ce.yaml"),
        "data.name=imagenet",
        f"data.root={tmp_path / 'missing'}",
        "train.device=cpu",
        check=False,
    )
    assert bad.returncode == 2 and "expected layout under data.root" in bad.stderr + bad.stdout


def test_shipped_imagenet_recipes_are_the_generator_output():
    """configs/imagenet/** (except tgeo_kd/ and strategies/, written elsewhere) is exactly what
    scripts/make_imagenet_configs.py emits, every distillation config names its pair, and every target is a published
    top-1 in (0, 100)."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("make_imagenet_configs", REPO / "scripts/make_imagenet_configs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    emitted = {path.relative_to(REPO): cfg for path, cfg in script.emit().items()}
    shipped = {
        p.relative_to(REPO): yaml.safe_load(p.read_text())
        for p in (REPO / "configs" / "imagenet").rglob("*.yaml")
        if "tgeo_kd" not in p.parts and "strategies" not in p.parts  # strategies: hand-written (issue 18)
    }
    assert shipped == emitted
    methods = {p.parts[2] for p in shipped}
    assert {"ce", "kd", "dkd", "dist", "mlkd", "crd", "review_kd", "at", "ofd", "tekap_kd"} <= methods
    for path, cfg in shipped.items():
        assert cfg["data"]["name"] == "imagenet" and cfg["description"]
        if path.parts[2] != "ce":
            names = (cfg["model"]["teachers"][0]["name"], cfg["model"]["student"])
            assert path.stem == "__".join(script.file_name(n) for n in names)
        if path.parts[2] != "mlkd":
            assert 60.0 < cfg["target"]["top1"] < 90.0  # DIST Table 4's Swin students reach 82.3


@pytest.mark.parametrize("method", ["mlkd", "crd"])
def test_methods_needing_views_or_indices_train_on_streamed_data(folder, tmp_path, method):
    """MLKD reads the ``strong`` view and CRD the dataset ``index`` of every sample; both run on the streamed loader."""
    from kdlab.train.trainer import Trainer

    cfg = _run_config(
        folder,
        tmp_path,
        f"method.name={method}",
        "model.teachers.0.name=convnet_s",
        "train.max_steps=2",
        f"train.name={method}",
    )
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary["steps"] == 2 and summary["last"]["n"] == 6
    assert trainer.run.data.views == trainer.run.needs.views
