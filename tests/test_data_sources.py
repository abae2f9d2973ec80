"""Dataset sources (cifar10/cifar100/digits/synthetic/npz) and the split utilities.

CIFAR archives are built here in the real python-pickle layout; downloads are served by a local HTTP server on
127.0.0.1. No test touches the internet: every test runs with ``KDLAB_CIFAR_URL`` pointing at a closed local port
unless it starts its own server.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.config import DataConfig
from kdlab.data import DataError, dataset_names, load_dataset
from kdlab.data.sources import cifar
from kdlab.data.sources._common import channel_stats
from kdlab.data.sources.synthetic import make_synthetic
from kdlab.data.split import class_balanced_subset, stratified_split

SHARED_CIFAR10_JPG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_jpg"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point downloads at a closed local port and drop proxies, so nothing here can reach the internet."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv(cifar.URL_ENV, "http://127.0.0.1:9/")


# --------------------------------------------------------------------------------------------------------------
# Tiny CIFAR archives in the real layout


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles with bytes keys


def _write_cifar(root: Path, name: str, n_train: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """Write a tiny ``name`` (cifar10/cifar100) under ``root`` in the official layout; return what it holds."""
    layout = cifar.LAYOUTS[name]
    rng = np.random.RandomState(seed)
    folder = root / layout.folder
    folder.mkdir(parents=True)
    k = layout.num_classes
    label_key = layout.label_key.encode()
    train_x, train_y = [], []
    for batch in layout.train:
        data = rng.randint(0, 256, size=(n_train, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.randint(0, k, size=n_train)]
        extra = {b"coarse_labels": [v // 5 for v in labels]} if name == "cifar100" else {}
        _pickle(folder / batch, {b"batch_label": b"training", b"data": data, label_key: labels, **extra})
        train_x.append(data)
        train_y += labels
    test_x = rng.randint(0, 256, size=(n_test, 3072)).astype(np.uint8)
    test_y = [int(v) for v in rng.randint(0, k, size=n_test)]
    _pickle(folder / layout.test, {b"batch_label": b"testing", b"data": test_x, label_key: test_y})
    names = [f"class_{i}".encode() for i in range(k)]
    _pickle(folder / layout.meta, {layout.names_key.encode(): names, b"num_cases_per_batch": n_train})
    return {"train_x": np.concatenate(train_x), "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _make_archive(tmp_path: Path, name: str) -> tuple[Path, dict]:
    """A ``.tar.gz`` of a tiny ``name`` in the official archive's layout (one top-level folder)."""
    layout = cifar.LAYOUTS[name]
    src = tmp_path / "src"
    content = _write_cifar(src, name)
    archive = tmp_path / "archives" / layout.archive
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / layout.folder, arcname=layout.folder)
    return archive, content


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _with_md5(monkeypatch: pytest.MonkeyPatch, name: str, md5: str) -> None:
    monkeypatch.setitem(cifar.LAYOUTS, name, dataclasses.replace(cifar.LAYOUTS[name], md5=md5))


def _check_cifar(splits, name: str, content: dict) -> None:
    layout = cifar.LAYOUTS[name]
    n_train, n_test = len(content["train_y"]), len(content["test_y"])
    assert splits.name == name
    assert splits.train.x.shape == (n_train, 32, 32, 3) and splits.train.x.dtype == torch.uint8
    assert splits.test.x.shape == (n_test, 32, 32, 3)
    assert splits.input_size == (3, 32, 32)
    assert splits.train.y.tolist() == content["train_y"]
    assert splits.test.y.tolist() == content["test_y"]
    # row-major planes R, G, B of 32x32 -> [N, H, W, C]
    expected = content["train_x"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(splits.train.x.numpy(), expected)
    assert splits.train.x[1, 2, 3, 1].item() == content["train_x"][1, 1 * 1024 + 2 * 32 + 3]
    assert splits.num_classes == layout.num_classes
    assert splits.classes == tuple(f"class_{i}" for i in range(layout.num_classes))
    assert splits.mean == layout.mean and splits.std == layout.std


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_the_pickle_layout(tmp_path: Path, name: str) -> None:
    content = _write_cifar(tmp_path, name)
    splits = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    _check_cifar(splits, name, content)


def test_cifar_standard_normalisation() -> None:
    assert cifar.LAYOUTS["cifar100"].mean == (0.5071, 0.4867, 0.4408)
    assert cifar.LAYOUTS["cifar100"].std == (0.2675, 0.2565, 0.2761)
    assert cifar.LAYOUTS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert cifar.LAYOUTS["cifar10"].std == (0.2470, 0.2435, 0.2616)


def test_cifar_unpickler_reads_python2_arrays_and_refuses_other_globals(tmp_path: Path) -> None:
    # np.array([1, 2, 3], uint8) as Python 2's cPickle wrote it (the official batches are Python 2 pickles)
    py2 = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03"
        b"(K\x01K\x03\x85cnumpy\ndtype\nq\x04U\x02u1K\x00K\x01\x87Rq\x05(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tbI00\nU\x03\x01\x02\x03tb."
    )
    array = cifar._ArrayUnpickler(io.BytesIO(py2), encoding="bytes").load()
    assert array.dtype == np.uint8 and array.tolist() == [1, 2, 3]

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load posix\.getcwd|refusing to load nt\.getcwd"):
        cifar._unpickle(path)


