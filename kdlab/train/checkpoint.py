"""Checkpoints: atomic writes, corruption detection, and loading weights from the formats users hold.

A kdlab checkpoint (``checkpoint.pt``) holds every stateful part of a run. An export (``student.pt``) holds the
deployable model's weights plus the config needed to rebuild it. Teachers and students can also be initialised
from plain state dicts (``{'state_dict': ...}`` or bare, ``module.`` prefixes from DataParallel stripped).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.models.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    load_state_dict_flexible,
)

CHECKPOINT_FORMAT = "kdlab.checkpoint/1"
EXPORT_FORMAT = "kdlab.export/1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync it, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` on CPU with a clear error for missing, truncated or corrupt files.

    Tries ``weights_only=True`` first; kdlab's own files hold only tensors, numbers, strings and numpy RNG
    state, which need the full unpickler, so those are retried with ``weights_only=False``.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointNotFoundError(
            f"{what} {str(p)!r} does not exist; check the path (a kdlab run writes runs/<name>/)"
        )
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        raise CheckpointError(
            f"{what} {str(p)!r} is truncated or corrupt ({type(err).__name__}: {err}). kdlab will not start from "
            "scratch silently: restore the file, or delete it to start a new run"
        ) from None


def load_model_file(model: nn.Module, path: str | Path, name: str) -> None:
    """Initialise ``model`` (registry name ``name``) from a kdlab checkpoint or export, or any state-dict file
    (see :func:`kdlab.models.checkpoints.load_state_dict_flexible`); a mismatch names the keys and shapes."""
    obj = read_file(path, "weights file")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = obj["student"]
    try:
        load_state_dict_flexible(model, obj, name)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} holds no usable state dict for {name!r}: {err}") from None
    except CheckpointMismatchError as err:
        raise CheckpointError(
            f"{str(path)!r} does not fit model {name!r} ({err}). Check that the config names the architecture and "
            "class count the checkpoint was trained with"
        ) from None
