"""Images you already hold as numpy arrays, in ``.npz`` files.

Each file holds ``x`` (uint8 ``[N, H, W, C]``, channels last) and ``y`` (``[N]`` non-negative integer labels),
e.g. written with ``np.savez(path, x=images, y=labels)``; an optional ``classes`` array of strings names the
classes. ``data.train_files`` lists one or more training files (concatenated in order), ``data.test_file`` the
test file; relative paths are taken under ``data.root``. ``num_classes`` is the largest label plus one (or the
length of ``classes``); mean and std are computed from all training images. Files are read without pickle
(``allow_pickle=False``), so object arrays are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import DataError, DatasetSplits, ImageSet, register_dataset
from kdlab.data.sources._common import channel_stats, resolve

_SAVE_HINT = "write it with np.savez(path, x=images_uint8_NHWC, y=labels)"


def _layout_hint(x: np.ndarray) -> str:
    if x.ndim == 3:
        return "; for single-channel images add a channel axis (x[..., None])"
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4):
        return "; it looks channels-first [N, C, H, W]: use x.transpose(0, 2, 3, 1)"
    return ""


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Read and check one file.

    Returns:
        ``x [N, H, W, C]`` uint8, ``y [N]`` int64, and the class names if the file has ``classes``.
    """
    if not path.is_file():
        raise DataError(f"npz dataset: {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"npz dataset: {path} is not a readable .npz file ({err}); {_SAVE_HINT}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"npz dataset: {path} holds a single array, not arrays 'x' and 'y'; {_SAVE_HINT}")
    with data:
        found = ", ".join(data.files) or "none"
        for key in ("x", "y"):
            if key not in data.files:
                raise DataError(f"npz dataset: {path} has no array {key!r} (arrays found: {found}); {_SAVE_HINT}")
        try:
            x, y = data["x"], data["y"]
            classes = data["classes"] if "classes" in data.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"npz dataset: {path} could not be read ({err})") from None
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(
            f"npz dataset: {path}: 'x' must be uint8 [N, H, W, C] (0..255, channels last), got {x.dtype} "
            f"{tuple(x.shape)}{_layout_hint(x)}"
        )
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DataError(f"npz dataset: {path}: 'x' is empty, shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"npz dataset: {path}: 'y' must be [N] with N={x.shape[0]} (one label per image), got {tuple(y.shape)}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"npz dataset: {path}: 'y' must hold integer labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"npz dataset: {path}: labels must be >= 0 (0..K-1), found {y.min()}")
    names = None
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise DataError(f"npz dataset: {path}: 'classes' must be a 1-D array of strings, got {classes.dtype}")
        names = tuple(str(c) for c in classes.tolist())
        if y.max() >= len(names):
            raise DataError(f"npz dataset: {path}: label {y.max()} but only {len(names)} names in 'classes'")
    return x, y.astype(np.int64), names


def load_npz(root: str | Path, train_files: list[str], test_file: str | None) -> DatasetSplits:
    """Load the ``npz`` dataset: train ``[sum N_i, H, W, C]`` from ``train_files``, test ``[T, H, W, C]``.

    Args:
        root: ``data.root``; relative file names are taken under it.
        train_files: one or more training files, concatenated in order.
        test_file: the test file.
    """
    where = f"(relative paths are taken under data.root={Path(root).expanduser().absolute()})"
    if not train_files:
        raise DataError(f"npz dataset: set data.train_files to one or more .npz files {where}")
    if not test_file:
        raise DataError(f"npz dataset: set data.test_file to an .npz file {where}")
    paths = [resolve(root, name) for name in train_files]
    missing = [str(p) for p in [*paths, resolve(root, test_file)] if not p.is_file()]
    if missing:
        raise DataError(f"npz dataset: file(s) not found: {', '.join(missing)} {where}")
    parts = [(path, *read_npz(path)) for path in paths]
    test_path = resolve(root, test_file)
    tx, ty, test_names = read_npz(test_path)
    shape = parts[0][1].shape[1:]
    for path, x, _, _ in [*parts[1:], (test_path, tx, ty, test_names)]:
        if x.shape[1:] != shape:
            raise DataError(
                f"npz dataset: {path} has images of shape {tuple(x.shape[1:])} (H, W, C) but {parts[0][0]} has "
                f"{tuple(shape)}; every file must hold images of one shape{_layout_hint(x)}"
            )
    named = [(path, names) for path, _, _, names in parts] + [(test_path, test_names)]
    named = [(path, names) for path, names in named if names is not None]
    classes = named[0][1] if named else None
    for path, names in named[1:]:
        if names != classes:
            raise DataError(f"npz dataset: {path} and {named[0][0]} have different 'classes'")
    x = torch.from_numpy(parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    num_classes = max(int(y.max()), int(ty.max())) + 1
    if classes is not None:
        num_classes = max(num_classes, len(classes))
    mean, std = channel_stats(x)
    return DatasetSplits(
        name="npz",
        train=ImageSet(x, y),
        test=ImageSet(torch.from_numpy(tx), torch.from_numpy(ty)),
        num_classes=num_classes,
        mean=mean,
        std=std,
        classes=classes,
    )


@register_dataset("npz", description="your own images: .npz files with x uint8 [N,H,W,C] and y (data.train_files)")
def npz(cfg) -> DatasetSplits:
    """:func:`load_npz` with ``cfg.root, cfg.train_files, cfg.test_file``."""
    return load_npz(cfg.root, list(cfg.train_files), cfg.test_file)
