"""Initialising a model's backbone alone from a pretrained classifier's weights (``model.student_backbone``).

Segmentation models (:mod:`kdlab.models.segmentation`) keep their ImageNet-style trunk under ``backbone``; the CIRKD /
DIST_KD recipes start it from ImageNet weights (their deep-stem ``resnet18-imagenet.pth`` / ``resnet101-imagenet.pth``,
keys ``conv1.weight``, ``bn1.*``, ..., ``layer4.*`` and an ImageNet ``fc.*``). :func:`load_backbone_file` loads such a
file into ``model.backbone``: the classifier keys (``fc.*``) are dropped, ``backbone.`` / ``pretrained.`` prefixes are
stripped, and every remaining key must match the backbone's names and shapes (``num_batches_tracked`` may be absent).
A mismatch names the keys, as checkpoint loading does.

torchvision's ImageNet ResNet files do not fit these backbones: the reference's "v1s" ResNets have a three-convolution
deep stem (``conv1``..``conv3``, 128 channels into ``layer1``) where torchvision has one 7x7 convolution; the message
says so when the stem's shapes are what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from kdlab.config import ConfigError
from kdlab.models.checkpoints import CheckpointMismatchError, extract_state_dict

#: Key prefixes of an ImageNet classifier's head, dropped before loading a backbone.
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.")


def backbone_state(obj: Mapping[str, object], backbone: nn.Module, model_name: str) -> dict[str, Tensor]:
    """``obj``'s tensors renamed to ``backbone``'s keys (prefixes stripped, classifier dropped), checked.

    Raises:
        CheckpointMismatchError: naming missing / unexpected keys and shape mismatches.
    """
    state = extract_state_dict(obj)
    for prefix in ("backbone.", "pretrained."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    expected = backbone.state_dict()
    for key, value in expected.items():  # older files have no BatchNorm step counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    # frozen BN (torchvision's FrozenBatchNorm2d, detection trunks) has no step counter: drop the file's
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        err = CheckpointMismatchError(missing, unexpected, mismatched, f"{model_name}'s backbone")
        if any(k.startswith("conv1.") for k, *_ in mismatched) or "conv2.weight" in missing:
            err.args = (
                f"{err.args[0]}\n  the backbone has the reference's deep stem (conv1..conv3, 3x3); a torchvision "
                "ResNet file (one 7x7 conv1) does not fit: use the CIRKD / DIST_KD resnet*-imagenet.pth files",
            )
        raise err
    return state


def load_backbone_file(model: nn.Module, path: str | Path, model_name: str) -> None:
    """Load the pretrained backbone weights in ``path`` into ``model.backbone`` (see the module docstring).

    Raises:
        ConfigError: the model has no ``backbone``.
        CheckpointNotFoundError / CheckpointError: the file is missing or unreadable.
        CheckpointMismatchError: the keys or shapes do not fit.
    """
    from kdlab.train.checkpoint import read_file

    # detection models name their ImageNet trunk (``backbone.body``: the FPN is not in an ImageNet file)
    backbone = getattr(model, "imagenet_trunk", None) or getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(
            f"model.student_backbone: model {model_name!r} has no separate backbone to initialise; use "
            "model.student_checkpoint for whole-model weights"
        )
    state = backbone_state(read_file(path, "backbone weights file"), backbone, model_name)
    backbone.load_state_dict(state, strict=True)


__all__ = ["CLASSIFIER_PREFIXES", "backbone_state", "load_backbone_file"]
