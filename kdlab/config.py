"""Configuration: typed dataclasses are the schema, YAML files are data.

``load_config(path, overrides)`` reads a YAML file strictly into :class:`RunConfig`: an unknown key is an error
that names it and suggests the closest valid key, a wrong type names the field and the expected type.
Numbers may be written in scientific notation anywhere (``optim.lr=1e-3``, ``1E-3``, also in YAML files, where
YAML 1.1 would read ``1e-3`` as a string). Every numeric field declares its valid range once, as field metadata
(``field(default=0.05, metadata=rng(gt=0))``, see :mod:`kdlab.ranges`); loading refuses a value outside it.
``key=value`` overrides use dotted paths (``method.temperature=2``, ``model.teachers.0.checkpoint=t.pt``).
The ``method`` section is selected by its ``name`` through the method registry; each method defines its own
``Config`` dataclass (see :mod:`kdlab.methods.base`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from kdlab.augment_config import RandAugmentConfig, RandomErasingConfig
from kdlab.paths import why_unusable
from kdlab.ranges import field_range, out_of_range_message, rng, violations
from kdlab.registry import METHOD_CONFIGS, METHODS, closest
from kdlab.tabular_config import TabularConfig

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration is invalid; the message names the key and says how to fix it."""


@dataclass(kw_only=True)
class MethodConfig:
    """Base of every method's ``Config``; ``name`` selects the method in the registry."""

    name: str = "ce"
    """Registry name of the method (``kdlab list methods``)."""


@dataclass(kw_only=True)
class TeacherConfig:
    """One frozen teacher."""

    name: str
    """Model registry name (``kdlab list models``)."""
    checkpoint: str | None = None
    """A kdlab run checkpoint or export, or a plain state dict (``module.`` prefixes are stripped)."""
    input_mean: list[float] | None = field(default=None, metadata=rng())
    """Per-channel mean the teacher was trained with, if it differs from the dataset's; inputs are renormalised."""
    input_std: list[float] | None = field(default=None, metadata=rng(gt=0))
    """Per-channel std the teacher was trained with (see ``input_mean``)."""


@dataclass(kw_only=True)
class ModelConfig:
    """The student and its teachers."""

    student: str = "resnet8x4"
    """Model registry name of the student."""
    teachers: list[TeacherConfig] = field(default_factory=list)
    """Frozen teachers (empty for ``ce``)."""
    student_checkpoint: str | None = None
    """Optional initial weights for the student (same formats as teacher checkpoints)."""
    student_backbone: str | None = None
    """Optional pretrained weights of the student's backbone alone (segmentation models: an ImageNet classifier's
    file such as CIRKD's deep-stem ``resnet18-imagenet.pth``, ``fc.*`` dropped; :mod:`kdlab.models.backbone_init`)."""
    student_input_mean: list[float] | None = field(default=None, metadata=rng())
    """Per-channel mean the student expects, if it differs from the dataset's (e.g. a pretrained student); inputs
    are renormalised as for teachers, in training, evaluation and the exported model."""
    student_input_std: list[float] | None = field(default=None, metadata=rng(gt=0))
    """Per-channel std the student expects (see ``student_input_mean``)."""
    student_dropout: float | None = field(default=None, metadata=rng(ge=0, lt=1, note="null keeps the model's own"))
    """Dropout probability before the student's classifier (None: the architecture's own: 0 for kdlab's ResNets,
    torchvision's 0.2 for ``mobilenet_v2`` / ``efficientnet_b0``, timm's ``drop_rate`` default); a student without
    one refuses a value (:mod:`kdlab.models.regularization`)."""
    student_drop_path: float | None = field(default=None, metadata=rng(ge=0, lt=1, note="null keeps the model's own"))
    """Stochastic depth of the student: the drop-path probability of its last residual block, smaller for earlier
    blocks by the model's rule (timm's ``drop_path_rate``, torchvision EfficientNet's ``stochastic_depth_prob``; None:
    the architecture's own). ResNets (kdlab's, torchvision's) have none and refuse a value."""


