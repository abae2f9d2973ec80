"""Helpers shared by dataset sources (a private module: the source discovery skips names starting with ``_``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlab.data.base import DataError


def channel_stats(x: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in ``[0, 1]`` units.

    Computed in float64 over chunks of ``chunk`` images, so a 50,000-image set never exists as floats at once.

    Args:
        x: ``[N, H, W, C]`` uint8 images (N >= 1).
        chunk: images per chunk.

    Returns:
        ``(mean, std)``, each a tuple of ``C`` floats (population std).
    """
    c = x.shape[-1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].reshape(-1, c).to(torch.float64)
        total += part.sum(0)
        squares += (part * part).sum(0)
    count = x.numel() // c
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0.0)
    return tuple((mean / 255.0).tolist()), tuple((var.sqrt() / 255.0).tolist())


def resolve(root: str | Path, name: str | Path) -> Path:
    """``name`` as a path: itself when absolute (``~`` expanded), else relative to ``root``."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(root).expanduser() / path


def check_labels(y: np.ndarray, num_classes: int, where: str, field: str = "y", fix: str = "") -> None:
    """Refuse integer labels ``y [N]`` outside ``[0, num_classes)`` with a :class:`DataError` naming ``where`` (the
    file), ``field`` (the array or key), the first offending label and its position, and ``fix``."""
    if y.size == 0:
        return
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        hint = f"; {fix}" if fix else ""
        raise DataError(
            f"{where}: {field!r} holds labels outside 0..{num_classes - 1}: {bad.size} of {y.size}, the first "
            f"{int(y[i])} at position {i}{hint}"
        )
