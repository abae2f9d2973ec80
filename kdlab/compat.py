"""Optional third-party imports with clear errors: torchvision (and timm, which imports it) must come from the
same release as torch.

A torchvision wheel is built against one torch release. Beside another torch, ``import torchvision`` fails while
registering its C++ operators, with ``RuntimeError: operator torchvision::nms does not exist`` (measured with the
CPU build of torch 2.13.0 and torchvision 0.28.0). :func:`import_torchvision` and :func:`import_timm` turn that into a
:class:`TorchvisionMismatchError` naming both versions and the pair to install (:data:`PINNED_PAIR`, the pair the
Makefile's ``TORCH_SPEC`` installs; a test keeps the two equal).
"""

from __future__ import annotations

import importlib
from types import ModuleType

PINNED_PAIR = ("2.14.1", "0.29.1")
"""``(torch, torchvision)`` versions pinned by the Makefile's ``TORCH_SPEC``: a pair known to work together."""


class TorchvisionMismatchError(ImportError):
    """torchvision cannot load its operators beside the installed torch (the two come from different releases)."""


def _installed_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(unknown version)"


def mismatch_message(err: BaseException) -> str:
    """The error text for a torchvision that does not match torch: both versions, the cause, the fix."""
    import torch

    torch_v, vision_v = PINNED_PAIR
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"torchvision {_installed_version('torchvision')} does not match torch {torch.__version__} "
        f"(importing torchvision failed: {cause})"
        f"; install the pair pinned in the Makefile: pip install torch=={torch_v} torchvision=={vision_v} "
        "(or `make test`, which installs it into .venv), or a torchvision built for your torch "
        "(see https://pytorch.org/get-started/previous-versions/)"
    )


def _is_mismatch(err: RuntimeError) -> bool:
    text = str(err)
    return "torchvision::" in text and "does not exist" in text


def import_optional(name: str) -> ModuleType:
    """``importlib.import_module(name)``, turning torchvision's operator-registration failure into
    :class:`TorchvisionMismatchError` (``ImportError`` for a missing package is passed through unchanged)."""
    try:
        return importlib.import_module(name)
    except RuntimeError as err:
        if _is_mismatch(err):
            raise TorchvisionMismatchError(mismatch_message(err)) from None
        raise


def import_torchvision() -> ModuleType:
    """``import torchvision`` with a clear error when it does not match torch."""
    return import_optional("torchvision")


def import_timm() -> ModuleType:
    """``import timm`` (which imports torchvision) with a clear error when torchvision does not match torch."""
    return import_optional("timm")
