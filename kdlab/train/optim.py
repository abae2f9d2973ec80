"""Optimisers of the training strategies: SGD, AdamW and RMSProp in the TensorFlow form (``optim.name``).

:class:`RMSpropTF` is RMSProp as TensorFlow's ``tf.compat.v1.train.RMSPropOptimizer`` computes it, the optimiser of
the EfficientNet / MobileNetV3 recipes that DIST's strategy B2 follows (Tan & Le, "EfficientNet", ICML 2019,
arXiv:1905.11946; DIST, Huang et al., NeurIPS 2022, arXiv:2205.10536, Table 1). Per parameter ``p`` with gradient
``g`` (weight decay as an L2 term, ``g <- g + wd * p``)::

    v <- v + (1 - alpha) * (g**2 - v)            (v starts at 1, not 0)
    m <- momentum * m + lr * g / sqrt(v + eps)   (eps inside the square root, lr inside the momentum buffer)
    p <- p - m

Checked against timm's ``timm.optim.RMSpropTF`` (Ross Wightman), which ports the same TensorFlow semantics to
PyTorch: with its defaults (coupled weight decay, ``lr_in_momentum=True``, not centred) the two agree to float
rounding on the same gradients (``tests/test_strategies.py``). kdlab carries its own so that the core imports without
timm. Deviations from timm's class: no ``centered``, ``decoupled_decay``, ``caution`` or foreach options (the
strategies do not use them); a learning rate that changes between steps (kdlab sets ``group["lr"]`` every step)
acts on the momentum buffer exactly as in timm and TensorFlow (the rate of each step is folded into ``m``). The
update is a per-tensor loop: a ``torch._foreach_*`` version measured 1.38x slower per step on ResNet-18's gradients
on one CPU thread (median of 10, interleaved, loaded machine); a GPU may favour the multi-tensor form.

The differences from ``torch.optim.RMSprop`` matter at the strategy's ``eps=1e-3``: PyTorch adds ``eps`` outside
the square root (``g / (sqrt(v) + eps)``) and starts ``v`` at 0, which makes its first steps ~1/sqrt(1 - alpha)
(about 3x at alpha=0.9) larger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from kdlab.config import OptimConfig

#: ``optim.eps`` when it is not set, per optimiser: TensorFlow's EfficientNet recipe uses 1e-3 for RMSProp (timm's
#: ``--opt-eps .001`` in its EfficientNet/MobileNetV3 commands); AdamW keeps PyTorch's 1e-8.
DEFAULT_EPS = {"adamw": 1e-8, "rmsprop_tf": 1e-3}


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow's semantics (epsilon inside the square root; see the module docstring).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        alpha: decay of the running mean of squared gradients (TensorFlow's ``decay``; 0.9 in B2).
        eps: added to the running mean inside the square root (1e-3 in B2).
        momentum: momentum of the (learning-rate-scaled) update (0.9 in B2).
        weight_decay: L2 penalty added to the gradient.

    State per parameter: ``square_avg`` (starts at ones), ``momentum_buffer`` (zeros; only with momentum > 0) and
    ``step`` (a float tensor counting the updates); all shaped as the parameter.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-2,
        alpha: float = 0.9,
        eps: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        for name, value in (("lr", lr), ("eps", eps), ("momentum", momentum), ("weight_decay", weight_decay)):
            if value < 0:
                raise ValueError(f"RMSpropTF: {name} must be >= 0, got {value}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"RMSpropTF: alpha must be in [0, 1), got {alpha}")
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            momentum, weight_decay = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    if momentum > 0:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad = p.grad if weight_decay == 0 else p.grad.add(p, alpha=weight_decay)
                square_avg = state["square_avg"]
                square_avg.add_(grad.square() - square_avg, alpha=1.0 - alpha)
                denom = square_avg.add(eps).sqrt_()
                if momentum > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).addcdiv_(grad, denom, value=lr)
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, denom, value=-lr)
        return loss


def parameter_groups(cfg: OptimConfig, params: list[nn.Parameter]) -> list[dict]:
    """``params`` as optimiser groups: one group, or with ``optim.decay_norm_and_bias: false`` two, the
    one-dimensional parameters (biases, normalisation weights) without weight decay first (as DIST's reference
    ``get_params`` and timm's ``param_groups_weight_decay``, which also test ``ndim <= 1``)."""
    if cfg.decay_norm_and_bias or cfg.weight_decay == 0:
        return [{"params": params}]
    no_decay = [p for p in params if p.ndim <= 1]
    decay = [p for p in params if p.ndim > 1]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay}]
    return [g for g in groups if g["params"]]


def make_optimizer(cfg: OptimConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimiser ``optim.name`` over ``params`` at the initial learning rate ``lr`` (the trainer sets the rate of
    every step from the schedule).

    ``sgd``: ``torch.optim.SGD`` (momentum, nesterov, weight decay as L2). ``adamw``: ``torch.optim.AdamW`` (betas,
    decoupled weight decay, ``eps`` default 1e-8). ``rmsprop_tf``: :class:`RMSpropTF` (alpha, momentum, ``eps`` default
    1e-3, weight decay as L2). Weight decay skips one-dimensional parameters when ``optim.decay_norm_and_bias`` is
    false (:func:`parameter_groups`).
    """
    eps = cfg.eps if cfg.eps is not None else DEFAULT_EPS.get(cfg.name)
    groups = parameter_groups(cfg, params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=eps, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, alpha=cfg.alpha, eps=eps, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimiser optim.name={cfg.name!r}; choose sgd, adamw or rmsprop_tf")


__all__ = ["DEFAULT_EPS", "RMSpropTF", "make_optimizer", "parameter_groups"]
