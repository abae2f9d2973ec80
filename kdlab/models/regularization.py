"""The student's strategy regularisers: dropout before the classifier (``model.student_dropout``) and stochastic
depth (``model.student_drop_path``), handed to the model's builder when the run is built.

Who takes what:
- ``timm:<name>``: timm's own ``drop_rate`` (dropout before the head) and ``drop_path_rate`` (stochastic depth,
  timm's linear rule over the blocks) arguments of ``timm.create_model``; a timm model without stochastic depth
  refuses ``drop_path_rate`` and the run is refused naming it.
- kdlab's zoo: a builder declaring a ``classifier_dropout`` / ``drop_path`` keyword takes the setting (kdlab's
  ImageNet ResNet-18..152: ``classifier_dropout``, default 0 as torchvision's; torchvision-built ``mobilenet_v2``:
  ``classifier_dropout``, default 0.2; ``efficientnet_b0``: ``classifier_dropout`` and ``drop_path``, torchvision's
  ``stochastic_depth_prob``, both default 0.2). A WRN's ``dropout`` is inside its blocks, not this one.
  Every other model refuses a value above 0 (ResNets have no stochastic depth in kdlab or torchvision), with the fix;
  0 is accepted everywhere (it is what such a model has), so a strategy file can state "none" for any student.
- None (the default) leaves the architecture's own setting.

Only the student is affected (teachers run in eval mode, where both are off). Neither adds parameters, so
checkpoints and exported files are the same with or without them; evaluation (``kdlab eval``) rebuilds the student
without them, which computes the same function in eval mode.

Reference: DIST's hunto/image_classification_sota (``lib/models/builder.py``) passes ``--drop`` to its NAS-config
models (its MobileNetV2) and ``--drop-path-rate`` to timm models (its Swin-T); its ResNets and torchvision models get
neither (``configs/imagenet/strategies/B2.yaml`` and ``B3.yaml`` say how kdlab's strategy files follow that).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from kdlab.config import ConfigError, ModelConfig

#: config field -> (builder keyword, timm keyword, what it is)
SETTINGS = {
    "student_dropout": ("classifier_dropout", "drop_rate", "dropout before its classifier"),
    "student_drop_path": ("drop_path", "drop_path_rate", "stochastic depth (drop-path)"),
}


def _takers(keyword: str) -> list[str]:
    """Registered models whose builder declares ``keyword``."""
    from kdlab.models import MODELS, model_names

    return [n for n in model_names() if keyword in inspect.signature(MODELS.get(n)).parameters]


def regularization_kwargs(model: ModelConfig) -> dict[str, float]:
    """The builder keyword arguments of the student's regularisers (empty when none is set).

    Raises:
        ConfigError: the student takes no such setting; the message names the field, the model and the fix.
    """
    name = model.student
    out: dict[str, float] = {}
    for field_name, (keyword, timm_keyword, what) in SETTINGS.items():
        value = getattr(model, field_name)
        if value is None:
            continue
        if name.startswith("timm:"):
            out[timm_keyword] = value
            continue
        from kdlab.models import MODELS, model_names

        known = name in model_names()
        if known and keyword in inspect.signature(MODELS.get(name)).parameters:
            out[keyword] = value
            continue
        if (not known and not name.startswith("hf:")) or value == 0:
            continue  # unknown: building it reports that, with suggestions; 0 is what a model without one has
        raise ConfigError(
            f"model.{field_name}={value}: the student {name!r} has no {what} to set. Fix: remove "
            f"model.{field_name} (null keeps the architecture's own), or choose a student that takes it: "
            f"{', '.join(_takers(keyword))} or a timm model (timm:<name>, through its {timm_keyword})"
        )
    return out


def create_student(model: ModelConfig, num_classes: int, in_channels: int, **extra: Any) -> nn.Module:
    """Build the student ``model.student`` with its regularisers (see the module docstring).

    Args:
        model: the run's model section.
        num_classes: output classes ``K``.
        in_channels: input channels ``C``.
        **extra: further builder arguments (e.g. a token model's vocabulary size).

    Returns:
        The student (tap contract): ``forward(x [B, C, H, W]) -> [B, K]``.

    Raises:
        ConfigError: a regulariser the student does not take (also a timm model refusing ``drop_path_rate``).
    """
    from kdlab import models

    kwargs = regularization_kwargs(model)
    try:
        return models.create(model.student, num_classes=num_classes, in_channels=in_channels, **extra, **kwargs)
    except TypeError as err:
        refused = [f for f, (_, timm_kw, _) in SETTINGS.items() if timm_kw in kwargs and timm_kw in str(err)]
        if not refused:
            raise
        raise ConfigError(
            f"model.{refused[0]}: timm model {model.student!r} does not take {SETTINGS[refused[0]][1]} ({err}). "
            f"Fix: remove model.{refused[0]} (null), or choose a timm model that has it"
        ) from None


__all__ = ["SETTINGS", "create_student", "regularization_kwargs"]
