"""``kdlab eval``: score a model on a data split: top-1, top-5, NLL and ECE.

Evaluation needs a model and a data split, nothing more. The model comes from any of:

- a run directory (its ``student.pt``, else its ``checkpoint.pt``), a ``student.pt`` export or a ``checkpoint.pt``:
  the deployable model is rebuilt from the config stored in the file (``method.export(student)``; the method itself
  is built only when it changes the deployable model, e.g. SimKD, and then from the teachers' architectures, never
  their weights). The data split is the run's dataset, with ``data`` overrides;
- a raw checkpoint of a zoo model (a bare state dict, a dict with ``state_dict``/``model``/``net`` inside,
  ``module.`` prefixes, a reference implementation's layout: :func:`kdlab.models.checkpoints.load_state_dict_flexible`)
  with ``--model NAME --data name=DATASET ...``; the model's input mean/std come from ``--input-mean/--input-std``,
  or from the registry of known public checkpoints (:data:`kdlab.models.checkpoints.KNOWN_CHECKPOINTS`, which also
  names the model), else the dataset's.

No teacher weights, method context, held-out split or training loader are built on the way.
:func:`load_run_file` (the whole run, teachers included) remains for the analyses that compare a student with its
teachers (:mod:`kdlab.analysis`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import ConfigError, RunConfig, build_config
from kdlab.models.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    known_checkpoint,
    load_state_dict_flexible,
)
from kdlab.paths import why_unusable
from kdlab.train.build import Run, build_run, resolve_device
from kdlab.train.checkpoint import CHECKPOINT_FORMAT, EXPORT_FORMAT, load_model_state, read_file
from kdlab.types import Batch

log = logging.getLogger("kdlab")

#: Confidence bins of the ECE (Guo et al. 2017; as :func:`kdlab.analysis.calibration.expected_calibration_error`).
ECE_BINS = 15


# ------------------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def score(
    model: nn.Module, batches: Iterator[Batch], num_bins: int = ECE_BINS, extra: Sequence[str] = ()
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%), NLL and ECE of ``model`` over ``batches`` (eval mode; the mode is restored).

    Args:
        model: ``[B, C, H, W] -> [B, K]`` logits, or dense ``[B, K, h, w]`` with ``[B, H, W]`` labels (segmentation:
            every labelled pixel is a sample, :func:`kdlab.metrics.dense_rows`).
        batches: normalised evaluation batches.
        num_bins: equal-width confidence bins of the ECE.
        extra: further registered metrics (:mod:`kdlab.metrics`, e.g. the dataset's ``miou``), computed in the
            same pass.

    Returns:
        ``{"top1", "top5", "loss", "nll", "ece", "n"}``: ``loss`` and ``nll`` are the mean cross-entropy
        (natural log), ``ece`` is in ``[0, 1]`` with bins ``((m-1)/M, m/M]`` (Guo et al., ICML 2017); plus the
        ``extra`` metrics and what they add (``miou_per_class``). A detection metric in ``extra`` (``map``: the
        model outputs boxes) gives :func:`kdlab.metrics.evaluate`'s record of the ``extra`` metrics alone
        (``{"map", "map_50", ..., "n"}``, no top-1 and no loss).
    """
    from kdlab.metrics import METRICS, dense_rows, evaluate

    if any(METRICS.get(name).task == "detection" for name in extra):  # boxes: the detection metrics alone
        return evaluate(model, batches, tuple(extra))
    others: dict = {}
    was = model.training
    model.eval()
    n, c1, c5, nll = 0, 0, 0, 0.0
    count = conf_sum = acc_sum = None
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64)[1:-1]
    try:
        for batch in batches:
            logits, y = dense_rows(model(batch.x).float(), batch.y)
            for name in extra:
                if name not in others:
                    others[name] = METRICS.get(name)(logits.shape[1], logits.device)
                others[name].update(logits, y)
            k5 = min(5, logits.shape[1])
            top = logits.topk(k5, dim=1).indices
            hit = top == y[:, None]
            c1 += int(hit[:, 0].sum())
            c5 += int(hit.any(dim=1).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
            n += int(y.shape[0])
            conf = logits.softmax(dim=1).max(dim=1).values.double().cpu()
            index = torch.bucketize(conf, edges, right=False)
            b_count = torch.bincount(index, minlength=num_bins).double()
            b_conf = torch.bincount(index, weights=conf, minlength=num_bins)
            b_acc = torch.bincount(index, weights=hit[:, 0].double().cpu(), minlength=num_bins)
            if count is None:
                count, conf_sum, acc_sum = b_count, b_conf, b_acc
            else:
                count, conf_sum, acc_sum = count + b_count, conf_sum + b_conf, acc_sum + b_acc
    finally:
        model.train(was)
    if n == 0:
        raise ValueError("evaluation saw no samples")
    ece = float(((conf_sum - acc_sum).abs() / n).sum())
    out = {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": nll / n, "nll": nll / n, "ece": ece, "n": n}
    for name, metric in others.items():
        out[name] = metric.compute()
        out.update(metric.details() if hasattr(metric, "details") else {})
    return out


def split_batches(splits, data_cfg, split: str, device: torch.device) -> Iterator[Batch]:
    """Un-augmented, normalised batches of one split (``"test"`` or ``"train"``) in dataset order.

    In-memory image datasets are normalised batch by batch from their uint8 images (nothing else is moved to the
    device); streamed and token datasets use their loader's evaluation batches.
    """
    from kdlab.data.base import DatasetSplits

    if split not in ("test", "train"):
        raise ConfigError(f"--split {split!r}: choose test or train")
    if not isinstance(splits, DatasetSplits):  # streamed images, token data: their loader's evaluation batches
        from kdlab.data import make_loader

        yield from make_loader(splits, data_cfg, device, 0).eval_batches(split)
        return
    data = splits.test if split == "test" else splits.train
    c = splits.input_size[0]
    mean = torch.tensor(splits.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
    std = torch.tensor(splits.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
    bs = data_cfg.eval_batch_size
    for start in range(0, len(data), bs):
        x = data.x[start : start + bs].to(device).permute(0, 3, 1, 2).float().div_(255.0)
        idx = torch.arange(start, min(start + bs, len(data)), device=device)
        yield Batch(x=(x - mean) / std, y=data.y[start : start + bs].to(device), index=idx)


# ------------------------------------------------------------------------------------------------ the model
@dataclass
class EvalModel:
    """A deployable model and where it came from (see :func:`load_model_for_eval`).

    Attributes:
        model: ``[B, C, H, W] -> [B, K]`` logits, on the device, with its input normalisation attached.
        data_cfg: the data section to evaluate on.
        splits: the loaded dataset.
        name: the architecture (registry name).
        kind: ``"checkpoint"``, ``"export"`` or ``"raw"``.
        path: the file read.
        input_mean, input_std: the model's own normalisation (None: the dataset's).
    """

    model: nn.Module
    data_cfg: object
    splits: object
    name: str
    kind: str
    path: Path
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None


def resolve_model_file(path: str | Path) -> Path:
    """A run directory's ``student.pt`` (else its ``checkpoint.pt``), or ``path`` itself."""
    p = Path(path)
    if p.is_dir():
        for name in ("student.pt", "checkpoint.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointNotFoundError(
            f"{str(p)!r} holds no student.pt or checkpoint.pt; give a kdlab run directory, one of those files, or a "
            "raw checkpoint with --model NAME --data name=DATASET"
        )
    if not p.is_file():
        raise CheckpointNotFoundError(f"checkpoint {str(p)!r} {why_unusable(p)}; check the path")
    return p


def _run_config(obj: dict, data_overrides: Sequence[str], keep_teacher_files: bool = False) -> RunConfig:
    raw = copy.deepcopy(obj["config"])
    raw["model"]["student_checkpoint"] = None  # the weights come from the file itself
    if not keep_teacher_files:  # scoring reads no other file
        for teacher in raw["model"].get("teachers", []):
            teacher["checkpoint"] = None
    return build_config(raw, [f"data.{o}" for o in data_overrides])


def _deployable(cfg: RunConfig, obj: dict, fmt: str, splits, device: torch.device) -> nn.Module:
    """The run's deployable model with the file's weights (the method only when its export is not the student)."""
    from kdlab import models
    from kdlab.data.tokens import model_build_kwargs
    from kdlab.methods import METHODS, DistillMethod, build_method
    from kdlab.models.input_norm import set_input_normalization
    from kdlab.train.build import build_context

    k, input_size = splits.num_classes, splits.input_size
    extra = model_build_kwargs(splits, [cfg.model.student, *(t.name for t in cfg.model.teachers)])
    student = models.create(cfg.model.student, num_classes=k, in_channels=input_size[0], **extra).to(device)
    mc = cfg.model
    set_input_normalization(student, splits.mean, splits.std, mc.student_input_mean, mc.student_input_std)
    if METHODS.get(cfg.method.name).export is DistillMethod.export:  # the deployable model is the student
        state = obj["student"] if fmt == CHECKPOINT_FORMAT else obj["state_dict"]
        load_state_dict_flexible(student, state, f"the student {cfg.model.student} in the file")
        return student
    # the method changes the deployable model (e.g. SimKD's projector + teacher classifier): build it from the
    # teachers' architectures (their weights are in the file), on the training split size the run had
    c = input_size[0]
    teachers = [models.create(t.name, num_classes=k, in_channels=c, **extra).to(device) for t in mc.teachers]
    train_y = splits.train.y
    ctx = build_context(student, teachers, k, input_size, device, cfg.train.seed, len(train_y), train_y.to(device))
    method = build_method(cfg.method, ctx).to(device)
    holdout = method.needs().holdout_fraction
    if holdout > 0 and not cfg.data.val_fraction:
        from kdlab.data.split import stratified_split

        kept, _ = stratified_split(train_y, holdout, cfg.data.split_seed)
        ctx = build_context(student, teachers, k, input_size, device, cfg.train.seed, len(kept), train_y[kept])
        method = build_method(cfg.method, ctx).to(device)
    if fmt == CHECKPOINT_FORMAT:
        student.load_state_dict(obj["student"])
        method.load_state_dict(obj["method"])
        return method.export(student)
    model = method.export(student)
    load_state_dict_flexible(model, obj["state_dict"], f"the export of {cfg.model.student}")
    return model


def load_model_for_eval(
    path: str | Path,
    data_overrides: Sequence[str] = (),
    device: str = "auto",
    model: str | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> EvalModel:
    """The model stored in ``path`` and the dataset to score it on (see the module docstring).

    Args:
        path: a run directory, ``student.pt``, ``checkpoint.pt``, or a raw checkpoint of a zoo model.
        data_overrides: ``key=value`` overrides of the ``data`` section (a raw checkpoint needs ``name=...``).
        device: ``auto``, ``cpu``, ``cuda``...
        model: registry name of a raw checkpoint's architecture (a kdlab file names its own).
        input_mean, input_std: a raw checkpoint's input normalisation.

    Raises:
        CheckpointNotFoundError: nothing at ``path``.
        CheckpointError: a corrupt file, or weights that do not fit the model.
        ConfigError: a raw checkpoint without ``--model``/``--data name=``, or options that contradict the file.
    """
    from kdlab import models
    from kdlab.data import load_dataset
    from kdlab.models.input_norm import set_input_normalization

    file = resolve_model_file(path)
    dev = resolve_device(device)
    obj = read_file(file, "checkpoint")
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt in (CHECKPOINT_FORMAT, EXPORT_FORMAT):
        if model is not None or input_mean is not None or input_std is not None:
            raise ConfigError(
                f"{str(file)!r} is a kdlab {'checkpoint' if fmt == CHECKPOINT_FORMAT else 'export'}: it names its "
                "own model and normalisation; drop --model/--input-mean/--input-std (they are for raw checkpoints)"
            )
        cfg = _run_config(obj, data_overrides)
        splits = load_dataset(cfg.data)
        try:
            net = _deployable(cfg, obj, fmt, splits, dev)
        except CheckpointMismatchError as err:
            raise CheckpointError(f"{str(file)!r} does not fit the model its own config describes: {err}") from None
        kind = "checkpoint" if fmt == CHECKPOINT_FORMAT else "export"
        mc = cfg.model
        return EvalModel(net, cfg.data, splits, mc.student, kind, file, mc.student_input_mean, mc.student_input_std)

    known = known_checkpoint(file)
    if model is None and known is not None:
        model = known.model
        log.info("%s is %s (%s)", file, known.model, known.source)
    if model is None:
        raise ConfigError(
            f"{str(file)!r} is not a kdlab checkpoint or export; to score a raw checkpoint, name its architecture "
            "and data: kdlab eval FILE --model NAME --data name=DATASET [root=...] [--input-mean ... --input-std ...]"
        )
    if not any(o.split("=", 1)[0].strip() == "name" for o in data_overrides):
        raise ConfigError(
            "a raw checkpoint carries no dataset: give it with --data name=DATASET (e.g. --data name=cifar10 "
            "root=data), see 'kdlab list datasets'"
        )
    if input_mean is None and input_std is None and known is not None and known.model == model:
        input_mean, input_std = known.input_mean, known.input_std
        log.info("input normalisation of the known checkpoint: mean %s std %s", input_mean, input_std)
    from kdlab.data.tokens import model_build_kwargs

    cfg = build_config({}, [f"data.{o}" for o in data_overrides])
    splits = load_dataset(cfg.data)
    extra = model_build_kwargs(splits, [model])
    net = models.create(model, num_classes=splits.num_classes, in_channels=splits.input_size[0], **extra).to(dev)
    try:
        set_input_normalization(net, splits.mean, splits.std, input_mean, input_std)
    except ValueError as err:
        raise ConfigError(f"--input-mean/--input-std: {err}") from None
    load_model_state(
        net,
        obj,
        file,
        model,
        hint=f"Check --model and that the dataset's {splits.num_classes} classes are the checkpoint's class count",
    )
    mean = tuple(input_mean) if input_mean is not None else None
    std = tuple(input_std) if input_std is not None else None
    return EvalModel(net.eval(), cfg.data, splits, model, "raw", file, mean, std)


def evaluate_file(
    path: str | Path,
    data_overrides: Sequence[str] | None = None,
    device: str = "auto",
    model: str | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    split: str = "test",
) -> dict:
    """Top-1, top-5, NLL and ECE of the model in ``path`` on its dataset's ``split`` (see :func:`load_model_for_eval`).

    Returns:
        ``{"top1", "top5", "loss", "nll", "ece", "n", "file", "kind", "model", "dataset", "split"}``, plus the
        dataset's own declared metrics (e.g. ``auc``; ``miou`` and ``miou_per_class`` for segmentation).
    """
    loaded = load_model_for_eval(path, list(data_overrides or ()), device, model, input_mean, input_std)
    param = next(iter(loaded.model.parameters()), None)
    dev = param.device if param is not None else torch.device("cpu")
    extra = [m for m in getattr(loaded.splits, "metrics", ()) if m not in ("top1", "top5", "nll", "ece")]
    result = score(loaded.model, split_batches(loaded.splits, loaded.data_cfg, split, dev), extra=extra)
    if not math.isfinite(result.get("nll", 0.0)):  # a detector's evaluation has no NLL
        log.warning("the NLL is not finite: the model's logits overflow on this data")
    return {
        **result,
        "file": str(loaded.path),
        "kind": loaded.kind,
        "model": loaded.name,
        "dataset": loaded.data_cfg.name,
        "split": split,
    }


# ------------------------------------------------------------------------------------- whole runs (analyses)
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
    """Rebuild the whole run stored in ``path`` (``checkpoint.pt`` or ``student.pt``) with its trained weights.

    For analyses that need the run's teachers and method; to score a model use :func:`evaluate_file`, which builds
    only the model and the data split. Teachers are built as architectures only (no weights), so a SimKD-style
    export that embeds a teacher's classifier still runs without the teacher file.

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
    cfg = _run_config(obj, data_overrides or [], keep_teacher_files=True)
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


__all__ = [
    "ECE_BINS",
    "EvalModel",
    "LoadedRun",
    "evaluate_file",
    "load_model_for_eval",
    "load_run_file",
    "resolve_model_file",
    "score",
    "split_batches",
]
