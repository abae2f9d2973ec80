"""TGeo-KD's analysis: student-teacher discrepancy grouped by the teacher's correctness, and the fusion ratios.

Hu, Wu, Li, Ma, Chen, Yan, Wang, Liu, "Less or More From Teacher: Exploiting Trilateral Geometry For Knowledge
Distillation" (TGeo-KD, ICLR 2024, arXiv 2312.15112), motivation experiment: split the samples into ``D`` (the
teacher's top-1 prediction is correct) and ``D'`` (wrong); compute the discrepancy
``ST_i = || softmax(z_s,i) - softmax(z_t,i) ||_2`` for every sample; split ``D`` and ``D'`` into five equal-size groups
by ``ST``. The table gives, per group and per quintile, the number of samples, the discrepancy, the student's top-1
and, when the run's method weights samples, the distribution of its per-sample fusion ratio ``alpha_i``
(:meth:`kdlab.methods.base.DistillMethod.sample_weights`, computed on the same samples from the trained method's
state, so it needs the run's ``checkpoint.pt``). Fusion-ratio statistics the method logged during training
(``metrics.jsonl`` keys containing ``alpha``) are listed too.

Deviations: the predictions are those of the run's deployable model (the student, or e.g. SimKD's export); the
paper's analysis runs on the training set after 50 epochs of alpha = 0.5, this one on any split of any trained run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kdlab.analysis.common import AnalysisError, AnalysisResult, OpenedRun
from kdlab.types import DEFAULT_VIEW, Batch, Outputs, Progress, StepIO


@dataclass
class Discrepancy:
    """Per-sample quantities of the analysis (all ``[N]``).

    Attributes:
        distance: ``|| p_s - p_t ||_2``.
        teacher_correct: the teacher's top-1 is the label.
        student_correct: the student's top-1 is the label.
        alpha: the method's per-sample weight, or None when the method has none.
    """

    distance: Tensor
    teacher_correct: Tensor
    student_correct: Tensor
    alpha: Tensor | None = None


def prediction_distance(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """``[N]`` Euclidean distance between the softmax predictions of ``[N, K]`` student and teacher logits."""
    return (s_logits.float().softmax(dim=1) - t_logits.float().softmax(dim=1)).norm(dim=1)


def quantile_groups(values: Tensor, parts: int) -> list[Tensor]:
    """Indices of ``values [N]`` sorted ascending and cut into ``parts`` groups of (nearly) equal size."""
    order = values.argsort(stable=True)
    return [chunk for chunk in order.tensor_split(parts) if chunk.numel() > 0]


def _progress(opened: OpenedRun) -> Progress:
    p = opened.loaded.progress or {}
    steps = opened.data.steps_per_epoch()
    epochs = opened.cfg.train.epochs
    return Progress(
        step=int(p.get("step", steps * epochs)),
        epoch=int(p.get("epoch", epochs)),
        step_in_epoch=0,
        steps_per_epoch=steps,
        total_epochs=epochs,
    )


def collect(opened: OpenedRun, split: str = "train", limit: int | None = None, with_alpha: bool = True) -> Discrepancy:
    """Run the deployable model and the teacher over ``split``; ask the method for its per-sample weights.

    The method sees a :class:`StepIO` built from the un-augmented images (every view it needs is the clean image)
    with the student's and teachers' taps it declares, and the progress of the end of training.
    """
    run = opened.loaded.run
    if not opened.teachers:
        raise AnalysisError("the discrepancy analysis needs the run's teacher; pass --teacher FILE")
    method, needs = run.method, run.needs
    progress = _progress(opened)
    model = opened.model
    was = (model.training, run.student.training, method.training)
    model.eval()
    run.student.eval()
    method.eval()
    dist, t_ok, s_ok, alphas = [], [], [], []
    ask = with_alpha
    with torch.no_grad():
        for batch in opened.batches(split, limit):
            s_logits = model(batch.x).float()
            t_logits = opened.teachers[0](batch.x).float()
            dist.append(prediction_distance(s_logits, t_logits))
            t_ok.append(t_logits.argmax(dim=1) == batch.y)
            s_ok.append(s_logits.argmax(dim=1) == batch.y)
            if not ask:
                continue
            views = {v: batch.x for v in needs.views if v != DEFAULT_VIEW}
            full = Batch(batch.x, batch.y, batch.index, views)
            student = {}
            for view in needs.views:
                logits, taps = run.student.forward_taps(full.view(view), tuple(needs.student_taps))
                student[view] = Outputs(logits.float(), taps)
            teachers = tuple(t.outputs(full, needs.views, needs.teacher_taps) for t in opened.teachers)
            weights = method.sample_weights(StepIO(student, teachers, full, progress))
            if weights is None:
                ask = False
                continue
            if weights.shape != batch.y.shape:
                raise AnalysisError(
                    f"method {opened.cfg.method.name!r}: sample_weights returned shape {tuple(weights.shape)}, "
                    f"expected [B] = {tuple(batch.y.shape)}"
                )
            alphas.append(weights.detach().float())
    model.train(was[0])
    run.student.train(was[1])
    method.train(was[2])
    if not dist:
        raise AnalysisError("the chosen split has no samples; check --split and --limit")
    alpha = torch.cat(alphas).cpu() if ask and alphas else None
    return Discrepancy(torch.cat(dist).cpu(), torch.cat(t_ok).cpu(), torch.cat(s_ok).cpu(), alpha)


def _stats(d: Discrepancy, index: Tensor, teacher: str, part: str) -> dict:
    dist = d.distance[index]
    row = {
        "teacher": teacher,
        "part": part,
        "n": int(index.numel()),
        "distance_mean": float(dist.mean()),
        "distance_std": float(dist.std()) if index.numel() > 1 else 0.0,
        "distance_min": float(dist.min()),
        "distance_max": float(dist.max()),
        "student_top1": 100.0 * float(d.student_correct[index].float().mean()),
        "alpha_mean": None,
        "alpha_std": None,
    }
    if d.alpha is not None:
        a = d.alpha[index]
        row["alpha_mean"] = float(a.mean())
        row["alpha_std"] = float(a.std()) if index.numel() > 1 else 0.0
    return row


def discrepancy_table(d: Discrepancy, parts: int = 5) -> list[dict]:
    """Rows per teacher-correctness group (``correct``, ``wrong``): the whole group, then its ``parts``
    equal-size groups by ascending distance (``q1`` smallest)."""
    rows = []
    for name, mask in (("correct", d.teacher_correct), ("wrong", ~d.teacher_correct)):
        index = mask.nonzero().flatten()
        if index.numel() == 0:
            continue
        rows.append(_stats(d, index, name, "all"))
        for i, chunk in enumerate(quantile_groups(d.distance[index], parts)):
            rows.append(_stats(d, index[chunk], name, f"q{i + 1}"))
    return rows


def logged_alpha(run_dir) -> dict[str, float]:
    """Training metrics whose name contains ``alpha``, from the last epoch of ``run_dir/metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    last = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        last = {k: v for k, v in record.get("train", {}).items() if "alpha" in k and isinstance(v, (int, float))}
    return last


