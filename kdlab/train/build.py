"""Build a run from a config: data, student, frozen teachers, method, checked against each other."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from kdlab import models
from kdlab.config import ConfigError, RunConfig
from kdlab.data import load_dataset, make_loader
from kdlab.data.augment_pipeline import label_mixing_settings
from kdlab.data.base import DatasetSplits, StreamingSplits
from kdlab.data.dense import dense_model_check
from kdlab.data.loader import DeviceLoader
from kdlab.data.streaming import StreamingLoader
from kdlab.data.tokens import model_build_kwargs, token_refusal
from kdlab.methods import DistillMethod, build_method
from kdlab.methods._dense import check_output_kind
from kdlab.methods._detection import check_detection_pair
from kdlab.methods.base import BuildContext, mixed_labels_refusal
from kdlab.models.base import TapError, probe_taps
from kdlab.models.input_norm import set_input_normalization
from kdlab.models.regularization import create_student
from kdlab.seeding import seed_everything
from kdlab.train.checkpoint import load_model_file
from kdlab.train.pairs import explain_pair_error
from kdlab.train.teacher import FrozenTeacher
from kdlab.types import Needs

log = logging.getLogger("kdlab")


class BuildError(ValueError):
    """The parts of a run do not fit together (e.g. a method needs a tap the model lacks)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device={name!r} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu")
    return device


@dataclass
class Run:
    """A built run.

    Attributes:
        cfg: the resolved config.
        device: the training device.
        splits: the dataset (CPU, uint8; or the file lists of a streamed dataset).
        data: the loader (on-device batches, or streamed from files).
        student: the student model (trainable).
        teachers: frozen teachers.
        method: the method (its ``adapters`` train with the student).
        needs: what the method reads.
    """

    cfg: RunConfig
    device: torch.device
    splits: DatasetSplits | StreamingSplits
    data: DeviceLoader | StreamingLoader
    student: nn.Module
    teachers: list[FrozenTeacher]
    method: DistillMethod
    needs: Needs


def _all_taps(model: nn.Module) -> dict:
    return {t.name: t for t in model.tap_info()}


def build_run(cfg: RunConfig, device: torch.device | None = None, load_teacher_weights: bool = True) -> Run:
    """Build everything a run needs from ``cfg`` (models initialised under ``train.seed``).

    Args:
        cfg: resolved config.
        device: overrides ``train.device``.
        load_teacher_weights: False to build teachers' architectures only (e.g. to rebuild an export).
    """
    device = device or resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    splits = load_dataset(cfg.data)
    data = make_loader(splits, cfg.data, device, cfg.train.seed)  # in memory or streamed, by the dataset's kind
    k, in_ch = splits.num_classes, splits.input_size[0]
    extra = model_build_kwargs(splits, [cfg.model.student, *[t.name for t in cfg.model.teachers]])
    dense_model_check(splits, [cfg.model.student, *[t.name for t in cfg.model.teachers]])  # per-pixel labels

    student = create_student(cfg.model, k, in_ch, **extra).to(device)  # with model.student_dropout / drop_path
    mc = cfg.model
    try:
        set_input_normalization(student, splits.mean, splits.std, mc.student_input_mean, mc.student_input_std)
    except ValueError as err:
        raise ConfigError(f"model.student_input_mean/student_input_std: {err}") from None
    if cfg.model.student_checkpoint:
        load_model_file(student, cfg.model.student_checkpoint, cfg.model.student)
    if cfg.model.student_backbone:
        from kdlab.models.backbone_init import load_backbone_file

        load_backbone_file(student, cfg.model.student_backbone, cfg.model.student)

    teachers = []
    for i, tcfg in enumerate(cfg.model.teachers):
        model = models.create(tcfg.name, num_classes=k, in_channels=in_ch, **extra)
        if tcfg.checkpoint and load_teacher_weights:
            load_model_file(model, tcfg.checkpoint, tcfg.name)
        elif load_teacher_weights:
            log.warning("model.teachers.%d (%s) has no checkpoint: the teacher is randomly initialised", i, tcfg.name)
        try:
            teacher = FrozenTeacher(model, tcfg.name, splits.mean, splits.std, tcfg.input_mean, tcfg.input_std)
        except ValueError as err:
            raise ConfigError(f"model.teachers.{i}.input_mean/input_std: {err}") from None
        teachers.append(teacher.to(device))

    def make_method(data) -> DistillMethod:
        ctx = build_context(
            student,
            [t.model for t in teachers],
            k,
            splits.input_size,
            device,
            cfg.train.seed,
            data.num_train,
            data.train_labels,
            total_epochs=cfg.train.epochs,
        )
        check_output_kind(cfg.method, ctx.student_shapes["logits"], cfg.method.name, cfg.model.student)  # dense pairs
        check_detection_pair(cfg.method, ctx.student_taps, cfg.model.student)  # detection pairs
        return build_method(cfg.method, ctx).to(device)

    rng = _rng_state(device)
    try:
        method = make_method(data)
    except ValueError as err:  # TapError, PairError: a token model has no image maps; say so
        err = token_refusal(err, splits, cfg.method.name)
        raise explain_pair_error(err, cfg, k, getattr(splits, "input_size", None)) from None  # + pairs that work
    holdout = method.needs().holdout_fraction
    if holdout > 0 and not cfg.data.val_fraction:
        # The method trains on a held-out split (e.g. a bilevel outer loop) and the config sets none: hold out the
        # method's fraction of the training set (stratified, by data.split_seed; never the test set) and rebuild the
        # method on the smaller training split from the same random state, as if it had been built once.
        data = make_loader(splits, cfg.data, device, cfg.train.seed, holdout_fraction=holdout)
        _set_rng_state(device, rng)
        method = make_method(data)
    needs = check_method(cfg, method, student, [t.model for t in teachers])
    check_heldout(cfg, needs, data, k)
    data.views = needs.views
    return Run(cfg, device, splits, data, student, teachers, method, needs)


