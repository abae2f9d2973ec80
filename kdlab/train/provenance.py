"""Where a run's code came from: the git commit of the kdlab source tree and the versions of its dependencies
(``summary.json`` and checkpoints record both)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

import kdlab


def git_commit() -> str | None:
    """The git commit of the kdlab source tree, when it is a checkout."""
    try:
        root = Path(kdlab.__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python, torch, numpy and kdlab."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "kdlab": kdlab.__version__,
    }
