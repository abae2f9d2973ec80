"""The one training loop (DESIGN.md: it never names a method).

Per step: frozen teachers run under inference mode on the views the method needs; the :class:`TrainStep`
(student + method, the only trainable module) runs the student and the method's loss; the summed terms are
back-propagated; aux objectives run when due. Per epoch: test top-1/top-5 of the exported model, metrics,
an atomic checkpoint. A run interrupted (SIGINT/SIGTERM) writes a checkpoint after the current step and can be
resumed to end bitwise identical, on CPU, to an uninterrupted run. Run records (lock, resume allow-list, --force,
crash windows, full disks): :mod:`kdlab.train.runrecord`, :mod:`kdlab.runlock`, :mod:`kdlab.train.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import kdlab
from kdlab import interrupts
from kdlab.config import ConfigError, RunConfig, dump_config, to_dict
from kdlab.methods.base import MAIN_STAGE, AuxContext, PrepareContext, Stage
from kdlab.metrics import DEFAULT_METRICS, format_metrics, resolve_metrics, select_key
from kdlab.metrics import evaluate as evaluate_metrics
from kdlab.models.base import count_parameters
from kdlab.runlock import RunLock, first_missing_ancestor, remove_unused_run_dir
from kdlab.train import distributed
from kdlab.train.build import Run, build_run, resolve_device
from kdlab.train.checkpoint import (
    CHECKPOINT_FORMAT,
    EXPORT_FORMAT,
    CheckpointError,
    CheckpointNotFoundError,
    append_line,
    atomic_save,
    atomic_write_text,
    read_file,
    remove_stale_temporaries,
)
from kdlab.train.display import ProgressDisplay
from kdlab.train.header import log_header
from kdlab.train.precision import CompiledStep, Precision, to_float
from kdlab.train.runrecord import RunExistsError, check_resume_config, move_aside, repair_metrics
from kdlab.train.schedule import learning_rate
from kdlab.train.tensorboard import open_tensorboard
from kdlab.types import Batch, LossOut, Needs, Outputs, Progress, StepIO

log = logging.getLogger("kdlab")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written after the current step."""


class TrainStep(nn.Module):
    """The student and the method in one module: the only thing trained, wrapped in DDP or compiled.

    Args:
        student: the student model (tap contract).
        method: the distillation method (its ``adapters`` are trained with the student).
        needs: what the method reads.
    """

    def __init__(self, student: nn.Module, method: nn.Module, needs: Needs, precision: Precision | None = None) -> None:
        super().__init__()
        self.student = student
        self.method = method
        self.needs = needs
        self.precision = precision or Precision()

    def student_outputs(self, batch: Batch) -> dict[str, Outputs]:
        """The student's outputs on every view the method needs (one forward per view)."""
        taps = tuple(self.needs.student_taps)
        out = {}
        for view in self.needs.views:
            logits, feats = self.student.forward_taps(batch.view(view), taps)
            out[view] = Outputs(logits, feats)
        return out

    def forward(self, batch: Batch, teachers: tuple, progress: Progress) -> LossOut:
        # the student's forward in the run's precision; its outputs and the method's loss in fp32 (precision.py)
        with self.precision.student_autocast():
            student = self.student_outputs(batch)
        io = StepIO(to_float(student), teachers, batch, progress)
        with self.precision.loss_context():
            return self.method.loss(io)