@dataclass(kw_only=True)
class DataConfig:
    """Dataset, split and augmentation."""

    name: str = "cifar100"
    """Dataset registry name (``kdlab list datasets``)."""
    root: str = "data"
    """Directory holding (or receiving) the dataset files."""
    download: bool = False
    """Download the official archive into ``root`` if missing (CIFAR), checking its MD5."""
    train_files: list[str] = field(default_factory=list)
    """``npz`` dataset: training files (arrays ``x`` uint8 [N, H, W, C] and ``y``); relative to ``root``."""
    test_file: str | None = None
    """``npz`` dataset: test file."""
    train_per_class: int | None = field(default=None, metadata=rng(ge=1))
    """Keep this many training images per class (class-balanced subset drawn with ``split_seed``)."""
    test_limit: int | None = field(default=None, metadata=rng(ge=1))
    """Evaluate on a stratified subset of about this many test images (for smoke runs), chosen by ``split_seed``."""
    val_fraction: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Hold out this stratified fraction of the training set as a validation split (never from the test set)."""
    split_seed: int = field(default=0, metadata=rng(ge=0, le=2**32 - 1))
    """Seed of subsetting and of the validation split (kept fixed across training seeds)."""
    batch_size: int = field(default=64, metadata=rng(ge=1))
    """Global training batch size."""
    eval_batch_size: int = field(default=256, metadata=rng(ge=1))
    """Evaluation batch size."""
    drop_last: bool = False
    """Drop the last incomplete training batch of each epoch."""
    last_batch_min_fraction: float = field(default=0.125, metadata=rng(ge=0, lt=1))
    """A last incomplete training batch smaller than this fraction of ``batch_size`` is merged into the previous batch
    (one batch of up to ``batch_size * (1 + fraction)`` samples) instead of taking a full-lr step on a few samples;
    0 keeps every last batch as it is. Larger remainders (CIFAR's 50000 % 64 = 16) stay a batch of their own, as in
    the references (:class:`kdlab.data.loader.BatchPlan`)."""
    augment: Literal["crop_flip", "flip", "none"] = "crop_flip"
    """Batch-wise training augmentation: random crop with padding plus horizontal flip, flip only, or none."""
    crop_padding: int = field(default=4, metadata=rng(ge=0))
    """Zero padding of the random crop, in pixels."""
    rand_augment: RandAugmentConfig | None = None
    """Per-image RandAugment after the crop and flip, in timm's form (None: off; DIST's B2/B3: ``{num_ops: 2,
    magnitude: 9, magnitude_std: 0.5}``, timm's ``rand-m9-mstd0.5``); :mod:`kdlab.data.augment`."""
    color_jitter: float = field(default=0.0, metadata=rng(ge=0, le=1, note="0 turns it off"))
    """Per-image colour jitter: brightness, contrast and saturation factors uniform in ``[1 - v, 1 + v]``, in a random
    order per image (torchvision's ``ColorJitter(v, v, v)``; DIST's B3: 0.4)."""
    random_erasing: RandomErasingConfig | None = None
    """Per-image random erasing after normalisation, as timm's ``RandomErasing`` (None: off)."""
    mixup_alpha: float = field(default=0.0, metadata=rng(ge=0, note="0 turns Mixup off"))
    """Mixup: lambda ~ Beta(alpha, alpha), one lambda per batch (timm's default ``mode='batch'``); images and labels
    of the batch are mixed with the batch reversed (:mod:`kdlab.data.augment_mix`)."""
    cutmix_alpha: float = field(default=0.0, metadata=rng(ge=0, note="0 turns CutMix off"))
    """CutMix: lambda ~ Beta(alpha, alpha), a box of area ``1 - lambda`` pasted from the reversed batch, lambda
    corrected to the clipped box's area (timm's ``correct_lam``)."""
    mix_prob: float = field(default=1.0, metadata=rng(ge=0, le=1))
    """Probability that a batch is mixed at all (timm's ``mixup_prob``)."""
    mix_switch_prob: float = field(default=0.5, metadata=rng(ge=0, le=1))
    """With both alphas > 0: probability of CutMix instead of Mixup for a batch (timm's ``mixup_switch_prob``)."""
    mix_mode: Literal["batch", "elem"] = "batch"
    """``batch``: one draw (mixed or not, op, lambda, box) per batch, timm's default; ``elem``: every image draws its
    own (timm's ``mode='elem'``)."""
    imbalance_ratio: float | None = field(
        default=None, metadata=rng(ge=1, note="the largest class is this many times the smallest")
    )
    """Long-tailed training split: ratio of the largest to the smallest class size (e.g. 100 for CIFAR-100-LT)."""
    imbalance_profile: Literal["exp", "step"] = "exp"
    """Long-tailed profile: ``exp`` n_c = n_max * ratio^(-c/(K-1)); ``step`` halves at n_max and n_max / ratio."""
    crop_size: int | list[int] = field(default=224, metadata=rng(ge=1))
    """Streamed datasets (``imagenet``, ``imagefolder``): side of the random-resized training crop and of the
    evaluation centre crop, in pixels. Segmentation (``cityscapes``, ``voc``): ``[height, width]`` of the random
    training crop (e.g. ``[512, 1024]``; one number is a square); evaluation uses whole images."""
    resize_size: int = field(default=256, metadata=rng(ge=1))
    """Streamed datasets: evaluation images are resized so their shorter side is this, then centre-cropped."""
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata=rng(gt=0, le=1))
    """Streamed datasets: range of the area fraction of the random-resized training crop."""
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0], metadata=rng(gt=0))
    """Segmentation: ``[low, high]`` of the random training scale (steps of 0.1, as the CIRKD / DIST recipe)."""
    voc_augmented: bool = False
    """``voc``: train on the SBD-augmented list (``train_aug.txt``, ``SegmentationClassAug``) instead of ``train``."""
    min_size: int = field(default=800, metadata=rng(ge=1))
    """Detection (``coco``): images are resized so their shorter side is this many pixels (torchvision's detectors:
    800), unless the longer side would exceed ``max_size``."""
    max_size: int = field(default=1333, metadata=rng(ge=1))
    """Detection: the longer side of a resized image is at most this many pixels (1333); at least ``min_size``."""
    workers: int = field(default=4, metadata=rng(ge=0))
    """Streamed datasets: decoding worker processes (0 decodes in the training process)."""
    tabular: TabularConfig = field(default_factory=TabularConfig)
    """Token data sources (``tabular_csv``, ``criteo``, ``text_csv``, ``breast_cancer``, ``wine``): columns, buckets,
    vocabulary, tokenizer (:class:`kdlab.tabular_config.TabularConfig`)."""
    cache_dir: str | None = None
    """``tiny_imagenet``: where to cache the decoded arrays (default: next to the dataset folder)."""
    num_classes: int = field(default=10, metadata=rng(ge=2, note="a classifier needs at least 2 classes"))
    """``synthetic`` dataset: number of classes."""
    image_size: int = field(default=32, metadata=rng(ge=1))
    """``synthetic`` dataset: image height and width."""
    channels: int = field(default=3, metadata=rng(ge=1))
    """``synthetic`` dataset: image channels."""
    train_size: int = field(default=512, metadata=rng(ge=1))
    """``synthetic`` dataset: training images."""
    test_size: int = field(default=256, metadata=rng(ge=1))
    """``synthetic`` dataset: test images."""


