"""Multi-process training on PyTorch's own engine (``torch.distributed`` + ``DistributedDataParallel``).

``torchrun --nproc_per_node=N -m kdlab train CONFIG`` starts N processes that each build the same run; this module
turns the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) into a
process group (NCCL on CUDA, gloo on CPU) and provides the few collectives the trainer and the methods need:

- :func:`init` / :func:`teardown`: the process group and each rank's device (``cuda:LOCAL_RANK`` on GPUs).
- :func:`wrap`: the trainable step in ``DistributedDataParallel`` (only the student and the method's adapters are
  synchronised; a method's own state, e.g. CRD's memory bank, is left to the method).
- :func:`gather_rows` (no gradient) and :func:`all_gather_with_grad` (gradient flows back to every rank's rows):
  concatenate every rank's rows in rank order, which is the order of the global batch (shards are contiguous).
- :func:`average_gradients`: mean of some parameters' gradients over ranks, for an aux objective's own optimiser
  (its parameters are outside DDP).
- :func:`reduce_sum`, :func:`broadcast_buffers`, :func:`shard_bounds`.

Every function is a no-op (or the identity) when no process group is initialised or the world has one process, so
methods may call them unconditionally. Collectives must be called by every rank in the same order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdlab.config import ConfigError

log = logging.getLogger("kdlab")


class DistributedSetupError(ConfigError):
    """The launcher's environment does not describe a usable process group (the message says what to set)."""


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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"environment variable {name}={value!r} must be an integer") from None


def env_world() -> World:
    """The world torchrun describes in the environment (one process when ``WORLD_SIZE`` is unset)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size:
        raise DistributedSetupError(f"RANK={rank} and WORLD_SIZE={size} do not fit: need 0 <= RANK < WORLD_SIZE")
    return World(rank, size, local_rank)


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
    return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))


def init(device: torch.device) -> tuple[World, torch.device, bool]:
    """Join the process group torchrun describes, if any.

    Args:
        device: the configured training device (``train.device`` resolved). Under several processes on CUDA each
            rank uses ``cuda:LOCAL_RANK`` instead.

    Returns:
        ``(world, device, created)``: ``created`` is True when this call initialised the group (so the caller
        tears it down with :func:`teardown`). A group already initialised (e.g. by a test harness) is used as is.
    """
    if dist.is_available() and dist.is_initialized():
        world = current_world()
        return world, _rank_device(device, world), False
    world = env_world()
    if not world.distributed:
        return world, device, False
    if not dist.is_available():
        raise DistributedSetupError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world.size} is set but {' and '.join(missing)} are not: launch with "
            "`torchrun --nproc_per_node=N -m kdlab train CONFIG` (it sets them), or set them yourself"
        )
    device = _rank_device(device, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://", rank=world.rank, world_size=world.size)
    log.info(
        "distributed: rank %d of %d (local rank %d), backend %s, device %s",
        world.rank,
        world.size,
        world.local_rank,
        backend,
        device,
    )
    return world, device, True


def _rank_device(device: torch.device, world: World) -> torch.device:
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def teardown(created: bool) -> None:
    """Destroy the default process group if :func:`init` created it."""
    if created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(
    module: nn.Module,
    device: torch.device,
    ignore: Sequence[str] = (),
    find_unused_parameters: bool = True,
) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (the module itself without an active group).

    Args:
        module: the trainable step (student + method).
        device: this rank's device.
        ignore: fully qualified names of parameters and buffers DDP must neither synchronise nor broadcast (a method's
            own state, aux objectives' parameters).
        find_unused_parameters: let DDP find parameters that get no gradient in a step (e.g. adapters of another
            stage); False saves one traversal of the autograd graph per step when every parameter is always used.
    """
    if not active():
        return module
    if ignore:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


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
