"""``kdlab eval``: evaluate a run's checkpoint or exported model on its dataset's test split."""

from __future__ import annotations

from pathlib import Path

from kdlab.config import build_config
from kdlab.models.checkpoints import CheckpointError, load_state_dict_flexible
from kdlab.train.build import build_run, resolve_device
from kdlab.train.checkpoint import CHECKPOINT_FORMAT, EXPORT_FORMAT, read_file
from kdlab.train.trainer import evaluate


def evaluate_file(path: str | Path, data_overrides: list[str] | None = None, device: str = "auto") -> dict:
    """Top-1/top-5 of the deployable model stored in ``path`` (``checkpoint.pt`` or ``student.pt``).

    The model is rebuilt from the config stored in the file (teacher architectures only, no teacher weights,
    so a SimKD-style export that embeds a teacher's classifier still runs without the teacher file).

    Args:
        path: a kdlab checkpoint or export.
        data_overrides: ``key=value`` overrides of the ``data`` section (e.g. ``root=...``).
        device: ``auto``, ``cpu``, ``cuda``...

    Returns:
        ``{"top1", "top5", "loss", "n", "file", "dataset"}``.
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
    result = evaluate(model, run.data.eval_batches("test"))
    return {**result, "file": str(path), "dataset": cfg.data.name}
