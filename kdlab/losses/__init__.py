"""``kdlab.losses``: the math of every method, as plain functions over tensors (student first, teacher second)."""

from kdlab.losses.logit import cross_entropy, kd, reduce, standardize_logits

__all__ = ["cross_entropy", "kd", "reduce", "standardize_logits"]
