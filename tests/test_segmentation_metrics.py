"""mIoU, pixel accuracy and per-class IoU from a confusion matrix, against a hand-computed example; dense rows."""

from __future__ import annotations

import math

import torch

from kdlab.metrics import IGNORE_INDEX, METRICS, dense_rows, evaluate, select_key
from kdlab.types import Batch


def _onehot_logits(pred: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, H, W]`` predicted classes -> ``[B, K, H, W]`` logits whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float()


# One 2x4 image, 3 classes, one ignored pixel:
#   labels      0 0 1 1      predictions  0 1 1 1
#               2 2 2 255                 2 0 2 0
# confusion (rows label, cols pred): label 0 -> pred {0: 1, 1: 1}; label 1 -> {1: 2}; label 2 -> {2: 2, 0: 1}
#   IoU_0 = 1 / (1 + 1 + 1) = 1/3  (TP 1, FN 1 (pred 1), FP 1 (label 2 predicted 0))
#   IoU_1 = 2 / (2 + 1 + 0) = 2/3  (TP 2, FP 1)
#   IoU_2 = 2 / (2 + 0 + 1) = 2/3  (TP 2, FN 1)
#   mIoU = 5/9; pixel accuracy = 5 / 7 labelled pixels
LABELS = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, IGNORE_INDEX]]])
PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])


def test_hand_computed_confusion_matrix() -> None:
    rows, y = dense_rows(_onehot_logits(PRED, 3), LABELS)
    assert rows.shape == (7, 3) and y.tolist() == [0, 0, 1, 1, 2, 2, 2]
    miou = METRICS.get("miou")(3, torch.device("cpu"))
    acc = METRICS.get("pixel_acc")(3, torch.device("cpu"))
    for m in (miou, acc):
        m.update(rows, y)
    assert miou.sums.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert math.isclose(miou.compute(), 100 * 5 / 9)
    per_class = miou.details()["miou_per_class"]
    assert [round(v, 6) for v in per_class] == [round(100 / 3, 6), round(200 / 3, 6), round(200 / 3, 6)]
    assert math.isclose(acc.compute(), 100 * 5 / 7)


def test_absent_class_is_left_out_of_the_mean() -> None:
    miou = METRICS.get("miou")(4, torch.device("cpu"))  # class 3 never labelled nor predicted
    miou.update(*dense_rows(_onehot_logits(PRED, 4), LABELS))
    assert math.isclose(miou.compute(), 100 * 5 / 9)
    assert miou.details()["miou_per_class"][3] is None  # absent: null in the JSON records


def test_sync_sums_the_matrices_of_all_processes() -> None:
    """Two shards reduced by summing equal one pass over both (the DDP all-reduce is a sum)."""
    a = METRICS.get("miou")(3, torch.device("cpu"))
    b = METRICS.get("miou")(3, torch.device("cpu"))
    whole = METRICS.get("miou")(3, torch.device("cpu"))
    rows, y = dense_rows(_onehot_logits(PRED, 3), LABELS)
    a.update(rows[:3], y[:3])
    b.update(rows[3:], y[3:])
    whole.update(rows, y)
    a.sync(lambda t: t + b.sums, lambda t: t)
    assert torch.equal(a.sums, whole.sums) and a.compute() == whole.compute()


def test_evaluate_upsamples_stride_8_logits_and_selects_by_miou() -> None:
    """A model with stride-2 logits: ``evaluate`` upsamples them to the label size, drops ignored pixels."""
    logits_small = torch.randn(2, 3, 4, 5)

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits_small

    y = torch.randint(0, 3, (2, 8, 10))
    y[0, :2] = IGNORE_INDEX
    out = evaluate(Fixed(), iter([Batch(x=torch.zeros(2, 3, 8, 10), y=y, index=torch.arange(2))]), ("miou", "top1"))
    up = torch.nn.functional.interpolate(logits_small, (8, 10), mode="bilinear", align_corners=True)
    pred = up.argmax(1)
    keep = y != IGNORE_INDEX
    assert out["n"] == int(keep.sum())
    assert math.isclose(out["top1"], 100 * float((pred[keep] == y[keep]).double().mean()), rel_tol=1e-9)
    assert len(out["miou_per_class"]) == 3
    assert select_key("miou")({"miou": 50.0}) > select_key("miou")({"miou": 40.0})
