"""Checkpoints: atomic writes, corruption detection, and loading weights from the formats users hold.

A kdlab checkpoint (``checkpoint.pt``) holds every stateful part of a run. An export (``student.pt``) holds the
deployable model's weights plus the config needed to rebuild it. Teachers and students can also be initialised
from plain state dicts (``{'state_dict': ...}`` or bare, ``module.`` prefixes from DataParallel stripped).
"""

from __future__ import annotations

import errno
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.models.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    is_safetensors,
    load_state_dict_flexible,
    read_safetensors,
)
from kdlab.paths import why_unusable

CHECKPOINT_FORMAT = "kdlab.checkpoint/1"
EXPORT_FORMAT = "kdlab.export/1"


class RunWriteError(CheckpointError):
    """Writing a run file failed (no space left, permissions...): names the file; the previous file is intact.

    Exit code 1 (a failure during training); once the cause is fixed, ``--resume`` continues from the last checkpoint.
    """

    def __init__(self, path: str | Path, err: OSError, what: str = "file") -> None:
        self.path = Path(path)
        self.errno = err.errno
        reason = os.strerror(err.errno) if err.errno else str(err)
        hint = (
            "free some space (or point train.run_dir elsewhere)"
            if err.errno in (errno.ENOSPC, errno.EDQUOT)
            else "check the directory's permissions"
        )
        super().__init__(
            f"could not write the {what} {str(self.path)!r}: {reason}. The previous {what} (if any) is intact; "
            f"{hint}, then continue with --resume"
        )


def _create_private_tmp(directory: Path, name: str) -> tuple[int, str]:
    """A new temporary file ``.<name>.<random>.tmp`` in ``directory``, created with mode 0666 minus the umask
    (``tempfile.mkstemp`` would make it 0600, and the rename would keep that)."""
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no usable temporary file name", str(directory))


def durable_writes() -> bool:
    """Whether atomic writes are fsynced (file and directory): yes unless ``KDLAB_FSYNC=0``. Without fsync a write
    is still atomic (a crashed process leaves the old file or the new one); only a power loss could lose it. The
    test suite sets ``KDLAB_FSYNC=0``: its thousands of throw-away run files cost about 10 ms of disk wait each."""
    return os.environ.get("KDLAB_FSYNC", "1") != "0"


def _atomic_write(path: Path, write: Callable[[Any], None], what: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = _create_private_tmp(path.parent, path.name)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable_writes():
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise RunWriteError(path, err, what) from None
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if not durable_writes():
        return
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_save(obj: Any, path: str | Path, what: str = "checkpoint") -> None:
    """``torch.save`` to a temporary file in the same directory, fsync it, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated file. The file gets the
    user's umask. An ``OSError`` (no space left...) becomes :class:`RunWriteError` naming ``path``; the temporary
    file is removed and the previous file is untouched.
    """
    _atomic_write(Path(path), lambda f: torch.save(obj, f), what)


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_save`)."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()), what)


def append_line(path: str | Path, line: str, what: str = "metrics file") -> None:
    """Append ``line`` (plus a newline) to ``path``; on an ``OSError`` the partial tail is cut off again and
    :class:`RunWriteError` names the file (so the file never keeps half a line)."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as err:
        try:
            os.truncate(path, size)
        except OSError:
            pass
        raise RunWriteError(path, err, what) from None


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files an interrupted :func:`atomic_save` left in ``directory``."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for tmp in d.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def read_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` on CPU with a clear error for missing, truncated or corrupt files.

    Tries ``weights_only=True`` first; kdlab's own files hold only tensors, numbers, strings and numpy RNG
    state, which need the full unpickler, so those are retried with ``weights_only=False``.
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointNotFoundError(
            f"{what} {str(p)!r} is a folder; pass a file in it, e.g. {str(p / 'checkpoint.pt')!r}"
        )
    if not p.is_file():
        raise CheckpointNotFoundError(
            f"{what} {str(p)!r} {why_unusable(p)}; check the path (a kdlab run writes runs/<name>/)"
        )
    try:
        if is_safetensors(p):  # timm / Hugging Face weights
            return read_safetensors(p)
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError, IndexError) as err:
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
    load_model_state(model, obj, path, name)


def load_model_state(
    model: nn.Module,
    obj: object,
    path: str | Path,
    name: str,
    hint: str = "Check that the config names the architecture and class count the checkpoint was trained with",
) -> None:
    """Load ``obj`` (read from ``path``) into ``model`` (registry name ``name``) with
    :func:`kdlab.models.checkpoints.load_state_dict_flexible`; an unusable object or a mismatch is a
    :class:`CheckpointError` naming the file, the model and ``hint``."""
    try:
        load_state_dict_flexible(model, obj, name)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} holds no usable state dict for {name!r}: {err}") from None
    except CheckpointMismatchError as err:
        raise CheckpointError(f"{str(path)!r} does not fit model {name!r} ({err}). {hint}") from None