def test_cifar_malformed_batch_names_the_file(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    _pickle(bad, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be uint8 \[N, 3072\]"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_files_say_where_and_how(tmp_path: Path, name: str) -> None:
    layout = cifar.LAYOUTS[name]
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name=name, root=str(root)))
    message = str(info.value)
    assert str(root / layout.folder) in message  # where it looked
    assert layout.files[0] in message and layout.test in message  # which files
    assert "data.download=true" in message  # how to get them
    assert str(root / layout.archive) in message  # or where to put the archive
    assert not root.exists()


class _Server:
    """A static file server on 127.0.0.1 in a thread; records the paths requested."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=directory))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_download_checks_md5_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    layout = cifar.LAYOUTS[name]
    archive, content = _make_archive(tmp_path, name)
    _with_md5(monkeypatch, name, _md5(archive))
    root = tmp_path / "data"
    with _Server(archive.parent) as server:
        monkeypatch.setenv(cifar.URL_ENV, server.url)
        splits = load_dataset(DataConfig(name=name, root=str(root), download=True))
    assert any(layout.archive in r for r in server.requests)
    _check_cifar(splits, name, content)
    assert sorted(p.name for p in root.iterdir()) == [layout.folder]  # no archive, no temporary files
    # a second load needs no server
    _check_cifar(load_dataset(DataConfig(name=name, root=str(root), download=True)), name, content)


@pytest.mark.parametrize("existing_root", [False, True])
def test_cifar_download_with_wrong_md5_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing_root: bool
) -> None:
    archive, _ = _make_archive(tmp_path, "cifar10")  # the official MD5 cannot match this archive
    root = tmp_path / "data"
    if existing_root:
        root.mkdir()
    with _Server(archive.parent) as server:
        monkeypatch.setenv(cifar.URL_ENV, server.url)
        with pytest.raises(DataError, match=r"MD5 [0-9a-f]{32}, expected c58f30108f718f92721af3b95e74349a"):
            load_dataset(DataConfig(name="cifar10", root=str(root), download=True))
    assert server.requests
    assert (list(root.iterdir()) == []) if existing_root else not root.exists()


def test_cifar_unreachable_server_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:9/cifar-10-python\.tar\.gz"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=True))
    assert list(tmp_path.iterdir()) == []


def test_cifar_archive_put_in_root_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, content = _make_archive(tmp_path, "cifar10")
    root = tmp_path / "data"
    root.mkdir()
    placed = root / archive.name
    placed.write_bytes(archive.read_bytes())
    with pytest.raises(DataError, match=r"has MD5 .* expected c58f30108f718f92721af3b95e74349a"):
        load_dataset(DataConfig(name="cifar10", root=str(root)))
    assert sorted(p.name for p in root.iterdir()) == [archive.name]  # nothing extracted, user's file kept
    _with_md5(monkeypatch, "cifar10", _md5(archive))
    _check_cifar(load_dataset(DataConfig(name="cifar10", root=str(root))), "cifar10", content)


def test_cifar_archive_with_path_traversal_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    _with_md5(monkeypatch, "cifar10", _md5(archive))
    with pytest.raises(DataError, match=r"refusing to extract 'cifar-10-batches-py/\.\./\.\./escaped\.txt'"):
        load_dataset(DataConfig(name="cifar10", root=str(root)))
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == [archive.name]


def test_cifar_archive_without_the_files_extracts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        tar.addfile(info, io.BytesIO(b""))
    _with_md5(monkeypatch, "cifar10", _md5(archive))
    with pytest.raises(DataError, match=r"does not contain cifar-10-batches-py/\{data_batch_2"):
        load_dataset(DataConfig(name="cifar10", root=str(root)))
    assert sorted(p.name for p in root.iterdir()) == [archive.name]


# --------------------------------------------------------------------------------------------------------------
# digits


def test_digits_fixed_stratified_split() -> None:
    d = load_dataset(DataConfig(name="digits"))
    assert d.train.x.shape == (1297, 8, 8, 1) and d.test.x.shape == (500, 8, 8, 1)
    assert d.train.x.dtype == torch.uint8 and int(d.train.x.max()) == 255 and int(d.train.x.min()) == 0
    assert d.num_classes == 10 and d.classes == tuple("0123456789") and d.input_size == (1, 8, 8)
    full = torch.cat([d.train.y, d.test.y]).bincount(minlength=10)
    test_counts = d.test.y.bincount(minlength=10)
    assert (test_counts - full * 500 / 1797).abs().max() < 1  # stratified
    # fixed: independent of split_seed and of anything else in the config, pinned across versions
    other = load_dataset(DataConfig(name="digits", split_seed=7, root="elsewhere"))
    assert torch.equal(other.test.x, d.test.x) and torch.equal(other.train.y, d.train.y)
    assert hashlib.sha256(d.test.x.numpy().tobytes()).hexdigest()[:16] == "3effb1ecd3038255"
    from sklearn.datasets import load_digits

    assert full.tolist() == np.bincount(load_digits().target).tolist()  # train + test = all 1,797, once each
    mean, std = channel_stats(d.train.x)
    assert d.mean == pytest.approx(mean) and d.std == pytest.approx(std)
    assert 0.25 < d.mean[0] < 0.35


# --------------------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_shapes_and_determinism() -> None:
    cfg = DataConfig(name="synthetic", num_classes=5, image_size=12, channels=2, train_size=53, test_size=21)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.train.x.shape == (53, 12, 12, 2) and a.test.x.shape == (21, 12, 12, 2)
    assert a.train.x.dtype == torch.uint8 and a.num_classes == 5 and a.input_size == (2, 12, 12)
    counts = a.train.y.bincount(minlength=5)
    assert counts.max() - counts.min() <= 1
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y) and a.mean == b.mean
    c = load_dataset(dataclasses.replace(cfg, split_seed=1))
    assert not torch.equal(a.train.x, c.train.x)
    assert make_synthetic(3, 1, 1, 4, 4).train.x.shape == (4, 1, 1, 1)
    with pytest.raises(DataError, match=r"data.image_size must be at least 1"):
        make_synthetic(image_size=0)


@pytest.mark.parametrize(("num_classes", "size", "channels"), [(10, 32, 3), (4, 8, 1)])
def test_synthetic_is_learnable(num_classes: int, size: int, channels: int) -> None:
    d = make_synthetic(num_classes, size, channels, train_size=400, test_size=200, seed=0)
    train, test = d.train.x.flatten(1).float(), d.test.x.flatten(1).float()
    means = torch.stack([train[d.train.y == k].mean(0) for k in range(num_classes)])
    accuracy = (torch.cdist(test, means).argmin(1) == d.test.y).float().mean().item()
    assert accuracy > 3 / num_classes if num_classes > 4 else accuracy > 0.45  # chance is 1 / num_classes
    assert accuracy < 0.99  # not trivially separable


# --------------------------------------------------------------------------------------------------------------
# npz


def _images(n: int, seed: int, shape: tuple[int, int, int] = (6, 5, 3)) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, *shape)).astype(np.uint8)


def test_npz_loads_train_files_and_test_file(tmp_path: Path) -> None:
    x0, x1, xt = _images(7, 0), _images(5, 1), _images(4, 2)
    y0, y1, yt = np.arange(7) % 3, np.array([3, 0, 1, 2, 3], np.uint8), np.array([0, 1, 2, 3])
    np.savez(tmp_path / "a.npz", x=x0, y=y0)
    np.savez(tmp_path / "b.npz", x=x1, y=y1, classes=np.array(["w", "x", "y", "z"]))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    np.savez(elsewhere / "test.npz", x=xt, y=yt)
    cfg = DataConfig(
        name="npz", root=str(tmp_path), train_files=["a.npz", "b.npz"], test_file=str(elsewhere / "test.npz")
    )
    d = load_dataset(cfg)
    assert d.train.x.shape == (12, 6, 5, 3) and d.test.x.shape == (4, 6, 5, 3) and d.input_size == (3, 6, 5)
    assert np.array_equal(d.train.x.numpy(), np.concatenate([x0, x1]))
    assert d.train.y.tolist() == [*y0.tolist(), *y1.tolist()] and d.train.y.dtype == torch.int64
    assert d.num_classes == 4 and d.classes == ("w", "x", "y", "z")
    full = np.concatenate([x0, x1]).reshape(-1, 3) / 255.0
    assert d.mean == pytest.approx(tuple(full.mean(0))) and d.std == pytest.approx(tuple(full.std(0)))


def _bad_npz_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (file content kind, expected message fragment)."""
    good_x, good_y = _images(4, 0), np.array([0, 1, 0, 1])
    cases = {
        "no_x.npz": (dict(images=good_x, y=good_y), r"has no array 'x' \(arrays found: images, y\)"),
        "float_x.npz": (dict(x=good_x.astype(np.float32), y=good_y), r"'x' must be uint8 \[N, H, W, C\].*float32"),
        "gray.npz": (dict(x=good_x[..., 0], y=good_y), r"add a channel axis"),
        "nchw.npz": (dict(x=good_x.transpose(0, 3, 1, 2).copy(), y=good_y), r"channels-first"),
        "short_y.npz": (dict(x=good_x, y=good_y[:3]), r"'y' must be \[N\] with N=4"),
        "float_y.npz": (dict(x=good_x, y=good_y.astype(np.float64)), r"'y' must hold integer labels"),
        "negative_y.npz": (dict(x=good_x, y=np.array([0, -1, 0, 1])), r"labels must be >= 0"),
        "other_shape.npz": (dict(x=_images(4, 0, (5, 5, 3)), y=good_y), r"has images of shape \(5, 5, 3\)"),
    }
    for name, (arrays, _) in cases.items():
        np.savez(tmp_path / name, **arrays)
    (tmp_path / "not_zip.npz").write_bytes(b"this is not a zip archive")
    cases["not_zip.npz"] = ({}, r"is not a readable \.npz file")
    np.save(tmp_path / "single.npy", good_x)
    cases["single.npy"] = ({}, r"holds a single array")
    cases["missing.npz"] = ({}, r"missing\.npz does not exist")
    return cases