def discrepancy(opened: OpenedRun, split: str = "train", limit: int | None = None, parts: int = 5) -> AnalysisResult:
    """The TGeo-KD discrepancy analysis of a run (see the module docstring)."""
    if parts < 1:
        raise AnalysisError(f"--parts must be >= 1, got {parts}")
    with_alpha = opened.loaded.kind == "checkpoint"
    d = collect(opened, split, limit, with_alpha=with_alpha)
    rows = discrepancy_table(d, parts)
    method = opened.cfg.method.name
    notes = [
        f"{opened.cfg.model.student} ({method}) vs {opened.cfg.model.teachers[0].name} on {len(d.distance)} {split} "
        f"images of {opened.cfg.data.name}; distance = ||softmax(student) - softmax(teacher)||_2 in [0, sqrt 2].",
        f"teacher: whether the teacher's top-1 is correct; part q1..q{parts}: equal-size groups by ascending distance.",
    ]
    if d.alpha is None:
        why = (
            "the run was given as an export (student.pt); give the run directory or checkpoint.pt"
            if not with_alpha
            else f"method {method!r} has no per-sample weights (DistillMethod.sample_weights returns None)"
        )
        notes.append(f"alpha: not available: {why}.")
    logged = logged_alpha(opened.run_dir)
    summary = {k: v for k, v in logged.items() if ".hist." not in k}  # histogram bins go to the JSON only
    if summary:
        notes.append("alpha logged in training (last epoch): " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))

    def plot(fig) -> None:
        axes = fig.subplots(1, 2 if d.alpha is not None else 1, squeeze=False)[0]
        bins = torch.linspace(0, math.sqrt(2), 31).tolist()
        for name, mask in (("teacher correct", d.teacher_correct), ("teacher wrong", ~d.teacher_correct)):
            if mask.any():
                axes[0].hist(d.distance[mask].tolist(), bins=bins, alpha=0.6, density=True, label=name)
        axes[0].set_xlabel("||p_s - p_t||_2")
        axes[0].set_ylabel("density")
        axes[0].set_title("student-teacher discrepancy")
        axes[0].legend()
        if d.alpha is not None:
            for name, mask in (("teacher correct", d.teacher_correct), ("teacher wrong", ~d.teacher_correct)):
                if mask.any():
                    axes[1].hist(d.alpha[mask].tolist(), bins=30, alpha=0.6, density=True, label=name)
            axes[1].set_xlabel("alpha (per-sample fusion ratio)")
            axes[1].set_ylabel("density")
            axes[1].set_title(f"alpha of {method}")
            axes[1].legend()

    extra = {
        "n": len(d.distance),
        "split": split,
        "teacher_top1": 100.0 * float(d.teacher_correct.float().mean()),
        "logged_alpha": logged,
    }
    return AnalysisResult(
        name="discrepancy",
        title=f"Student-teacher discrepancy by teacher correctness: {method}, {opened.cfg.data.name}",
        columns=[
            "teacher",
            "part",
            "n",
            "distance_mean",
            "distance_std",
            "distance_min",
            "distance_max",
            "student_top1",
            "alpha_mean",
            "alpha_std",
        ],
        rows=rows,
        notes=notes,
        plot=plot,
        extra=extra,
        figsize=(10.0 if d.alpha is not None else 6.0, 4.0),
    )
