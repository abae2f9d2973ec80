"""Multi-process training on PyTorch's own engine (``torch.distributed`` + ``DistributedDataParallel``).

``torchrun --nproc_per_node=N -m kdlab train CONFIG`` starts N processes that each build the same run; this module
turns the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) into a
process group (NCCL on CUDA, gloo on CPU) and wraps the trainable step:

- :func:`init` / :func:`teardown`: the process group and each rank's device (``cuda:LOCAL_RANK`` on GPUs).
- :func:`wrap`: the trainable step in ``DistributedDataParallel`` (only the student and the method's adapters are
  synchronised; a method's own state, e.g. CRD's memory bank, is left to the method).

The collectives and rank helpers (:func:`gather_rows`, :func:`all_gather_with_grad`, :func:`average_gradients`,
:func:`reduce_sum`, :func:`broadcast_buffers`, :func:`barrier`, :func:`shard_bounds`, :func:`active`, ...) live in
:mod:`kdlab.distributed`, below both the trainer and the methods; they are re-exported here for the trainer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from kdlab.config import ConfigError
from kdlab.distributed import (
    World,
    active,
    all_gather_with_grad,
    average_gradients,
    barrier,
    broadcast_buffers,
    current_world,
    gather_rows,
    is_main,
    rank,
    reduce_sum,
    shard_bounds,
    world_size,
)

log = logging.getLogger("kdlab")

__all__ = [
    "DistributedSetupError",
    "World",
    "active",
    "all_gather_with_grad",
    "average_gradients",
    "barrier",
    "broadcast_buffers",
    "current_world",
    "env_world",
    "gather_rows",
    "init",
    "is_main",
    "rank",
    "reduce_sum",
    "shard_bounds",
    "teardown",
    "world_size",
    "wrap",
]


class DistributedSetupError(ConfigError):
    """The launcher's environment does not describe a usable process group (the message says what to set)."""


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