@dataclass(kw_only=True)
class OptimConfig:
    """Optimiser and learning-rate schedule; defaults are the CIFAR-100 KD benchmark recipe."""

    name: Literal["sgd", "adamw", "rmsprop_tf"] = "sgd"
    """Optimiser: ``sgd``, ``adamw``, or ``rmsprop_tf`` (RMSProp in TensorFlow's form, epsilon inside the square root:
    :class:`kdlab.train.optim.RMSpropTF`; DIST's strategy B2)."""
    lr: float = field(default=0.05, metadata=rng(gt=0))
    """Peak learning rate (0.01 for MobileNet/ShuffleNet students in the CIFAR recipes)."""
    momentum: float = field(default=0.9, metadata=rng(ge=0, lt=1))
    """Momentum of ``sgd`` and ``rmsprop_tf``."""
    nesterov: bool = False
    """SGD Nesterov momentum."""
    weight_decay: float = field(default=5e-4, metadata=rng(ge=0))
    """Weight decay (applied to all parameters, as in the benchmark, unless ``decay_norm_and_bias`` is false)."""
    decay_norm_and_bias: bool = True
    """false: no weight decay on one-dimensional parameters (biases, normalisation weights), as timm's and DIST's
    ImageNet reference code by default (``filter_bias_and_bn``)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=rng(ge=0, lt=1))
    """AdamW betas."""
    alpha: float = field(default=0.9, metadata=rng(ge=0, lt=1))
    """``rmsprop_tf``: decay of the running mean of squared gradients (TensorFlow's ``decay``)."""
    eps: float | None = field(default=None, metadata=rng(gt=0))
    """Epsilon of ``adamw`` and ``rmsprop_tf``; None: 1e-8 for ``adamw``, 1e-3 for ``rmsprop_tf`` (TensorFlow's
    EfficientNet recipe; added inside the square root there)."""
    schedule: Literal["step", "cosine", "constant", "exp_step", "poly"] = "step"
    """``step``: multiply by ``gamma`` after each milestone epoch; ``cosine``: cosine decay to ``min_lr``;
    ``exp_step``: multiply by ``gamma`` every ``decay_epochs`` (fractional periods allowed: x0.97 every 2.4 epochs);
    ``poly``: ``min_lr + (lr - min_lr) (1 - step / total_steps) ** power`` (the segmentation recipes)."""
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210], metadata=rng(ge=1))
    """``step`` schedule: epochs after which the LR is multiplied by ``gamma`` (1-based, as the references)."""
    gamma: float = field(default=0.1, metadata=rng(gt=0))
    """``step`` and ``exp_step`` schedules: decay factor."""
    decay_epochs: float = field(default=2.4, metadata=rng(gt=0))
    """``exp_step`` schedule: period of the decay in epochs (may be fractional)."""
    schedule_updates: Literal["auto", "step", "epoch"] = "auto"
    """How often the schedule moves: ``step`` (every optimiser step, from fractional epochs), ``epoch`` (at epoch
    starts), ``auto`` (``step`` and ``constant`` per epoch, ``cosine`` and ``exp_step`` per step)."""
    min_lr: float = field(default=0.0, metadata=rng(ge=0))
    """``cosine`` and ``poly`` schedules: final learning rate."""
    power: float = field(default=0.9, metadata=rng(gt=0))
    """``poly`` schedule: exponent of the decay (0.9 in the DeepLab / CIRKD / DIST segmentation recipes)."""
    warmup_epochs: float = field(default=0.0, metadata=rng(ge=0))
    """Linear warm-up from ``warmup_lr`` over this many epochs (per step)."""
    warmup_lr: float = field(default=0.0, metadata=rng(ge=0))
    """Learning rate the warm-up starts from (it reaches the schedule's rate at the end of ``warmup_epochs``)."""
    warmup_steps: int = field(default=0, metadata=rng(ge=0))
    """Linear warm-up over this many optimiser steps instead of ``warmup_epochs`` (set one of them): the detection
    1x schedule's 500 iterations (mmdetection's ``warmup_iters``), whatever the batch size and dataset length."""
    schedule_after_warmup: bool = False
    """true: the schedule starts when the warm-up ends (its progress counts from there; cosine spans the rest of the
    run), as DIST's reference ``GradualWarmupScheduler``; false: it runs from step 0 under the warm-up (timm)."""


