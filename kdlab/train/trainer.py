"""The one training loop (DESIGN.md: it never names a method).

Per step: frozen teachers run under inference mode on the views the method needs; the :class:`TrainStep`
(student + method, the only trainable module) runs the student and the method's loss; the summed terms are
back-propagated; aux objectives run when due. Per epoch: test top-1/top-5 of the exported model, metrics,
an atomic checkpoint. A run interrupted (SIGINT/SIGTERM) writes a checkpoint after the current step and can be
resumed to end bitwise identical, on CPU, to an uninterrupted run. Run records (lock, resume allow-list, --force,
crash windows, full disks): :mod:`kdlab.train.runrecord`, :mod:`kdlab.runlock`, :mod:`kdlab.train.checkpoint`.

This file holds the loop, the run directory and the signals; the rest of the trainer lives beside it, one seam per
file: the step (:mod:`kdlab.train.step`), evaluation (:mod:`kdlab.train.evaluation`), checkpoint state
(:mod:`kdlab.train.state`), several processes (:mod:`kdlab.train.ddp`), provenance (:mod:`kdlab.train.provenance`).
Their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from kdlab import interrupts
from kdlab.config import ConfigError, RunConfig, dump_config, to_dict
from kdlab.methods.base import MAIN_STAGE, AuxContext, PrepareContext, Stage
from kdlab.metrics import format_metrics, select_key
from kdlab.models.base import count_parameters
from kdlab.runlock import RunLock, first_missing_ancestor, remove_unused_run_dir
from kdlab.train import distributed
from kdlab.train.build import Run, build_run, resolve_device
from kdlab.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointNotFoundError,
    append_line,
    atomic_save,
    atomic_write_text,
    read_file,
    remove_stale_temporaries,
)
from kdlab.train.ddp import TrainerDistributedMixin
from kdlab.train.display import ProgressDisplay
from kdlab.train.ema import TrainerEMAMixin
from kdlab.train.evaluation import TrainerEvaluationMixin, accuracy, evaluate, run_metrics
from kdlab.train.header import log_header
from kdlab.train.optim import make_optimizer
from kdlab.train.provenance import git_commit, versions
from kdlab.train.runrecord import RunExistsError, check_resume_config, move_aside, repair_metrics
from kdlab.train.schedule import learning_rate, warn_if_warmup_outlasts_run
from kdlab.train.state import TrainerCheckpointMixin
from kdlab.train.step import TrainerStepMixin, TrainStep, functional_student_outputs
from kdlab.train.strategy import check_strategy
from kdlab.train.tensorboard import open_tensorboard
from kdlab.types import Batch, Outputs, Progress

__all__ = [
    "NonFiniteLossError",
    "TrainStep",
    "Trainer",
    "TrainingInterrupted",
    "accuracy",
    "default_run_name",
    "evaluate",
    "functional_student_outputs",
    "git_commit",
    "run_metrics",
    "versions",
]

log = logging.getLogger("kdlab")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written after the current step."""


def default_run_name(cfg: RunConfig) -> str:
    """``<method>__<teacher>__<student>__s<seed>`` (``<method>__<student>__s<seed>`` without a teacher)."""
    parts = [cfg.method.name, *[t.name for t in cfg.model.teachers], cfg.model.student, f"s{cfg.train.seed}"]
    return "__".join(p.replace(":", "-").replace("/", "-") for p in parts)


