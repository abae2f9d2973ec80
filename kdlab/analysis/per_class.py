"""Per-class accuracy grouped by training frequency (many-, medium-, few-shot classes), for long-tailed data.

TeKAP (ICLR 2025) reports KD and KD + TeKAP on an imbalanced CIFAR-100; the long-tailed training set itself is a
dataset option. This analysis shows where a run's accuracy comes from: each class's test top-1 next to its number of
training images, and the grouping of Liu et al., "Large-Scale Long-Tailed Recognition in an Open World" (CVPR 2019,
arXiv 1904.05160): many-shot classes have more than 100 training images, few-shot classes fewer than 20, medium-shot
the rest (both thresholds are options). The training counts are those of the run's training split (after any
held-out validation split).

Deviations: none.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.analysis.common import AnalysisError, AnalysisResult, OpenedRun, collect_logits

GROUPS = ("many", "medium", "few")


def shot_groups(train_counts: Tensor, many: int = 100, few: int = 20) -> list[str]:
    """``"many"`` (``count > many``), ``"few"`` (``count < few``) or ``"medium"`` for each class of ``[K]`` counts."""
    if few > many:
        raise AnalysisError(f"--few ({few}) must not exceed --many ({many})")
    return ["many" if c > many else "few" if c < few else "medium" for c in train_counts.tolist()]


def per_class_accuracy(pred: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(correct [K], count [K])``: correct top-1 predictions and samples of each class, from ``[N]`` tensors."""
    correct = torch.bincount(y[pred == y], minlength=num_classes)
    count = torch.bincount(y, minlength=num_classes)
    return correct, count


def per_class(
    opened: OpenedRun, many: int = 100, few: int = 20, split: str = "test", limit: int | None = None
) -> AnalysisResult:
    """Per-class top-1 and the many/medium/few-shot summary of a run."""
    k = opened.data.num_classes
    train_counts = torch.bincount(opened.data.train_labels.cpu(), minlength=k)
    logits, y = collect_logits(opened.model, opened.batches(split, limit))
    correct, count = per_class_accuracy(logits.argmax(dim=1).cpu(), y.cpu(), k)
    groups = shot_groups(train_counts, many, few)
    names = opened.loaded.run.splits.classes or tuple(str(i) for i in range(k))
    class_rows = [
        {
            "class": i,
            "name": names[i],
            "train_images": int(train_counts[i]),
            "test_images": int(count[i]),
            "top1": 100.0 * int(correct[i]) / int(count[i]) if count[i] > 0 else float("nan"),
            "group": groups[i],
        }
        for i in range(k)
    ]
    rows = []
    for group in (*GROUPS, "all"):
        members = [i for i in range(k) if group == "all" or groups[i] == group]
        if not members:
            continue
        seen = [i for i in members if count[i] > 0]
        n = sum(int(count[i]) for i in members)
        hits = sum(int(correct[i]) for i in members)
        rows.append(
            {
                "group": group,
                "classes": len(members),
                "train_images": sum(int(train_counts[i]) for i in members),
                "test_images": n,
                "top1": 100.0 * hits / n if n else float("nan"),
                "mean_class_top1": sum(class_rows[i]["top1"] for i in seen) / len(seen) if seen else float("nan"),
            }
        )
    ratio = float(train_counts.max()) / max(float(train_counts.min()), 1.0)
    notes = [
        f"{opened.cfg.model.student} ({opened.cfg.method.name}) on {len(y)} {split} images of "
        f"{opened.cfg.data.name}; imbalance ratio of the training split (max/min class count) {ratio:.1f}.",
        f"many: > {many} training images, few: < {few}, medium: the rest; top1 pools the group's test images, "
        "mean_class_top1 averages its classes' accuracies.",
    ]

    def plot(fig) -> None:
        ax = fig.subplots()
        order = sorted(range(k), key=lambda i: -int(train_counts[i]))
        colors = {"many": "C0", "medium": "C1", "few": "C3"}
        xs = list(range(k))
        ax.bar(xs, [class_rows[i]["top1"] for i in order], color=[colors[groups[i]] for i in order], width=1.0)
        ax.set_xlabel("class (by decreasing training frequency)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_ylim(0, 100)
        twin = ax.twinx()
        twin.plot(xs, [int(train_counts[i]) for i in order], color="black", lw=1.2)
        twin.set_ylabel("training images")
        from matplotlib.patches import Patch

        handles = [Patch(color=c, label=g) for g, c in colors.items() if g in groups]
        ax.legend(handles=handles, loc="upper right")
        ax.set_title(f"Per-class accuracy ({opened.cfg.data.name})")

    return AnalysisResult(
        name="per_class",
        title=f"Accuracy by training frequency: {opened.cfg.method.name}, {opened.cfg.data.name}",
        columns=["group", "classes", "train_images", "test_images", "top1", "mean_class_top1"],
        rows=rows,
        notes=notes,
        plot=plot,
        extra={"n": len(y), "split": split, "many": many, "few": few, "imbalance_ratio": ratio},
        tables={"classes": (["class", "name", "train_images", "test_images", "top1", "group"], class_rows)},
        figsize=(8.0, 4.2),
    )
