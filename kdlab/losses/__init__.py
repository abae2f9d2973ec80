"""``kdlab.losses``: the math of every method, as plain functions over tensors (student first, teacher second)."""

from kdlab.losses.contrastive import crd_nce, crd_queue_scores, crd_scores
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
from kdlab.losses.regression import ofd, ofd_margin, srrl, vid_nll
from kdlab.losses.review import hcl

__all__ = [
    "batch_correlation",
    "class_correlation",
    "crd_nce",
    "crd_queue_scores",
    "crd_scores",
    "cross_entropy",
    "dist",
    "dkd",
    "hcl",
    "kd",
    "ofd",
    "ofd_margin",
    "reduce",
    "srrl",
    "standardize_logits",
    "tekap_kd",
    "tekap_views",
    "vid_nll",
]
