"""Run records that nothing silently rewrites: the resume allow-list, ``--force`` moving the old run aside, and
``metrics.jsonl`` cut back to the checkpoint after a crash.

- :func:`check_resume_config`: ``--resume`` with a config that differs from the checkpoint's is refused, listing the
  differing keys, unless every one is on :data:`RESUME_ALLOWED` (keys that change how long, how often or where a run
  reports, not what a step computes). The refusal happens before anything in the run directory is written.
- :func:`move_aside`: ``--force`` over a run moves its files into ``<run dir>.old-<UTC time>`` before the new run
  writes anything, so an interrupted new run never sits beside the old run's ``summary.json`` or ``student.pt``.
- :func:`truncate_metrics`: a kill between appending an epoch's metrics line and renaming its checkpoint leaves
  one line more than the checkpoint knows; on resume the file is cut back to the checkpoint's epochs, so the epoch is
  not logged twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from kdlab.config import ConfigError
from kdlab.models.checkpoints import CheckpointError

log = logging.getLogger("kdlab")


class RunExistsError(CheckpointError, ConfigError):
    """A new run over a directory that holds one, without ``--resume`` or ``--force`` (bad input: exit code 2)."""


#: Config keys (dotted; a trailing ``.*`` covers a whole section) that may differ on ``--resume``.
RESUME_ALLOWED: tuple[str, ...] = (
    "train.epochs",  # only more (or as many): a run can be extended, never shortened below its checkpoint
    "train.max_steps",
    "train.eval_every",
    "train.checkpoint_every",
    "train.threads",
    "train.device",
    "train.compile",
    "train.run_dir",
    "train.name",
    "log.*",
    "description",
    "target.*",
)

#: Files and folders of a run directory that stay when ``--force`` moves the old run aside.
KEEP_ON_FORCE = frozenset({".lock", "sweep.json"})

#: Files whose presence means the directory holds a run.
RUN_FILES = ("checkpoint.pt", "summary.json", "student.pt", "metrics.jsonl", "config.yaml")


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [{"x": 2}]}`` -> ``{"a.b": 1, "l.0.x": 2}`` (an empty dict or list is one value)."""
    if isinstance(config, dict) and config:
        out: dict[str, Any] = {}
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(config, (list, tuple)) and config:
        out = {}
        for i, v in enumerate(config):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: list(config) if isinstance(config, tuple) else config}


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved config mappings (sorted)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def _allowed(key: str) -> bool:
    return any(
        key == p or (p.endswith(".*") and key.startswith(p[:-1])) or key.startswith(p + ".") for p in RESUME_ALLOWED
    )


def normalize_saved_config(saved: dict) -> dict:
    """The checkpoint's config re-resolved with this version's defaults (so a field added since is not a
    difference); the raw mapping when it no longer loads."""
    from kdlab.config import build_config, to_dict

    try:
        return to_dict(build_config(saved))
    except Exception:  # an older or hand-edited config: compare as stored
        return saved


def check_resume_config(saved: dict, now: dict, run_dir: Path, done_epochs: int) -> list[str]:
    """Refuse (``ConfigError``, exit code 2) a resume whose config differs from the checkpoint's outside
    :data:`RESUME_ALLOWED`, or that would end before the checkpoint; returns the allowed differences."""
    saved = normalize_saved_config(saved)
    diffs = config_differences(saved, now)
    old_flat, new_flat = flatten(saved), flatten(now)

    def show(k: str) -> str:
        return f"{k}: {old_flat.get(k, '<absent>')!r} -> {new_flat.get(k, '<absent>')!r}"

    refused = [k for k in diffs if not _allowed(k)]
    if refused:
        listed = "; ".join(show(k) for k in refused[:12]) + (
            f"; and {len(refused) - 12} more" if len(refused) > 12 else ""
        )
        raise ConfigError(
            f"--resume: the config differs from the one {str(run_dir)!r} was trained with, in {len(refused)} key(s) "
            f"that change what the run computes ({listed}). Resume with the run's own config "
            f"({str(run_dir / 'config.yaml')!r}), or start a new run (another train.name, or --force to replace this "
            f"one). Keys that may change on resume: {', '.join(RESUME_ALLOWED)}"
        )
    epochs = new_flat.get("train.epochs")
    if "train.epochs" in diffs and isinstance(epochs, int) and epochs < done_epochs:
        raise ConfigError(
            f"--resume: train.epochs={epochs} is fewer than the {done_epochs} epoch(s) the checkpoint in "
            f"{str(run_dir)!r} has already trained; give train.epochs >= {done_epochs}"
        )
    return diffs


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any file of a run."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def move_aside(run_dir: Path) -> Path | None:
    """Move everything in ``run_dir`` but :data:`KEEP_ON_FORCE` to ``<run_dir>.old-<UTC time>`` (made unique);
    returns that folder, or None when ``run_dir`` held no run."""
    if not run_dir.is_dir() or not holds_run(run_dir):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    dest.mkdir()
    for entry in sorted(run_dir.iterdir()):
        if entry.name not in KEEP_ON_FORCE:
            os.replace(entry, dest / entry.name)
    log.warning("--force: moved the previous run of %s to %s", run_dir, dest)
    return dest


def repair_metrics(path: Path, history: list[dict]) -> None:
    """Make ``metrics.jsonl`` hold exactly one line per epoch of ``history`` (the checkpoint's records): lines written
    after the checkpoint are cut (:func:`truncate_metrics`); lines lost (a deleted or shortened file) are written
    again from the checkpoint. Lines that agree are kept byte for byte."""
    truncate_metrics(path, len(history))
    have = path.read_bytes().count(b"\n") if path.is_file() else 0
    if have < len(history):
        from kdlab.train.checkpoint import append_line

        log.warning("resume: %s lacks %d epoch line(s); written again from the checkpoint", path, len(history) - have)
        for record in history[have:]:
            append_line(path, json.dumps(record))


def truncate_metrics(path: Path, lines: int) -> int:
    """Keep the first ``lines`` complete lines of ``path`` (the epochs the checkpoint knows); drop the rest,
    including a half-written last line. Returns the number of lines dropped."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    keep, pos = 0, 0
    while keep < lines:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        pos, keep = nl + 1, keep + 1
    if pos == len(data):
        return 0
    dropped = data[pos:].count(b"\n") + (0 if data.endswith(b"\n") else 1)
    with open(path, "r+b") as f:
        f.truncate(pos)
    log.warning("resume: dropped %d line(s) of %s written after the checkpoint (they are logged again)", dropped, path)
    return dropped
