"""The tap contract every kdlab model follows (DESIGN.md, "Models and feature taps").

A :class:`TapModel` is an ordinary classifier (``forward(x)`` returns logits) that can also return named
intermediate features: ``forward_taps(x, taps) -> (logits, {name: tensor})`` computes only what is asked.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn

from kdlab.types import TapInfo


class TapError(ValueError):
    """A method asked a model for a feature tap the model cannot provide."""


class TapModel(nn.Module):
    """Base class of kdlab models.

    Subclasses set ``self.classifier`` (the final ``nn.Linear``), implement :meth:`tap_info` and
    :meth:`_forward` and may override ``input_size``.

    Attributes:
        input_size: native ``(C, H, W)`` input size (used for FLOPs and the tap probe).
        classifier: the final linear layer (reused by SimKD-like methods).
    """

    input_size: tuple[int, int, int] = (3, 32, 32)
    classifier: nn.Linear

    def tap_info(self) -> tuple[TapInfo, ...]:
        """The taps this model can return, in network order."""
        raise NotImplementedError

    def tap_names(self) -> tuple[str, ...]:
        """Names of :meth:`tap_info`, in order."""
        return tuple(t.name for t in self.tap_info())

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the logits and the requested taps (subclasses). Must not compute taps nobody asked for
        when that costs anything, and must return exactly the names in ``taps``."""
        raise NotImplementedError

    def check_taps(self, taps: Collection[str], model_name: str | None = None) -> frozenset[str]:
        """Validate tap names; raise :class:`TapError` naming the model and the tap otherwise."""
        wanted = frozenset(taps)
        available = self.tap_names()
        missing = sorted(wanted - set(available))
        if missing:
            name = model_name or type(self).__name__
            raise TapError(
                f"model {name!r} cannot provide tap(s) {', '.join(missing)}; it provides: {', '.join(available)}"
            )
        return wanted

    def forward_taps(self, x: Tensor, taps: Collection[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the requested feature taps.

        Args:
            x: ``[B, C, H, W]`` input images.
            taps: canonical tap names to return.

        Returns:
            ``(logits [B, K], {name: [B, C, H, W] or [B, D]})`` with exactly the requested names.
        """
        wanted = self.check_taps(taps)
        logits, feats = self._forward(self._normalize_input(x), wanted)
        return logits, {k: feats[k] for k in taps}

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` images -> ``[B, K]`` logits."""
        return self._forward(self._normalize_input(x), frozenset())[0]

    def _normalize_input(self, x: Tensor) -> Tensor:
        """The model's own input normalisation, when it differs from the data's (:mod:`kdlab.models.input_norm`)."""
        norm = self._modules.get("input_norm")
        return x if norm is None else norm(x)

    def bn_before_relu(self, tap: str) -> nn.BatchNorm2d | None:
        """The BatchNorm whose output feeds the ReLU at pre-activation tap ``tap`` (``stageK.pre``), or None.

        OFD derives its per-channel margins from this BN's affine parameters (the pre-activation is modelled as
        ``N(beta, gamma^2)``; mdistiller's ``get_bn_before_relu``). Models whose ``stageK.pre`` is a BN output, or a
        residual sum whose branch ends in a BN, return that BN (``num_features`` equal to the tap's channels); the
        default, for models that cannot say, is None.
        """
        return None


def pre_tap_stage(tap: str) -> int | None:
    """``K`` of a ``stageK.pre`` tap name, None for any other name."""
    if tap.startswith("stage") and tap.endswith(".pre") and tap[5:-4].isdigit():
        return int(tap[5:-4])
    return None


@torch.no_grad()
def probe_taps(model: nn.Module, taps: Collection[str], input_size: tuple[int, ...] | None = None) -> dict:
    """Shapes of the requested taps from one dry forward of a batch of 2 on the model's device.

    Args:
        model: a :class:`TapModel` (or an adapter with ``forward_taps``).
        taps: tap names.
        input_size: ``(C, H, W)``; defaults to ``model.input_size``.

    Returns:
        ``{name: shape without the batch dimension}``, plus ``"logits"``.
    """
    size = tuple(input_size or model.input_size)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        logits, feats = model.forward_taps(torch.zeros(2, *size, device=device), tuple(taps))
    finally:
        model.train(was_training)
    shapes = {k: tuple(v.shape[1:]) for k, v in feats.items()}
    shapes["logits"] = tuple(logits.shape[1:])
    return shapes


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
