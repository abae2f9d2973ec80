"""What every analysis shares: opening a run, the result table, and writing Markdown, CSV, JSON and a PNG.

An analysis is a function ``fn(opened: OpenedRun, **options) -> AnalysisResult``. The result is a table (rows of
plain numbers and strings) plus a figure-drawing function; :func:`write_result` writes ``<name>.md``,
``<name>.csv``, ``<name>.json`` and ``<name>.png`` into the output directory. Figures are drawn on a
``matplotlib.figure.Figure`` (the Agg canvas), never through ``pyplot``, so no global backend is changed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.paths import why_unusable

log = logging.getLogger("kdlab")


class AnalysisError(ValueError):
    """An analysis cannot run on its input (missing or corrupt run, no teacher, bad option); the message says
    what to change."""


# ----------------------------------------------------------------------------------------------------- runs


@dataclass
class OpenedRun:
    """A trained run ready for analysis.

    Attributes:
        loaded: the rebuilt run (:class:`kdlab.evaluate.LoadedRun`): config, data, student, method, export.
        run_dir: the run directory (the file's directory when a file was given).
        teachers_loaded: whether the teachers' trained weights were loaded (False when the run has none).
    """

    loaded: Any
    run_dir: Path
    teachers_loaded: bool = False

    @property
    def cfg(self):
        """The run's config."""
        return self.loaded.cfg

    @property
    def model(self) -> nn.Module:
        """The deployable model (eval mode is the caller's business)."""
        return self.loaded.model

    @property
    def data(self):
        """The run's on-device loader (:class:`kdlab.data.loader.DeviceLoader`)."""
        return self.loaded.run.data

    @property
    def device(self) -> torch.device:
        """The device everything runs on."""
        return self.loaded.run.device

    @property
    def teachers(self) -> list:
        """The run's frozen teachers (:class:`kdlab.train.teacher.FrozenTeacher`), weights loaded."""
        return self.loaded.run.teachers if self.teachers_loaded else []

    def batches(self, split: str = "test", limit: int | None = None, seed: int = 0) -> Iterator:
        """Un-augmented batches of ``split`` (``test``, ``train``, ``val``) in dataset order.

        With ``limit``, a stratified subset of about ``limit`` samples drawn with ``seed`` (dataset files are often
        sorted by class, so the first ``limit`` samples would not be representative). ``Batch.index`` holds the
        samples' positions in the split.
        """
        from kdlab.data.split import stratified_split
        from kdlab.types import Batch

        data = self.data
        if split not in ("test", "train", "val"):
            raise AnalysisError(f"unknown split {split!r}; use --split test, train or val")
        part = {"test": data.test, "train": data.train, "val": data.val}[split]
        if part is None:
            raise AnalysisError("the run has no validation split (data.val_fraction is 0); use --split test or train")
        n = int(part.y.shape[0])
        if limit is not None and limit < 1:
            raise AnalysisError(f"--limit must be >= 1, got {limit}")
        if limit is None or limit >= n:
            index = torch.arange(n)
        else:
            _, index = stratified_split(part.y.cpu(), limit / n, seed)
            index = index.sort().values
        index = index.to(part.y.device)
        size = data.cfg.eval_batch_size

        def gen() -> Iterator:
            for chunk in index.split(size):
                yield Batch(x=data.normalize(part.x[chunk]), y=part.y[chunk], index=chunk)

        return gen()


def resolve_run_file(path: str | Path) -> tuple[Path, Path]:
    """``(file, run_dir)`` for a run directory (its ``checkpoint.pt``, else ``student.pt``) or a file.

    Raises:
        AnalysisError: nothing exists at ``path`` or the directory holds neither file.
    """
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoint.pt", "student.pt"):
            if (p / name).is_file():
                return p / name, p
        raise AnalysisError(
            f"{str(p)!r} holds no checkpoint.pt or student.pt; give a kdlab run directory (written by kdlab train) "
            "or one of those files"
        )
    if p.is_file():
        return p, p.parent
    raise AnalysisError(f"{str(p)!r} {why_unusable(p)}; give a kdlab run directory or its checkpoint.pt / student.pt")


def open_run(
    path: str | Path,
    data_overrides: Sequence[str] = (),
    device: str = "auto",
    teacher: str | None = None,
    need_teacher: bool = False,
) -> OpenedRun:
    """Open a trained run for analysis, with its teachers' weights when they can be found.

    Args:
        path: a run directory, or its ``checkpoint.pt`` / ``student.pt``.
        data_overrides: ``key=value`` overrides of the run's ``data`` section (e.g. ``root=...``).
        device: ``auto``, ``cpu``, ``cuda``...
        teacher: a weights file for the (first) teacher, replacing the path stored in the run's config.
        need_teacher: raise when the run has no teacher or its weights cannot be found; otherwise analyse the
            student alone (with a warning when the teacher's file is missing).

    Raises:
        AnalysisError: a missing, corrupt or foreign file, or a missing teacher when ``need_teacher``.
    """
    from kdlab.evaluate import load_run_file
    from kdlab.models.checkpoints import CheckpointError
    from kdlab.train.checkpoint import load_model_file

    file, run_dir = resolve_run_file(path)
    try:
        loaded = load_run_file(file, list(data_overrides), device)
    except CheckpointError as err:
        raise AnalysisError(f"cannot open the run: {err}") from None
    except KeyError as err:
        raise AnalysisError(f"{str(file)!r} is a damaged kdlab file (no entry {err}); re-export or re-train") from None
    teachers = loaded.run.teachers
    if not teachers:
        if need_teacher:
            raise AnalysisError(
                f"this analysis compares the student with its teacher, but the run in {str(run_dir)!r} "
                f"(method {loaded.cfg.method.name!r}) has no teacher"
            )
        return OpenedRun(loaded, run_dir, False)
    files = [t.checkpoint for t in loaded.cfg.model.teachers]
    if teacher is not None:
        files[0] = teacher
    missing = [(i, f) for i, f in enumerate(files) if not f or not Path(f).is_file()]
    if missing:
        what = ", ".join(f"model.teachers.{i} ({f or 'no checkpoint'})" for i, f in missing)
        msg = (
            f"the teacher weights of the run in {str(run_dir)!r} are not found: {what}; pass --teacher FILE "
            "(relative paths in the run's config are read from the current directory)"
        )
        if need_teacher:
            raise AnalysisError(msg)
        log.warning("%s; analysing the student alone", msg)
        return OpenedRun(loaded, run_dir, False)
    for t, f in zip(teachers, files):
        try:
            load_model_file(t.model, f, t.name)
        except CheckpointError as err:
            raise AnalysisError(f"cannot load the teacher: {err}") from None
        t.model.eval()
    return OpenedRun(loaded, run_dir, True)


# --------------------------------------------------------------------------------------------------- results


@dataclass
class AnalysisResult:
    """The output of one analysis.

    Attributes:
        name: file stem of the outputs (``robustness``...).
        title: one-line title of the table.
        columns: column names of ``rows`` in order.
        rows: the table; values are numbers or strings.
        notes: sentences printed under the table (settings, caveats).
        plot: ``fn(figure)`` drawing the figure onto a ``matplotlib.figure.Figure``; None for no PNG.
        extra: more machine-readable data written to the JSON file (e.g. per-bin or per-class tables).
    """

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    plot: Callable[[Any], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    figsize: tuple[float, float] = (6.4, 4.2)
    tables: dict[str, tuple[list[str], list[dict[str, Any]]]] = field(default_factory=dict)
    """More tables by name, each ``(columns, rows)``, written as ``<name>_<table>.csv`` (e.g. per-class rows)."""

    def markdown(self, digits: int = 2) -> str:
        """The table as GitHub Markdown, with the title above and the notes below."""
        lines = [f"## {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row.get(c), digits) for c in self.columns) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {n}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The table as CSV (full precision)."""
        return _csv(self.columns, self.rows)


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buf.getvalue()


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}" if abs(value) >= 0.1 or value == 0 else f"{value:.{digits + 1}g}"
    return str(value)


def write_result(result: AnalysisResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<name>.md``, ``.csv``, ``.json`` and (when the result has a plot) ``.png`` into ``out_dir``.

    Returns:
        The written paths by kind (``md``, ``csv``, ``json``, ``png``, ``csv:<table>`` for each extra table).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{result.name}.{k}" for k in ("md", "csv", "json")}
    paths["md"].write_text(result.markdown())
    paths["csv"].write_text(result.csv())
    payload = {"title": result.title, "columns": result.columns, "rows": result.rows, "notes": result.notes}
    tables = {name: {"columns": cols, "rows": rows} for name, (cols, rows) in result.tables.items()}
    paths["json"].write_text(
        json.dumps({**payload, **result.extra, "tables": tables}, indent=2, default=_jsonable) + "\n"
    )
    for name, (cols, rows) in result.tables.items():
        paths[f"csv:{name}"] = out / f"{result.name}_{name}.csv"
        paths[f"csv:{name}"].write_text(_csv(cols, rows))
    if result.plot is not None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=result.figsize, layout="constrained")
        result.plot(fig)
        paths["png"] = out / f"{result.name}.png"
        fig.savefig(paths["png"], dpi=120)
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ------------------------------------------------------------------------------------------------ helpers


def collect_logits(model: nn.Module, batches: Iterator) -> tuple[Tensor, Tensor]:
    """``(logits [N, K] float32, labels [N])`` of ``model`` (eval mode, no gradients) over ``batches``."""
    was = model.training
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for batch in batches:
            logits.append(model(batch.x).float())
            labels.append(batch.y)
    model.train(was)
    if not logits:
        raise AnalysisError("the chosen split has no samples; check --split and --limit")
    return torch.cat(logits), torch.cat(labels)


def check_positive(name: str, value: float | int, allow_zero: bool = False) -> None:
    """Raise :class:`AnalysisError` naming the option unless ``value > 0`` (or ``>= 0``)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise AnalysisError(f"{name} must be {bound}, got {value}")
