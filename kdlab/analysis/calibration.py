"""Calibration (ECE, reliability diagram, NLL) and student-teacher agreement.

ECE (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv 1706.04599) with ``M`` equal-width
confidence bins ``B_m = ((m-1)/M, m/M]``: ``ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` where a sample's
confidence is its top softmax probability and ``acc`` the fraction of correct top-1 predictions in the bin;
MCE is ``max_m |acc(B_m) - conf(B_m)|`` over non-empty bins. Agreement with the teacher: the fraction of samples
whose top-1 classes coincide, and the mean ``KL(softmax(z_t) || softmax(z_s))`` at temperature 1.

Deviations: none (the 15-bin default follows Guo et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.analysis.common import AnalysisError, AnalysisResult, OpenedRun, collect_logits


@dataclass
class Reliability:
    """Per-bin statistics of a reliability diagram.

    Attributes:
        edges: ``[M + 1]`` bin edges ``0, 1/M, ..., 1``.
        count: ``[M]`` samples per bin.
        confidence: ``[M]`` mean confidence per bin (0 for an empty bin).
        accuracy: ``[M]`` top-1 accuracy per bin (0 for an empty bin).
    """

    edges: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor

    @property
    def ece(self) -> float:
        """Expected calibration error in ``[0, 1]``."""
        n = self.count.sum()
        return float(((self.count / n) * (self.accuracy - self.confidence).abs()).sum())

    @property
    def mce(self) -> float:
        """Maximum calibration error over non-empty bins, in ``[0, 1]``."""
        filled = self.count > 0
        return float((self.accuracy - self.confidence).abs()[filled].max())


def reliability(logits: Tensor, y: Tensor, num_bins: int = 15) -> Reliability:
    """Bin samples by confidence (``(lo, hi]`` equal-width bins).

    Args:
        logits: ``[N, K]``.
        y: ``[N]`` labels.
        num_bins: ``M``.
    """
    if num_bins < 1:
        raise AnalysisError(f"--bins must be >= 1, got {num_bins}")
    probs = logits.float().softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == y).float()
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64)
    index = torch.bucketize(conf.double().cpu(), edges[1:-1], right=False)  # (lo, hi] bins
    count = torch.bincount(index, minlength=num_bins).double()
    conf_sum = torch.bincount(index, weights=conf.double().cpu(), minlength=num_bins)
    acc_sum = torch.bincount(index, weights=correct.double().cpu(), minlength=num_bins)
    safe = count.clamp(min=1)
    return Reliability(edges, count, conf_sum / safe, acc_sum / safe)


def expected_calibration_error(logits: Tensor, y: Tensor, num_bins: int = 15) -> float:
    """ECE in ``[0, 1]`` of ``logits [N, K]`` against ``y [N]`` with ``num_bins`` equal-width bins."""
    return reliability(logits, y, num_bins).ece


def agreement(s_logits: Tensor, t_logits: Tensor) -> tuple[float, float]:
    """``(top-1 agreement in [0, 1], mean KL(p_t || p_s))`` of ``[N, K]`` student and teacher logits."""
    agree = float((s_logits.argmax(dim=1) == t_logits.argmax(dim=1)).float().mean())
    kl = F.kl_div(
        s_logits.float().log_softmax(dim=1), t_logits.float().log_softmax(dim=1), reduction="batchmean", log_target=True
    )
    return agree, float(kl)


def calibration(opened: OpenedRun, num_bins: int = 15, split: str = "test", limit: int | None = None) -> AnalysisResult:
    """ECE, MCE, NLL and top-1 of the run's model (and of its teacher, with the agreement between them)."""
    logits, y = collect_logits(opened.model, opened.batches(split, limit))
    models = {"student": logits}
    for i, teacher in enumerate(opened.teachers):
        t_logits, _ = collect_logits(teacher, opened.batches(split, limit))
        models["teacher" if i == 0 else f"teacher{i}"] = t_logits
    rows, bins = [], {}
    for name, z in models.items():
        rel = reliability(z, y, num_bins)
        bins[name] = rel
        row = {
            "model": name,
            "top1": 100.0 * float((z.argmax(dim=1) == y).float().mean()),
            "nll": float(F.cross_entropy(z, y)),
            "ece": 100.0 * rel.ece,
            "mce": 100.0 * rel.mce,
            "agreement": None,
            "kl_teacher_student": None,
        }
        if name != "student":
            agree, kl = agreement(logits, z)
            row["agreement"], row["kl_teacher_student"] = 100.0 * agree, kl
        rows.append(row)
    notes = [
        f"{opened.cfg.model.student} ({opened.cfg.method.name}) on {len(y)} {split} images of "
        f"{opened.cfg.data.name}; ECE and MCE in % with {num_bins} equal-width confidence bins.",
        "agreement: % of samples where the student's top-1 class equals the teacher's; kl_teacher_student: mean "
        "KL(p_teacher || p_student) at temperature 1.",
    ]
    if opened.cfg.model.teachers and not opened.teachers:
        notes.append("the teacher's weights were not found, so the agreement is missing (pass --teacher FILE).")

    def plot(fig) -> None:
        axes = fig.subplots(1, len(bins), squeeze=False)[0]
        for ax, (name, rel) in zip(axes, bins.items()):
            width = 1.0 / num_bins
            centers = (rel.edges[:-1] + width / 2).tolist()
            filled = rel.count > 0
            ax.bar(
                [c for c, f in zip(centers, filled) if f],
                rel.accuracy[filled].tolist(),
                width=width,
                edgecolor="black",
                label="accuracy",
            )
            ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
            ax.plot(rel.confidence[filled].tolist(), rel.accuracy[filled].tolist(), "o", color="C3", ms=3)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{name}: ECE {100 * rel.ece:.2f}%")
            ax.legend(loc="upper left", fontsize=8)
        fig.suptitle(f"Reliability diagram ({opened.cfg.data.name} {split})")

    extra = {
        "bins": {
            name: {
                "edges": rel.edges.tolist(),
                "count": rel.count.tolist(),
                "confidence": rel.confidence.tolist(),
                "accuracy": rel.accuracy.tolist(),
            }
            for name, rel in bins.items()
        },
        "n": len(y),
        "split": split,
    }
    return AnalysisResult(
        name="calibration",
        title=f"Calibration: {opened.cfg.method.name}, {opened.cfg.model.student}, {opened.cfg.data.name}",
        columns=["model", "top1", "nll", "ece", "mce", "agreement", "kl_teacher_student"],
        rows=rows,
        notes=notes,
        plot=plot,
        extra=extra,
        figsize=(4.5 * len(bins), 4.2),
    )
