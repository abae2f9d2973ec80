"""Config of :class:`kdlab.methods.dist.DIST`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("dist")
@dataclass(kw_only=True)
class DISTConfig(MethodConfig):
    """DIST; the defaults are the CIFAR-100 recipe. ImageNet uses ``tau: 1`` (same weights)."""

    name: str = "dist"
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy term."""
    dist_weight: float = field(default=2.0, metadata=rng(ge=0))
    """Global weight of the DIST term (the reference's ``kd_loss_weight``)."""
    beta: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the inter-class relation (per sample, across classes)."""
    gamma: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the intra-class relation (per class, across the batch)."""
    tau: float = field(default=4.0, metadata=rng(gt=0))
    """Softmax temperature: 4 on CIFAR (``dist_t4``), 1 on ImageNet."""
    label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Label smoothing epsilon of the cross-entropy term (the DIST recipes use 0)."""
    gather_logits: bool = False
    """Under torchrun: the DIST term over the logits of all processes (the global batch), not each process's."""
    aux_weight: float = field(default=0.0, metadata=rng(ge=0))
    """Weight of the same terms on the models' auxiliary heads (``aux`` tap; segmentation models), 0 for none."""
