"""Frozen teachers: eval mode, no gradients, inference mode, never wrapped in DDP."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from kdlab.models.input_norm import InputNorm
from kdlab.types import Batch, Outputs


class FrozenTeacher(nn.Module):
    """A frozen teacher model that returns :class:`Outputs` for the views and taps a method needs.

    When the teacher was trained with another input normalisation than the dataset's, its input is re-normalised
    (:class:`~kdlab.models.input_norm.InputNorm`: ``x_t = x * scale + shift`` per channel, from the dataset's and the
    teacher's mean/std).

    Args:
        model: the teacher (a tap model).
        name: its registry name (for messages).
        data_mean, data_std: the dataset's normalisation.
        input_mean, input_std: the teacher's own normalisation, or None when equal to the dataset's.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        data_mean: tuple[float, ...],
        data_std: tuple[float, ...],
        input_mean: list[float] | None = None,
        input_std: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.renormalize = input_mean is not None or input_std is not None
        self.input_norm = InputNorm(data_mean, data_std, input_mean, input_std) if self.renormalize else None

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Teachers always stay in eval mode."""
        return super().train(False)

    @torch.inference_mode()
    def _run(
        self, x: Tensor | Mapping[str, Tensor], taps: Collection[str], logits: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.input_norm is not None:
            # a dict input (a detection batch) carries its images under "images"
            x = {**x, "images": self.input_norm(x["images"])} if isinstance(x, Mapping) else self.input_norm(x)
        if not logits and getattr(self.model, "optional_logits", False):
            return self.model.forward_taps(x, tuple(taps), logits=False)
        return self.model.forward_taps(x, tuple(taps))

    def outputs(
        self, batch: Batch, views: Collection[str], taps: Collection[str], logits: bool = True
    ) -> dict[str, Outputs]:
        """The teacher's outputs on each view of ``batch``.

        Tensors computed under inference mode cannot be saved for backward by the student's loss, so the
        (small) outputs are cloned into ordinary tensors outside inference mode.

        Args:
            batch: the batch (its views ``batch.view(v)``).
            views: the views to run.
            taps: the teacher taps to return.
            logits: False when nobody reads the logits (``Needs.teacher_logits``): a model with
                ``optional_logits`` (the detectors) then skips what only its logits need and returns a placeholder
                with no rows (``[B, 0, 6]`` for a detector); other models compute their logits as always.
        """
        out = {}
        for view in views:
            logits_v, feats = self._run(batch.view(view), taps, logits)
            out[view] = Outputs(logits_v.clone(), {k: v.clone() for k, v in feats.items()})
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, K]`` logits (inference mode)."""
        return self._run(x, ())[0].clone()
