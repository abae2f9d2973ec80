"""Collectives and rank helpers over ``torch.distributed``, for the trainer and the methods alike.

This module sits below both :mod:`kdlab.train` and :mod:`kdlab.methods`: a method that gathers across ranks (CRD's
memory bank, DIST's batch relations, TGeo-KD's omega gradients) imports it without importing the trainer's package.
The process-group set-up and the ``DistributedDataParallel`` wrapping stay in :mod:`kdlab.train.distributed`.

- :func:`active`, :func:`world_size`, :func:`rank`, :func:`is_main`, :func:`current_world`, :class:`World`.
- :func:`gather_rows` (no gradient) and :func:`all_gather_with_grad` (gradient flows back to every rank's rows):
  concatenate every rank's rows in rank order, which is the order of the global batch (shards are contiguous).
- :func:`average_gradients`: mean of some parameters' gradients over ranks, for an aux objective's own optimiser
  (its parameters are outside DDP).
- :func:`reduce_sum`, :func:`broadcast_buffers`, :func:`barrier`, :func:`shard_bounds`.

Every function is a no-op (or the identity) when no process group is initialised or the world has one process, so
methods may call them unconditionally. Collectives must be called by every rank in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes.

    Attributes:
        rank: global rank in ``[0, size)``; rank 0 writes logs, metrics, checkpoints and exports.
        size: number of processes (``WORLD_SIZE``).
        local_rank: rank on this node (``LOCAL_RANK``); selects the GPU.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process is rank 0."""
        return self.rank == 0


def _local_rank(default: int) -> int:
    """``LOCAL_RANK`` from the environment (``default`` when unset or not an integer)."""
    value = os.environ.get("LOCAL_RANK", "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        return default


def active() -> bool:
    """Whether a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0 (always true without a group)."""
    return rank() == 0


def current_world() -> World:
    """The world of the initialised default group (one process without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), _local_rank(dist.get_rank()))


def shard_bounds(n: int, index: int, parts: int) -> tuple[int, int]:
    """``[lo, hi)`` of part ``index`` when ``n`` items are cut into ``parts`` contiguous, near-equal parts."""
    return n * index // parts, n * (index + 1) // parts


def reduce_sum(t: Tensor) -> Tensor:
    """The element-wise sum of ``t`` over ranks (a new tensor; ``t`` itself without a group)."""
    if not active():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _row_counts(t: Tensor) -> list[int]:
    """Every rank's ``t.shape[0]``."""
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    return [int(c) for c in torch.cat(counts).tolist()]


def _gather_padded(t: Tensor, counts: list[int]) -> Tensor:
    """All ranks' rows of ``t`` (``[n_r, ...]`` each, ``counts`` of them) concatenated in rank order."""
    longest = max(counts)
    if t.shape[0] < longest:
        pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
        t = torch.cat([t, pad])
    parts = [torch.empty_like(t) for _ in counts]
    dist.all_gather(parts, t.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def gather_rows(t: Tensor) -> tuple[Tensor, slice]:
    """Every rank's rows of ``t``, concatenated in rank order (no gradient).

    Args:
        t: ``[n_r, ...]``; ``n_r`` may differ between ranks, the other dimensions may not.

    Returns:
        ``([sum_r n_r, ...], rows)``: the gathered tensor and the slice of this rank's own rows in it. Without a
        group: ``(t, slice(0, n))``.
    """
    if not active():
        return t, slice(0, t.shape[0])
    counts = _row_counts(t)
    lo = sum(counts[: dist.get_rank()])
    return _gather_padded(t.detach(), counts), slice(lo, lo + t.shape[0])


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all ranks' rows. Backward: the gradient of the gathered tensor summed over ranks, own rows kept."""

    @staticmethod
    def forward(ctx, t: Tensor, counts: list[int]) -> Tensor:  # type: ignore[override]
        ctx.counts = counts
        ctx.rank = dist.get_rank()
        return _gather_padded(t, counts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        lo = sum(ctx.counts[: ctx.rank])
        return grad[lo : lo + ctx.counts[ctx.rank]], None


def all_gather_with_grad(t: Tensor) -> Tensor:
    """Every rank's rows of ``t`` concatenated in rank order, differentiable with respect to this rank's rows.

    A loss that every rank computes identically from the gathered tensor gets, after DDP averages the gradients
    over ranks, exactly the gradient of the single-process loss over the global batch: the backward sums the
    gathered gradient over ranks (``W`` copies of the same loss) and DDP divides by ``W``.

    Args:
        t: ``[n_r, ...]`` (``n_r`` may differ between ranks).

    Returns:
        ``[sum_r n_r, ...]``; ``t`` itself without a group.
    """
    if not active():
        return t
    return _AllGatherWithGrad.apply(t, _row_counts(t))


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks (one flat all-reduce); no-op without a group.

    For parameters DDP does not own, e.g. an aux objective's (TGeo-KD's omega network), whose optimiser must see the
    gradient of the global batch. Call between ``backward()`` and the optimiser's ``step()``. Parameters whose
    ``.grad`` is None are skipped; every rank must have gradients for the same parameters.
    """
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(module: nn.Module, skip: Sequence[str] = ()) -> None:
    """Copy rank 0's buffers of ``module`` to every rank (e.g. BN running statistics before an evaluation), except
    those whose qualified name is in ``skip``; no-op without a group."""
    if not active():
        return
    skipped = set(skip)
    for name, buf in module.named_buffers():
        if name not in skipped:
            dist.broadcast(buf, src=0)


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if active():
        dist.barrier()
