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
from kdlab.data.sources._common import channel_stats, check_labels, resolve
from kdlab.paths import why_unusable

_SAVE_HINT = "write it with np.savez(path, x=images_uint8_NHWC, y=labels)"


def _layout_hint(x: np.ndarray) -> str:
    if x.ndim == 3:
        return "; for single-channel images add a channel axis (x[..., None])"
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4):
        return "; it looks channels-first [N, C, H, W]: use x.transpose(0, 2, 3, 1)"
    return ""


def _channels_first(x: np.ndarray) -> bool:
    """Whether a 4-D array looks like [N, C, H, W]: 1, 3 or 4 on axis 1 and not a channel count on axis 3."""
    return x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4) and x.shape[2] > 4


def _dtype_fix(x: np.ndarray) -> str:
    if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
        return "for floats in [0, 1] save (x * 255).round().astype(np.uint8)"
    return "save x.clip(0, 255).astype(np.uint8) if the values are 0..255 pixel intensities"


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Read and check one file.

    Returns:
        ``x [N, H, W, C]`` uint8, ``y [N]`` int64, and the class names if the file has ``classes``.
    """
    if not path.is_file():
        raise DataError(f"npz dataset: {path} {why_unusable(path)}")
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
    where = f"npz dataset: {path}"
    if x.ndim != 4:
        raise DataError(
            f"{where}: 'x' must be uint8 [N, H, W, C] (channels last), got {x.ndim} dimensions {tuple(x.shape)}"
            f"{_layout_hint(x)}; {_SAVE_HINT}"
        )
    if _channels_first(x):
        raise DataError(
            f"{where}: 'x' has shape {tuple(x.shape)}, which is channels-first [N, C, H, W]; kdlab reads "
            f"[N, H, W, C]: save x.transpose(0, 2, 3, 1)"
        )
    if x.dtype != np.uint8:
        raise DataError(f"{where}: 'x' must be uint8 [N, H, W, C] (0..255), got dtype {x.dtype}; {_dtype_fix(x)}")
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DataError(f"{where}: 'x' is empty, shape {tuple(x.shape)}; the file must hold at least one image")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"{where}: 'y' must be [N] with N={x.shape[0]} (one label per image of 'x'), got shape "
            f"{tuple(y.shape)}; save the labels of exactly the images in 'x'"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{where}: 'y' must hold integer labels (class indices 0..K-1), got dtype {y.dtype}; "
            "save y.astype(np.int64)"
        )
    if y.min() < 0:
        i = int(np.argmin(y))
        raise DataError(f"{where}: labels must be >= 0 (class indices 0..K-1), 'y' holds {int(y[i])} at position {i}")
    names = None
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise DataError(f"npz dataset: {path}: 'classes' must be a 1-D array of strings, got {classes.dtype}")
        names = tuple(str(c) for c in classes.tolist())
        check_labels(
            y, len(names), where, "y", f"'classes' names {len(names)} classes, so labels are 0..{len(names) - 1}"
        )
    return x, y.astype(np.int64), names


def _num_classes(parts: list, test_path: Path, ty: np.ndarray) -> int:
    """K of a dataset without ``classes``: every label 0..K-1 must have a training image, test labels < K."""
    seen = np.unique(np.concatenate([p[2] for p in parts]))
    k = int(seen[-1]) + 1
    if len(seen) < k:
        gaps = np.setdiff1d(np.arange(k), seen)
        where = parts[0][0] if len(parts) == 1 else ", ".join(str(p[0]) for p in parts)
        raise DataError(
            f"npz dataset: {where}: 'y' has labels up to {k - 1} but {len(gaps)} of the classes 0..{k - 1} have no "
            f"training image (e.g. {', '.join(str(int(g)) for g in gaps[:5])}); labels must be class indices "
            f"0..K-1: renumber them (np.unique(y, return_inverse=True)) or add a 'classes' array naming all K classes"
        )
    if k < 2:
        raise DataError(f"npz dataset: {parts[0][0]}: 'y' holds a single class; a classifier needs at least 2")
    check_labels(ty, k, f"npz dataset: {test_path}", "y", f"the training files have classes 0..{k - 1} only")
    return k


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
    missing = [f"{p} {why_unusable(p)}" for p in [*paths, resolve(root, test_file)] if not p.is_file()]
    if missing:
        raise DataError(f"npz dataset: {'; '.join(missing)} {where}")
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
    num_classes = len(classes) if classes is not None else _num_classes(parts, test_path, ty)
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
