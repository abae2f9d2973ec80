"""Contrastive distillation losses: CRD's scores against a memory of embeddings and its NCE objective.

Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020, arXiv 1910.10699.
Reference: HobbitLong/RepDistiller@b84f547 ``crd/memory.py`` (``ContrastMemory``) and ``crd/criterion.py``
(``ContrastLoss``, Eq. 18 of the paper); megvii-research/mdistiller@a08d46f ``mdistiller/distillers/CRD.py`` is the
same computation.

Scores are unnormalised: ``P = exp(<m, v> / T)``; the method divides them by its normalising constant ``Z``
before :func:`crd_nce`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.losses.logit import reduce

__all__ = ["crd_nce", "crd_queue_scores", "crd_scores"]


def crd_scores(anchor: Tensor, memory: Tensor, idx: Tensor, temperature: float) -> Tensor:
    """Exponentiated similarities of each anchor with rows of a memory: ``exp(<memory[idx[b, j]], anchor[b]> / T)``.

    The memory is not differentiated (it is a buffer of past embeddings); gradients reach ``anchor`` only.
    Two equivalent evaluations are chosen by size: one ``[B, N]`` matrix product followed by a gather when the
    memory is small compared with the ``B x (1 + K)`` rows asked for (CIFAR: N = 50,000 against 64 x 16,385), a
    gather of the rows followed by a batched product otherwise (large datasets, few negatives).

    Args:
        anchor: ``[B, D]`` embeddings (L2-normalised by the caller).
        memory: ``[N, D]`` memory rows.
        idx: ``[B, 1 + K]`` memory rows per anchor; column 0 is the positive.
        temperature: ``T``.

    Returns:
        ``[B, 1 + K]`` scores ``exp(<memory[idx], anchor> / T)``.
    """
    memory = memory.detach()
    b, m = idx.shape
    n, d = memory.shape
    if n <= 4 * b * m:
        logits = (anchor @ memory.T).gather(1, idx)
    else:
        rows = memory.index_select(0, idx.reshape(-1)).view(b, m, d)
        logits = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)
    return torch.exp(logits / temperature)


def crd_queue_scores(anchor: Tensor, positive: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """CRD scores against a FIFO queue: the positive is the other network's current embedding of the same sample,
    the negatives are all queue entries (shared by the batch).

    Args:
        anchor: ``[B, D]`` embeddings.
        positive: ``[B, D]`` the other side's embeddings of the same samples (not differentiated).
        queue: ``[Q, D]`` past embeddings of the other side (not differentiated).
        temperature: ``T``.

    Returns:
        ``[B, 1 + Q]`` scores; column 0 is the positive.
    """
    pos = (anchor * positive.detach()).sum(dim=1, keepdim=True)
    neg = anchor @ queue.detach().T
    return torch.exp(torch.cat([pos, neg], dim=1) / temperature)


def crd_nce(probs: Tensor, num_data: int, eps: float = 1e-7, reduction: str = "mean") -> Tensor:
    """CRD's NCE loss (Eq. 18): a binary classifier of "data" (the positive) against noise (the K negatives).

    With ``m = K / N`` (``N`` = ``num_data``, the noise distribution being uniform over the dataset)::

        loss_b = -[ log(P_pos / (P_pos + m + eps)) + sum_k log(m / (P_neg_k + m + eps)) ]

    Args:
        probs: ``[B, 1 + K]`` normalised scores ``exp(<., .> / T) / Z``; column 0 is the positive.
        num_data: ``N``.
        eps: added to the denominators as in the reference.
        reduction: ``"mean"`` over the batch (the reference's ``/ B``), ``"sum"`` or ``"none"`` (``[B]``).

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"``.
    """
    k = probs.shape[1] - 1
    noise = k / float(num_data)
    p_pos, p_neg = probs[:, 0], probs[:, 1:]
    log_pos = torch.log(p_pos / (p_pos + noise + eps))
    log_neg = torch.log(noise / (p_neg + noise + eps)).sum(dim=1)
    return reduce(-(log_pos + log_neg), reduction)
