"""Tiny-ImageNet (200 classes, 64x64 RGB, 100,000 training and 10,000 validation images), held in memory.

Layout under ``data.root`` (what the official ``tiny-imagenet-200.zip`` extracts to)::

    tiny-imagenet-200/wnids.txt                           the 200 WordNet ids, one per line
    tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG  500 per class
    tiny-imagenet-200/val/images/val_<k>.JPEG              10,000 images
    tiny-imagenet-200/val/val_annotations.txt             ``<file>\\t<wnid>\\t<box>`` per line

``data.root`` may also be the ``tiny-imagenet-200`` folder itself. The labelled ``val`` split is the test split
(the official ``test`` images have no labels). Class ``k`` is the ``k``-th WordNet id in sorted order, the class
index torchvision's ``ImageFolder`` gives the training folders. Images are decoded with Pillow as RGB (the set has
grayscale JPEGs); an image that is not 64x64 is resized bilinearly to 64x64.

Decoding 110,000 JPEGs takes a while, so the decoded arrays are cached on first load as an uncompressed ``.npz``
(about 1.3 GB) in ``data.cache_dir`` or, by default, next to the dataset folder
(``tiny-imagenet-200.kdlab.npz``). The cache records a fingerprint of the file list (relative paths and sizes) and
of ``wnids.txt`` and ``val_annotations.txt``; when the files change, it is rebuilt. An unwritable location only
costs the decoding time of the next load (a warning says so).

Normalisation: mean and std of the training images (computed once, stored in the cache).

Reference: Le and Yang, *Tiny ImageNet Visual Recognition Challenge*, Stanford CS231N, 2015.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import DataError, DatasetSplits, ImageSet, register_dataset
from kdlab.data.sources._common import channel_stats
from kdlab.paths import why_unusable

log = logging.getLogger(__name__)

FOLDER = "tiny-imagenet-200"
"""Top-level folder of the official archive."""
SIZE = 64
"""Image side in pixels."""
CACHE_FORMAT = 1
"""Version of the cache file's content."""
LAYOUT = (
    f"expected {FOLDER}/wnids.txt, {FOLDER}/train/<wnid>/images/*.JPEG, {FOLDER}/val/images/*.JPEG and "
    f"{FOLDER}/val/val_annotations.txt under data.root (unzip the official tiny-imagenet-200.zip there)"
)


def find_folder(root: str | Path) -> Path:
    """The ``tiny-imagenet-200`` folder: ``root/tiny-imagenet-200`` or ``root`` itself."""
    root = Path(root).expanduser().absolute()
    for candidate in (root / FOLDER, root):
        if (candidate / "wnids.txt").is_file():
            return candidate
    raise DataError(f"tiny_imagenet: no wnids.txt in {root / FOLDER} or {root}; {LAYOUT}")


