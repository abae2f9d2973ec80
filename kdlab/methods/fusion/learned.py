"""Learned fusion policies (``rw_kd``, ``tgeo_kd``): ``alpha_i = sigmoid(MLP_omega(features_i))`` over a
sample-fusion wrapper (:mod:`kdlab.methods.fusion.base`).

The student minimises the fused training loss with ``alpha`` fixed (detached); ``omega`` minimises the label loss of
the *updated* student on a held-out split (``holdout_fraction`` of the training set, stratified, never the test set):
every ``meta_every`` steps, between the student's backward and its optimiser step, :class:`HypergradientStep` makes
a virtual SGD step ``theta' = theta - eta * grad_theta L_train(theta, omega)`` on the same training batch (with the
main step's gradient) through ``torch.func.functional_call``, evaluates ``CE(f(x_val; theta'), y_val)`` on the next
held-out mini-batch (as many samples as the training batch) and steps ``omega``'s own optimiser along its gradient
(exact, by forward mode: see :class:`HypergradientStep`). ``omega`` lives in the method (its state dict, hence the
checkpoint); the optimiser state and the held-out position are the aux objective's state. The features read the
student's predictions detached, so the student cannot move ``alpha``.


Logged on the steps where ``omega`` moves: ``meta.heldout_ce`` and ``meta.hypergrad_norm``; every step:
``feature.<name>.mean/.std``, the batch mean and spread of the per-sample L2 norm of each input block of ``f_omega``
(TGeo-KD's ``e_sg`` .. ``tbar``, RW-KD's ``gt_loss`` and ``kd_loss``).

Deviations: see :mod:`kdlab.methods.fusion.hypergradient` (the solver).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.config import ConfigError, MethodConfig
from kdlab.method_configs.fusion import LearnedFusionConfig
from kdlab.methods.base import AuxObjective, BuildContext
from kdlab.methods.fusion.base import SampleFusion, SampleTerms, _check_unit
from kdlab.methods.fusion.hypergradient import HypergradientStep
from kdlab.types import Needs, StepIO


class RatioNet(nn.Module):
    """``f_omega``: an MLP ending in a sigmoid, ``[B, D] -> [B]`` ratios in (0, 1).

    The last layer starts with zero weights and the bias ``logit(init_ratio)``, so every sample starts at
    ``init_ratio`` and the network departs from it only as ``omega`` learns.

    Args:
        in_features: ``D``.
        hidden: widths of the hidden layers (ReLU), e.g. ``[128]``; empty for a logistic regression.
        init_ratio: the initial ratio, in (0, 1).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], init_ratio: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        last = nn.Linear(width, 1)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(math.log(init_ratio / (1.0 - init_ratio)))
        self.net = nn.Sequential(*layers, last)

    def forward(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.net(features)).squeeze(-1)


class LearnedFusion(SampleFusion):
    """A convex policy ``alpha_i = f_omega(features_i)`` learned on a held-out split (:class:`HypergradientStep`).

    Subclasses define :attr:`feature_dim` and :meth:`features` (``[B, D]``, detached from the student).
    """

    mixed_labels = "refuse"
    mixed_labels_reason = (
        "its fusion policy is learned on held-out batches, which are never mixed, from features of the "
        "label (the trilateral geometry), which a mixed image does not have"
    )

    Config = LearnedFusionConfig

    feature_dim: int = 0

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        _check_unit("init_ratio", cfg.init_ratio, open_interval=True)
        _check_unit("holdout_fraction", cfg.holdout_fraction, open_interval=True)
        if cfg.meta_every < 1:
            raise ConfigError(f"method.meta_every must be >= 1, got {cfg.meta_every}")
        if any(h < 1 for h in cfg.hidden):
            raise ConfigError(f"method.hidden must list positive widths, got {cfg.hidden}")
        if cfg.meta_lr <= 0 or (cfg.virtual_lr is not None and cfg.virtual_lr <= 0):
            raise ConfigError("method.meta_lr and method.virtual_lr must be > 0")
        self.ratio_net = RatioNet(self.feature_dim_for(cfg, ctx), cfg.hidden, cfg.init_ratio)
        self.meta = HypergradientStep(self)

    def feature_dim_for(self, cfg: MethodConfig, ctx: BuildContext) -> int:
        """``D``, the width of :meth:`features`."""
        raise NotImplementedError

    def features(self, io: StepIO, terms: SampleTerms) -> Tensor:
        """``[B, D]`` inputs of f_omega (detached from the student)."""
        raise NotImplementedError

    def feature_names(self) -> tuple[str, ...]:
        """Names of the equal-width blocks :meth:`features` concatenates (e.g. TGeo-KD's ``e_sg`` .. ``tbar``)."""
        raise NotImplementedError

    def diagnostics(self, io: StepIO, terms: SampleTerms) -> dict[str, Tensor]:
        """``feature.<name>.mean`` / ``.std``: batch mean and spread of each input block's L2 norm per sample (for a
        one-wide block, its absolute value)."""
        with torch.no_grad():
            return self._feature_stats(self.features(io, terms))

    def _feature_stats(self, features: Tensor) -> dict[str, Tensor]:
        """:meth:`diagnostics` of ``[B, D]`` features."""
        with torch.no_grad():
            feats = features.float()
            names = self.feature_names()
            norms = feats.view(feats.shape[0], len(names), -1).norm(dim=-1)  # [B, blocks]
            mean, std = norms.mean(0), norms.std(0, unbiased=False)
        out = {}
        for i, name in enumerate(names):
            out[f"feature.{name}.mean"] = mean[i]
            out[f"feature.{name}.std"] = std[i]
        return out

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        features = self.features(io, terms)
        return self.ratio_net(features.to(self.ratio_net.net[-1].weight.dtype))

    def ratio_and_diagnostics(self, io: StepIO, terms: SampleTerms) -> tuple[Tensor, dict[str, Tensor]]:
        """The features once for both; the ratio without a graph to omega (the student's loss detaches it)."""
        with torch.no_grad():
            features = self.features(io, terms)
            ratio = self.ratio_net(features.to(self.ratio_net.net[-1].weight.dtype))
        return ratio, self._feature_stats(features)

    def needs(self) -> Needs:
        return self.inner.needs().union(Needs(holdout_fraction=self.cfg.holdout_fraction))

    def aux_objectives(self) -> Sequence[AuxObjective]:
        return (*self.inner.aux_objectives(), self.meta)
