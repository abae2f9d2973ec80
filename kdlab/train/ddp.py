"""Several processes (``torchrun``) seen from the :class:`~kdlab.train.trainer.Trainer`: the sharded loader, the
step in DistributedDataParallel, the step's scalars averaged over ranks with the ranks' agreement on stopping, and
the world-size check of a resumed checkpoint. The process group itself: :mod:`kdlab.train.distributed`."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.config import ConfigError, RunConfig
from kdlab.distributed import World
from kdlab.train import distributed
from kdlab.train.build import Run
from kdlab.train.step import TrainStep

log = logging.getLogger("kdlab")


class TrainerDistributedMixin:
    """The :class:`~kdlab.train.trainer.Trainer`'s multi-process parts. Reads ``cfg``, ``run``, ``world``,
    ``run_dir`` and ``_stop_signal``; sets ``_ddp_ignore`` (the method's own parameters and buffers DDP skips),
    ``_stop_agreed`` and, when another rank was stopped, ``_stop_signal``."""

    cfg: RunConfig
    run: Run
    world: World
    run_dir: Path
    _stop_signal: int | None
    _stop_agreed: bool

    def _setup_distributed_data(self) -> None:
        """Several processes: shard the loader (``data.batch_size`` is the global batch) and log the per-rank batch."""
        w, data = self.world, self.run.data
        self._ddp_ignore: list[str] = []
        if not w.distributed:
            return
        data.shard(w.rank, w.size)
        log.info(
            "distributed: %d processes, global batch %d, per-process batch %d",
            w.size,
            data.batch_size,
            data.batch_size // w.size,
        )

    def _distributed_step(self, step_module: TrainStep) -> nn.Module:
        """What the training step calls: ``step_module`` in DistributedDataParallel under several processes
        (``SyncBatchNorm`` with ``train.sync_bn``), else ``step_module`` itself.

        DDP synchronises the student and the method's adapters only; the method's other parameters and buffers (its
        own cross-sample state such as CRD's memory, aux objectives' parameters) are the method's to keep consistent.
        """
        tc = self.cfg.train
        if not self.world.distributed:
            if tc.sync_bn:
                log.info("train.sync_bn has no effect in a single process")
            return step_module
        if tc.sync_bn:
            if self.run.device.type != "cuda":
                raise ConfigError(
                    f"train.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm does not run on "
                    f"{self.run.device.type}); set train.sync_bn=false"
                )
            nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
        method = self.run.method
        own = [*method.named_parameters(), *method.named_buffers()]
        self._ddp_ignore = [f"method.{n}" for n, _ in own if not n.startswith("adapters.")]
        return distributed.wrap(step_module, self.run.device, self._ddp_ignore, tc.find_unused_parameters)

    def _sync_step(self, scalars: Tensor) -> Tensor:
        """Several processes: the step's logged scalars averaged over ranks, and the ranks' agreement on stopping.

        A stop request (SIGINT/SIGTERM) seen by any rank before this point is shared with all ranks here, so every
        rank finishes the same step, then rank 0 writes the checkpoint: no rank waits in a collective alone.
        """
        if not self.world.distributed:
            return scalars
        flag = scalars.new_ones(1) if self._stop_signal is not None else scalars.new_zeros(1)
        total = distributed.reduce_sum(torch.cat([scalars, flag]))
        if float(total[-1]) > 0:
            self._stop_agreed = True
            if self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
        return total[:-1] / self.world.size

    def _stopping(self) -> bool:
        """Whether to stop after the current step (several processes: only once all ranks agree)."""
        return self._stop_agreed if self.world.distributed else self._stop_signal is not None

    def _check_world_size(self, state: dict) -> None:
        saved = int(state.get("world_size", 1))
        if saved != self.world.size:
            raise ConfigError(
                f"the checkpoint in {str(self.run_dir)!r} was written by a run of {saved} process(es), this run has "
                f"{self.world.size}; resume with the same number of processes (e.g. torchrun --nproc_per_node="
                f"{saved} ... --resume), or start a new run"
            )
