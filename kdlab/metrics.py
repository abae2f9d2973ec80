"""Evaluation metrics: registered objects with device-side state and a reduction over processes.

A metric is built for one evaluation pass (``METRICS.get(name)(num_classes, device)``), fed every batch with
:meth:`Metric.update` (``logits [B, K]``, labels ``[B]``), reduced over processes with :meth:`Metric.sync` (each
process evaluated its own shard of the split) and read with :meth:`Metric.compute`. All state stays on the
evaluation device; nothing is copied to the host before :meth:`Metric.compute`.

Registered metrics (``kdlab list metrics``):

- ``top1``, ``top5``: accuracy in percent (top-k with ``k > K`` counts as ``k = K``).
- ``nll``: mean negative log-likelihood (cross-entropy in nats) of the softmax of the logits; equal to
  ``sklearn.metrics.log_loss`` of the softmax probabilities.
- ``ece``: expected calibration error of the top-1 confidence over 15 equal-width bins on ``(0, 1]`` (Guo et al.,
  "On Calibration of Modern Neural Networks", ICML 2017): ``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|``, as a
  fraction (0..1).
- ``auc``: ROC AUC, exact (the Mann-Whitney rank statistic with tied scores sharing their average rank). Binary
  (``K = 2``): the score is ``p(class 1)``, as ``sklearn.metrics.roc_auc_score(y, p[:, 1])``. ``K > 2``: the
  unweighted mean of the one-vs-rest AUCs of the classes that have both positives and negatives in the split,
  as ``roc_auc_score(y, p, multi_class="ovr", average="macro")`` when every class is present. Its state is the
  ``[N, K]`` probabilities (gathered from all processes by :meth:`Metric.sync`).
- ``miou``: mean intersection-over-union in percent, ``mean_c TP_c / (TP_c + FP_c + FN_c)`` over the classes that
  occur in the labels or the predictions (as ``mmseg``'s ``nanmean``), from a ``[K, K]`` confusion matrix kept on the
  device and summed over processes; the per-class IoUs are reported as ``miou_per_class`` (NaN for an absent class).
- ``pixel_acc``: ``sum_c TP_c / (number of labelled pixels)`` in percent, from the same confusion matrix.
- ``map``: COCO box AP@[.5:.95] in percent by pycocotools' COCOeval, with ``map_50``, ``map_75``, ``map_s``,
  ``map_m``, ``map_l`` as details (:mod:`kdlab.metrics_detection`); it scores detections ``[B, D, 6]`` against
  ``[B, N, 7]`` ground truth, and a detection run's metrics must all be detection metrics.

Dense predictions (segmentation): logits ``[B, K, h, w]`` and labels ``[B, H, W]`` with :data:`IGNORE_INDEX` are turned
into rows by :func:`dense_rows` before any metric sees them: the logits are upsampled bilinearly to the label size
(``align_corners=True``, as the CIRKD / DIST evaluation) and every labelled pixel becomes one ``[K]`` row, ignored
pixels are dropped. Every metric is therefore defined per pixel (``top1`` is the pixel accuracy, ``nll`` the mean
per-pixel cross-entropy) and ``n`` counts labelled pixels.

:func:`evaluate` runs a model over batches and returns every requested metric plus ``loss`` (mean cross-entropy)
and ``n``; :func:`select_key` says which direction is better for ``train.select_by``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from kdlab.registry import Registry

#: Metrics every evaluation reports (the image defaults; ``loss`` and ``n`` are always added).
DEFAULT_METRICS: tuple[str, ...] = ("top1", "top5")

#: Values of an evaluation record that are not metrics but may be selected by (``loss``: mean cross-entropy).
_EXTRA_DIRECTIONS = {"loss": False}

#: Label of pixels that no loss term and no metric counts (Cityscapes' and VOC's 255).
IGNORE_INDEX = 255


def dense_rows(logits: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Per-pixel rows of a dense prediction; classification inputs pass unchanged.

    Args:
        logits: ``[B, K]``, or ``[B, K, h, w]`` (any resolution; upsampled to ``[H, W]`` bilinearly with
            ``align_corners=True`` when it differs from the labels').
        y: ``[B]``, or ``[B, H, W]`` int64 labels with ``ignore_index`` for unlabelled pixels.
        ignore_index: label excluded from the rows.

    Returns:
        ``(rows [P, K], labels [P])``: one row per labelled pixel (``P <= B * H * W``), or the inputs unchanged.
    """
    if logits.dim() != 4:
        return logits, y
    size = tuple(y.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = torch.nn.functional.interpolate(logits, size, mode="bilinear", align_corners=True)
    k = logits.shape[1]
    rows = logits.permute(0, 2, 3, 1).reshape(-1, k)
    labels = y.reshape(-1)
    keep = labels != ignore_index
    return rows[keep], labels[keep]


class Metric:
    """Base of evaluation metrics.

    Subclasses set ``higher_is_better``, keep their state in tensors on ``device`` and implement :meth:`update`,
    :meth:`sync` and :meth:`compute`.

    Args:
        num_classes: ``K``.
        device: where the state lives (the evaluation device).
    """

    higher_is_better: bool = True
    task: str = "classification"
    """What the metric scores: ``classification`` (class logits ``[B, K]``, dense ones as rows) or ``detection``
    (detections ``[B, D, 6]`` against ``[B, N, 7]`` ground truth, :mod:`kdlab.metrics_detection`)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        self.device = torch.device(device)

    def update(self, logits: Tensor, y: Tensor) -> None:
        """Add a batch: ``logits [B, K]`` (float), ``y [B]`` int64 labels in ``0..K-1``."""
        raise NotImplementedError

    def sync(self, reduce_sum: Callable[[Tensor], Tensor], gather_rows: Callable[[Tensor], Tensor]) -> None:
        """Combine the states of all processes (each saw its own shard): ``reduce_sum(t)`` sums a tensor over
        processes, ``gather_rows(t)`` concatenates ``[n_r, ...]`` rows of every process in rank order."""
        raise NotImplementedError

    def compute(self) -> float:
        """The metric over everything added (and synced); NaN when it is undefined (e.g. AUC of one class)."""
        raise NotImplementedError


class _SumMetric(Metric):
    """A metric whose state is one float64 vector of sums (reduced by summing over processes)."""

    size = 2

    def __init__(self, num_classes: int, device: torch.device) -> None:
        super().__init__(num_classes, device)
        self.sums = torch.zeros(self.size, dtype=torch.float64, device=self.device)

    def sync(self, reduce_sum: Callable[[Tensor], Tensor], gather_rows: Callable[[Tensor], Tensor]) -> None:
        self.sums = reduce_sum(self.sums)


class TopK(_SumMetric):
    """Top-``k`` accuracy in percent. State: ``[samples, hits]``."""

    k = 1

    def update(self, logits: Tensor, y: Tensor) -> None:
        k = min(self.k, logits.shape[1])
        hit = (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)
        self.sums += torch.stack([torch.tensor(float(y.shape[0]), device=self.device), hit.sum().double()])

    def compute(self) -> float:
        n, hits = self.sums.tolist()
        return 100.0 * hits / n if n else math.nan


class Top1(TopK):
    """Top-1 accuracy (%)."""

    k = 1


class Top5(TopK):
    """Top-5 accuracy (%)."""

    k = 5


class NLL(_SumMetric):
    """Mean negative log-likelihood of the softmax (nats). State: ``[samples, summed -log p(y)]``."""

    higher_is_better = False

    def update(self, logits: Tensor, y: Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum")
        self.sums += torch.stack([torch.tensor(float(y.shape[0]), device=self.device, dtype=torch.float64), loss])

    def compute(self) -> float:
        n, total = self.sums.tolist()
        return total / n if n else math.nan


class ECE(Metric):
    """Expected calibration error of the top-1 confidence, ``bins`` equal-width bins ``((i-1)/M, i/M]``.

    State: ``[bins, 3]`` float64 sums of (count, correct, confidence) per bin.
    """

    higher_is_better = False
    bins = 15

    def __init__(self, num_classes: int, device: torch.device) -> None:
        super().__init__(num_classes, device)
        self.sums = torch.zeros(self.bins, 3, dtype=torch.float64, device=self.device)

    def update(self, logits: Tensor, y: Tensor) -> None:
        conf, pred = logits.double().softmax(dim=1).max(dim=1)
        # bin i holds confidences in (i/M, (i+1)/M]; ceil(conf*M)-1, clamped (a confidence of exactly 0 is in bin 0)
        idx = (torch.ceil(conf * self.bins).long() - 1).clamp(0, self.bins - 1)
        values = torch.stack([torch.ones_like(conf), (pred == y).double(), conf], dim=1)
        self.sums.index_add_(0, idx, values)

    def sync(self, reduce_sum: Callable[[Tensor], Tensor], gather_rows: Callable[[Tensor], Tensor]) -> None:
        self.sums = reduce_sum(self.sums)

    def compute(self) -> float:
        count, correct, conf = self.sums.unbind(1)
        n = count.sum()
        if float(n) == 0:
            return math.nan
        return float(((correct - conf).abs()).sum() / n)


def binary_auc(scores: Tensor, positive: Tensor) -> Tensor:
    """Exact ROC AUC of ``scores [N]`` for the boolean ``positive [N]`` (ties share their average rank).

    AUC = (sum of the positives' ranks - P(P+1)/2) / (P * N_neg), the Mann-Whitney U statistic. Returns a float64
    scalar tensor, NaN when either class is empty.
    """
    n = scores.shape[0]
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of each tie group's last element
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty(n, dtype=torch.float64, device=scores.device)
    ranks[order] = avg_rank[inverse]
    pos = positive.bool()
    n_pos = pos.sum().double()
    n_neg = n - n_pos
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return torch.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg).clamp_min(1), torch.nan)


class AUC(Metric):
    """ROC AUC: binary for ``K = 2``, macro one-vs-rest for ``K > 2`` (see the module docstring).

    State: the ``[N, K]`` float64 softmax probabilities and ``[N]`` labels of every sample seen.
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        super().__init__(num_classes, device)
        self.probs: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, logits: Tensor, y: Tensor) -> None:
        self.probs.append(logits.double().softmax(dim=1))
        self.labels.append(y)

    def _cat(self) -> tuple[Tensor, Tensor]:
        if not self.probs:
            k = self.num_classes
            return torch.zeros(0, k, dtype=torch.float64, device=self.device), torch.zeros(
                0, dtype=torch.long, device=self.device
            )
        return torch.cat(self.probs), torch.cat(self.labels)

    def sync(self, reduce_sum: Callable[[Tensor], Tensor], gather_rows: Callable[[Tensor], Tensor]) -> None:
        probs, labels = self._cat()
        self.probs, self.labels = [gather_rows(probs)], [gather_rows(labels)]

    def compute(self) -> float:
        probs, labels = self._cat()
        if probs.shape[1] == 2:
            return float(binary_auc(probs[:, 1], labels == 1))
        aucs = torch.stack([binary_auc(probs[:, k], labels == k) for k in range(probs.shape[1])])
        aucs = aucs[~aucs.isnan()]
        return float(aucs.mean()) if aucs.numel() else math.nan


class ConfusionMatrix(Metric):
    """A metric read from the ``[K, K]`` confusion matrix (rows: labels, columns: predicted classes), float64 on the
    device (exact up to 2**53 pixels) and summed over processes; ``sums`` holds it (the name every summed metric
    state has)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        super().__init__(num_classes, device)
        self.sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=self.device)

    def update(self, logits: Tensor, y: Tensor) -> None:
        k = self.num_classes
        pred = logits.argmax(dim=1)
        cells = torch.bincount(y * k + pred, minlength=k * k)
        self.sums += cells.view(k, k).to(torch.float64)

    def sync(self, reduce_sum: Callable[[Tensor], Tensor], gather_rows: Callable[[Tensor], Tensor]) -> None:
        self.sums = reduce_sum(self.sums)

    def iou(self) -> Tensor:
        """``[K]`` float64 per-class IoU, NaN for a class absent from both labels and predictions."""
        tp = self.sums.diagonal()
        union = self.sums.sum(0) + self.sums.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.nan)


class MeanIoU(ConfusionMatrix):
    """Mean IoU (%) over the classes present in labels or predictions; ``details()`` adds the per-class IoUs."""

    def compute(self) -> float:
        iou = self.iou()
        iou = iou[~iou.isnan()]
        return 100.0 * float(iou.mean()) if iou.numel() else math.nan

    def details(self) -> dict[str, list[float | None]]:
        """``{"miou_per_class": [K] IoUs in percent, None for a class absent from labels and predictions}`` (None, not
        NaN, so that ``summary.json`` and ``metrics.jsonl`` stay standard JSON)."""
        return {"miou_per_class": [None if math.isnan(v) else 100.0 * v for v in self.iou().tolist()]}


class PixelAccuracy(ConfusionMatrix):
    """Labelled pixels predicted right (%), ``trace / sum`` of the confusion matrix."""

    def compute(self) -> float:
        total = float(self.sums.sum())
        return 100.0 * float(self.sums.diagonal().sum()) / total if total else math.nan


# the box-mAP metric lives in kdlab.metrics_detection (a Metric subclass importing this module): the registry imports
# it on its first lookup, so neither module imports the other at module level (tests/test_imports.py)
METRICS: Registry[type[Metric]] = Registry("metric", package="kdlab.metrics_detection")
METRICS.add("top1", Top1, description="top-1 accuracy (%)")
METRICS.add("top5", Top5, description="top-5 accuracy (%)")
METRICS.add("nll", NLL, description="mean negative log-likelihood of the softmax (nats)")
METRICS.add("ece", ECE, description="expected calibration error, 15 equal-width bins (0..1)")
METRICS.add("auc", AUC, description="ROC AUC: binary, or macro one-vs-rest for more classes (0..1)")
METRICS.add("miou", MeanIoU, description="mean intersection-over-union from the confusion matrix (%)")
METRICS.add("pixel_acc", PixelAccuracy, description="pixel accuracy from the confusion matrix (%)")


def metric_names() -> list[str]:
    """All registered metric names."""
    return METRICS.names()


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` (or ``loss``) is better; an unknown name lists the known ones.
    ``ema_<name>`` (the student EMA's, :mod:`kdlab.train.ema`) goes the way of ``<name>``."""
    if name.startswith("ema_"):
        return higher_is_better(name.removeprefix("ema_"))
    if name in _EXTRA_DIRECTIONS:
        return _EXTRA_DIRECTIONS[name]
    return METRICS.get(name).higher_is_better


def select_key(name: str) -> Callable[[dict], float]:
    """A sort key over evaluation records (``{"top1": ..., "auc": ...}``) whose maximum is the best record by
    metric ``name``; a record without the metric (or with NaN) ranks last."""
    sign = 1.0 if higher_is_better(name) else -1.0

    def key(record: dict) -> float:
        value = record.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return -math.inf
        return sign * float(value)

    return key


def check_metric_names(names: Iterable[str], where: str = "train.metrics") -> tuple[str, ...]:
    """``names`` as a tuple, each a registered metric; otherwise a ``ValueError`` naming the bad one, the closest
    known name and all known names."""
    from kdlab.registry import closest

    out = tuple(names)
    for name in out:
        if name not in METRICS:
            hint = closest(name, METRICS.names())
            did = f" (did you mean {hint!r}?)" if hint else ""
            raise ValueError(f"{where}: unknown metric {name!r}{did}; known metrics: {', '.join(METRICS.names())}")
    return out


def resolve_metrics(configured: Sequence[str], dataset_defaults: Sequence[str] | None) -> tuple[str, ...]:
    """The metrics of a run: ``train.metrics`` when set, else the dataset's declared defaults, else
    :data:`DEFAULT_METRICS`; ``top1`` is always included (progress lines and image reports read it), except for a
    detection dataset (defaults ``("map",)``), whose outputs are boxes: there every metric must score detections.

    Raises:
        ValueError: an unknown name, or a metric of the other task (``top1`` on a detection dataset, ``map`` on a
            classification or segmentation one), naming the metrics that fit.
    """
    names = tuple(configured) or tuple(dataset_defaults or ()) or DEFAULT_METRICS
    names = check_metric_names(names)
    detection_data = any(METRICS.get(n).task == "detection" for n in check_metric_names(dataset_defaults or ()))
    wrong = [n for n in names if (METRICS.get(n).task == "detection") != detection_data]
    if wrong:
        fit = [n for n in METRICS.names() if (METRICS.get(n).task == "detection") == detection_data]
        what = "boxes (a detection dataset)" if detection_data else "class scores"
        raise ValueError(
            f"train.metrics: {wrong} cannot score this dataset's outputs, which are {what}; use {', '.join(fit)}"
        )
    if detection_data:
        return names
    return names if "top1" in names else ("top1", *names)


_PERCENT = ("top1", "top5", "miou", "pixel_acc", "map")


def format_metrics(values: dict) -> str:
    """``"top1 93.00 auc 0.9812 nll 0.2100"``: an evaluation record's metrics for a progress line (``%`` metrics with
    2 decimals, the others with 4)."""
    parts = []
    for name, value in values.items():
        if name in METRICS and isinstance(value, float):
            parts.append(f"{name} {value:.2f}" if name in _PERCENT else f"{name} {value:.4f}")
    return " ".join(parts)


def _model_input(batch) -> object:
    return batch.x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterator,
    names: Sequence[str] = DEFAULT_METRICS,
    num_classes: int | None = None,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    gather_rows: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` (in eval mode) over ``batches`` of :class:`kdlab.types.Batch`.

    Args:
        model: ``forward(batch.x) -> [B, K]`` logits (or dense ``[B, K, h, w]`` with ``batch.y`` ``[B, H, W]``:
            :func:`dense_rows`); ``batch.x`` may be a tensor or a dict of tensors.
        batches: evaluation batches.
        names: registered metric names.
        num_classes: ``K`` (default: from the first batch's logits).
        reduce_sum, gather_rows: cross-process reductions when each process evaluated its own shard (see
            :meth:`Metric.sync`); None in a single process.

    Returns:
        ``{name: value for each metric, "loss": mean cross-entropy, "n": samples (labelled pixels when dense)}``,
        plus what a metric's ``details()`` adds (``miou_per_class``, ``map_50``...). Detection outputs
        (detections ``[B, D, 6]`` with ground truth ``[B, N, 7]``, :func:`kdlab.metrics_detection.is_detection_output`)
        have no ``loss`` (a detector computes its losses only in training mode, against targets; its evaluation
        outputs are post-processed boxes, which have no cross-entropy) and ``n`` counts images.

    Raises:
        ValueError: no batch, or an unknown metric name.
    """
    from kdlab.metrics_detection import is_detection_output

    names = check_metric_names(names, "metrics")
    was = model.training
    model.eval()
    metrics: dict[str, Metric] | None = None
    loss = NLL(num_classes or 2, torch.device("cpu"))
    detection = False
    images = 0
    try:
        for batch in batches:
            logits = model(_model_input(batch)).float()
            detection = is_detection_output(logits, batch.y)
            logits, y = (logits, batch.y) if detection else dense_rows(logits, batch.y)
            if metrics is None:
                k = num_classes or (0 if detection else logits.shape[1])
                wrong = [n for n in names if (METRICS.get(n).task == "detection") != detection]
                if wrong:
                    kind = "detections [B, D, 6]" if detection else f"class logits {tuple(logits.shape)}"
                    raise ValueError(f"metric(s) {wrong} cannot score the model's outputs, {kind}")
                metrics = {n: METRICS.get(n)(k, logits.device) for n in names}
                loss = NLL(k or 2, logits.device)
            for m in metrics.values():
                m.update(logits, y)
            if detection:
                images += y.shape[0]
            else:
                loss.update(logits, y)
    finally:
        model.train(was)
    if metrics is None:
        raise ValueError("evaluation saw no samples")
    if reduce_sum is not None:
        gather = gather_rows or (lambda t: t)
        for m in (*metrics.values(), loss):
            m.sync(reduce_sum, gather)
        if detection:
            images = int(reduce_sum(torch.tensor([float(images)], dtype=torch.float64, device=loss.sums.device)))
    n = images if detection else int(loss.sums[0])
    if n == 0:
        raise ValueError("evaluation saw no samples")
    out = {name: m.compute() for name, m in metrics.items()}
    for m in metrics.values():
        out.update(m.details() if hasattr(m, "details") else {})
    if not detection:
        out["loss"] = loss.compute()
    out["n"] = n
    return out


__all__ = [
    "AUC",
    "DEFAULT_METRICS",
    "ECE",
    "IGNORE_INDEX",
    "METRICS",
    "NLL",
    "ConfusionMatrix",
    "MeanIoU",
    "Metric",
    "PixelAccuracy",
    "Top1",
    "Top5",
    "binary_auc",
    "check_metric_names",
    "dense_rows",
    "evaluate",
    "format_metrics",
    "higher_is_better",
    "metric_names",
    "resolve_metrics",
    "select_key",
]
