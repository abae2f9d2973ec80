"""``kdlab.losses``: the math of every method, as plain functions over tensors (student first, teacher second)."""

from kdlab.losses.logit import (
    batch_correlation,
    class_correlation,
    cross_entropy,
    dist,
    dkd,
    kd,
    reduce,
    standardize_logits,
    tekap_kd,
    tekap_views,
)

__all__ = [
    "batch_correlation",
    "class_correlation",
    "cross_entropy",
    "dist",
    "dkd",
    "kd",
    "reduce",
    "standardize_logits",
    "tekap_kd",
    "tekap_views",
]
