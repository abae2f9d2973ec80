"""Errors that mean "the input is wrong" (exit code 2) and their one-line descriptions."""

from __future__ import annotations

from kdlab.analysis.common import AnalysisError
from kdlab.compat import TorchvisionMismatchError
from kdlab.config import ConfigError
from kdlab.data.base import DataError
from kdlab.experiments.store import StoreError
from kdlab.models.base import TapError
from kdlab.models.checkpoints import CheckpointNotFoundError
from kdlab.registry import RegistryError
from kdlab.train.build import BuildError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    TapError,
    RegistryError,
    BuildError,
    StoreError,
    AnalysisError,
    CheckpointNotFoundError,
    TorchvisionMismatchError,
)


def describe(err: BaseException) -> str:
    """The message of a user error (without the exception class noise)."""
    return str(err)
