"""The run header: what a run is about to do, logged at its start and stored in ``summary.json`` (``"header"``).

It names the dataset (split sizes, classes, input size), the student and every teacher (parameters, MACs, input
normalisation, checkpoint and its SHA-256), the method with the fields that differ from its defaults, and the
device, precision, threads, allocator and seed.

Every teacher loaded from a checkpoint is scored once on the test split (top-1/top-5, with NLL and ECE) before
training. The result is cached on disk by the checkpoint's content hash, the model, a fingerprint of the test split
and both normalisations (:func:`teacher_cache_key`), so the runs of a sweep that share a teacher measure it once.
The cache lives in ``$KDLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdlab``, else ``~/.cache/kdlab``: one small JSON
file per entry under ``teacher_accuracy/``, written atomically (concurrent runs cannot corrupt it; an unwritable
cache only costs a re-measurement). A teacher without a checkpoint is randomly initialised (the build warns) and is
not measured. A teacher at chance level gets a warning: the usual causes are a wrong input normalisation
(``model.teachers.N.input_mean/input_std``) or a checkpoint of another task or class order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("kdlab")

#: Bump when the measured quantities change, so old cache entries are not reused.
CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """kdlab's cache directory: ``$KDLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdlab``, else ``~/.cache/kdlab``."""
    if os.environ.get("KDLAB_CACHE_DIR"):
        return Path(os.environ["KDLAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kdlab"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    from kdlab.models.checkpoints import file_sha256 as sha

    return sha(path)


def split_fingerprint(data: Any, split: str = "test") -> str:
    """A SHA-256 of a split's content (images and labels of an in-memory split; file names and labels of a streamed
    one), so a teacher's cached accuracy is reused only on the very same images."""
    h = hashlib.sha256()
    part = getattr(data, split, None)
    tensors = [getattr(part, "x", None), getattr(part, "y", None)]
    if part is not None and all(isinstance(t, torch.Tensor) for t in tensors):
        for t in tensors:
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()
    paths = getattr(part, "paths", None)
    labels = getattr(part, "y", None)
    if paths is not None and isinstance(labels, torch.Tensor):
        h.update(b"\0".join(bytes(p) for p in paths))
        h.update(labels.cpu().numpy().tobytes())
        return h.hexdigest()
    return ""  # unknown kind of split: no fingerprint, no caching


def teacher_cache_key(
    checkpoint_sha256: str, model: str, dataset: str, split_sha256: str, split: str, normalisation: dict
) -> str:
    """The cache key of a teacher's measured accuracy (hex SHA-256 of the identifying fields)."""
    ident = {
        "version": CACHE_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "model": model,
        "dataset": dataset,
        "split": split,
        "split_sha256": split_sha256,
        "normalisation": normalisation,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _cache_read(key: str) -> dict | None:
    path = cache_dir() / "teacher_accuracy" / f"{key}.json"
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("test"), dict) else None


def _cache_write(key: str, entry: dict) -> None:
    folder = cache_dir() / "teacher_accuracy"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, folder / f"{key}.json")
    except OSError as err:  # a read-only home, a full disk: measure again next time
        log.debug("teacher accuracy cache not written (%s)", err)


# ----------------------------------------------------------------------------------------- teacher accuracy
def chance_level(top1: float, num_classes: int, n: int) -> bool:
    """Whether a top-1 accuracy (%) on ``n`` samples is at chance level for ``num_classes`` classes: within a tenth
    of the way from the chance rate ``p = 1 / K`` to 100 % (``p + 0.1 (1 - p)``), or within three binomial standard
    deviations of ``p`` (small test splits)."""
    if num_classes < 2 or n < 1:
        return False
    p = 1.0 / num_classes
    sd = math.sqrt(p * (1 - p) / n)
    return top1 / 100.0 < max(p + 0.1 * (1 - p), p + 3 * sd)


def off_target(top1: float, target: float, n: int, tolerance: float = 1.0) -> bool:
    """Whether a measured top-1 (%) on ``n`` test samples is further from a published ``target`` (%) than
    ``tolerance`` points or three binomial standard deviations of the target rate (subsets), whichever is larger."""
    p = min(max(target / 100.0, 0.0), 1.0)
    sd = 100.0 * math.sqrt(p * (1 - p) / max(n, 1))
    return abs(top1 - target) > max(tolerance, 3 * sd)


def measure_teachers(run: Any, use_cache: bool = True) -> list[dict]:
    """Score every teacher of ``run`` that has a checkpoint on the test split, once per cache key.

    Args:
        run: a built :class:`kdlab.train.build.Run`.
        use_cache: read and write the on-disk cache.

    Returns:
        One dict per teacher: ``name``, ``checkpoint``, ``sha256``, ``test`` (``{"top1", "top5", "nll", "ece",
        "n"}`` or None when not measured), ``cached`` (bool), ``chance_level`` (bool) and, at chance level or when
        the first teacher misses the config's ``target.teacher_top1`` (:func:`off_target`), a ``warning`` naming the
        usual causes (logged by :func:`log_header`).
    """
    from kdlab.evaluate import score
    from kdlab.metrics import METRICS

    cfg = run.cfg
    out = []
    fingerprint = None
    for i, (tcfg, teacher) in enumerate(zip(cfg.model.teachers, run.teachers)):
        entry: dict[str, Any] = {"name": tcfg.name, "checkpoint": tcfg.checkpoint, "sha256": None, "test": None}
        entry.update(cached=False, chance_level=False)
        out.append(entry)
        if not tcfg.checkpoint or not Path(tcfg.checkpoint).is_file():
            continue
        entry["sha256"] = file_sha256(tcfg.checkpoint)
        if fingerprint is None:
            fingerprint = split_fingerprint(run.data, "test")
        norm = {
            "data_mean": list(map(float, run.splits.mean)),
            "data_std": list(map(float, run.splits.std)),
            "input_mean": tcfg.input_mean,
            "input_std": tcfg.input_std,
        }
        key = teacher_cache_key(entry["sha256"], tcfg.name, cfg.data.name, fingerprint, "test", norm)
        cached = _cache_read(key) if use_cache and fingerprint else None
        if cached is not None:
            entry.update(test=cached["test"], cached=True)
        else:
            log.info("measuring teacher %d (%s) on the test split, once per checkpoint (cached)", i, tcfg.name)
            boxes = [m for m in getattr(run.splits, "metrics", ()) if METRICS.get(m).task == "detection"]
            result = score(teacher, run.data.eval_batches("test"), extra=boxes)  # detection: the box metrics alone
            keys = ("top1", "top5", "nll", "ece") if not boxes else tuple(k for k in result if k.startswith("map"))
            entry["test"] = {k: result[k] for k in (*keys, "n")}
            if use_cache and fingerprint:
                _cache_write(key, {"test": entry["test"], "model": tcfg.name, "checkpoint": str(tcfg.checkpoint)})
        test = entry["test"]
        if "top1" not in test:  # a detector: no chance level of a class score
            continue
        entry["chance_level"] = chance_level(test["top1"], run.splits.num_classes, int(test["n"]))
        if entry["chance_level"]:
            entry["warning"] = (
                f"teacher {i} ({tcfg.name}, {tcfg.checkpoint}) scores {test['top1']:.2f} % top-1 on the test split, "
                f"chance level for {run.splits.num_classes} classes. The usual causes: a wrong input normalisation "
                f"(model.teachers.{i}.input_mean/input_std; the dataset's is used by default) or a wrong checkpoint "
                "(another dataset, class order or architecture). Score it alone with: kdlab eval FILE (a raw "
                "checkpoint also needs --model NAME --data name=DATASET, and --input-mean/--input-std)"
            )
        published = cfg.target.get("teacher_top1") if i == 0 else None  # a recipe's published teacher accuracy
        if published is not None and off_target(test["top1"], published, int(test["n"])):
            miss = (
                f"teacher 0 ({tcfg.name}, {tcfg.checkpoint}) scores {test['top1']:.2f} % top-1 on the test split; the "
                f"recipe's target.teacher_top1 is {published:g} %. Check that the checkpoint is the published one "
                "and that the evaluation transform and input normalisation are the ones it was scored with"
            )
            entry["warning"] = f"{entry['warning']}. {miss}" if entry.get("warning") else miss
    return out


# --------------------------------------------------------------------------------------------------- header
def _model_record(model: nn.Module, input_size: tuple[int, ...] | None) -> dict:
    from kdlab.models.base import count_parameters
    from kdlab.models.flops import count_flops

    macs = None
    if input_size is not None:
        try:
            macs = count_flops(model, input_size)
        except Exception as err:  # a model that takes no image batch (e.g. tokens): MACs unknown
            log.debug("MACs not counted for %s: %s", type(model).__name__, err)
    return {"parameters": count_parameters(model, trainable_only=False), "macs": macs}


def method_changes(method_cfg: Any) -> dict:
    """The fields of a method's config that differ from its class defaults (``name`` excluded)."""
    try:
        defaults = type(method_cfg)()
    except TypeError:  # a config with required fields: report every field
        defaults = None
    changed = {}
    for f in dataclasses.fields(method_cfg):
        if f.name == "name":
            continue
        value = getattr(method_cfg, f.name)
        if defaults is None or value != getattr(defaults, f.name):
            changed[f.name] = _plain(value)
    return changed


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data (nested method configs, e.g. ``sum``'s terms or ``tekap``'s inner, as dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def split_size(split: object) -> int:
    """Samples of a loader's split: ``len(split)`` (image folders, token, dense and box sets), else its labels'
    first dimension (the in-memory ``[N]`` label splits), 0 for no split."""
    if split is None:
        return 0
    if hasattr(split, "__len__"):
        return len(split)
    return int(split.y.shape[0])


def build_header(trainer: Any, measure: bool = True) -> dict:
    """The header of ``trainer``'s run (a :class:`kdlab.train.trainer.Trainer` whose run is built).

    Args:
        trainer: the trainer.
        measure: score the teachers (:func:`measure_teachers`).

    Returns:
        ``{"data", "student", "teachers", "method", "system", "schedule", "strategy"}`` (JSON-serialisable).
    """
    from kdlab.allocator import allocator_name
    from kdlab.data.augment_pipeline import describe_augment
    from kdlab.train.strategy import describe_strategy

    run, cfg = trainer.run, trainer.cfg
    splits, data = run.splits, run.data
    input_size = tuple(splits.input_size) if hasattr(splits, "input_size") else None
    val_size = split_size(getattr(data, "val", None))
    header: dict[str, Any] = {
        "data": {
            "name": cfg.data.name,
            "train": int(data.num_train),
            "val": val_size,
            "test": len(splits.test),
            "classes": int(splits.num_classes),
            "input_size": list(input_size) if input_size is not None else None,
            "mean": [float(v) for v in splits.mean] if hasattr(splits, "mean") else None,
            "std": [float(v) for v in splits.std] if hasattr(splits, "std") else None,
            **getattr(splits, "record", {}),  # what the source counted (coco: dropped boxes, images without boxes)
        },
        "student": {
            "name": cfg.model.student,
            **_model_record(run.student, input_size),
            "checkpoint": cfg.model.student_checkpoint,
            "input_mean": cfg.model.student_input_mean,
            "input_std": cfg.model.student_input_std,
        },
        "method": {
            "name": cfg.method.name,
            "changed": method_changes(cfg.method),
            # train.weight_scaling's factors per loss term ({}: none; kdlab/methods/scaling.py)
            "term_scales": dict(getattr(getattr(trainer, "step_module", None), "term_scales", {})),
        },
        "system": {
            "device": str(run.device),
            "precision": cfg.train.precision,
            "teacher_precision": cfg.train.teacher_precision or cfg.train.precision,
            "threads": torch.get_num_threads(),
            "allocator": allocator_name(),
            "seed": cfg.train.seed,
            "processes": getattr(getattr(trainer, "world", None), "size", 1),
        },
        "schedule": {
            "epochs": cfg.train.epochs,
            "steps_per_epoch": getattr(trainer, "steps_per_epoch", None),
            "batch_size": cfg.data.batch_size,
            "max_steps": cfg.train.max_steps,
            "stages": [st.name for st in getattr(trainer, "stages", [])],
        },
        "augment": describe_augment(cfg.data, getattr(run.method, "mixed_labels", None)),  # per-sample ops, mixing
        "strategy": describe_strategy(cfg),  # optimiser, schedule, weight decay, label smoothing, EMA
    }
    measured = measure_teachers(run) if measure else [{} for _ in run.teachers]
    header["teachers"] = [
        {
            "name": tcfg.name,
            **_model_record(teacher.model, input_size),
            "input_mean": tcfg.input_mean,
            "input_std": tcfg.input_std,
            "checkpoint": tcfg.checkpoint,
            **{k: v for k, v in m.items() if k not in ("name", "checkpoint")},
        }
        for tcfg, teacher, m in zip(cfg.model.teachers, run.teachers, measured)
    ]
    return header


def _count(n: int | None, unit: str) -> str:
    if n is None:
        return f"? {unit}"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.2f}{suffix} {unit}"
    return f"{n} {unit}"


def _norm(mean: Any, std: Any) -> str:
    if mean is None and std is None:
        return "the dataset's normalisation"
    return f"its own normalisation (mean {mean}, std {std})"


def format_header(header: dict) -> str:
    """The header as a few readable lines (what :func:`log_header` logs)."""
    d, s, m, sysinfo, sch = header["data"], header["student"], header["method"], header["system"], header["schedule"]
    size = "x".join(map(str, d["input_size"])) if d.get("input_size") else "?"
    changed = ", ".join(f"{k}={v}" for k, v in m["changed"].items()) or "all defaults"
    init = f", initialised from {s['checkpoint']}" if s["checkpoint"] else ""
    lines = [
        f"run header: {m['name']} ({changed})"
        + (
            "; loss terms scaled by train.weight_scaling: " + ", ".join(f"{k} x{v:.3g}" for k, v in scales.items())
            if (scales := m.get("term_scales"))
            else ""
        ),
        f"  data     {d['name']}: {d['train']} train / {d['val']} val / {d['test']} test, {d['classes']} classes, "
        f"input {size}",
        f"  student  {s['name']}: {_count(s['parameters'], 'parameters')}, {_count(s['macs'], 'MACs')}, "
        f"{_norm(s['input_mean'], s['input_std'])}{init}",
    ]
    for i, t in enumerate(header["teachers"]):
        if t.get("test") and "top1" not in t["test"]:  # a detector's box mAP
            from kdlab.metrics import format_metrics

            acc = f"test {format_metrics(t['test'])}" + (" (cached)" if t.get("cached") else "")
        elif t.get("test"):
            acc = (
                f"test top-1 {t['test']['top1']:.2f} %, top-5 {t['test']['top5']:.2f} %"
                + (" (cached)" if t.get("cached") else "")
                + (" CHANCE LEVEL" if t.get("chance_level") else "")
            )
        elif t.get("checkpoint"):
            acc = "not measured"
        else:
            acc = "no checkpoint (random initialisation), not measured"
        sha = f" sha256 {t['sha256'][:12]}" if t.get("sha256") else ""
        lines.append(
            f"  teacher{i} {t['name']}: {_count(t['parameters'], 'parameters')}, {_count(t['macs'], 'MACs')}, "
            f"{_norm(t['input_mean'], t['input_std'])}, {t.get('checkpoint') or '-'}{sha}; {acc}"
        )
    lines.append(
        f"  system   {sysinfo['device']}, {sysinfo['precision']} (teachers {sysinfo['teacher_precision']}), "
        f"{sysinfo['threads']} threads, allocator {sysinfo['allocator']}, seed {sysinfo['seed']}, "
        f"{sysinfo['processes']} process(es); {sch['epochs']} epochs x {sch['steps_per_epoch']} steps, "
        f"batch {sch['batch_size']}"
    )
    if header.get("augment"):
        lines.append(f"  augment  {header['augment']}")
    if header.get("strategy"):
        lines.append(f"  strategy {header['strategy']}")
    return "\n".join(lines)


def log_header(trainer: Any) -> dict:
    """Build the header of ``trainer``'s run, log it (rank 0) and return it (the trainer's one-line hook)."""
    header = build_header(trainer)
    if getattr(getattr(trainer, "world", None), "main", True):
        log.info("%s", format_header(header))
        for teacher in header["teachers"]:
            if teacher.get("warning"):
                log.warning("%s", teacher["warning"])
    return header
