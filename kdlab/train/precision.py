"""Mixed precision, memory format and compilation of the training step (issue 9, "One device, fast").

Policy (``train.precision``, ``train.teacher_precision``, ``train.channels_last``, ``train.compile``):

- The student's forward runs under ``torch.autocast`` of the run's device type in the run's precision (``bf16`` or
  ``fp16``; ``fp32`` disables autocast). The frozen teachers run under autocast in ``train.teacher_precision``
  (default: the run's precision), so a teacher may run lower than the student (e.g. a bf16 teacher, fp32 student).
- **Losses are computed in fp32**: every student and teacher output (logits and taps) is cast to float32 before the
  method sees it, and the method's ``loss`` (including its adapters, e.g. FitNet's regressors) runs with autocast
  disabled. Low precision therefore covers the model forwards and backwards, the bulk of the work, while softmaxes
  at temperature, KL divergences, Gram matrices and memory banks stay fp32. The parameters, gradients and optimiser
  state stay fp32 (autocast is not a model cast).
- ``fp16`` scales the loss with :class:`torch.amp.GradScaler` (its state is checkpointed); ``bf16`` needs no scaling.
- ``channels_last`` converts the student, the teachers and every input batch to the channels-last memory format
  (values unchanged; convolution kernels pick NHWC layouts, notably faster with bf16 on CPU and tensor cores).
- ``compile`` wraps the trainable step (student + method) in :func:`torch.compile`; if compilation fails (no
  compiler, an unsupported construct), the step runs eagerly and a warning says why (:class:`CompiledStep`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.config import ConfigError
from kdlab.types import Batch, Outputs

log = logging.getLogger("kdlab")

#: ``train.precision`` names -> torch dtypes.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_precision(name: str, key: str = "train.precision") -> torch.dtype:
    """The dtype of a precision name (``fp32``, ``bf16``, ``fp16``); anything else is a :class:`ConfigError`."""
    if name not in DTYPES:
        raise ConfigError(f"{key}={name!r} is not a precision; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class Precision:
    """The numeric policy of a run on one device.

    Attributes:
        device_type: ``"cpu"``, ``"cuda"``, ... (the autocast device type).
        student: dtype of the student's forward/backward under autocast (float32: no autocast).
        teacher: dtype of the teachers' forward under autocast.
        channels_last: models and ``[B, C, H, W]`` inputs in the channels-last memory format.
    """

    device_type: str = "cpu"
    student: torch.dtype = torch.float32
    teacher: torch.dtype = torch.float32
    channels_last: bool = False

    @classmethod
    def from_config(cls, train_cfg: Any, device: torch.device) -> Precision:
        """The policy of ``train.precision``/``teacher_precision``/``channels_last`` on ``device``; an unsupported
        combination is a :class:`ConfigError` that says what to use instead."""
        student = parse_precision(train_cfg.precision)
        teacher_name = train_cfg.teacher_precision or train_cfg.precision
        teacher = parse_precision(teacher_name, "train.teacher_precision")
        for dtype, key in ((student, "train.precision"), (teacher, "train.teacher_precision")):
            if dtype == torch.float32:
                continue
            name = next(k for k, v in DTYPES.items() if v == dtype)
            if not torch.amp.is_autocast_available(device.type):
                raise ConfigError(
                    f"{key}={name}: autocast is not available on device type {device.type!r}; use {key}=fp32"
                )
            if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                raise ConfigError(f"{key}=bf16: this GPU does not support bfloat16; use {key}=fp16 or fp32")
        if device.type == "mps" and torch.float16 in (student, teacher):
            raise ConfigError("train.precision=fp16 is not supported on MPS by kdlab; use bf16 or fp32")
        return cls(device.type, student, teacher, bool(train_cfg.channels_last))

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16`` (the student's precision)."""
        return next(k for k, v in DTYPES.items() if v == self.student)

    @property
    def teacher_name(self) -> str:
        """The teachers' precision name."""
        return next(k for k, v in DTYPES.items() if v == self.teacher)

    @property
    def uses_scaler(self) -> bool:
        """Whether gradients need loss scaling (fp16)."""
        return self.student == torch.float16

    def student_autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context of the student's forward (a no-op in fp32)."""
        return _autocast(self.device_type, self.student)

    def teacher_autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context of the teachers' forward (a no-op in fp32)."""
        return _autocast(self.device_type, self.teacher)

    def loss_context(self) -> contextlib.AbstractContextManager:
        """Context of the method's loss: autocast disabled, so the loss runs in fp32 on fp32 inputs."""
        if self.student == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A :class:`torch.amp.GradScaler` for fp16, None otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.uses_scaler else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Convert ``model`` in place to the run's memory format (parameters stay fp32); returns it."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_batch(self, batch: Batch) -> Batch:
        """``batch`` with its images (default view and extra views) in the run's memory format."""
        if not self.channels_last:
            return batch
        return dataclasses.replace(
            batch,
            x=_channels_last(batch.x),
            views={k: _channels_last(v) for k, v in batch.views.items()},
        )

    def record(self) -> dict[str, object]:
        """The effective settings, for the run record."""
        return {"precision": self.name, "teacher_precision": self.teacher_name, "channels_last": self.channels_last}


