"""``dgkd``: Son, Na, Choi, Hwang, "Densely Guided Knowledge Distillation using Multiple Teacher Assistants",
ICCV 2021, arXiv 2009.08825.

Objective: the student learns from the teacher and every teacher assistant at once,
``ce_weight * CE(z_s, y) + kd_weight * sum_{g in kept} T^2 * KL(softmax(z_g/T) || softmax(z_s/T))``, where the guides
``g`` are ``model.teachers`` (the teacher first, then the assistants) and "kept" is a random subset redrawn every
step ("stochastic DGKD": guides are dropped at random so the student does not over-fit to one of them; never all).
In the paper every assistant is itself trained densely from all larger models; with one assistant that is plain KD
from the teacher (the first link of ``kdlab chain``).

Reference: the authors' released ``train.py`` (a fork of the TAKD code; read from the public code index, commit
unknown): every step it removes
``--drop-num`` (default 1) guides chosen uniformly at random from the list of KD terms, then
``(1 - lambda) * CE + lambda * T^2 * sum(kept KL terms)``.

Dropping: ``drop_count: n`` removes exactly n guides (the released code); ``drop_rate: p`` drops each guide
independently with probability p (the dropout-like reading of the paper), and when that would drop every guide one of
them, chosen uniformly, is kept. The draw is a pure function of the run's seed and the step
(:func:`kdlab.seeding.derive_seed`), so a run is reproducible and a resumed run drops exactly the guides the
uninterrupted run dropped, without generator state in the checkpoint. Every synthetic view of one step sees the same
draw (TeKAP over ``dgkd`` drops a guide together with its perturbed copies).

Deviations:
- The released code's KL is ``nn.KLDivLoss()`` with the default element-wise mean, i.e. the batch-mean KL divided by
  the class count; kdlab uses the batch-mean KL of every other KD method (``kd``), so ``kd_weight`` is on the scale of
  ``kd``'s (one guide and no dropping is ``kd`` exactly). The released CE/KD weights are ``1 - lambda``/``lambda``;
  kdlab's recipes use ``kd``'s CIFAR weights (CE 0.1, KD 0.9, T 4) as the TeKAP comparison does.
- The released code draws with Python's global ``random``; kdlab draws from a generator seeded by (seed, step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.method_configs.dgkd import DGKDConfig
from kdlab.methods import register_method
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.seeding import derive_seed
from kdlab.types import LossOut, StepIO

#: Mixed into the run's seed so that DGKD's draws differ from every other random stream.
_SEED_TAG = 0xD6CD


def kept_guides(num_guides: int, seed: int, step: int, drop_rate: float = 0.0, drop_count: int = 0) -> Tensor:
    """``[M]`` boolean mask of the guides kept at ``step`` (at least one is always kept).

    Args:
        num_guides: M, the number of guides (teacher and assistants).
        seed: the run's seed.
        step: the optimiser step (the draw is a pure function of ``seed`` and ``step``).
        drop_rate: probability of dropping each guide independently (used when ``drop_count`` is 0).
        drop_count: drop exactly this many guides, chosen uniformly (must be < M; 0 to use ``drop_rate``).

    Returns:
        A CPU ``bool`` tensor of shape ``[M]``.
    """
    keep = torch.ones(num_guides, dtype=torch.bool)
    if num_guides <= 1 or (drop_count == 0 and drop_rate == 0.0):
        return keep
    g = torch.Generator().manual_seed(derive_seed(seed, _SEED_TAG, step))
    if drop_count > 0:
        keep[torch.randperm(num_guides, generator=g)[:drop_count]] = False
        return keep
    keep = torch.rand(num_guides, generator=g) >= drop_rate
    if not keep.any():
        keep[torch.randint(num_guides, (1,), generator=g)] = True
    return keep


@register_method("dgkd", description="DGKD: CE + sum of KD terms from the teacher and all assistants, guides dropped")
class DGKD(DistillMethod):
    """Densely guided KD: the teacher and every assistant guide the student at once; some guides are dropped at random
    every step.

    Args:
        cfg: :class:`DGKD.Config`.
        ctx: the build context (the run's seed seeds the dropping; the teacher count bounds ``drop_count``).
    """

    mixed_labels = "soft"

    Config = DGKDConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not 0.0 <= cfg.drop_rate < 1.0:
            raise ValueError(f"dgkd: drop_rate must be in [0, 1), got {cfg.drop_rate}")
        if cfg.drop_count < 0:
            raise ValueError(f"dgkd: drop_count must be >= 0, got {cfg.drop_count}")
        if cfg.drop_count and cfg.drop_rate:
            raise ValueError("dgkd: set either drop_count or drop_rate, not both (drop_count: 0 selects drop_rate)")
        m = len(ctx.teacher_shapes)
        if m > 1 and cfg.drop_count >= m:
            raise ValueError(
                f"dgkd: drop_count={cfg.drop_count} would drop every one of the {m} guides (model.teachers); "
                f"use at most {m - 1}"
            )
        self.seed = ctx.seed

    def kept(self, io: StepIO) -> Tensor:
        """``[M]`` boolean mask of the guides this step keeps (on the logits' device)."""
        mask = kept_guides(len(io.teachers), self.seed, io.progress.step, self.cfg.drop_rate, self.cfg.drop_count)
        return mask.to(io.s.logits.device)

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s = io.s.logits
        per_guide = losses.kd(s, io.teacher_logits(), cfg.temperature)  # [M]: every guide in one batched call
        if len(io.teachers) == 1:  # nothing to drop: exactly kd
            kd_term = per_guide[0]
        else:
            mask = self.kept(io)
            kd_term = torch.where(mask, per_guide, torch.zeros_like(per_guide)).sum()
        return LossOut(
            {
                "ce": cfg.ce_weight * io.cross_entropy(s),
                "kd": cfg.kd_weight * kd_term,
            },
        )