class Trainer(
    TrainerStepMixin, TrainerEvaluationMixin, TrainerCheckpointMixin, TrainerDistributedMixin, TrainerEMAMixin
):
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
        check_strategy(cfg)  # label smoothing and EMA settings (kdlab/train/strategy.py)
        self.world, device, self._owns_group = distributed.init(resolve_device(cfg.train.device))
        try:
            self.run: Run = build_run(cfg, device=device)
            self._setup_distributed_data()
            self._setup_speed()
            self._setup_ema()  # train.ema_decay: the student's moving average (kdlab/train/ema.py)
        except BaseException:
            distributed.teardown(self._owns_group)
            raise
        r = self.run
        self.metric_names = run_metrics(cfg, r.splits)
        self.aux = list(r.method.aux_objectives())
        self.steps_per_epoch = r.data.steps_per_epoch()
        warn_if_warmup_outlasts_run(cfg.optim, self.steps_per_epoch, cfg.train.epochs)  # e.g. a 1x recipe shortened
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
        return make_optimizer(o, params, stage.lr if stage.lr is not None else o.lr)  # kdlab/train/optim.py

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

    def _data_epoch(self, epoch: int) -> int:
        """The epoch whose data stream epoch ``epoch`` replays (``train.replay_epochs``)."""
        replay = self.cfg.train.replay_epochs
        return epoch % replay if replay > 0 else epoch

    def _prepare_context(self) -> PrepareContext:
        def batches(taps=()) -> Iterator:
            for batch in self.run.data.eval_batches("train"):
                yield batch, [t.outputs(batch, ("x",), taps)["x"] for t in self.run.teachers]

        return PrepareContext(teacher_outputs=batches, device=self.run.device)

    # ----------------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self, progress: Progress) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0); a second stop signal waits until the file is complete.

        Several processes: every rank returns only once rank 0's file is complete, so a rank that stops (or ends)
        right after never leaves the checkpoint half-way: an exiting rank makes ``torchrun`` stop the others, which
        would lose the step the ranks agreed to stop at."""
        if self.world.main:  # several processes: rank 0 writes
            self._writing = True
            try:
                atomic_save(self.state_dict(progress), self.ckpt_path)
            finally:
                self._writing = False
        distributed.barrier()
        self._last_checkpoint = progress
        if self._second_signal:
            raise interrupts.Interrupted(
                self._stop_signal, f"stopped by a second signal; {self._checkpoint_note()}. Resume with --resume"
            )

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
        else empty. ``sums`` weight every step's value by its global batch size, so the epoch's logged means are per
        sample (a small last batch weighs as its samples, not as a full batch)."""
        acc = self._epoch_accum
        if progress.step_in_epoch > 0 and acc is not None and acc.get("epoch") == progress.epoch:
            sums = dict(acc["sums"])
            if not acc.get("per_sample"):  # a checkpoint whose sums are per step: weight them by the mean batch
                sums = {k: v * acc["images"] / max(acc["n_steps"], 1) for k, v in sums.items()}
            acc = {**acc, "sums": sums, "step_times": list(acc["step_times"]), "per_sample": True}
        else:
            acc = {"epoch": progress.epoch, "sums": {}, "n_steps": 0, "time_s": 0.0, "images": 0, "step_times": []}
            acc["per_sample"] = True
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
                self._ema_restart(progress)  # the main stage's first step: the average starts from these weights
                done = dataclasses.replace(progress, step=progress.step + 1, step_in_epoch=progress.step_in_epoch + 1)
                early = self._aux_before_step(batch, progress, done, lr, teachers) if main else None
                logs = self._backward_step(loss, early)  # with train.clip_grad_norm: grad_norm, grad_clipped
                self._ema_update(progress)
                self.global_step += 1
                for aux in self.aux if main else ():
                    if aux.due(progress) and not aux.before_optimizer_step:
                        logs.update(aux.step(self._aux_context(batch, done, lr, teachers)))
                values = dict(zip(named, term_values))
                values["loss"] = loss_value
                values.update(logs)
                now = time.perf_counter()
                dt, t_prev = now - t_prev, now
                n = batch.size * self.world.size  # shards are equal: the global batch
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                acc["n_steps"] += 1
                acc["time_s"] += dt
                acc["step_times"].append(dt)
                acc["images"] += n
                acc["lr_last"] = lr
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
                # a schedule that moves every step: the rate of the epoch's last step too
                **({"lr_last": acc["lr_last"]} if acc.get("lr_last", epoch_lr) != epoch_lr else {}),
                "train": {k: v / max(acc["images"], 1) for k, v in sums.items()},  # per-sample means
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
                    + (f"ema top1 {record['test']['ema_top1']:.2f} " if "ema_top1" in record["test"] else "")
                    + f"({record['images_per_s']:.0f} img/s)"
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
            label_smoothing=step.label_smoothing,
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
            **self._ema_summary(evals),  # train.ema_decay: the average's settings and best evaluation
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


def _sentence(text: str) -> str:
    """``text`` with its first letter upper-case (the rest unchanged, unlike ``str.capitalize``)."""
    return text[:1].upper() + text[1:]
