"""TensorBoard events of a run (``log.tensorboard: true``): every scalar of ``metrics.jsonl``, as it is written.

Each epoch record of ``metrics.jsonl`` becomes one event per numeric value, tagged by its path in the record
(``train/loss``, ``train/kd``, ``test/top1``, ``val/top1``, ``lr``, ``images_per_s``, ``step_time_median_s``...),
at the run's global optimiser step; a method stage other than the main one prefixes its tags with its name
(``fsp_init/train/loss``). Events go to ``<run_dir>/tensorboard/`` (``tensorboard --logdir runs``). A resumed run
purges the events after its checkpoint's step, as ``metrics.jsonl`` is cut back, so the curves never hold the lost
steps twice. Only rank 0 writes; the ``tensorboard`` package is needed (``pip install kdlab[tensorboard]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("kdlab")

#: Keys of a metrics record that are bookkeeping, not curves.
SKIPPED = frozenset({"stage", "epoch", "step"})
MAIN_STAGE = "main"


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every numeric leaf of a ``metrics.jsonl`` record (bools and bookkeeping
    keys excluded); nested dicts join their keys with ``/``."""
    prefix = "" if record.get("stage", MAIN_STAGE) == MAIN_STAGE else f"{record['stage']}/"

    def walk(node: dict, path: str) -> Iterator[tuple[str, float]]:
        for key, value in node.items():
            tag = f"{path}{key}"
            if isinstance(value, dict):
                yield from walk(value, f"{tag}/")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                yield prefix + tag, float(value)

    yield from walk({k: v for k, v in record.items() if k not in SKIPPED}, "")


class TensorBoardLog:
    """Writes metrics records as TensorBoard scalars (a no-op when disabled).

    Args:
        run_dir: the run directory (events go to ``run_dir/tensorboard``).
        enabled: ``log.tensorboard`` and this process is rank 0.
        purge_step: on resume, the global step of the checkpoint (later events of the earlier attempt are dropped).
    """

    def __init__(self, run_dir: str | Path, enabled: bool, purge_step: int | None = None) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard missing: the config asked for it, so say how to get it
            from kdlab.config import ConfigError

            raise ConfigError(
                f"log.tensorboard=true needs the tensorboard package ({err}); install it with "
                "pip install 'kdlab[tensorboard]' or set log.tensorboard=false"
            ) from None
        self.logdir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=purge_step or None)
        log.info("TensorBoard events in %s (tensorboard --logdir %s)", self.logdir, Path(run_dir).parent)

    def write(self, record: dict[str, Any], global_step: int) -> None:
        """Add every scalar of ``record`` at ``global_step`` and flush (the epoch's events are on disk after this)."""
        if self.writer is None:
            return
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def open_tensorboard(trainer: Any) -> TensorBoardLog:
    """The :class:`TensorBoardLog` of ``trainer``'s run (the trainer's one-line hook; resumes purge later steps)."""
    enabled = bool(getattr(trainer.cfg.log, "tensorboard", False)) and trainer.world.main
    purge = trainer.global_step if trainer.resume else None
    return TensorBoardLog(trainer.run_dir, enabled, purge)