def list_files(folder: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Sorted WordNet ids, and ``(relative path, label)`` of the training and validation images."""
    wnids = sorted({w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()})
    if not wnids:
        raise DataError(f"tiny_imagenet: {folder / 'wnids.txt'} lists no WordNet ids; {LAYOUT}")
    index = {w: i for i, w in enumerate(wnids)}
    train = []
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise DataError(
                f"tiny_imagenet: {images} {why_unusable(images, 'folder')} (class {wnid} of wnids.txt); {LAYOUT}"
            )
        files = sorted(f for f in os.listdir(images) if f.lower().endswith((".jpeg", ".jpg", ".png")))
        if not files:
            raise DataError(f"tiny_imagenet: {images} holds no images; {LAYOUT}")
        train += [(f"train/{wnid}/images/{f}", index[wnid]) for f in files]
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"tiny_imagenet: {annotations} {why_unusable(annotations)}; {LAYOUT}")
    val = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(
                f"tiny_imagenet: {annotations} line {number} should be '<file>\\t<wnid>\\t...' with a wnid of "
                f"wnids.txt, found {line!r}"
            )
        val.append((f"val/images/{parts[0]}", index[parts[1]]))
    val.sort()
    missing = [p for p, _ in val if not (folder / p).is_file()]
    if missing:
        raise DataError(
            f"tiny_imagenet: {len(missing)} annotated validation image(s) are missing, e.g. "
            f"{folder / missing[0]}; {LAYOUT}"
        )
    return wnids, train, val


def fingerprint(folder: Path, train: list[tuple[str, int]], val: list[tuple[str, int]]) -> str:
    """SHA-1 of the file list (paths, labels, sizes) and of the two text files: the cache is valid for it."""
    h = hashlib.sha1()
    for name in ("wnids.txt", "val/val_annotations.txt"):
        h.update((folder / name).read_bytes())
    for path, label in [*train, *val]:
        h.update(f"{path}\0{label}\0{(folder / path).stat().st_size}\n".encode())
    return h.hexdigest()


def decode(folder: Path, files: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 64, 64, 3]`` uint8 images and ``[N]`` int64 labels of ``files``."""
    from PIL import Image

    from kdlab.data.streaming import load_rgb

    x = np.empty((len(files), SIZE, SIZE, 3), dtype=np.uint8)
    resized = 0
    for i, (path, _) in enumerate(files):
        img = load_rgb(folder / path)
        if img.size != (SIZE, SIZE):
            img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            resized += 1
        x[i] = np.asarray(img, dtype=np.uint8)
    if resized:
        log.warning("tiny_imagenet: resized %d image(s) that were not %dx%d", resized, SIZE, SIZE)
    return x, np.array([label for _, label in files], dtype=np.int64)


def cache_path(folder: Path, cache_dir: str | None) -> Path:
    """Where the decoded arrays are cached."""
    base = Path(cache_dir).expanduser() if cache_dir else folder.parent
    return base / f"{folder.name}.kdlab.npz"


def _read_cache(path: Path, expected: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != CACHE_FORMAT or str(data["fingerprint"]) != expected:
                log.info("tiny_imagenet: %s is stale (the files changed); decoding again", path)
                return None
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("tiny_imagenet: ignoring unreadable cache %s (%s)", path, err)
        return None


def _write_cache(path: Path, arrays: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        log.info("tiny_imagenet: cached the decoded images in %s", path)
    except OSError as err:
        log.warning(
            "tiny_imagenet: could not write the cache %s (%s); set data.cache_dir to a writable folder", path, err
        )


def load_tiny_imagenet(root: str | Path, cache_dir: str | None = None) -> DatasetSplits:
    """Tiny-ImageNet: train ``[N, 64, 64, 3]`` and test (the labelled validation set) ``[T, 64, 64, 3]`` uint8.

    Args:
        root: ``data.root`` (holding ``tiny-imagenet-200/``, or that folder itself).
        cache_dir: folder of the decoded cache (None: next to the dataset folder).
    """
    folder = find_folder(root)
    wnids, train, val = list_files(folder)
    key = fingerprint(folder, train, val)
    path = cache_path(folder, cache_dir)
    arrays = _read_cache(path, key)
    if arrays is None:
        log.info("tiny_imagenet: decoding %d images from %s (cached for later runs)", len(train) + len(val), folder)
        x, y = decode(folder, train)
        tx, ty = decode(folder, val)
        mean, std = channel_stats(torch.from_numpy(x))
        arrays = {
            "format": np.array(CACHE_FORMAT),
            "fingerprint": np.array(key),
            "x": x,
            "y": y,
            "test_x": tx,
            "test_y": ty,
            "mean": np.array(mean),
            "std": np.array(std),
        }
        _write_cache(path, arrays)
    return DatasetSplits(
        name="tiny_imagenet",
        train=ImageSet(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])),
        test=ImageSet(torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"])),
        num_classes=len(wnids),
        mean=tuple(float(v) for v in arrays["mean"]),
        std=tuple(float(v) for v in arrays["std"]),
        classes=tuple(wnids),
    )


@register_dataset("tiny_imagenet", description="Tiny-ImageNet: 100k train / 10k val RGB 64x64, 200 classes (cached)")
def tiny_imagenet(cfg) -> DatasetSplits:
    """:func:`load_tiny_imagenet` with ``cfg.root`` and ``cfg.cache_dir``."""
    return load_tiny_imagenet(cfg.root, cfg.cache_dir)
