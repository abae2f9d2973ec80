"""Checkpoint state of a run: what :class:`~kdlab.train.trainer.Trainer` writes to ``checkpoint.pt`` and restores
from it (student, method, its generators, optimiser, aux objectives, grad scaler, RNG, history, the running sums of
a partly trained epoch, clocks), the note on which checkpoint exists, and the exported model ``student.pt``.

Writing is atomic (:mod:`kdlab.train.checkpoint`); :meth:`Trainer.save_checkpoint` (the loop's, aware of signals)
calls :meth:`TrainerCheckpointMixin.state_dict`.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from kdlab.config import RunConfig, to_dict
from kdlab.distributed import World
from kdlab.methods.base import MAIN_STAGE
from kdlab.models.base import count_parameters
from kdlab.train.build import Run
from kdlab.train.checkpoint import CHECKPOINT_FORMAT, EXPORT_FORMAT, CheckpointError, atomic_save
from kdlab.train.provenance import versions
from kdlab.types import Progress


class TrainerCheckpointMixin:
    """The :class:`~kdlab.train.trainer.Trainer`'s checkpoint state. Reads and restores ``cfg``, ``run``, ``world``,
    ``optimizer``, ``aux``, ``scaler``, ``history``, ``global_step``, ``train_time``, ``train_images``,
    ``_epoch_accum`` and ``_last_checkpoint``; ``_stage_index``, ``_stage_progress``, ``_make_optimizer`` and
    ``_check_world_size`` come from the trainer's other parts."""

    cfg: RunConfig
    run: Run
    world: World
    run_dir: Path
    ckpt_path: Path
    _last_checkpoint: Progress | None

    def state_dict(self, progress: Progress) -> dict:
        """Everything needed to continue exactly from ``progress`` (the next step to run)."""
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(self.cfg),
            "progress": {
                "stage": self._stage_index(progress),
                "step": progress.step,
                "epoch": progress.epoch,
                "step_in_epoch": progress.step_in_epoch,
                "global_step": self.global_step,
            },
            "student": self.run.student.state_dict(),
            "method": self.run.method.state_dict(),
            "method_generators": self.run.method.generator_state(),
            "optimizer": self.optimizer.state_dict(),
            "aux": [a.state_dict() for a in self.aux],
            "ema": self.ema.state_dict() if self.ema is not None else None,  # train.ema_decay (kdlab/train/ema.py)
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "history": self.history,
            # the running sums of a partly trained epoch: its logged means cover the whole epoch after a resume
            "epoch_accum": self._epoch_accum if progress.step_in_epoch > 0 else None,
            "clock": {"train_time": self.train_time, "train_images": self.train_images},
            "versions": versions(),
            "world_size": self.world.size,
        }

    def load_state_dict(self, state: dict) -> Progress:
        """Restore a :meth:`state_dict`; returns the progress to continue from."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{str(self.ckpt_path)!r} is not a kdlab training checkpoint")
        saved_cfg = state["config"]
        now = to_dict(self.cfg)
        for section in ("model", "method", "data"):
            if saved_cfg.get(section) != now.get(section):
                raise CheckpointError(
                    f"the checkpoint in {str(self.run_dir)!r} was written with a different '{section}' config; "
                    "resume with the same config (see its config.yaml) or start a new run"
                )
        self._check_world_size(state)
        self.run.student.load_state_dict(state["student"])
        self.run.method.load_state_dict(state["method"])
        self.run.method.set_generator_state(state["method_generators"])
        p = state["progress"]
        self.optimizer = self._make_optimizer(self.stages[p["stage"]])
        self.optimizer.load_state_dict(state["optimizer"])
        for aux, s in zip(self.aux, state["aux"]):
            aux.load_state_dict(s)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.history = list(state["history"])
        self.train_time = state["clock"]["train_time"]
        self.train_images = state["clock"]["train_images"]
        self.global_step = p["global_step"]
        self._epoch_accum = state.get("epoch_accum") if p["step_in_epoch"] > 0 else None
        progress = self._stage_progress(p["stage"], p["step"], p["epoch"], p["step_in_epoch"])
        self._last_checkpoint = progress
        return progress

    def _checkpoint_note(self) -> str:
        """Which checkpoint exists now (for messages that must be true)."""
        p = self._last_checkpoint
        if p is None or not self.ckpt_path.is_file():
            return f"no checkpoint was written yet in {str(self.run_dir)!r}"
        where = f", step {p.step_in_epoch} of epoch {p.epoch + 1}" if p.step_in_epoch else ""
        stage = "" if p.stage == MAIN_STAGE else f" of stage {p.stage!r}"
        return (
            f"the checkpoint {str(self.ckpt_path)!r} (after step {p.step}: {p.epoch} epoch(s){stage} done{where}) "
            "is kept"
        )

    def export(self) -> Path:
        """Write the deployable model (``method.export(student)``, or its moving average with ``train.ema_export``) to
        ``student.pt``."""
        model = self._ema_export_model()
        model = self.run.method.export(self.run.student) if model is None else model
        path = self.run_dir / "student.pt"
        if not self.world.main:
            return path
        atomic_save(
            {
                "format": EXPORT_FORMAT,
                "config": to_dict(self.cfg),
                "state_dict": model.state_dict(),
                "parameters": count_parameters(model, trainable_only=False),
            },
            path,
            what="exported model",
        )
        return path