def test_npz_bad_files_name_the_file_and_the_problem(tmp_path: Path) -> None:
    np.savez(tmp_path / "good.npz", x=_images(4, 0), y=np.array([0, 1, 0, 1]))
    for name, (_, pattern) in _bad_npz_cases(tmp_path).items():
        cfg = DataConfig(name="npz", root=str(tmp_path), train_files=["good.npz", name], test_file="good.npz")
        with pytest.raises(DataError, match=pattern) as info:
            load_dataset(cfg)
        assert name in str(info.value), name


def test_npz_needs_train_and_test_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"set data.train_files"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path), test_file="t.npz"))
    with pytest.raises(DataError, match=r"set data.test_file"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path), train_files=["a.npz"]))


# --------------------------------------------------------------------------------------------------------------
# split utilities and generic subsetting


def _labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_class_balanced_subset() -> None:
    y = _labels([30, 12, 50, 7])
    index = class_balanced_subset(y, 5, seed=3)
    assert index.dtype == torch.int64 and index.shape == (20,)
    assert torch.equal(index, index.sort().values) and len(set(index.tolist())) == 20
    assert y[index].bincount().tolist() == [5, 5, 5, 5]
    assert torch.equal(index, class_balanced_subset(y.numpy(), 5, seed=3))  # deterministic, numpy too
    assert not torch.equal(index, class_balanced_subset(y, 5, seed=4))
    assert set(index.tolist()) <= set(class_balanced_subset(y, 6, seed=3).tolist())  # nested
    with pytest.raises(DataError, match=r"train_per_class=8 but 1 class\(es\) have fewer.*class 3: 7"):
        class_balanced_subset(y, 8, seed=0)


