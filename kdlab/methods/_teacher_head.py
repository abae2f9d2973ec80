"""Running student features through a frozen teacher's classifier (SRRL, SimKD).

Both methods map the student's features to the teacher's width and score them with the teacher's own final linear
layer. The classifier must never be optimised, never receive a gradient and never change, while gradients flow
through it into the features. :class:`FrozenHead` holds a constant copy of its weight and bias as buffers:

- buffers are not parameters, so the build-time stray-parameter check passes and no optimiser ever sees them;
- ``persistent=True`` puts the copy in the method's state dict, so a training checkpoint alone rebuilds a model that
  predicts through the head (SimKD's deployable model); ``persistent=False`` keeps the state dict free of it
  (SRRL, which only needs the head during training).

The copy is taken when the method is built, after the teacher's weights are loaded.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from kdlab.models.base import TapError


class FrozenHead(nn.Module):
    """A constant copy of a teacher's final ``nn.Linear``.

    Args:
        classifier: the teacher's classifier (``BuildContext.teacher_classifiers[i]``).
        in_features: the width the caller will feed (checked against the classifier).
        method: the method's name, for error messages.
        persistent: whether the copy is saved in the method's state dict.

    Raises:
        TapError: the classifier is not a linear layer, or takes another width than ``in_features``.

    Shapes:
        ``[B, D]`` -> ``[B, K]``.
    """

    def __init__(self, classifier: nn.Module, in_features: int, method: str, persistent: bool = False) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Linear):
            raise TapError(
                f"method {method!r} reuses the teacher's classifier, which must be an nn.Linear; this teacher's is "
                f"{type(classifier).__name__}"
            )
        if classifier.in_features != in_features:
            raise TapError(
                f"method {method!r} feeds the teacher's classifier {in_features} features, but it takes "
                f"{classifier.in_features}; choose a teacher whose classifier reads the map being matched"
            )
        self.register_buffer("weight", classifier.weight.detach().clone(), persistent=persistent)
        bias = classifier.bias.detach().clone() if classifier.bias is not None else None
        self.register_buffer("bias", bias, persistent=persistent)

    @property
    def in_features(self) -> int:
        """``D``."""
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        """``K``."""
        return int(self.weight.shape[0])

    def forward(self, feat: Tensor) -> Tensor:
        """``[B, D]`` features -> ``[B, K]`` logits; gradients reach ``feat`` only."""
        return F.linear(feat, self.weight, self.bias)

    def as_linear(self) -> nn.Linear:
        """A stand-alone frozen ``nn.Linear`` with this head's values (for a deployable model)."""
        # skip_init: no random initialisation, so exporting never advances the global random stream
        linear = skip_init(
            nn.Linear,
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        linear.weight.data.copy_(self.weight)
        if self.bias is not None:
            linear.bias.data.copy_(self.bias)
        linear.requires_grad_(False)
        return linear
