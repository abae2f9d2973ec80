"""The training step: the trainable module, the student's functional outputs, and the trainer's half of the step.

- :class:`TrainStep`: the student and the method in one module (the only thing wrapped in DDP or compiled); its
  forward runs the student on the views the method needs and returns the method's :class:`~kdlab.types.LossOut`.
- :func:`functional_student_outputs`: the student's outputs with substituted parameters (``torch.func``), e.g. for a
  hypergradient's virtual step.
- :class:`TrainerStepMixin`: the :class:`~kdlab.train.trainer.Trainer` methods around one step: precision, memory
  format, compilation and teacher-output reuse set-up, the teachers' outputs, backward and optimiser step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kdlab.config import RunConfig
from kdlab.methods.scaling import apply_scales
from kdlab.train.build import Run
from kdlab.train.precision import CompiledStep, Precision, to_float
from kdlab.types import Batch, LossOut, Needs, Outputs, Progress, StepIO


class TrainStep(nn.Module):
    """The student and the method in one module: the only thing trained, wrapped in DDP or compiled.

    Args:
        student: the student model (tap contract).
        method: the distillation method (its ``adapters`` are trained with the student).
        needs: what the method reads.
        precision: autocast and loss precision (default fp32).
        label_smoothing: the run's ``train.label_smoothing``, handed to the method in :class:`~kdlab.types.StepIO`.
    """

    def __init__(
        self,
        student: nn.Module,
        method: nn.Module,
        needs: Needs,
        precision: Precision | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.method = method
        self.needs = needs
        self.precision = precision or Precision()
        self.term_scales: dict[str, float] = {}
        """Factors of the method's loss terms (``train.weight_scaling``, :mod:`kdlab.methods.scaling`); empty: none."""
        self.label_smoothing = label_smoothing

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
        io = StepIO(to_float(student), teachers, batch, progress, label_smoothing=self.label_smoothing)
        with self.precision.loss_context():
            return apply_scales(self.method.loss(io), self.term_scales)


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


class TrainerStepMixin:
    """The :class:`~kdlab.train.trainer.Trainer`'s step machinery. Reads ``cfg``, ``run`` and ``optimizer``;
    :meth:`_setup_speed` sets ``precision``, ``step_module``, ``step_call``, ``scaler``, ``teacher_cache`` and
    ``teacher_cache_reason``. ``_distributed_step`` and ``_data_epoch`` come from the trainer's other parts."""

    cfg: RunConfig
    run: Run
    optimizer: torch.optim.Optimizer

    def _setup_speed(self) -> None:
        """Precision, memory format, compilation and teacher-output reuse (``kdlab.train.precision``,
        ``kdlab.train.teacher_cache``); builds :attr:`step_module` and the callable :attr:`step_call` that runs it."""
        from kdlab.train.teacher_cache import build_teacher_cache
        from kdlab.train.weight_scaling import calibrate

        r, tc = self.run, self.cfg.train
        self.precision = Precision.from_config(tc, r.device)
        for model in (r.student, *r.teachers):
            self.precision.prepare_model(model)
        self.step_module = TrainStep(r.student, r.method, r.needs, self.precision, tc.label_smoothing)
        self.step_module.term_scales = calibrate(r)  # train.weight_scaling (kdlab/train/weight_scaling.py)
        self.step_call = CompiledStep(self._distributed_step(self.step_module), tc.compile)
        self.scaler = self.precision.make_scaler()
        self.teacher_cache, self.teacher_cache_reason = build_teacher_cache(
            self.cfg, r, self.teacher_outputs, self.precision.prepare_batch
        )

    def _step_teachers(self, batch: Batch, progress: Progress) -> tuple[dict[str, Outputs], ...]:
        """The teachers' outputs of a training step: from the teacher cache when one applies."""
        if self.teacher_cache is None:
            return self.teacher_outputs(batch)
        return self.teacher_cache.outputs(batch, self._data_epoch(progress.epoch), progress.step_in_epoch)

    def _backward_step(
        self, loss: Tensor, before_step: Callable[[bool], dict[str, float]] | None = None
    ) -> dict[str, float]:
        """Backward, gradient clipping (``train.clip_grad_norm``) and optimiser step (loss-scaled in fp16); returns the
        step's logged values of the clipping (empty without it; :func:`kdlab.train.clipping.clip_gradients`) and of
        ``before_step(plain)``, called before the optimiser step (``plain``: the gradients are the loss's own, neither
        clipped nor loss-scaled). Without loss scaling it runs before the clipping, on the loss's own gradients (it
        reads them and leaves them alone: :attr:`~kdlab.methods.base.AuxObjective.before_optimizer_step`), so a
        learned fusion policy's outer step reuses the step's gradient under ``train.clip_grad_norm`` too."""
        from kdlab.train.clipping import clip_gradients

        max_norm, logs = self.cfg.train.clip_grad_norm, {}
        if self.scaler is None:
            loss.backward()
            early = before_step(True) if before_step is not None else {}
            if max_norm is not None:
                logs = clip_gradients(self.optimizer, max_norm)
            logs.update(early)
            self.optimizer.step()
            return logs
        self.scaler.scale(loss).backward()
        if max_norm is not None:
            logs = clip_gradients(self.optimizer, max_norm, self.scaler)
        if before_step is not None:
            logs.update(before_step(False))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logs

    def _aux_before_step(
        self, batch: Batch, progress: Progress, done: Progress, lr: float, teachers: tuple
    ) -> Callable[[bool], dict[str, float]] | None:
        """The aux objectives due at ``progress`` that run before the optimiser step
        (:attr:`~kdlab.methods.base.AuxObjective.before_optimizer_step`), as :meth:`_backward_step`'s ``before_step``;
        None when there are none. They get the step's gradient (``AuxContext.step_grads``) when it is exactly the
        gradient of the method's loss: plain (before any clipping, not loss-scaled), fp32, no term factors, one
        process."""
        due = [a for a in self.aux if a.before_optimizer_step and a.due(progress)]
        if not due:
            return None

        def run(plain: bool) -> dict[str, float]:
            exact = (
                plain
                and self.precision.student == torch.float32
                and all(f == 1.0 for f in self.step_module.term_scales.values())
                and self.world.size == 1
            )
            named = self.run.student.named_parameters()
            grads = {n: p.grad for n, p in named if p.requires_grad} if exact else None
            ctx = dataclasses.replace(self._aux_context(batch, done, lr, teachers), step_grads=grads)
            logs: dict[str, float] = {}
            for aux in due:
                logs.update(aux.step(ctx))
            return logs

        return run

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
            outs = tuple(t.outputs(batch, n.views, n.teacher_taps, n.teacher_logits) for t in self.run.teachers)
        return tuple(to_float(o) for o in outs)