def test_stratified_split() -> None:
    y = _labels([100, 40, 9, 1, 50])
    train, val = stratified_split(y, 0.2, seed=0)
    assert train.dtype == val.dtype == torch.int64
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(y)))
    assert torch.equal(val, val.sort().values)
    assert len(val) == round(0.2 * len(y))
    assert y[val].bincount(minlength=5).tolist() == [20, 8, 2, 0, 10]  # the singleton class stays in train
    again = stratified_split(y, 0.2, seed=0)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(stratified_split(y, 0.2, seed=1)[1], val)
    _, tiny = stratified_split(y, 0.01, seed=0)
    assert y[tiny].bincount(minlength=5).tolist() == [1, 1, 1, 0, 1]  # at least one per class
    train0, val0 = stratified_split(y, 0.0, seed=0)
    assert len(val0) == 0 and torch.equal(train0, torch.arange(len(y)))
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        stratified_split(y, 1.0, seed=0)


def test_load_dataset_applies_train_per_class_and_test_limit() -> None:
    base = DataConfig(name="synthetic", num_classes=4, image_size=6, channels=1, train_size=80, test_size=30)
    full = load_dataset(base)
    small = load_dataset(dataclasses.replace(base, train_per_class=5, test_limit=7))
    assert small.train.y.bincount().tolist() == [5, 5, 5, 5]
    # test_limit keeps a stratified, seeded subset in dataset order (test files are often sorted by class)
    assert len(small.test) == 7 and small.test.y.unique().numel() == 4
    rows = {tuple(r.flatten().tolist()) for r in full.test.x}
    assert all(tuple(r.flatten().tolist()) in rows for r in small.test.x)
    assert small.mean == full.mean and small.num_classes == 4  # normalisation of the whole dataset
    again = load_dataset(dataclasses.replace(base, train_per_class=5, test_limit=7))
    assert torch.equal(small.train.x, again.train.x)
    other = load_dataset(dataclasses.replace(base, train_per_class=5, split_seed=1))
    assert other.train.y.bincount().tolist() == [5, 5, 5, 5]
    with pytest.raises(DataError, match=r"test_limit must be at least 1"):
        load_dataset(dataclasses.replace(base, test_limit=0))