@dataclass(kw_only=True)
class TrainConfig:
    """The run: length, seed, device, checkpoints."""

    epochs: int = field(
        default=240, metadata=rng(ge=1, note="to evaluate a checkpoint without training use kdlab eval")
    )
    """Training epochs."""
    max_steps: int | None = field(default=None, metadata=rng(ge=1))
    """Stop after this many optimiser steps (smoke runs); the schedule still spans ``epochs``."""
    seed: int = field(default=0, metadata=rng(ge=0, le=2**32 - 1))
    """Seed of initialisation, data order, augmentation and method randomness."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    threads: int | None = field(default=None, metadata=rng(ge=1))
    """CPU threads for torch (None: torch's default)."""
    eval_every: int = field(default=1, metadata=rng(ge=1))
    """Evaluate on the test set every this many epochs (and always after the last)."""
    checkpoint_every: int = field(default=1, metadata=rng(ge=1))
    """Write ``checkpoint.pt`` every this many epochs (and on interruption and at the end)."""
    run_dir: str = "runs"
    """Parent directory of run directories."""
    name: str | None = None
    """Run directory name under ``run_dir``; default: ``<method>__<teacher>__<student>__s<seed>``."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (slower on GPU; CPU training is deterministic already)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the student's forward/backward (fp16 adds loss scaling); losses are always fp32."""
    teacher_precision: Literal["fp32", "bf16", "fp16"] | None = None
    """Autocast precision of the teachers' forward (None: ``precision``); may be lower than the student's."""
    channels_last: bool = False
    """Models and input batches in the channels-last memory format."""
    compile: bool = False
    """``torch.compile`` the trainable step (student + method); falls back to eager with a warning."""
    teacher_cache: bool | Literal["auto"] = False
    """Reuse teacher logits when inputs repeat (data.augment=none or train.replay_epochs > 0): off, on or auto."""
    replay_epochs: int = field(default=0, metadata=rng(ge=0))
    """R > 0: epoch e replays the order and augmentation of epoch e mod R (lets train.teacher_cache reuse logits)."""
    sync_bn: bool = False
    """Under torchrun: BatchNorm statistics over the global batch (``SyncBatchNorm``; CUDA only, a no-op alone)."""
    find_unused_parameters: bool = True
    """Under torchrun: let DDP handle parameters without a gradient in a step (false: slightly faster, errors then)."""
    weight_scaling: Literal["none", "gradient"] = "none"
    """``none``: the method's weights as given. ``gradient``: a loss term whose gradient relative to the cross-entropy's
    (at the student's initial weights) is larger than the method's registered defaults give on a CIFAR ResNet pair,
    where the published weights were tuned, is weakened to that balance; no term is strengthened (one rule for every
    method: :mod:`kdlab.methods.scaling`)."""
    metrics: list[str] = field(default_factory=list)
    """Evaluation metrics (``kdlab.metrics``: top1, top5, auc, nll, ece); empty: the dataset's defaults."""
    select_by: str = "top1"
    """Metric choosing the best epoch in ``summary.json`` (higher is better: top1, top5, auc; lower: nll, ece, loss;
    with ``ema_decay`` also the average's ``ema_top1`` etc.)."""
    label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Label smoothing of every method's cross-entropy term with the labels (``StepIO.cross_entropy``); a method's own
    ``method.label_smoothing`` (where it has one) must then be 0 or equal."""
    ema_decay: float | None = field(default=None, metadata=rng(gt=0, lt=1))
    """Keep an exponential moving average of the deployable student with this decay per optimiser step (None: off;
    DIST's B2: 0.9999); it is evaluated beside the raw weights (:mod:`kdlab.train.ema`)."""
    ema_warmup: Literal["off", "tf", "power"] = "off"
    """Warm-up of the EMA decay at update n (0-based): ``tf`` ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's
    ``num_updates``); ``power`` ``min(decay, 1 - (1 + n) ** -ema_warmup_power)`` (timm's ``ModelEmaV3``)."""
    ema_warmup_power: float = field(default=0.75, metadata=rng(gt=0, le=1))
    """``ema_warmup: power``: the exponent (timm: 2/3 for runs of a million steps or more, 3/4 for shorter ones)."""
    ema_export: bool = False
    """Write the EMA weights (instead of the raw weights) to ``student.pt``; needs ``ema_decay``."""
    clip_grad_norm: float | None = field(default=None, metadata=rng(gt=0, note="null turns clipping off"))
    """Clip the global L2 norm of the gradients of the student and the method's adapters to this before every
    optimiser step (``torch.nn.utils.clip_grad_norm_``; after unscaling under fp16); None: off. DIST's B3 (Swin): 5.
    Logs ``grad_norm`` (before clipping) and ``grad_clipped`` (:mod:`kdlab.train.clipping`)."""


@dataclass(kw_only=True)
class LogConfig:
    """Console and file logging."""

    every_steps: int = field(default=50, metadata=rng(ge=1))
    """Log training terms every this many steps (plain-text mode)."""
    progress: Literal["auto", "bar", "plain", "off"] = "auto"
    """Progress display: a bar with ETA on a terminal, periodic lines otherwise."""
    tensorboard: bool = False
    """Also write every scalar of ``metrics.jsonl`` as TensorBoard events in ``<run_dir>/tensorboard``."""


@dataclass(kw_only=True)
class ChainLinkConfig:
    """One teacher assistant of a chain: the model trained in that link."""

    model: str
    """Model registry name of the assistant (``kdlab list models``)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted ``key=value`` overrides of this link's run only (e.g. ``optim.lr=0.01``), applied on top of the config."""


@dataclass(kw_only=True)
class ChainConfig:
    """A teacher-assistant chain (TAKD): ``model.teachers.0`` -> ``assistants`` in order -> ``model.student``.

    ``kdlab chain CONFIG`` trains one run per link with the config's ``method``, ``data``, ``optim`` and ``train``
    sections; each link's checkpoint is the next link's teacher (see :mod:`kdlab.chain`).
    """

    assistants: list[ChainLinkConfig]
    """The assistants, largest first; at least one."""
    name: str | None = None
    """Directory of the chain under ``train.run_dir``; default
    ``chain-<method>__<teacher>__<assistants>__<student>__s<seed>``."""


@dataclass(kw_only=True)
class RunConfig:
    """A whole run: ``model``, ``data``, ``method``, ``optim``, ``train``, ``log``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=lambda: _method_config_class("ce", "method")())
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    description: str = ""
    """Free text: what this config reproduces."""
    target: dict[str, float] = field(default_factory=dict, metadata=rng())
    """Published numbers this config should reproduce (e.g. ``top1: 73.33``), for reports."""
    chain: ChainConfig | None = None
    """A teacher-assistant chain; such a config runs with ``kdlab chain CONFIG`` (``kdlab train`` refuses it)."""


# --------------------------------------------------------------------------------------------------------------
# Loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _method_config_class(name: object, path: str) -> type[MethodConfig]:
    """The ``Config`` class of method ``name`` from :data:`~kdlab.registry.METHOD_CONFIGS` (torch-free modules); an
    unknown name, or a method whose config is not registered there, asks the method registry (importing the methods)."""
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name must be a method name (a string), got {name!r}")
    if name in METHOD_CONFIGS:
        return METHOD_CONFIGS.get(name)
    try:
        return METHODS.get(name).Config
    except KeyError as err:
        raise ConfigError(f"{path}.name: {err}") from None


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check and convert a YAML value to the annotated type ``tp``; ``path`` names it in errors."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{path} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and value not in choices:
            # YAML 1.1 reads off/on/no/yes as booleans: map them back to the word the choices use
            words = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((w for w in words if w in choices), value)
        if value not in choices:
            raise ConfigError(f"{path} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list ({_type_name(tp)}), got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_convert(v, item, f"{path}.{i}") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping ({_type_name(tp)}), got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path or 'config'} must be a mapping of {tp.__name__} fields, got {value!r}")
        if issubclass(tp, MethodConfig):
            tp = _method_config_class(value.get("name", "ce"), path or "method")
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be a boolean (true/false), got {value!r}")
    if tp in (int, float) and isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value.strip())  # 1e-3, 1E-3, 5e-4: YAML 1.1 reads them as strings
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported annotation {tp!r}")


#: A decimal number with an optional exponent (what YAML 1.1 misses: ``1e-3``, ``1E3``, ``.5e-2``).
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def check_ranges(obj: Any, path: str = "", values: dict[str, Any] | None = None) -> None:
    """Refuse a numeric field of dataclass ``obj`` (an instance or, with ``values``, the class) outside its declared
    range; ``values`` checks only those fields. Not recursive: ``from_dict`` calls it for every dataclass it builds."""
    for f in dataclasses.fields(obj):
        r = field_range(f)
        if r is None or (values is not None and f.name not in values):
            continue
        full = f"{path}.{f.name}" if path else f.name
        bad = violations(values[f.name] if values is not None else getattr(obj, f.name), r, full)
        if bad:
            key, value = bad[0]
            default = f.default if key == full else None
            raise ConfigError(out_of_range_message(key, value, r, default))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types are errors)."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            hint = closest(str(key), list(fields))
            did = f" Did you mean {hint!r}?" if hint else ""
            raise ConfigError(f"unknown config key {full!r}.{did} Valid keys here: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], full)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in {path}" if path else ""
        raise ConfigError(f"missing required config key(s){where}: {', '.join(missing)}")
    check_ranges(cls, path, kwargs)  # before the constructor, whose own checks would word it differently
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {err}") from None
    check_ranges(obj, path)
    return obj


def to_dict(cfg: Any) -> Any:
    """A dataclass (recursively) as plain dicts/lists, in field order; the inverse of :func:`from_dict`."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.epochs=1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted ``key=value`` overrides to a raw config mapping (before type checking).

    Keys are validated against the schema afterwards, so a misspelt key still gets a suggestion.
    List elements are addressed by index (``model.teachers.0.name=resnet56``).
    """
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for i, k in enumerate(keys[:-1]):
            node = _descend(node, k, keys[: i + 1], list_next=keys[i + 1].isdigit())
        last = keys[-1]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {text!r}: {'.'.join(keys[:-1])} is a value ({node!r}), not a section")
        if isinstance(node, list):
            idx = _index(node, last, keys, allow_append=True)
            if idx == len(node):
                node.append(value)
            else:
                node[idx] = value
        else:
            node[last] = value
    return data


def _index(node: list, key: str, keys: list[str], allow_append: bool = False) -> int:
    if not key.isdigit():
        raise ConfigError(f"override {'.'.join(keys)}: {key!r} must be a list index")
    idx = int(key)
    limit = len(node) + (1 if allow_append else 0)
    if idx >= limit:
        raise ConfigError(f"override {'.'.join(keys)}: index {idx} is past the end of a list of {len(node)}")
    return idx


def _descend(node: Any, key: str, keys: list[str], list_next: bool) -> Any:
    empty: Any = [] if list_next else {}
    if isinstance(node, list):
        idx = _index(node, key, keys, allow_append=True)
        if idx == len(node):
            node.append(empty)
        return node[idx]
    if not isinstance(node, dict):
        raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[:-1])} is not a section")
    child = node.get(key)
    if child is None:
        child = node[key] = empty
    return child


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or malformed file is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {str(p)!r} {why_unusable(p)} (configs ship under configs/, e.g. configs/debug/)"
        )
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


def build_config(data: dict, overrides: list[str] | None = None) -> RunConfig:
    """A :class:`RunConfig` from a raw mapping plus dotted overrides, strictly checked."""
    import copy

    data = apply_overrides(copy.deepcopy(data), list(overrides or []))
    cfg = from_dict(RunConfig, data)
    check_run(cfg)
    return cfg


def check_run(cfg: RunConfig) -> None:
    """Checks across fields of a run config (each field's own range is checked by :func:`from_dict`)."""
    o = cfg.optim
    ms = o.milestones
    for i in range(1, len(ms)):
        if ms[i] <= ms[i - 1]:
            raise ConfigError(
                f"optim.milestones must be strictly increasing, got {ms} ({ms[i - 1]} is followed by {ms[i]}). "
                f"Fix: list the epochs after which the LR decays in order, e.g. optim.milestones=[150, 180, 210]"
            )
    scale = cfg.data.crop_scale
    if len(scale) != 2 or scale[0] > scale[1]:
        raise ConfigError(
            f"data.crop_scale must be two area fractions [min, max] with min <= max, got {scale}. "
            f"Fix: e.g. data.crop_scale=[0.08, 1.0]"
        )
    if len(o.betas) != 2:
        raise ConfigError(
            f"optim.betas must be two numbers [beta1, beta2], got {o.betas}. Fix: e.g. optim.betas=[0.9, 0.999]"
        )
    if o.schedule == "cosine" and o.min_lr > o.lr:
        raise ConfigError(
            f"optim.min_lr = {o.min_lr!r} is above optim.lr = {o.lr!r}: the cosine schedule decays from lr to min_lr. "
            f"Fix: set optim.min_lr <= optim.lr"
        )


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config file (or the defaults when ``path`` is None) with ``key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    cfg = build_config(data, overrides)
    o, epochs = cfg.optim, cfg.train.epochs
    if o.schedule == "step" and o.milestones and o.milestones[-1] >= epochs:  # e.g. a shortened smoke run: allowed
        late = [m for m in o.milestones if m >= epochs]
        log.warning(
            "optim.milestones %s are not before the last epoch (train.epochs=%d): no LR decay there", late, epochs
        )
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (loads back to an equal config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, width=120)
