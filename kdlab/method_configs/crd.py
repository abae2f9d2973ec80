"""Config of :class:`kdlab.methods.crd.CRD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("crd")
@dataclass(kw_only=True)
class CRDConfig(MethodConfig):
    """The ``method:`` fields of method ``crd`` (:class:`kdlab.methods.crd.CRD`)."""

    name: str = "crd"
    crd_weight: float = field(default=0.8, metadata=rng(ge=0))
    """Weight of the contrastive term (the reference's ``-b 0.8``)."""
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy (``-r 1``)."""
    kd_weight: float = field(default=0.0, metadata=rng(ge=0))
    """Weight of an optional KD term (``-a``; 0 in the CRD recipe, 1 for "CRD+KD")."""
    kd_temperature: float = field(default=4.0, metadata=rng(gt=0))
    """Temperature of the optional KD term."""
    embed_dim: int = field(default=128, metadata=rng(ge=1))
    """Embedding width (``--feat_dim``)."""
    num_negatives: int = field(default=16384, metadata=rng(ge=1))
    """K, negatives per sample (``--nce_k``); with ``memory: queue``, the queue length."""
    temperature: float = field(default=0.07, metadata=rng(gt=0))
    """T of the similarities (``--nce_t``)."""
    momentum: float = field(default=0.5, metadata=rng(ge=0, le=1))
    """Momentum of the memory update (``--nce_m``)."""
    memory: Literal["bank", "queue"] = "bank"
    """``bank``: one row per training sample (the reference); ``queue``: FIFO of recent embeddings."""
    negatives: Literal["other_classes", "other_samples"] = "other_classes"
    """``memory: bank``: draw negatives from samples of other classes (the reference) or any other sample."""
    reference_quirks: bool = False
    """Update the memory on every ``loss`` call of a step (the released TeKAP code's double update)."""
