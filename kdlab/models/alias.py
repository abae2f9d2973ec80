"""``classifier`` as an alias of a differently named final linear layer.

Some zoo models keep the parameter names of a public reference implementation so that its checkpoints load
with ``strict=True`` (e.g. ``fc.*`` for the CRD-benchmark ResNets, ``linear.*`` for the He et al. option-A
ResNets). The tap contract still needs ``model.classifier`` to be the final ``nn.Linear``; this mixin makes it
an alias, so the state dict holds the layer once, under its reference name.
"""

from __future__ import annotations

from torch import nn


class ClassifierAlias:
    """Mixin for :class:`~kdlab.models.base.TapModel` subclasses: ``classifier`` reads and writes the module
    named by ``_classifier_attr``.

    Put it before ``TapModel`` in the bases. Assigning ``model.classifier = layer`` replaces the aliased module,
    so the state dict never holds the layer twice.
    """

    _classifier_attr: str = "fc"

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer ``[B, D] -> [B, K]`` (stored under ``_classifier_attr``)."""
        return getattr(self, self._classifier_attr)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "classifier":
            name = self._classifier_attr
        super().__setattr__(name, value)
