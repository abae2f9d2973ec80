"""Per-model input normalisation: a model trained with other mean/std than the dataset's sees its own inputs.

The loader normalises every batch once with the dataset's mean/std (``x = (x_raw - m_d) / s_d``). A model trained
with its own ``(m, s)`` (e.g. a CIFAR ResNet trained with ImageNet statistics) needs ``(x_raw - m) / s`` instead,
which is the affine per-channel map ``x * (s_d / s) + (m_d - m) / s`` of the batch it receives. :class:`InputNorm`
holds that map in non-persistent buffers (no state-dict keys, so checkpoints are unchanged) and
:func:`set_input_normalization` attaches it to a :class:`~kdlab.models.base.TapModel`, whose ``forward`` and
``forward_taps`` apply it first. Teachers (``model.teachers.N.input_mean/std``) and students
(``model.student_input_mean/std``) use the same map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class InputNorm(nn.Module):
    """``[B, C, H, W]`` inputs normalised with the dataset's mean/std -> normalised with the model's own.

    Args:
        data_mean, data_std: the dataset's per-channel normalisation (what the loader applied).
        model_mean, model_std: the model's own per-channel normalisation; None keeps the dataset's.
    """

    def __init__(
        self,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        model_mean: Sequence[float] | None = None,
        model_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        c = len(data_mean)
        for what, values in (("mean", model_mean), ("std", model_std)):
            if values is not None and len(values) != c:
                raise ValueError(
                    f"input {what} has {len(values)} values but the data has {c} channel(s); give one per channel"
                )
        if model_std is not None and any(v <= 0 for v in model_std):
            raise ValueError(f"input std must be > 0 per channel, got {list(model_std)}")
        d_mean = torch.tensor(list(data_mean), dtype=torch.float32)
        d_std = torch.tensor(list(data_std), dtype=torch.float32)
        m_mean = torch.tensor(list(model_mean), dtype=torch.float32) if model_mean is not None else d_mean
        m_std = torch.tensor(list(model_std), dtype=torch.float32) if model_std is not None else d_std
        self.model_mean = tuple(float(v) for v in m_mean)
        self.model_std = tuple(float(v) for v in m_std)
        # x_raw = x * d_std + d_mean;  x_model = (x_raw - m_mean) / m_std
        self.register_buffer("scale", (d_std / m_std).view(1, c, 1, 1), persistent=False)
        self.register_buffer("shift", ((d_mean - m_mean) / m_std).view(1, c, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]`` renormalised (same dtype as ``x``)."""
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


def set_input_normalization(
    model: nn.Module,
    data_mean: Sequence[float],
    data_std: Sequence[float],
    model_mean: Sequence[float] | None = None,
    model_std: Sequence[float] | None = None,
) -> nn.Module:
    """Make ``model`` (a :class:`~kdlab.models.base.TapModel`) renormalise its inputs from the dataset's mean/std
    to ``model_mean``/``model_std``; with both None, remove any such step. Returns ``model``.

    The map is the submodule ``model.input_norm`` (buffers only, not in the state dict).
    """
    if model_mean is None and model_std is None:
        if "input_norm" in model._modules:
            del model._modules["input_norm"]
        return model
    param = next(iter(model.parameters()), None)
    norm = InputNorm(data_mean, data_std, model_mean, model_std)
    model.input_norm = norm.to(param.device) if param is not None else norm
    return model
