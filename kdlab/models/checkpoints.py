"""Loading third-party model checkpoints into zoo models.

Public checkpoints come in several wrappings: a plain state dict, ``{"state_dict": ...}`` (e.g. the akamaster
CIFAR ResNets), ``{"model": ...}`` (e.g. RepDistiller teachers), ``{"net": ...}`` (e.g. kuangliu/pytorch-cifar),
with keys prefixed by ``module.`` (saved from
``DataParallel`` / DDP) or ``_orig_mod.`` (saved from ``torch.compile``). :func:`load_state_dict_flexible` unwraps
all of these and then loads strictly, with an error that names every missing or unexpected key and every
shape mismatch. The one tolerance is PyTorch's own: checkpoints saved before PyTorch 0.4.1 have no BatchNorm
``num_batches_tracked`` buffers (the akamaster files are such), and the model keeps its own counters.

Reference layouts (one loader for the whole CIFAR zoo). The CIFAR models keep the parameter names of the code whose
teachers are published, so those files load as they are; where a name differs, a :class:`ReferenceLayout` renames
the reference's keys, and :func:`load_state_dict_flexible` applies it only when the renamed keys then match the
model exactly. Checked against the ``state_dict()`` of HobbitLong/RepDistiller ``models/`` and
megvii-research/mdistiller ``mdistiller/models/cifar/`` (identical to each other for every model below):

==============================================  ===========================================  ===================
reference builder                               kdlab model                                  key names
==============================================  ===========================================  ===================
resnet8/14/20/32/44/56/110, resnet8x4/32x4      same names                                   identical
ResNet18, ResNet50 (``resnetv2.py``)            resnet18_cifar, resnet50_cifar               identical
wrn_16_1/16_2/40_1/40_2                         same names                                   identical
vgg8/11/13/16/19 (``vgg*_bn``)                  vgg8/11/13/16/19                             identical
ShuffleV1, ShuffleV2                            shufflenetv1, shufflenetv2                   identical
MobileNetV2 (``mobile_half``)                   mobilenetv2                                  ``classifier.0.*``
                                                                                             -> ``classifier.*``
torchvision mobilenet_v2, efficientnet_b0       mobilenet_v2, efficientnet_b0                ``classifier.1.*``
                                                                                             -> ``classifier.*``
timm ``<name>`` (``.pth`` or ``.safetensors``)  ``timm:<name>``                              ``*`` -> ``model.*``
akamaster resnet20/32/44/56/110 (option A)      resnet20_a ... resnet110_a                   identical
torchvision / timm resnet18/34/50/101/152       resnet18, ..., resnet152                     identical
==============================================  ===========================================  ===================

RepDistiller and mdistiller save ``{"model": state_dict, "epoch": ..., "accuracy"/"best_acc": ...}``; the
``model`` entry is found by :func:`extract_state_dict`.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "KNOWN_CHECKPOINTS",
    "REFERENCE_LAYOUTS",
    "CheckpointError",
    "CheckpointMismatchError",
    "KnownCheckpoint",
    "ReferenceLayout",
    "extract_state_dict",
    "file_sha256",
    "known_checkpoint",
    "load_state_dict_flexible",
]

#: Keys under which checkpoints commonly nest the model's state dict, tried in order.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Key prefixes added by wrappers (DataParallel / DDP, torch.compile); stripped repeatedly.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: At most this many names per category in an error message.
_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model; the message says what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file that the command names does not exist (a user error: the CLI exits with code 2)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not match the model.

    Attributes:
        missing: keys the model expects but the checkpoint lacks.
        unexpected: keys in the checkpoint the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys present in both with different shapes.
    """

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        model_name: str = "model",
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"checkpoint does not match {model_name}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing, 'missing')}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected, 'unexpected')}")
        if mismatched:
            shapes = [f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {_listing(shapes, 'mismatched')}")
        super().__init__("\n".join(lines))


def _listing(items: list[str], attribute: str) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... and {len(items) - _MAX_LISTED} more (all in the error's .{attribute})"
    return shown


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _predates_buffer(key: str, state: Mapping[str, Tensor]) -> bool:
    """Whether a missing BatchNorm ``num_batches_tracked`` is legitimately absent: the checkpoint was saved before
    PyTorch 0.4.1 added that buffer (module format version missing or < 2). ``load_state_dict`` then keeps the
    model's own counter, exactly as PyTorch does for such checkpoints."""
    module, _, leaf = key.rpartition(".")
    if leaf != "num_batches_tracked":
        return False
    version = (getattr(state, "_metadata", None) or {}).get(module, {}).get("version")
    return version is None or version < 2


def extract_state_dict(obj: Mapping[str, object] | str | os.PathLike) -> dict[str, Tensor]:
    """The model state dict inside a checkpoint, with wrapper prefixes removed.

    Args:
        obj: a state dict, a dict nesting one under ``state_dict`` / ``model_state_dict`` / ``model`` / ``net``, or the
            path of a file holding either (read with ``torch.load(map_location="cpu", weights_only=True)``).

    Returns:
        ``{key: tensor}`` with ``module.`` and ``_orig_mod.`` prefixes stripped.

    Raises:
        TypeError: when no mapping of tensors can be found.
        ValueError: when stripping prefixes makes two keys collide.
    """
    if isinstance(obj, (str, os.PathLike)):
        obj = read_safetensors(obj) if is_safetensors(obj) else torch.load(obj, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    for key in _NESTING_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor; "
                f"top-level keys: {', '.join(map(str, obj))}"
            )
        new_key = _strip_prefixes(str(key))
        if new_key in out:
            raise ValueError(f"checkpoint keys collide after removing wrapper prefixes: {new_key!r}")
        out[new_key] = value
    metadata = getattr(obj, "_metadata", None)
    if metadata is not None:  # per-module format versions, used by e.g. BatchNorm to upgrade old checkpoints
        out_meta = OrderedDict((_strip_prefixes(k + ".").rstrip("."), v) for k, v in metadata.items())
        out = OrderedDict(out)
        out._metadata = out_meta  # type: ignore[attr-defined]
    return out


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.safetensors`` file (timm's and Hugging Face's weight format)."""
    return Path(path).suffix == ".safetensors"


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, on CPU (``safetensors.torch.load_file``; safetensors comes with timm).

    Raises:
        ImportError: safetensors is not installed (the message says how to install it).
        ValueError: the file is not a valid safetensors file.
    """
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as err:
        raise ImportError(
            f"reading {str(path)!r} needs the safetensors package: pip install safetensors (or kdlab[timm])"
        ) from err
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file ({err})") from None


@dataclass(frozen=True)
class ReferenceLayout:
    """Parameter names of a reference implementation that differ from a kdlab model's.

    Attributes:
        source: the reference (repository and file), for messages and docs.
        model_class: the kdlab class this layout applies to (``type(model).__name__``).
        renames: ``(reference key prefix, kdlab key prefix)`` pairs.
    """

    source: str
    model_class: str
    renames: tuple[tuple[str, str], ...]

    def to_kdlab(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``state`` (reference names) with every renamed prefix replaced by kdlab's (order and metadata kept)."""
        return _rename(state, self.renames)

    def to_reference(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The inverse of :meth:`to_kdlab`."""
        return _rename(state, tuple((b, a) for a, b in self.renames))


def _rename(state: Mapping[str, Tensor], renames: tuple[tuple[str, str], ...]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = OrderedDict()
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        renamed = OrderedDict()
        for module, value in metadata.items():
            for old, new in renames:
                if (module + ".").startswith(old):
                    module = (new + (module + ".")[len(old) :]).rstrip(".")
                    break
            renamed[module] = value
        out._metadata = renamed  # type: ignore[attr-defined]
    return out


#: Reference layouts whose names differ from kdlab's (see the module docstring for the models that need none).
REFERENCE_LAYOUTS: tuple[ReferenceLayout, ...] = (
    ReferenceLayout(
        "HobbitLong/RepDistiller and megvii-research/mdistiller models/mobilenetv2.py (classifier is "
        "nn.Sequential(nn.Linear))",
        "MobileNetV2",
        (("classifier.0.", "classifier."),),
    ),
    ReferenceLayout(
        "pytorch/vision models/mobilenetv2.py and models/efficientnet.py (classifier is nn.Sequential(Dropout, "
        "Linear))",
        "TorchvisionFeatureNet",
        (("classifier.1.", "classifier."),),
    ),
    ReferenceLayout(
        "huggingface/pytorch-image-models (a timm model's own state dict; kdlab's TimmTapModel holds it as .model)",
        "TimmTapModel",
        (("", "model."),),
    ),
    ReferenceLayout(
        "winycg/CIRKD and hunto/DIST_KD segmentation/models/{deeplabv3,pspnet,segbase}.py (e.g. the DIST teacher "
        "deeplabv3_resnet101_citys_best_model.pth; kdlab.models.segmentation.nets)",
        "SegmentationNet",
        (
            ("pretrained.", "backbone."),
            ("head.aspp.b0.", "head.0.convs.0."),
            ("head.aspp.b1.block.", "head.0.convs.1."),
            ("head.aspp.b2.block.", "head.0.convs.2."),
            ("head.aspp.b3.block.", "head.0.convs.3."),
            ("head.aspp.b4.gap.", "head.0.convs.4."),
            ("head.aspp.project.", "head.0.project."),
            ("head.psp.", "head.0."),
            ("head.block.4.", "classifier."),
            ("head.classifier.", "classifier."),
            ("head.block.", "head.1."),
            ("auxlayer.block.", "aux_head."),
        ),
    ),
)


@dataclass(frozen=True)
class KnownCheckpoint:
    """A public checkpoint file kdlab recognises by content, so ``kdlab eval FILE`` needs no ``--model``.

    Attributes:
        sha256: the file's SHA-256 (hex).
        model: kdlab registry name of its architecture.
        num_classes: classes of its head.
        input_mean, input_std: the normalisation it was trained with.
        source: where it comes from.
    """

    sha256: str
    model: str
    num_classes: int
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    source: str


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Public checkpoints recognised by their SHA-256 (file names end in its first 8 hex digits, as torch.hub's).
KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    k.sha256: k
    for k in (
        KnownCheckpoint(
            "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
            "resnet20_a",
            10,
            _IMAGENET_MEAN,
            _IMAGENET_STD,
            "akamaster/pytorch_resnet_cifar10 pretrained_models/resnet20-12fca82f.th (CIFAR-10)",
        ),
        KnownCheckpoint(
            "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
            "resnet56_a",
            10,
            _IMAGENET_MEAN,
            _IMAGENET_STD,
            "akamaster/pytorch_resnet_cifar10 pretrained_models/resnet56-4bfd9763.th (CIFAR-10)",
        ),
    )
}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def known_checkpoint(path: str | os.PathLike) -> KnownCheckpoint | None:
    """The :class:`KnownCheckpoint` whose content ``path`` holds, or None."""
    p = Path(path)
    return KNOWN_CHECKPOINTS.get(file_sha256(p)) if p.is_file() else None


def _mismatch(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    missing = [k for k in expected if k not in state and not _predates_buffer(k, state)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, mismatched


def load_state_dict_flexible(
    model: nn.Module, obj: Mapping[str, object] | str | os.PathLike, model_name: str | None = None
) -> nn.Module:
    """Load a (possibly wrapped) checkpoint into ``model`` strictly.

    Args:
        model: the model to fill in place.
        obj: a state dict, ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}`` or a
            file path; keys may carry ``module.`` / ``_orig_mod.`` prefixes, and may follow a
            :data:`REFERENCE_LAYOUTS` entry of the model's class (e.g. RepDistiller's MobileNetV2).
        model_name: name used in error messages (defaults to the class name).

    Returns:
        ``model`` (loaded).

    Raises:
        CheckpointMismatchError: naming all missing and unexpected keys and all shape mismatches; the model is
            left unchanged.
    """
    state = extract_state_dict(obj)
    expected = model.state_dict()
    missing, unexpected, mismatched = _mismatch(expected, state)
    if missing or unexpected or mismatched:
        for layout in REFERENCE_LAYOUTS:  # a reference implementation's names, when they then match exactly
            if layout.model_class != type(model).__name__:
                continue
            renamed = layout.to_kdlab(state)
            problems = _mismatch(expected, renamed)
            if not any(problems):
                state, missing, unexpected, mismatched = renamed, [], [], []
                break
            if not problems[0] and not problems[1]:  # the reference's names, only shapes differ (another head size)
                missing, unexpected, mismatched = problems
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, model_name or type(model).__name__)
    model.load_state_dict(state, strict=True)
    return model
