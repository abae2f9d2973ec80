"""Compute cost of a model, for ``kdlab list models``.

:func:`count_flops` counts **multiply-accumulates (MACs)** of convolution and linear layers, the quantity the KD
and efficient-network papers report as "FLOPs" (one MAC = one multiply + one add). Multiply by 2 for
floating-point operations in the strict sense.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd


def _conv_macs(module: _ConvNd, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    """MACs of one convolution call on a batch of 1."""
    kernel = math.prod(module.kernel_size)
    if module.transposed:  # every input element is scattered over (C_out / groups) * kernel outputs
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """Multiply-accumulates (MACs) of one forward of a single image.

    Counts ``nn.Conv1d/2d/3d`` (and transposed) layers as ``output elements x (C_in / groups) x kernel size``
    and ``nn.Linear`` layers as ``output elements x in_features``, via forward hooks on one dry run in eval mode
    (a layer called twice is counted twice). Biases, normalisation, activations, pooling, and matrix products
    written as functions (e.g. attention) are not counted.

    Args:
        model: any ``nn.Module`` taking ``[1, C, H, W]``.
        input_size: ``(C, H, W)`` of one image; defaults to ``model.input_size``.

    Returns:
        MACs per image (an int; "FLOPs" in the KD papers' usage).
    """
    size = tuple(input_size if input_size is not None else model.input_size)
    total = 0

    def conv_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += _conv_macs(module, inputs, output)

    def linear_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, _ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return int(total)