def _rng_state(device: torch.device) -> tuple:
    """The global random state a method's initialisation draws from (CPU, and the CUDA device when used)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def build_context(
    student: nn.Module,
    teachers: list[nn.Module],
    num_classes: int,
    input_size: tuple[int, int, int],
    device: torch.device,
    seed: int = 0,
    num_train: int = 0,
    train_labels: torch.Tensor | None = None,
    total_epochs: int = 0,
) -> BuildContext:
    """The :class:`BuildContext` of a student and its (unwrapped) teachers: taps and shapes from one dry run."""
    s_taps = _all_taps(student)
    t_taps = [_all_taps(t) for t in teachers]
    return BuildContext(
        num_classes=num_classes,
        num_train=num_train,
        student_taps=s_taps,
        teacher_taps=t_taps,
        student_shapes=probe_taps(student, s_taps, input_size),
        teacher_shapes=[probe_taps(t, taps, input_size) for t, taps in zip(teachers, t_taps)],
        teacher_classifiers=[t.classifier for t in teachers],
        teacher_models=list(teachers),
        teacher_bn_before_relu=[_bn_before_relu(t, taps) for t, taps in zip(teachers, t_taps)],
        student_classifier=student.classifier,
        train_labels=train_labels,
        device=device,
        seed=seed,
        total_epochs=total_epochs,
    )


def _bn_before_relu(model: nn.Module, taps: dict) -> dict[str, nn.Module]:
    """``{pre-activation tap: the BN before its ReLU}`` for the taps whose BN ``model`` exposes."""
    find = getattr(model, "bn_before_relu", None)
    if find is None:
        return {}
    found = {name: find(name) for name, info in taps.items() if info.kind == "pre"}
    return {name: bn for name, bn in found.items() if bn is not None}


def check_method(cfg: RunConfig, method: DistillMethod, student: nn.Module, teachers: list[nn.Module]) -> Needs:
    """Check that ``method`` can run with these models (taps, teachers, held-out split); returns its needs."""
    needs = method.needs()
    _check(cfg, method, needs, student, teachers)
    return needs


def check_heldout(cfg: RunConfig, needs: Needs, data: object, num_classes: int) -> None:
    """A method that trains on a held-out split (``Needs.holdout_fraction > 0``) needs one with at least one sample
    per class: an empty split would leave its outer loop waiting forever for a batch, a smaller one cannot show it
    every class. Raises :class:`BuildError` naming the sizes and the fix."""
    if needs.holdout_fraction <= 0:
        return
    val = getattr(data, "val", None)
    size = 0 if val is None else int(val.y.shape[0])
    if size >= num_classes:
        return
    fraction = cfg.data.val_fraction or needs.holdout_fraction
    key = "data.val_fraction" if cfg.data.val_fraction else f"method {cfg.method.name!r}'s holdout_fraction"
    raise BuildError(
        f"method {cfg.method.name!r} trains on a held-out split, but {key}={fraction:g} of the "
        f"{size + data.num_train} training samples holds out {size} sample(s), fewer than the {num_classes} classes "
        "(a class with a single training sample is never held out); use more training data "
        "(data.train_per_class) or a larger fraction (method.holdout_fraction or data.val_fraction)"
    )


def _check(cfg: RunConfig, method: DistillMethod, needs: Needs, student: nn.Module, teachers: list[nn.Module]) -> None:
    name = cfg.method.name
    if needs.teacher and not teachers:
        raise BuildError(
            f"method {name!r} distils from a teacher but model.teachers is empty; add one, e.g. "
            "model.teachers.0.name=<model> model.teachers.0.checkpoint=<file>"
        )
    try:
        student.check_taps(needs.student_taps, cfg.model.student)
        for t, tcfg in zip(teachers, cfg.model.teachers):
            t.check_taps(needs.teacher_taps, tcfg.name)
    except TapError as err:
        raise BuildError(f"method {name!r}: {err}") from None
    if not 0.0 <= needs.holdout_fraction < 1.0:
        raise BuildError(
            f"method {name!r} asks for a held-out split of {needs.holdout_fraction:g} of the training set; "
            "the fraction must be in [0, 1)"
        )
    mixing = label_mixing_settings(cfg.data)
    why = mixed_labels_refusal(method) if mixing else None
    if why:
        raise BuildError(
            f"method {name!r} cannot train on mixed labels ({', '.join(mixing)}): {why}. Set them to 0, or use a "
            "method that trains on mixed labels (e.g. kd, dist, dkd: DistillMethod.mixed_labels soft or dominant)"
        )
    # Every trainable parameter of a method must be an adapter (trained and synced with the student) or belong
    # to an aux objective (its own optimiser); anything else would silently never train or never sync.
    adapter_ids = {id(p) for p in method.adapters.parameters()}
    aux_ids = {id(p) for aux in method.aux_objectives() for p in getattr(aux, "parameters", lambda: [])()}
    stray = [n for n, p in method.named_parameters() if p.requires_grad and id(p) not in adapter_ids | aux_ids]
    if stray:
        raise BuildError(
            f"method {name!r} has trainable parameters outside its adapters and aux objectives: {', '.join(stray)}"
        )


def check_on_meta(
    cfg: RunConfig, num_classes: int, input_size: tuple[int, int, int], num_train: int = 50_000
) -> DistillMethod:
    """Build ``cfg``'s models and method on the meta device (shapes only: no data, no weights, no memory) and check
    that they fit together; returns the method. Raises what :func:`build_run` would (``BuildError``, ``TapError``,
    ``ValueError`` from a method's constructor) for a config that cannot run.

    Args:
        cfg: the resolved config.
        num_classes: ``K`` of the dataset the config names.
        input_size: ``(C, H, W)`` of its images.
        num_train: training-set size handed to the method (e.g. CRD's memory rows).
    """
    meta = torch.device("meta")
    with meta:
        student = create_student(cfg.model, num_classes, input_size[0])
        teachers = [
            models.create(t.name, num_classes=num_classes, in_channels=input_size[0]) for t in cfg.model.teachers
        ]
    ctx = build_context(student, teachers, num_classes, input_size, meta, num_train=num_train)
    check_output_kind(cfg.method, ctx.student_shapes["logits"], cfg.method.name, cfg.model.student)
    check_detection_pair(cfg.method, ctx.student_taps, cfg.model.student)
    method = build_method(cfg.method, ctx)
    check_method(cfg, method, student, teachers)
    return method
