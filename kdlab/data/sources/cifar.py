"""CIFAR-10 and CIFAR-100 from the official python-pickle archives.

Layout under ``data.root`` (what the official ``*-python.tar.gz`` archives extract to)::

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta

Each batch is a pickled dict with ``b"data"`` (uint8 ``[N, 3072]``, the 1024 red, then green, then blue pixels of
a 32x32 image, row-major) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).

When files are missing, kdlab looks for the official archive at ``root/<archive name>`` (a manual download) and,
with ``data.download=true``, downloads it from :data:`DEFAULT_URL` (or the base URL in the ``KDLAB_CIFAR_URL``
environment variable, e.g. a mirror). Archives are MD5-checked before anything is extracted, only regular files and
folders inside the expected top-level folder are extracted, and extraction goes to a temporary folder that is
moved into place only when complete, so a failure leaves nothing half-written.

Pickles are read with an unpickler that only admits the numpy array constructors the archives use, so a
foreign file placed under ``root`` cannot run code.

Reference: Alex Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, Technical Report,
University of Toronto, 2009 (https://www.cs.toronto.edu/~kriz/cifar.html).
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from kdlab.data.base import DataError, DatasetSplits, ImageSet, register_dataset
from kdlab.data.sources._common import check_labels

log = logging.getLogger(__name__)

DEFAULT_URL = "https://www.cs.toronto.edu/~kriz"
"""Base URL of the official archives (``<base>/cifar-10-python.tar.gz``)."""
URL_ENV = "KDLAB_CIFAR_URL"
"""Environment variable overriding :data:`DEFAULT_URL` (a mirror, or a local server in tests)."""
DOWNLOAD_TIMEOUT = 60.0
"""Seconds without progress before a download is abandoned."""


@dataclass(frozen=True)
class CifarLayout:
    """One CIFAR variant: its archive, files, pickle keys and standard normalisation."""

    name: str
    """Registry name."""
    title: str
    """Display name."""
    folder: str
    """Top-level folder the archive extracts to."""
    archive: str
    """File name of the official archive."""
    md5: str
    """MD5 of the official archive."""
    size_mb: int
    """Approximate archive size, for messages."""
    train: tuple[str, ...]
    """Training batch files."""
    test: str
    """Test batch file."""
    meta: str
    """File holding the class names."""
    label_key: str
    """Key of the labels in a batch."""
    names_key: str
    """Key of the class names in ``meta``."""
    num_classes: int
    """Number of classes."""
    mean: tuple[float, float, float]
    """Standard per-channel mean (RGB, [0, 1])."""
    std: tuple[float, float, float]
    """Standard per-channel std."""

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the loader reads, relative to :attr:`folder`."""
        return (*self.train, self.test, self.meta)


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        name="cifar10",
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        size_mb=163,
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarLayout(
        name="cifar100",
        title="CIFAR-100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        size_mb=161,
        train=("train",),
        test="test",
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    ),
}
"""The two variants by registry name (tests may patch entries, e.g. the MD5 of an archive they build)."""


# --------------------------------------------------------------------------------------------------------------
# Reading the pickles


def _numpy_global(module: str, name: str) -> object:
    try:
        from numpy import _core as core  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy import core  # type: ignore[no-redef]
    return getattr(getattr(core, module), name)


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
    **{
        (f"numpy.{core}.{module}", name): (lambda m=module, n=name: _numpy_global(m, n))
        for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    },
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        getter = _ALLOWED_GLOBALS.get((module, name))
        if getter is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")
        return getter()


def _unpickle(path: Path) -> dict:
    """The dict stored in a CIFAR batch file (keys as ``str``)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DataError(f"{path} is not a readable CIFAR python batch ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} should hold a dict of arrays, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: dict, key: str, path: Path) -> object:
    if key not in batch:
        raise DataError(f"{path} has no {key!r} entry (found: {', '.join(sorted(batch))})")
    return batch[key]


def _read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` uint8 and labels ``[N]`` int64 of one batch file."""
    batch = _unpickle(path)
    data = np.asarray(_field(batch, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {tuple(data.shape)}")
    labels = np.asarray(_field(batch, layout.label_key, path))
    if labels.shape != (data.shape[0],) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(
            f"{path}: {layout.label_key!r} must be {data.shape[0]} integer labels, got {labels.dtype} {labels.shape}"
        )
    labels = labels.astype(np.int64)
    check_labels(labels, layout.num_classes, str(path), layout.label_key, "the file is not an intact CIFAR batch")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_classes(path: Path, layout: CifarLayout) -> tuple[str, ...]:
    names = _field(_unpickle(path), layout.names_key, path)
    classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)  # type: ignore[union-attr]
    if len(classes) != layout.num_classes:
        raise DataError(f"{path}: expected {layout.num_classes} class names, found {len(classes)}")
    return classes


def _images(parts: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))


# --------------------------------------------------------------------------------------------------------------
# Getting the files


def archive_url(layout: CifarLayout) -> str:
    """Where ``layout``'s archive is downloaded from: ``$KDLAB_CIFAR_URL`` or :data:`DEFAULT_URL`, plus its name."""
    base = os.environ.get(URL_ENV) or DEFAULT_URL
    return f"{base.rstrip('/')}/{layout.archive}"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _missing(folder: Path, layout: CifarLayout) -> list[str]:
    return [name for name in layout.files if not (folder / name).is_file()]


def _how_to_get(layout: CifarLayout, root: Path) -> str:
    return (
        f"To get them: set data.download=true to download {archive_url(layout)} (~{layout.size_mb} MB, "
        f"MD5 {layout.md5}) and extract it there; or download that archive yourself and put it at "
        f"{root / layout.archive} (it is checked and extracted on the next run); or extract it yourself so that "
        f"{root / layout.folder / layout.files[0]} exists"
    )


