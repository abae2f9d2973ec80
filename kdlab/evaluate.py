"""``kdlab eval``: evaluate a run's checkpoint or exported model on its dataset's test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kdlab.config import RunConfig, build_config
from kdlab.models.checkpoints import CheckpointError, load_state_dict_flexible
from kdlab.train.build import Run, build_run, resolve_device
from kdlab.train.checkpoint import CHECKPOINT_FORMAT, EXPORT_FORMAT, read_file
from kdlab.train.trainer import evaluate


@dataclass
class LoadedRun:
    """A run rebuilt from its ``checkpoint.pt`` or ``student.pt`` (see :func:`load_run_file`).

    Attributes:
        cfg: the config stored in the file (with any data overrides applied).
        run: the rebuilt run: data, student with the trained weights, teachers' architectures (no weights), method.
        model: the deployable model (``run.method.export(run.student)``) with the trained weights.
        kind: ``"checkpoint"`` (the method's state is loaded too) or ``"export"`` (only the deployable weights).
        path: the file read.
        progress: the checkpoint's ``progress`` entry (None for an export).
    """

    cfg: RunConfig
    run: Run
    model: nn.Module
    kind: str
    path: Path
    progress: dict | None = None


def load_run_file(path: str | Path, data_overrides: list[str] | None = None, device: str = "auto") -> LoadedRun:
    """Rebuild the run stored in ``path`` (``checkpoint.pt`` or ``student.pt``) with its trained weights.

    The model is rebuilt from the config stored in the file (teacher architectures only, no teacher weights,
    so a SimKD-style export that embeds a teacher's classifier still runs without the teacher file).

    Args:
        path: a kdlab checkpoint or export.
        data_overrides: ``key=value`` overrides of the ``data`` section (e.g. ``root=...``).
        device: ``auto``, ``cpu``, ``cuda``...

    Raises:
        CheckpointError: the file is missing, corrupt, or not a kdlab checkpoint or export.
    """
    obj = read_file(path, "checkpoint")
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt not in (CHECKPOINT_FORMAT, EXPORT_FORMAT):
        raise CheckpointError(
            f"{str(path)!r} is not a kdlab checkpoint or export (no 'format' entry); kdlab eval reads the "
            "checkpoint.pt or student.pt of a run directory"
        )
    raw = obj["config"]
    raw["model"]["student_checkpoint"] = None
    cfg = build_config(raw, [f"data.{o}" for o in (data_overrides or [])])
    run = build_run(cfg, device=resolve_device(device), load_teacher_weights=False)
    if fmt == CHECKPOINT_FORMAT:
        run.student.load_state_dict(obj["student"])
        run.method.load_state_dict(obj["method"])
        model = run.method.export(run.student)
    else:
        model = run.method.export(run.student)
        load_state_dict_flexible(model, obj["state_dict"], f"the export of {cfg.model.student} in {path}")
    kind = "checkpoint" if fmt == CHECKPOINT_FORMAT else "export"
    return LoadedRun(cfg, run, model, kind, Path(path), obj.get("progress") if kind == "checkpoint" else None)


def evaluate_file(path: str | Path, data_overrides: list[str] | None = None, device: str = "auto") -> dict:
    """Top-1/top-5 of the deployable model stored in ``path`` (``checkpoint.pt`` or ``student.pt``).

    The model is rebuilt by :func:`load_run_file`.

    Args:
        path: a kdlab checkpoint or export.
        data_overrides: ``key=value`` overrides of the ``data`` section (e.g. ``root=...``).
        device: ``auto``, ``cpu``, ``cuda``...

    Returns:
        ``{"top1", "top5", "loss", "n", "file", "dataset"}``.
    """
    loaded = load_run_file(path, data_overrides, device)
    result = evaluate(loaded.model, loaded.run.data.eval_batches("test"))
    return {**result, "file": str(path), "dataset": loaded.cfg.data.name}
