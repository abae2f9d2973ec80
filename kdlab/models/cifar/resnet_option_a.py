"""The original CIFAR ResNets with parameter-free "option A" shortcuts (``resnet20_a`` .. ``resnet110_a``).

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385, section 4.2: 6n+2 layers, a 16-channel 3x3 stem, three stages of n basic blocks with 16, 32,
64 channels, and identity shortcuts that are subsampled and zero-padded where the shape changes (option A).

Checked against: the checkpoint layout and behaviour of akamaster/pytorch_resnet_cifar10 (commit
d5489e8995e81e91ce6b1d69dcc98ad579b0b153, ``pretrained_models/``), as described in the project's
``shared/data/cifar10_resnets_akamaster/README.md``: parameter names ``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear`` (checkpoints saved from ``DataParallel`` carry a
``module.`` prefix, which :func:`kdlab.models.checkpoints.load_state_dict_flexible` strips). The public ResNet-20
and ResNet-56 checkpoints load with ``strict=True`` and reproduce the accuracies in that README
(``tests/test_models_cifar_a.py``). Their parameter counts for 10 classes are 269,722 and 853,018.

Shortcut (option A), where the stride or the channel count changes: ``x[:, :, ::2, ::2]`` (for stride 2)
zero-padded along channels with ``(c_out - c_in) / 2`` channels on each side (``planes // 4`` for the usual
doubling); no parameters.

Taps (32x32 input): ``stem`` 16x32x32 (after the stem ReLU), ``stage1`` 16x32x32, ``stage2`` 32x16x16,
``stage3`` 64x8x8, ``stageK.pre`` (the last block's residual sum before its ReLU), ``pool`` 64.

Deviations:
- ``classifier`` is an alias of ``linear`` (the tap contract's name); the state dict holds ``linear.*`` only.
- When the channel count grows by an odd number the extra zero channel goes to the end (the reference pads
  ``planes // 4`` on both sides, which assumes doubling; every registered model doubles).
- ``in_channels`` is configurable (the reference hard-codes 3); ``resnet1202`` is not registered.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.cifar.resnet_crd import CifarResNet

__all__ = ["OptionAResNet", "option_a_shortcut"]


def option_a_shortcut(x: Tensor, c_out: int, stride: int) -> Tensor:
    """Parameter-free shortcut: subsample by ``stride`` and zero-pad channels to ``c_out``.

    Args:
        x: ``[B, c_in, H, W]``.
        c_out: output channels (``>= c_in``).
        stride: spatial subsampling factor (1 or 2).

    Returns:
        ``[B, c_out, ceil(H / stride), ceil(W / stride)]``; channels ``[lo, lo + c_in)`` hold ``x`` with
        ``lo = (c_out - c_in) // 2``, the rest are zeros.
    """
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    extra = c_out - x.shape[1]
    if extra:
        lo = extra // 2
        x = F.pad(x, (0, 0, 0, 0, lo, extra - lo))
    return x


class _BlockA(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + option-A shortcut; returns the sum *before* the final ReLU.

    ``[B, c_in, H, W] -> [B, c_out, H / stride, W / stride]``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"option-A shortcuts cannot reduce channels ({c_in} -> {c_out})")
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.c_out = c_out
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.bn2(self.conv2(h))
        return h.add_(option_a_shortcut(x, self.c_out, self.stride))  # in place on the BN output, as resnet_crd


class OptionAResNet(CifarResNet):
    """He et al. (2016) CIFAR ResNet-(6n+2) with option-A shortcuts: the CRD-benchmark ResNet's stem, stages and
    taps (:class:`~kdlab.models.cifar.resnet_crd.CifarResNet`) with parameter-free shortcut blocks, the classifier
    stored as ``linear`` and the reference's initialisation.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: output classes ``K`` (the public checkpoints have 10).
        in_channels: input channels ``C``.
        widths: stem and stage widths (the paper's ``(16, 16, 32, 64)``).

    Shapes: ``[B, C, 32, 32] -> [B, K]``; taps as in the module docstring.
    """

    _classifier_attr = "linear"

    def __init__(
        self,
        depth: int,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__(depth, widths, num_classes, in_channels, block=_BlockA)

    def _init_weights(self) -> None:
        """Kaiming-normal (fan-in) convolutions and linear layer, as the reference."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)


def _builder(name: str, depth: int):
    def build(num_classes: int = 100, in_channels: int = 3) -> OptionAResNet:
        return OptionAResNet(depth, num_classes=num_classes, in_channels=in_channels)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"He et al. (2016) CIFAR ResNet-{depth} with option-A shortcuts (loads the akamaster checkpoints): "
        "``[B, C, 32, 32] -> [B, num_classes]``."
    )
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}_a", family="cifar", input_size=(3, 32, 32))(_builder(f"resnet{_depth}_a", _depth))
