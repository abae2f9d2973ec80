"""Adversarial robustness: top-1/top-5 under FGSM and PGD (L_inf) at several budgets.

The TeKAP paper (ICLR 2025) reports the top-1/top-5 of the teacher, the student, KD and KD + TeKAP(L) under an
adversarial attack on CIFAR-100. Budgets here are in pixel units (images in [0, 1], e.g. ``8/255``): an attack works
on the un-normalised image, keeps it in ``[0, 1]`` and the perturbation within ``epsilon`` per pixel, and the
model sees the result normalised with the run's mean and std.

- FGSM (Goodfellow et al., ICLR 2015, arXiv 1412.6572): ``x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.
- PGD (Madry et al., ICLR 2018, arXiv 1706.06083): from a uniform random start in the eps-ball,
  ``steps`` iterations of ``x <- proj(x + step_size * sign(grad_x CE))`` onto the eps-ball around the clean image
  and ``[0, 1]``; default ``step_size = 2.5 * eps / steps``.

Deviations: the TeKAP slide does not state its attack's budget or steps; none is hard-coded as "the paper's".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.analysis.common import AnalysisError, AnalysisResult, OpenedRun

ATTACKS = ("fgsm", "pgd")


class PixelInput(nn.Module):
    """``model`` fed with images in pixel units: ``forward(x [B, C, H, W] in [0, 1]) = model((x - mean) / std)``.

    Args:
        model: a classifier on normalised inputs.
        mean, std: the normalisation, broadcastable to ``[1, C, 1, 1]``.
    """

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float(), persistent=False)
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``[B, C, H, W]`` gradient of the summed cross-entropy with respect to the input ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
    """One fast-gradient-sign step.

    Args:
        model: takes pixel-unit images (e.g. :class:`PixelInput`), in eval mode.
        x: ``[B, C, H, W]`` clean images in ``[0, 1]``.
        y: ``[B]`` labels.
        epsilon: L_inf budget in pixel units.

    Returns:
        ``[B, C, H, W]`` ``clip(x + epsilon * sign(grad_x CE), 0, 1)``.
    """
    if epsilon == 0:
        return x.detach().clone()
    return (x + epsilon * _input_grad(model, x, y).sign()).clamp(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    random_start: bool = True,
) -> Tensor:
    """Projected gradient descent on the cross-entropy in the L_inf ball (sign steps).

    Args:
        model: takes pixel-unit images, in eval mode.
        x: ``[B, C, H, W]`` clean images in ``[0, 1]``.
        y: ``[B]`` labels.
        epsilon: L_inf budget in pixel units.
        steps: iterations (>= 1).
        step_size: per-step size; None for ``2.5 * epsilon / steps``.
        generator: random start generator (on ``x``'s device).
        random_start: start from a uniform point of the ball (else from ``x``).

    Returns:
        ``[B, C, H, W]`` adversarial images with ``|x' - x| <= epsilon`` and ``0 <= x' <= 1``.
    """
    if epsilon == 0:
        return x.detach().clone()
    step = 2.5 * epsilon / steps if step_size is None else step_size
    lo, hi = (x - epsilon).clamp(min=0.0), (x + epsilon).clamp(max=1.0)
    adv = x.detach().clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        adv = torch.maximum(torch.minimum(adv + (2 * noise - 1) * epsilon, hi), lo)
    for _ in range(steps):
        adv = adv + step * _input_grad(model, adv, y).sign()
        adv = torch.maximum(torch.minimum(adv, hi), lo).detach()
    return adv


def _topk_hits(logits: Tensor, y: Tensor) -> tuple[int, int]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top[:, 0] == y).sum()), int((top == y[:, None]).any(dim=1).sum())


def robustness(
    opened: OpenedRun,
    epsilons: list[float],
    attacks: tuple[str, ...] = ATTACKS,
    pgd_steps: int = 10,
    pgd_step_size: float | None = None,
    seed: int = 0,
    split: str = "test",
    limit: int | None = None,
) -> AnalysisResult:
    """Top-1/top-5 and mean cross-entropy of the run's deployable model under each attack and budget.

    Args:
        opened: the run.
        epsilons: budgets in pixel units, each in ``[0, 1]``; 0 is the clean accuracy.
        attacks: a subset of ``("fgsm", "pgd")``.
        pgd_steps: PGD iterations.
        pgd_step_size: PGD step in pixel units; None for ``2.5 * eps / steps``.
        seed: seed of PGD's random start.
        split: data split; limit: a stratified subset of about ``limit`` samples (:meth:`OpenedRun.batches`).
    """
    if not epsilons:
        raise AnalysisError("give at least one epsilon, e.g. --epsilons 0,2/255,8/255")
    bad = [e for e in epsilons if not 0.0 <= e <= 1.0]
    if bad:
        raise AnalysisError(f"epsilons are in pixel units (images in [0, 1]) and must lie in [0, 1], got {bad}")
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown or not attacks:
        raise AnalysisError(f"unknown attack(s) {unknown or attacks}; choose from {', '.join(ATTACKS)}")
    if pgd_steps < 1:
        raise AnalysisError(f"--pgd-steps must be >= 1, got {pgd_steps}")
    if pgd_step_size is not None and pgd_step_size <= 0:
        raise AnalysisError(f"--pgd-step-size must be > 0, got {pgd_step_size}")

    data = opened.data
    model = PixelInput(opened.model, data.mean, data.std).to(opened.device).eval()
    generator = torch.Generator(device=opened.device)
    generator.manual_seed(seed)
    keys = [(a, e) for a in attacks for e in sorted(set(epsilons))]
    counts = {k: [0, 0, 0.0] for k in keys}
    n = 0
    for batch in opened.batches(split, limit):
        x = (batch.x * data.std + data.mean).clamp(0.0, 1.0)  # back to pixel units
        for attack, eps in keys:
            if attack == "fgsm":
                adv = fgsm(model, x, batch.y, eps)
            else:
                adv = pgd(model, x, batch.y, eps, pgd_steps, pgd_step_size, generator)
            with torch.no_grad():
                logits = model(adv).float()
            h1, h5 = _topk_hits(logits, batch.y)
            c = counts[(attack, eps)]
            c[0] += h1
            c[1] += h5
            c[2] += float(F.cross_entropy(logits, batch.y, reduction="sum"))
        n += batch.size
    if n == 0:
        raise AnalysisError("the chosen split has no samples; check --split and --limit")
    rows = [
        {
            "attack": attack,
            "epsilon": eps,
            "epsilon_255": eps * 255.0,
            "top1": 100.0 * counts[(attack, eps)][0] / n,
            "top5": 100.0 * counts[(attack, eps)][1] / n,
            "loss": counts[(attack, eps)][2] / n,
        }
        for attack, eps in keys
    ]
    step_note = "2.5 * eps / steps" if pgd_step_size is None else f"{pgd_step_size:g}"
    notes = [
        f"{opened.cfg.model.student} ({opened.cfg.method.name}) on {n} {split} images of {opened.cfg.data.name}; "
        "L_inf budgets in pixel units (x255 in epsilon_255); epsilon 0 is the clean accuracy.",
        f"PGD: {pgd_steps} steps, step size {step_note}, uniform random start (seed {seed}).",
    ]

    def plot(fig) -> None:
        ax1, ax5 = fig.subplots(1, 2)
        for attack in attacks:
            sel = [r for r in rows if r["attack"] == attack]
            ax1.plot([r["epsilon_255"] for r in sel], [r["top1"] for r in sel], marker="o", label=attack.upper())
            ax5.plot([r["epsilon_255"] for r in sel], [r["top5"] for r in sel], marker="o", label=attack.upper())
        for ax, what in ((ax1, "top-1"), (ax5, "top-5")):
            ax.set_xlabel("epsilon (x 1/255)")
            ax.set_ylabel(f"{what} accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"Robustness of {opened.cfg.model.student} ({opened.cfg.method.name})")

    return AnalysisResult(
        name="robustness",
        title=f"Adversarial robustness: {opened.cfg.method.name}, {opened.cfg.model.student}, {opened.cfg.data.name}",
        columns=["attack", "epsilon", "epsilon_255", "top1", "top5", "loss"],
        rows=rows,
        notes=notes,
        plot=plot,
        extra={"n": n, "split": split, "pgd_steps": pgd_steps, "pgd_step_size": pgd_step_size, "seed": seed},
        figsize=(9.0, 4.0),
    )
