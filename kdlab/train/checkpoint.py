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

CHECKPOINT_FORMAT = "kdlab.checkpoint/1"
EXPORT_FORMAT = "kdlab.export/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model; the message says what to do."""


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
        raise CheckpointError(f"{what} {str(p)!r} does not exist; check the path (a kdlab run writes runs/<name>/)")
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


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model weights inside any supported file content, with ``module.`` prefixes stripped.

    Accepts a kdlab checkpoint (``student``), a kdlab export (``state_dict``), ``{'state_dict': ...}``,
    ``{'model': ...}`` or a bare state dict.
    """
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = obj["student"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("the file holds no state dict (expected tensors by parameter name)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Load ``state`` into ``model`` strictly; on mismatch, name the missing/unexpected keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            more = " ..." if len(unexpected) > 8 else ""
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{more}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:8])}")
        raise CheckpointError(
            f"{source!r} does not fit model {name!r} ({'; '.join(parts)}). Check that the config names the "
            "architecture and class count the checkpoint was trained with"
        )
    model.load_state_dict(state, strict=True)


def load_model_file(model: nn.Module, path: str | Path, name: str) -> None:
    """Initialise ``model`` (registry name ``name``) from a checkpoint or state-dict file."""
    load_weights(model, extract_state_dict(read_file(path, "weights file")), name, str(path))