def _autocast(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def _channels_last(x: Tensor | Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """4-D image tensors in channels_last; a dict input (tokens, a detection batch) entry by entry."""
    if isinstance(x, Mapping):
        return {k: _channels_last(v) for k, v in x.items()}
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def to_float(outputs: Mapping[str, Outputs]) -> dict[str, Outputs]:
    """Per view, :class:`Outputs` with logits ``[B, K]`` and every tap cast to float32 (a no-op for fp32 tensors)."""
    return {view: Outputs(o.logits.float(), {k: v.float() for k, v in o.taps.items()}) for view, o in outputs.items()}


class CompiledStep:
    """Calls ``torch.compile(module)``; if compiling or running the compiled step fails, warns once and calls the
    eager module from then on.

    A failure of the compiled call is retried eagerly on the same inputs, so a genuine error of the step (a bad
    config, a shape mismatch) still surfaces from the eager call with its ordinary message. Before that retry the
    module's state (parameters, buffers: BatchNorm statistics, a method's memories and counters), the global RNG
    states and the method's generators are put back as they were before the failed call, so a side effect of the
    step (a memory update, a state counter) is applied once, not twice.

    Args:
        module: the trainable step (an ``nn.Module``).
        enabled: False to always run eagerly (``train.compile: false``).

    Attributes:
        status: ``"off"``, ``"compiled"`` (after a successful compiled call) or ``"fallback: <reason>"``.
    """

    def __init__(self, module: nn.Module, enabled: bool) -> None:
        self.module = module
        self.status = "off"
        self._compiled: Callable[..., Any] | None = None
        if enabled:
            try:
                self._compiled = torch.compile(module)
                self.status = "pending"
            except Exception as err:  # any failure means "run eagerly"
                self._fallback(err)

    def _fallback(self, err: BaseException) -> None:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".strip()
        self.status = f"fallback: {reason[:300]}"
        self._compiled = None
        log.warning("train.compile: torch.compile is unavailable here (%s); the step runs eagerly", reason[:300])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.module(*args, **kwargs)
        if self.status == "compiled":
            return self._compiled(*args, **kwargs)
        snapshot = _snapshot(self.module)
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as err:  # first call: compilation errors surface here
            self._fallback(err)
            _restore(self.module, snapshot)  # undo what the failed call did before the eager retry
            return self.module(*args, **kwargs)
        self.status = "compiled"
        return out


def _generator_owner(module: nn.Module) -> Any:
    inner = getattr(module, "module", module)  # DDP wraps the step module
    method = getattr(inner, "method", None)
    return method if hasattr(method, "generator_state") and hasattr(method, "set_generator_state") else None


_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _plain_attributes(module: nn.Module) -> list[tuple[nn.Module, dict]]:
    """Each submodule's own Python attributes (not parameters, buffers or submodules), containers copied one level:
    e.g. a method's list of pending updates or a step counter."""
    out = []
    for m in module.modules():
        attrs = {}
        for k, v in vars(m).items():
            if k in _MODULE_INTERNALS:
                continue
            attrs[k] = copy.copy(v) if isinstance(v, (list, dict, set)) else v
        out.append((m, attrs))
    return out


def _snapshot(module: nn.Module) -> dict:
    """What a call of the step may change: the module's state dict (copied), its submodules' plain attributes, the
    global RNGs, the method's generators."""
    owner = _generator_owner(module)
    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "attributes": _plain_attributes(module),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": owner.generator_state() if owner is not None else None,
    }


def _restore(module: nn.Module, snap: dict) -> None:
    with torch.no_grad():
        for k, v in module.state_dict().items():
            v.copy_(snap["state"][k])
    for m, attrs in snap["attributes"]:
        for k in [k for k in vars(m) if k not in _MODULE_INTERNALS and k not in attrs]:
            delattr(m, k)  # attributes the failed call created
        for k, v in attrs.items():
            object.__setattr__(m, k, v)
    torch.set_rng_state(snap["torch_rng"])
    if snap["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(snap["cuda_rng"])
    owner = _generator_owner(module)
    if owner is not None and snap["generators"] is not None:
        owner.set_generator_state(snap["generators"])


def eval_batches(batches: Iterator[Batch], precision: Precision) -> Iterator[Batch]:
    """``batches`` converted to the run's memory format."""
    for batch in batches:
        yield precision.prepare_batch(batch)