def _safe_members(tar: tarfile.TarFile, layout: CifarLayout, archive: Path) -> list[tarfile.TarInfo]:
    """The archive's members under ``layout.folder``; anything that could write elsewhere is an error."""
    keep = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
            raise DataError(
                f"{archive}: refusing to extract {member.name!r} (absolute path, '..', link or special file); "
                "this is not an official CIFAR archive"
            )
        parts = [p for p in path.parts if p != "."]
        if parts and parts[0] == layout.folder:
            keep.append(member)
    return keep


def _extract(archive: Path, root: Path, layout: CifarLayout) -> None:
    """Extract ``layout.folder`` from ``archive`` into ``root``, all or nothing."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{layout.folder}.", suffix=".part", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, layout, archive)
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **extra)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise DataError(f"{archive} could not be extracted ({type(err).__name__}: {err})") from None
        extracted = tmp / layout.folder
        missing = _missing(extracted, layout)
        if missing:
            raise DataError(
                f"{archive} does not contain {layout.folder}/{{{', '.join(missing)}}}; "
                f"is it the python version of {layout.title} ({layout.archive})?"
            )
        target = root / layout.folder
        try:
            os.rename(extracted, target)
        except OSError:  # the folder exists (partially, or another process got there first): move file by file
            target.mkdir(parents=True, exist_ok=True)
            for item in extracted.iterdir():
                os.replace(item, target / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(layout: CifarLayout, root: Path) -> Path:
    """Download ``layout``'s archive to a temporary file in ``root`` and check its MD5; the caller deletes it."""
    url = archive_url(layout)
    fd, name = tempfile.mkstemp(prefix=f".{layout.archive}.", suffix=".part", dir=root)
    part = Path(name)
    log.info("downloading %s to %s", url, root)
    digest = hashlib.md5()
    complete = False
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise DataError(
                f"could not download {url} ({err}). Download it by hand and put it at {root / layout.archive}, "
                f"or set {URL_ENV} to the base URL of a mirror"
            ) from None
        if digest.hexdigest() != layout.md5:
            raise DataError(
                f"the download of {url} has MD5 {digest.hexdigest()}, expected {layout.md5} (truncated or not the "
                f"official {layout.archive}); nothing was kept. Try again, or put the official archive at "
                f"{root / layout.archive}"
            )
        complete = True
        return part
    finally:
        if not complete:
            part.unlink(missing_ok=True)


def ensure_files(layout: CifarLayout, root: str | Path, download: bool) -> Path:
    """Make sure ``root/<folder>`` holds every file of ``layout``, extracting or downloading the archive if allowed.

    Args:
        layout: the CIFAR variant.
        root: ``data.root``.
        download: fetch the archive when neither the files nor the archive are present.

    Returns:
        The folder holding the batch files.
    """
    root = Path(root).expanduser().absolute()
    folder = root / layout.folder
    missing = _missing(folder, layout)
    if not missing:
        return folder
    archive = root / layout.archive
    if archive.is_file():
        found = _md5(archive)
        if found != layout.md5:
            raise DataError(
                f"{layout.name}: {archive} has MD5 {found}, expected {layout.md5} (truncated or not the official "
                f"archive); delete it and download it again (or set data.download=true after deleting it)"
            )
        log.info("extracting %s", archive)
        _extract(archive, root, layout)
    elif download:
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            part = _download(layout, root)
            try:
                _extract(part, root, layout)
            finally:
                part.unlink(missing_ok=True)
        except BaseException:
            if created and not any(root.iterdir()):
                root.rmdir()
            raise
    else:
        raise DataError(
            f"{layout.name}: expected the python version of {layout.title} at {folder}/{{{', '.join(layout.files)}}} "
            f"(data.root={root}); missing: {', '.join(missing)}. " + _how_to_get(layout, root)
        )
    return folder


def load_cifar(layout: CifarLayout, root: str | Path, download: bool = False) -> DatasetSplits:
    """Load a CIFAR variant (train ``[50000, 32, 32, 3]``, test ``[10000, 32, 32, 3]`` uint8) from ``root``.

    Args:
        layout: :data:`LAYOUTS` entry.
        root: folder holding (or receiving) ``layout.folder``.
        download: download the official archive if the files are missing.
    """
    folder = ensure_files(layout, root, download)
    train = [_read_batch(folder / name, layout) for name in layout.train]
    tx, ty = _read_batch(folder / layout.test, layout)
    return DatasetSplits(
        name=layout.name,
        train=ImageSet(_images([x for x, _ in train]), torch.from_numpy(np.concatenate([y for _, y in train]))),
        test=ImageSet(_images([tx]), torch.from_numpy(ty)),
        num_classes=layout.num_classes,
        mean=layout.mean,
        std=layout.std,
        classes=_read_classes(folder / layout.meta, layout),
    )


@register_dataset("cifar10", description="CIFAR-10: 50k train / 10k test RGB 32x32, 10 classes (python archive)")
def cifar10(cfg) -> DatasetSplits:
    """CIFAR-10 under ``cfg.root`` (train ``[50000, 32, 32, 3]``, test ``[10000, 32, 32, 3]`` uint8)."""
    return load_cifar(LAYOUTS["cifar10"], cfg.root, cfg.download)


@register_dataset("cifar100", description="CIFAR-100: 50k train / 10k test RGB 32x32, 100 classes (python archive)")
def cifar100(cfg) -> DatasetSplits:
    """CIFAR-100 (fine labels) under ``cfg.root`` (train ``[50000, 32, 32, 3]``, test ``[10000, 32, 32, 3]``)."""
    return load_cifar(LAYOUTS["cifar100"], cfg.root, cfg.download)
