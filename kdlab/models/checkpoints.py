"""Loading third-party model checkpoints into zoo models.

Public checkpoints come in several wrappings: a plain state dict, ``{"state_dict": ...}`` (e.g. the akamaster
CIFAR ResNets), ``{"model": ...}`` (e.g. RepDistiller teachers), with keys prefixed by ``module.`` (saved from
``DataParallel`` / DDP) or ``_orig_mod.`` (saved from ``torch.compile``). :func:`load_state_dict_flexible` unwraps
all of these and then loads strictly, with an error that names every missing or unexpected key and every
shape mismatch. The one tolerance is PyTorch's own: checkpoints saved before PyTorch 0.4.1 have no BatchNorm
``num_batches_tracked`` buffers (the akamaster files are such), and the model keeps its own counters.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "CheckpointMismatchError", "extract_state_dict", "load_state_dict_flexible"]

#: Keys under which checkpoints commonly nest the model's state dict, tried in order.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model")
#: Key prefixes added by wrappers (DataParallel / DDP, torch.compile); stripped repeatedly.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: At most this many names per category in an error message.
_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model; the message says what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file that the command names does not exist (a user error: the CLI exits with code 2)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not match the model.

    Attributes:
        missing: keys the model expects but the checkpoint lacks.
        unexpected: keys in the checkpoint the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys present in both with different shapes.
    """

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        model_name: str = "model",
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"checkpoint does not match {model_name}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing, 'missing')}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected, 'unexpected')}")
        if mismatched:
            shapes = [f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {_listing(shapes, 'mismatched')}")
        super().__init__("\n".join(lines))


def _listing(items: list[str], attribute: str) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... and {len(items) - _MAX_LISTED} more (all in the error's .{attribute})"
    return shown


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _predates_buffer(key: str, state: Mapping[str, Tensor]) -> bool:
    """Whether a missing BatchNorm ``num_batches_tracked`` is legitimately absent: the checkpoint was saved before
    PyTorch 0.4.1 added that buffer (module format version missing or < 2). ``load_state_dict`` then keeps the
    model's own counter, exactly as PyTorch does for such checkpoints."""
    module, _, leaf = key.rpartition(".")
    if leaf != "num_batches_tracked":
        return False
    version = (getattr(state, "_metadata", None) or {}).get(module, {}).get("version")
    return version is None or version < 2


def extract_state_dict(obj: Mapping[str, object] | str | os.PathLike) -> dict[str, Tensor]:
    """The model state dict inside a checkpoint, with wrapper prefixes removed.

    Args:
        obj: a state dict, a dict nesting one under ``state_dict`` / ``model_state_dict`` / ``model``, or the
            path of a file holding either (read with ``torch.load(map_location="cpu", weights_only=True)``).

    Returns:
        ``{key: tensor}`` with ``module.`` and ``_orig_mod.`` prefixes stripped.

    Raises:
        TypeError: when no mapping of tensors can be found.
        ValueError: when stripping prefixes makes two keys collide.
    """
    if isinstance(obj, (str, os.PathLike)):
        obj = torch.load(obj, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    for key in _NESTING_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor; "
                f"top-level keys: {', '.join(map(str, obj))}"
            )
        new_key = _strip_prefixes(str(key))
        if new_key in out:
            raise ValueError(f"checkpoint keys collide after removing wrapper prefixes: {new_key!r}")
        out[new_key] = value
    metadata = getattr(obj, "_metadata", None)
    if metadata is not None:  # per-module format versions, used by e.g. BatchNorm to upgrade old checkpoints
        out_meta = OrderedDict((_strip_prefixes(k + ".").rstrip("."), v) for k, v in metadata.items())
        out = OrderedDict(out)
        out._metadata = out_meta  # type: ignore[attr-defined]
    return out


def load_state_dict_flexible(
    model: nn.Module, obj: Mapping[str, object] | str | os.PathLike, model_name: str | None = None
) -> nn.Module:
    """Load a (possibly wrapped) checkpoint into ``model`` strictly.

    Args:
        model: the model to fill in place.
        obj: a state dict, ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}`` or a
            file path; keys may carry ``module.`` / ``_orig_mod.`` prefixes.
        model_name: name used in error messages (defaults to the class name).

    Returns:
        ``model`` (loaded).

    Raises:
        CheckpointMismatchError: naming all missing and unexpected keys and all shape mismatches; the model is
            left unchanged.
    """
    state = extract_state_dict(obj)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _predates_buffer(k, state)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, model_name or type(model).__name__)
    model.load_state_dict(state, strict=True)
    return model