def accuracy(logits: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is among the top-k predictions, for each k (``[B, K]``, ``[B]``)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == y[:, None]
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def evaluate(
    model: nn.Module,
    batches: Iterator[Batch],
    reduce: Callable[[Tensor], Tensor] | None = None,
    names: tuple[str, ...] = DEFAULT_METRICS,
) -> dict[str, float]:
    """The registered metrics ``names`` (:mod:`kdlab.metrics`; default top-1/top-5 %), the mean cross-entropy
    ``loss`` and the sample count ``n`` of ``model`` over ``batches`` (eval mode).

    ``reduce`` sums a tensor over processes when each process evaluated its own shard of the split (rows of
    sample-level state, e.g. AUC's scores, are gathered from every process then).
    """
    gather = None
    if reduce is not None:
        from kdlab.distributed import gather_rows

        gather = lambda t: gather_rows(t)[0]  # noqa: E731
    return evaluate_metrics(model, batches, names, reduce_sum=reduce, gather_rows=gather)


def git_commit() -> str | None:
    """The git commit of the kdlab source tree, when it is a checkout."""
    try:
        root = Path(kdlab.__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python, torch, numpy and kdlab."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "kdlab": kdlab.__version__,
    }


def run_metrics(cfg: RunConfig, splits: object) -> tuple[str, ...]:
    """The evaluation metrics of a run (``train.metrics``, else the dataset's defaults) with ``train.select_by``
    checked against them; a bad name is a :class:`ConfigError` naming the fix."""
    try:
        names = resolve_metrics(cfg.train.metrics, getattr(splits, "metrics", None))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.train.select_by not in (*names, "loss"):
        raise ConfigError(
            f"train.select_by={cfg.train.select_by!r} is not among the run's metrics {list(names)} (or 'loss'); "
            f"choose one of them, or add it to train.metrics"
        )
    return names


def default_run_name(cfg: RunConfig) -> str:
    """``<method>__<teacher>__<student>__s<seed>`` (``<method>__<student>__s<seed>`` without a teacher)."""
    parts = [cfg.method.name, *[t.name for t in cfg.model.teachers], cfg.model.student, f"s{cfg.train.seed}"]
    return "__".join(p.replace(":", "-").replace("/", "-") for p in parts)


class Trainer:
    """Trains one run.

    Args:
        cfg: the resolved config.
        run_dir: where to write; default ``<train.run_dir>/<train.name or default_run_name>``.
        resume: continue from ``run_dir/checkpoint.pt`` (an error if it is missing, or if the config differs from the
            checkpoint's outside :data:`kdlab.train.runrecord.RESUME_ALLOWED`).
        force: start over even if ``run_dir`` already holds a run; the old run's files are moved to
            ``<run_dir>.old-<UTC time>/`` before the new run writes anything.

    The trainer holds the run directory's lock (:mod:`kdlab.runlock`) from construction to the end of :meth:`fit`;
    every refusal (missing checkpoint, changed config, existing run, locked run) happens before anything is written.
    """

    def __init__(
        self, cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False, force: bool = False
    ) -> None:
        if cfg.chain is not None:
            raise ConfigError(
                "this config describes a teacher-assistant chain (its 'chain:' section); run it with "
                "'kdlab chain CONFIG', which trains every link"
            )
        interrupts.raise_if_requested("training")  # a stop request ends a multi-run command as a whole
        self.cfg = cfg
        self.run_dir = Path(run_dir or Path(cfg.train.run_dir) / (cfg.train.name or default_run_name(cfg)))
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        self.resume = resume
        self.force = force
        self._resume_state: dict | None = None
        self._last_checkpoint: Progress | None = None  # what checkpoint.pt holds (None: not written yet)
        self._writing = False  # a checkpoint is being written (a second signal then waits for it)
        self._epoch_accum: dict | None = None  # running sums of a partly trained epoch, restored on resume
        # every refusal happens before the lock is taken: a refused command writes nothing (not even the lock's pid)
        self._check_run_dir(resume, force)
        created = first_missing_ancestor(self.run_dir)  # folders the lock creates; removed again if the build fails
        self.lock = self._lock_run_dir()
        try:
            self._check_presence(resume, force)  # again under the lock: another process may have changed the run
            self._init(cfg)
        except BaseException:
            if created is not None:
                remove_unused_run_dir(self.run_dir, created)
            self.lock.release()
            raise

    def _lock_run_dir(self) -> RunLock:
        """The run directory's lock (``kdlab.runlock``): a second trainer of this run stops here. Under ``torchrun``
        the process of rank 0 holds it for all ranks (the others never write the run's files)."""
        if os.environ.get("RANK", "0") not in ("", "0"):
            return RunLock(self.run_dir)  # not acquired: releasing it is a no-op
        try:
            return RunLock(self.run_dir).acquire()
        except OSError as err:
            raise ConfigError(
                f"cannot write to the run directory {str(self.run_dir)!r} ({err.strerror or err}); choose a "
                "writable train.run_dir"
            ) from None

    def _check_run_dir(self, resume: bool, force: bool) -> None:
        """Refuse before any work: a run directory that is a file; --resume without a checkpoint or with a config
        outside the allow-list; a new run over an existing one without --force."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(
                f"the run directory {str(self.run_dir)!r} is a file; remove it or choose another train.run_dir / "
                "train.name"
            )
        self._check_presence(resume, force)
        if resume:
            state = read_file(self.ckpt_path)
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{str(self.ckpt_path)!r} is not a kdlab training checkpoint")
            check_resume_config(state["config"], to_dict(self.cfg), self.run_dir, int(state["progress"]["epoch"]))
            self._resume_state = state

    def _check_presence(self, resume: bool, force: bool) -> None:
        if resume and not self.ckpt_path.is_file():
            raise CheckpointNotFoundError(
                f"--resume: no checkpoint at {str(self.ckpt_path)!r}; start the run without --resume"
            )
        if not resume and not force and self.ckpt_path.is_file():
            raise RunExistsError(
                f"{str(self.run_dir)!r} already holds a run; pass --resume to continue it, --force to start over, "
                "or choose another train.name"
            )

    def _init(self, cfg: RunConfig) -> None:
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.world, device, self._owns_group = distributed.init(resolve_device(cfg.train.device))
        try:
            self.run: Run = build_run(cfg, device=device)
            self._setup_distributed_data()
            self._setup_speed()
        except BaseException:
            distributed.teardown(self._owns_group)
            raise
        r = self.run
        self.metric_names = run_metrics(cfg, r.splits)
        self.aux = list(r.method.aux_objectives())
        self.steps_per_epoch = r.data.steps_per_epoch()
        # the method's own stages (if any) run first, then the main stage of `train.epochs`
        self.stages = [*r.method.stages(), Stage(MAIN_STAGE, cfg.train.epochs, trains="all")]
        names = [st.name for st in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(
                f"method {cfg.method.name!r} declares stages {names[:-1]}: names must be unique, not 'main'"
            )
        self.optimizer = self._make_optimizer(self.stages[0])
        self.start = self._stage_progress(0)
        self.global_step = 0  # steps over all stages (train.max_steps counts these)
        self.history: list[dict] = []
        self.train_time = 0.0
        self.train_images = 0
        self._stop_signal: int | None = None
        self._second_signal = False
        self._stop_agreed = False  # several processes: every rank has seen a stop request (see _sync_step)

    # ---------------------------------------------------------------------------------------------- set-up
    def _make_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """A fresh optimiser of the run's kind over the parameters ``stage`` trains."""
        r, o = self.run, self.cfg.optim
        params = []
        if stage.trains in ("student", "all"):
            params += [p for p in r.student.parameters() if p.requires_grad]
        if stage.trains in ("adapters", "all"):
            params += [p for p in r.method.adapters.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"stage {stage.name!r} trains {stage.trains!r}, which has no trainable parameters")
        lr = stage.lr if stage.lr is not None else o.lr
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def _stage_progress(self, index: int, step: int = 0, epoch: int = 0, step_in_epoch: int = 0) -> Progress:
        stage = self.stages[index]
        return Progress(
            step=step,
            epoch=epoch,
            step_in_epoch=step_in_epoch,
            steps_per_epoch=self.steps_per_epoch,
            total_epochs=stage.epochs,
            stage=stage.name,
        )

    def _stage_index(self, progress: Progress) -> int:
        return next(i for i, st in enumerate(self.stages) if st.name == progress.stage)

    def _lr(self, progress: Progress) -> float:
        """The main stage follows ``optim``'s schedule; a method's stages run at a constant learning rate."""
        if progress.stage == MAIN_STAGE:
            return learning_rate(self.cfg.optim, progress)
        lr = self.stages[self._stage_index(progress)].lr
        return self.cfg.optim.lr if lr is None else lr

    def _setup_speed(self) -> None:
        """Precision, memory format, compilation and teacher-output reuse (``kdlab.train.precision``,
        ``kdlab.train.teacher_cache``); builds :attr:`step_module` and the callable :attr:`step_call` that runs it."""
        from kdlab.train.teacher_cache import build_teacher_cache

        r, tc = self.run, self.cfg.train
        self.precision = Precision.from_config(tc, r.device)
        for model in (r.student, *r.teachers):
            self.precision.prepare_model(model)
        self.step_module = TrainStep(r.student, r.method, r.needs, self.precision)
        self.step_call = CompiledStep(self._distributed_step(self.step_module), tc.compile)
        self.scaler = self.precision.make_scaler()
        self.teacher_cache, self.teacher_cache_reason = build_teacher_cache(
            self.cfg, r, self.teacher_outputs, self.precision.prepare_batch
        )

    def _data_epoch(self, epoch: int) -> int:
        """The epoch whose data stream epoch ``epoch`` replays (``train.replay_epochs``)."""
        replay = self.cfg.train.replay_epochs
        return epoch % replay if replay > 0 else epoch

    def _step_teachers(self, batch: Batch, progress: Progress) -> tuple[dict[str, Outputs], ...]:
        """The teachers' outputs of a training step: from the teacher cache when one applies."""
        if self.teacher_cache is None:
            return self.teacher_outputs(batch)
        return self.teacher_cache.outputs(batch, self._data_epoch(progress.epoch), progress.step_in_epoch)

    def _backward_step(self, loss: Tensor) -> None:
        """Backward and optimiser step (loss-scaled in fp16)."""
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def speed_record(self) -> dict:
        """The effective speed settings of the run (for ``summary.json``)."""
        from kdlab.allocator import allocator_name

        cache = self.teacher_cache.record() if self.teacher_cache is not None else {"kind": "off"}
        return {
            **self.precision.record(),
            "compile": self.step_call.status,
            "teacher_cache": {**cache, "reason": self.teacher_cache_reason},
            "replay_epochs": self.cfg.train.replay_epochs,
            "allocator": allocator_name(),
        }

    def teacher_outputs(self, batch: Batch) -> tuple[dict[str, Outputs], ...]:
        """Every teacher's outputs on the views and taps the method needs (fp32, whatever the teacher's precision)."""
        n = self.run.needs
        with self.precision.teacher_autocast():
            outs = tuple(t.outputs(batch, n.views, n.teacher_taps) for t in self.run.teachers)
        return tuple(to_float(o) for o in outs)

    def _prepare_context(self) -> PrepareContext:
        def batches(taps=()) -> Iterator:
            for batch in self.run.data.eval_batches("train"):
                yield batch, [t.outputs(batch, ("x",), taps)["x"] for t in self.run.teachers]

        return PrepareContext(teacher_outputs=batches, device=self.run.device)

    # ----------------------------------------------------------------------------------------- checkpoint
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

    def save_checkpoint(self, progress: Progress) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0); a second stop signal waits until the file is complete."""
        if self.world.main:  # several processes: rank 0 writes
            self._writing = True
            try:
                atomic_save(self.state_dict(progress), self.ckpt_path)
            finally:
                self._writing = False
        self._last_checkpoint = progress
        if self._second_signal:
            raise interrupts.Interrupted(
                self._stop_signal, f"stopped by a second signal; {self._checkpoint_note()}. Resume with --resume"
            )

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
        """Write the deployable model (``method.export(student)``) to ``student.pt``."""
        model = self.run.method.export(self.run.student)
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

    # ------------------------------------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: object) -> None:
        interrupts.note(signum)  # multi-run commands stop as a whole
        if self._stop_signal is not None:  # a second signal: stop now, but never in the middle of a checkpoint
            if self._writing:
                self._second_signal = True
                log.warning("second signal: a checkpoint is being written; stopping as soon as it is complete")
                return
            raise interrupts.Interrupted(signum, f"stopped at once by a second signal; {self._checkpoint_note()}")
        self._stop_signal = signum
        log.warning(
            "received %s: finishing the current step, then writing a checkpoint", interrupts.signal_name(signum)
        )

    # ---------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        """Train to the end (or ``train.max_steps``); returns the summary also written to ``summary.json``."""
        try:
            return self._fit()
        finally:
            distributed.teardown(self._owns_group)
            self.lock.release()

    def _fit(self) -> dict:
        cfg, r = self.cfg, self.run
        old_handlers = {s: signal.signal(s, self._on_signal) for s in interrupts.SIGNALS}
        try:
            progress = self._open_run_dir()
            self.header = log_header(self)  # what the run does, teachers' test accuracy (kdlab/train/header.py)
            self.tensorboard = open_tensorboard(self)  # log.tensorboard: metrics.jsonl's scalars as events
            r.method.prepare(self._prepare_context())
            if self._stop_signal is None:
                self._stop_signal = interrupts.requested()  # a request noted while the run was being built
            if self._stop_signal is not None:  # stopped during start-up: no step has run
                raise TrainingInterrupted(
                    f"stopped by {interrupts.signal_name(self._stop_signal)} before the first step; "
                    f"{self._checkpoint_note()}"
                    + (". Resume with the same command plus --resume" if self._last_checkpoint is not None else "")
                )
            total = self.steps_per_epoch * sum(st.epochs for st in self.stages)
            if cfg.train.max_steps is not None:
                total = min(total, cfg.train.max_steps)
            display = ProgressDisplay(cfg.log.progress if self.world.main else "off", total, cfg.log.every_steps)
            display.start(self.global_step)
            try:
                for index in range(self._stage_index(progress), len(self.stages)):
                    if self.stages[index].name != progress.stage:  # entering a new stage: fresh optimiser
                        self.optimizer = self._make_optimizer(self.stages[index])
                        progress = self._stage_progress(index)
                    progress = self._loop(progress, total, display)
                    if self.global_step >= total:
                        break
            finally:
                display.close()
            return self._finish(progress)
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)

    def _open_run_dir(self) -> Progress:
        """Prepare the run directory (rank 0 writes) and return the progress to start from: leftover temporary
        files removed; a new run over an old one (--force) moves the old one aside first; a resumed run's
        ``metrics.jsonl`` is cut back to the epochs its checkpoint knows."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        main = self.world.main
        if main:
            for tmp in remove_stale_temporaries(self.run_dir):
                log.info("removed %s, left by an interrupted write", tmp)
        metrics = self.run_dir / "metrics.jsonl"
        if self.resume:
            state, self._resume_state = self._resume_state or read_file(self.ckpt_path), None
            progress = self.load_state_dict(state)
            if main:
                repair_metrics(metrics, self.history)
            log.info("resumed %s at epoch %d step %d", self.run_dir, progress.epoch + 1, progress.step)
        else:
            progress = self.start
            if main:
                # --force, or results of an earlier run whose checkpoint is gone: never leave them beside a new run
                if self.force or any((self.run_dir / n).exists() for n in ("summary.json", "student.pt")):
                    move_aside(self.run_dir)
                atomic_write_text(metrics, "", "metrics file")
        if main:
            atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg), "config file")
        return progress

    def _new_epoch_accum(self, progress: Progress) -> dict:
        """The running sums of the epoch ``progress`` is in: restored from the checkpoint after a mid-epoch resume,
        else empty."""
        acc = self._epoch_accum
        if progress.step_in_epoch > 0 and acc is not None and acc.get("epoch") == progress.epoch:
            acc = {**acc, "sums": dict(acc["sums"]), "step_times": list(acc["step_times"])}
        else:
            acc = {"epoch": progress.epoch, "sums": {}, "n_steps": 0, "time_s": 0.0, "images": 0, "step_times": []}
        self._epoch_accum = acc
        return acc

    def _loop(self, progress: Progress, total: int, display: ProgressDisplay) -> Progress:
        """Run the current stage to its end (or to ``total`` global steps, or a stop signal)."""
        cfg, r = self.cfg, self.run
        metrics_file = self.run_dir / "metrics.jsonl"
        main = progress.stage == MAIN_STAGE
        epochs = progress.total_epochs
        # the stage decides the student's mode (default: eval when it trains only the adapters, BN statistics fixed)
        self.step_module.train()
        self.run.student.train(self.stages[self._stage_index(progress)].student_training)
        while progress.epoch < epochs and self.global_step < total:
            epoch = progress.epoch
            # the logged lr is the one of the epoch's first step (the schedule is a pure function of progress)
            epoch_lr = self._lr(
                dataclasses.replace(progress, step=progress.step - progress.step_in_epoch, step_in_epoch=0)
            )
            acc = self._new_epoch_accum(progress)
            sums = acc["sums"]
            time0, images0 = acc["time_s"], acc["images"]
            t_prev = time.perf_counter()  # step time includes producing the batch (the data pipeline)
            for batch in r.data.train_batches(self._data_epoch(epoch), progress.step_in_epoch):
                batch = self.precision.prepare_batch(batch)
                lr = self._lr(progress)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                teachers = self._step_teachers(batch, progress)
                out = self.step_call(batch, teachers, progress)
                loss = out.total
                # one host-device sync per step: every logged scalar and the finiteness check at once
                named = {**out.terms, **out.metrics}
                scalars = torch.stack(
                    [loss.detach().float(), *(v.detach().float().reshape(()) for v in named.values())]
                )
                scalars = self._sync_step(scalars)
                loss_value, *term_values = scalars.tolist()
                if not math.isfinite(loss_value):
                    bad = next((k for k, v in zip(named, term_values) if not math.isfinite(v)), "total")
                    where = "" if main else f" of stage {progress.stage!r}"
                    raise NonFiniteLossError(
                        f"non-finite loss at step {progress.step} (epoch {epoch + 1}{where}): term {bad!r} = "
                        f"{dict(zip(named, term_values)).get(bad, loss_value)}. {_sentence(self._checkpoint_note())}"
                        "; lower optim.lr, check the teacher checkpoint and the inputs, then "
                        + ("resume or restart" if self._last_checkpoint is not None else "restart (--force)")
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self._backward_step(loss)
                logs = {}
                self.global_step += 1
                done = dataclasses.replace(progress, step=progress.step + 1, step_in_epoch=progress.step_in_epoch + 1)
                for aux in self.aux if main else ():
                    if aux.due(progress):
                        logs.update(aux.step(self._aux_context(batch, done, lr, teachers)))
                values = dict(zip(named, term_values))
                values["loss"] = loss_value
                values.update(logs)
                now = time.perf_counter()
                dt, t_prev = now - t_prev, now
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                acc["n_steps"] += 1
                acc["time_s"] += dt
                acc["step_times"].append(dt)
                acc["images"] += batch.size * self.world.size  # shards are equal: the global batch
                display.update(self.global_step - 1, epoch, f"loss {values['loss']:.4f} lr {lr:.4g}")
                progress = done
                if self._stopping() or self.global_step >= total:
                    break
            self.train_time += acc["time_s"] - time0  # this session's share (a resumed epoch's earlier part is in)
            self.train_images += acc["images"] - images0
            end_of_epoch = progress.step_in_epoch >= self.steps_per_epoch
            if self._stopping() and not end_of_epoch:
                self.save_checkpoint(progress)
                raise TrainingInterrupted(self._resume_hint(progress))
            if end_of_epoch:
                progress = dataclasses.replace(progress, epoch=epoch + 1, step_in_epoch=0)
            stage_done = progress.epoch >= epochs
            last = (main and stage_done) or self.global_step >= total
            record = {
                "stage": progress.stage,
                "epoch": epoch + 1,
                "step": progress.step,
                "lr": epoch_lr,
                "train": {k: v / max(acc["n_steps"], 1) for k, v in sums.items()},
                "images_per_s": acc["images"] / max(acc["time_s"], 1e-9),
                "step_time_median_s": statistics.median(acc["step_times"]) if acc["step_times"] else 0.0,
            }
            if main and (last or (epoch + 1) % cfg.train.eval_every == 0):
                record["test"] = self.evaluate("test")
                if r.data.val is not None:
                    record["val"] = self.evaluate("val")
                display.message(
                    f"epoch {epoch + 1}: loss {record['train'].get('loss', float('nan')):.4f} "
                    f"test {format_metrics(record['test'])} "
                    f"({record['images_per_s']:.0f} img/s)"
                )
            self.history.append(record)
            self._epoch_accum = None
            if self.world.main:
                append_line(metrics_file, json.dumps(record))
                self.tensorboard.write(record, self.global_step)
            if last or stage_done or (epoch + 1) % cfg.train.checkpoint_every == 0 or self._stopping():
                self.save_checkpoint(progress)
            if self._stopping() and not last:
                raise TrainingInterrupted(self._resume_hint(progress))
        return progress

    def _resume_hint(self, progress: Progress) -> str:
        where = "" if progress.stage == MAIN_STAGE else f" of stage {progress.stage!r}"
        return (
            f"interrupted at step {progress.step} (epoch {progress.epoch + 1}{where}); checkpoint written to "
            f"{str(self.ckpt_path)!r}. Resume with the same command plus --resume"
        )

    def _aux_context(self, batch: Batch, progress: Progress, lr: float, teachers: tuple = ()) -> AuxContext:
        step = self.step_module

        def student_outputs(b: Batch, params: dict | None = None) -> dict[str, Outputs]:
            if params is None:
                return step.student_outputs(b)
            return functional_student_outputs(step.student, params, b, step.needs)

        def heldout() -> Iterator[Batch]:
            while True:
                yield from self.run.data.eval_batches("val")

        return AuxContext(
            student=self.run.student,
            method=self.run.method,
            progress=progress,
            lr=lr,
            batch=batch,
            teacher_outputs=self.teacher_outputs,
            student_outputs=student_outputs,
            heldout_batches=heldout,
            teachers=teachers,
        )

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Accuracy of the exported model on ``split`` (several processes: each its shard, counts summed)."""
        if not self.world.distributed:
            return evaluate(
                self.run.method.export(self.run.student), self.run.data.eval_batches(split), names=self.metric_names
            )
        distributed.broadcast_buffers(self.step_module, skip=self._ddp_ignore)  # rank 0's BN statistics everywhere
        device = self.run.device
        return evaluate(
            self.run.method.export(self.run.student),
            self.run.data.eval_batches(split, shard=True),
            reduce=lambda t: distributed.reduce_sum(t.to(device)).to(t.device),
            names=self.metric_names,
        )

    def _finish(self, progress: Progress) -> dict:
        from kdlab.experiments.spec import config_hash

        cfg = self.cfg
        main = progress.stage == MAIN_STAGE
        evals = [h for h in self.history if "test" in h]
        last = evals[-1]["test"] if evals else self.evaluate("test")
        by = select_key(cfg.train.select_by)
        best = max(evals, key=lambda h: by(h["test"])) if evals else {"epoch": progress.epoch, "test": last}
        self.tensorboard.close()
        export_path = self.export()
        exported = self.run.method.export(self.run.student)
        summary = {
            "run": self.run_dir.name,
            "method": cfg.method.name,
            "student": cfg.model.student,
            "teachers": [t.name for t in cfg.model.teachers],
            "dataset": cfg.data.name,
            "seed": cfg.train.seed,
            "stage": progress.stage,
            "epochs": progress.epoch if main else 0,
            "steps": self.global_step,
            "finished": main and progress.epoch >= cfg.train.epochs,
            "last": {"epoch": evals[-1]["epoch"] if evals else progress.epoch, **last},
            "best": {"epoch": best["epoch"], **best["test"]},
            "select_by": cfg.train.select_by,
            "metrics": list(self.metric_names),
            "train_time_s": self.train_time,
            "images_per_s": self.train_images / max(self.train_time, 1e-9),
            "student_parameters": count_parameters(self.run.student),
            "exported_parameters": count_parameters(exported, trainable_only=False),
            "export": export_path.name,
            "device": str(self.run.device),
            "threads": torch.get_num_threads(),
            "speed": self.speed_record(),
            "versions": versions(),
            "git_commit": git_commit(),
            "config_hash": config_hash(to_dict(cfg)),  # `kdlab results --import` checks it against config.yaml
            "header": self.header,
        }
        if self.world.main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n", "summary")
        return summary

    # ------------------------------------------------------------------------------------------ distributed
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


def _sentence(text: str) -> str:
    """``text`` with its first letter upper-case (the rest unchanged, unlike ``str.capitalize``)."""
    return text[:1].upper() + text[1:]


class _ForwardTaps(nn.Module):
    """Makes a model's ``forward_taps`` its ``forward``, so ``torch.func.functional_call`` can run it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, taps: tuple[str, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model.forward_taps(x, taps)


def functional_student_outputs(
    student: nn.Module, params: dict[str, Tensor], batch: Batch, needs: Needs
) -> dict[str, Outputs]:
    """The student's outputs with its parameters replaced by ``params`` (name -> tensor), e.g. a virtual
    "lookahead" step for a hypergradient. Buffers not in ``params`` are the student's own."""
    wrapper = _ForwardTaps(student)
    named = {f"model.{k}": v for k, v in params.items()}
    out = {}
    for view in needs.views:
        logits, feats = torch.func.functional_call(
            wrapper, named, (batch.view(view), tuple(needs.student_taps)), strict=False
        )
        out[view] = Outputs(logits, feats)
    return out
