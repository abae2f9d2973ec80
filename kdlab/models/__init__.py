"""Model zoo: ``kdlab.models.create(name, num_classes=...)`` builds any registered model.

Every model follows the tap contract of :class:`kdlab.models.base.TapModel`. Builders are registered with
:func:`register_model` and take ``num_classes`` and ``in_channels`` keyword arguments.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from torch import nn

from kdlab.models.base import TapError, TapModel, count_parameters, probe_taps
from kdlab.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

# Packages whose modules register models on import; every module in them is imported by `_load_zoo`.
_ZOO_PACKAGES = ("kdlab.models.cifar", "kdlab.models.imagenet", "kdlab.models.segmentation", "kdlab.models.detection")


def register_model(name: str, **meta: object) -> Callable:
    """Decorator registering a model builder ``fn(num_classes=..., in_channels=...) -> TapModel``.

    Metadata (e.g. ``family="cifar"``, ``input_size=(3, 32, 32)``) is shown by ``kdlab list models``;
    ``heavy=True`` marks a model too big for the default test suite's generated contract (it runs in the slow suite).
    """
    return MODELS.register(name, **meta)


def _load_zoo() -> None:
    importlib.import_module("kdlab.models.simple")
    importlib.import_module("kdlab.models.bert")  # imports transformers only when a BERT is built
    for pkg_name in _ZOO_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


def create(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs: object) -> nn.Module:
    """Build model ``name``.

    Args:
        name: a registry name (``kdlab list models``), ``timm:<name>`` for a timm model, ``hf:<folder>`` for a
            local Hugging Face BERT checkpoint folder (:func:`kdlab.models.bert.create_hf`).
        num_classes: number of output classes ``K``.
        in_channels: input channels ``C`` of ``[B, C, H, W]`` images.
        **kwargs: passed to the builder.

    Returns:
        A model with ``forward(x) -> [B, K]`` and ``forward_taps``.
    """
    _load_zoo()
    if name.startswith("timm:"):
        from kdlab.models.adapters import create_timm

        return create_timm(name.removeprefix("timm:"), num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name.startswith("hf:"):
        from kdlab.models.bert import create_hf

        return create_hf(name.removeprefix("hf:"), num_classes=num_classes, **kwargs)
    builder = MODELS.get(name)
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


def model_names() -> list[str]:
    """All registered model names."""
    _load_zoo()
    return MODELS.names()


__all__ = [
    "MODELS",
    "TapError",
    "TapModel",
    "count_parameters",
    "create",
    "model_names",
    "probe_taps",
    "register_model",
]