def test_all_sources_registered() -> None:
    assert {"cifar10", "cifar100", "digits", "synthetic", "npz"} <= set(dataset_names())


# --------------------------------------------------------------------------------------------------------------
# real data from ../shared (skipped when absent)


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_CIFAR10_JPG / "test.npz").is_file(), reason="../shared/data/cifar10_jpg not present")
def test_shared_cifar10_jpg_via_npz() -> None:
    cfg = DataConfig(
        name="npz",
        root=str(SHARED_CIFAR10_JPG),
        train_files=[f"train_{i}.npz" for i in range(5)],
        test_file="test.npz",
        train_per_class=500,
    )
    d = load_dataset(cfg)
    assert d.train.x.shape == (5000, 32, 32, 3) and d.test.x.shape == (10000, 32, 32, 3)
    assert d.train.y.bincount().tolist() == [500] * 10
    assert d.test.y.bincount().tolist() == [1000] * 10
    assert d.num_classes == 10
    # README: train mean 0.4913 0.4821 0.4465, std 0.2452 0.2428 0.2606 (all 50,000); test mean 0.4941 0.4851 0.4504
    assert d.mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=1e-4)
    assert d.std == pytest.approx((0.2452, 0.2428, 0.2606), abs=1e-4)
    assert channel_stats(d.test.x)[0] == pytest.approx((0.4941, 0.4851, 0.4504), abs=1e-4)
    assert channel_stats(d.train.x)[0] == pytest.approx(d.mean, abs=0.01)  # the subset is representative
