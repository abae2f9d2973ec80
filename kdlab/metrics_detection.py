"""Box mAP: the official COCO evaluation (pycocotools' ``COCOeval``, bbox) as a registered metric (``map``).

Input (the detection contract): ``update(logits, y)`` with ``logits`` ``[B, D, 6]`` post-processed detections
``x1, y1, x2, y2, score, label`` in original-image pixels (rows with label -1 are padding) and ``y`` ``[B, N, 7]``
ground truth ``x1, y1, x2, y2, label, iscrowd, area`` (label -1: padding). The metric keeps the rows of every image
(float64, on the evaluation device), numbering the images in the order they arrive. :meth:`MeanAP.sync` gathers
every process's rows in rank order (``gather_rows``) and renumbers the images so each process's images follow those
of the processes before it; the union is evaluated once, as one process would.

:meth:`MeanAP.compute` builds the ground truth and the detections as in-memory pycocotools ``COCO`` objects (image
ids ``1..n`` in that order, category id ``label + 1``, ``bbox`` ``[x, y, w, h]``, the annotation's own ``area`` and
``iscrowd`` for the ground truth; detections get ``area = w * h`` and ``iscrowd = 0`` as ``COCO.loadRes`` gives
them) and runs ``COCOeval(gt, dt, "bbox")``: ``evaluate``, ``accumulate``, ``summarize``. The value is AP@[.5:.95]
in percent; :meth:`MeanAP.details` adds ``map_50``, ``map_75``, ``map_s``, ``map_m``, ``map_l`` (percent; None when
undefined, e.g. no ground-truth box of that size). Categories without ground truth do not count (COCOeval's -1),
exactly as with the official files. pycocotools is imported on the first :meth:`MeanAP.compute` only.

Equality with the official tool: the golden test (tests/test_detection_metric.py) scores hand-made detections on a
COCO-format set both ways (this metric on the loader's batches, and pycocotools on the json files with
``COCO.loadRes``) and gets the same six numbers.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable

import torch
from torch import Tensor

from kdlab.metrics import METRICS, Metric

#: ``details()`` keys, in COCOeval's ``stats`` order after AP@[.5:.95].
DETAIL_KEYS = ("map_50", "map_75", "map_s", "map_m", "map_l")


def is_detection_output(logits: Tensor, y: Tensor) -> bool:
    """Whether ``(logits, y)`` are detections ``[B, D, 6]`` with ground truth ``[B, N, 7]`` (the detection
    contract) rather than class logits."""
    return logits.dim() == 3 and logits.shape[-1] == 6 and y.dim() == 3 and y.shape[-1] == 7


class MeanAP(Metric):
    """COCO box AP@[.5:.95] (%) by pycocotools' COCOeval (see the module docstring).

    State: ``[n_det, 7]`` detection rows ``(image, x1, y1, x2, y2, score, label)`` and ``[n_gt, 8]`` ground-truth rows
    ``(image, x1, y1, x2, y2, label, iscrowd, area)``, float64 on ``device``, plus the image count.
    """

    higher_is_better = True
    task = "detection"

    def __init__(self, num_classes: int, device: torch.device) -> None:
        super().__init__(num_classes, device)
        self.dets: list[Tensor] = []
        self.gts: list[Tensor] = []
        self.images = 0
        self._stats: list[float] | None = None

    def update(self, logits: Tensor, y: Tensor) -> None:
        """Add a batch: ``logits`` ``[B, D, 6]`` detections, ``y`` ``[B, N, 7]`` ground truth (original pixels).

        Raises:
            ValueError: other shapes (e.g. class logits ``[B, K]``: ``map`` scores detectors).
        """
        if not is_detection_output(logits, y):
            raise ValueError(
                f"metric 'map' scores detections [B, D, 6] against ground truth [B, N, 7], got {tuple(logits.shape)} "
                f"and {tuple(y.shape)}; use it with a detection model on a detection dataset (coco)"
            )
        b = logits.shape[0]
        image = torch.arange(self.images, self.images + b, device=logits.device, dtype=torch.float64)
        det = logits.detach().double()
        gt = y.detach().double()
        det = torch.cat([image[:, None, None].expand(b, det.shape[1], 1), det], dim=2)
        gt = torch.cat([image[:, None, None].expand(b, gt.shape[1], 1), gt], dim=2)
        self.dets.append(det[det[..., 6] >= 0].to(self.device))
        self.gts.append(gt[gt[..., 5] >= 0].to(self.device))
        self.images += b
        self._stats = None

    def _cat(self) -> tuple[Tensor, Tensor]:
        empty = torch.zeros(0, dtype=torch.float64, device=self.device)
        dets = torch.cat(self.dets) if self.dets else empty.reshape(0, 7)
        gts = torch.cat(self.gts) if self.gts else empty.reshape(0, 8)
        return dets, gts

    def sync(self, reduce_sum: Callable[[Tensor], Tensor], gather_rows: Callable[[Tensor], Tensor]) -> None:
        """Gather every process's rows (rank order) and renumber the images: process ``r``'s image ``i`` becomes
        ``i + (images of processes 0..r-1)``."""
        dets, gts = self._cat()
        mine = torch.tensor([[self.images, dets.shape[0], gts.shape[0]]], dtype=torch.float64, device=self.device)
        counts = gather_rows(mine).long()  # [world, 3]
        dets, gts = gather_rows(dets), gather_rows(gts)
        offsets = torch.cumsum(counts[:, 0], 0) - counts[:, 0]
        dets[:, 0] += torch.repeat_interleave(offsets, counts[:, 1]).to(dets.dtype)
        gts[:, 0] += torch.repeat_interleave(offsets, counts[:, 2]).to(gts.dtype)
        self.dets, self.gts = [dets], [gts]
        self.images = int(counts[:, 0].sum())
        self._stats = None

    def coco_objects(self):
        """``(ground truth, detections)`` as pycocotools ``COCO`` objects (image ids ``1..n``, category ids
        ``label + 1``), built in memory from the rows seen."""
        from kdlab.data.sources.coco import pycocotools_coco

        coco_cls = pycocotools_coco()
        dets, gts = (t.cpu() for t in self._cat())
        labels = torch.cat([gts[:, 5], dets[:, 6]])
        k = max(self.num_classes, int(labels.max()) + 1 if labels.numel() else 0)
        images = [{"id": i + 1} for i in range(self.images)]
        categories = [{"id": c + 1} for c in range(k)]
        gt_anns = [
            {
                "id": j + 1,
                "image_id": int(r[0]) + 1,
                "category_id": int(r[5]) + 1,
                "bbox": [r[1], r[2], r[3] - r[1], r[4] - r[2]],
                "area": r[7],
                "iscrowd": int(r[6]),
            }
            for j, r in enumerate(gts.tolist())
        ]
        dt_anns = [
            {
                "id": j + 1,
                "image_id": int(r[0]) + 1,
                "category_id": int(r[6]) + 1,
                "bbox": [r[1], r[2], r[3] - r[1], r[4] - r[2]],
                "score": r[5],
                "area": (r[3] - r[1]) * (r[4] - r[2]),
                "iscrowd": 0,
            }
            for j, r in enumerate(dets.tolist())
        ]
        out = []
        for anns in (gt_anns, dt_anns):
            coco = coco_cls()
            coco.dataset = {"images": images, "annotations": anns, "categories": categories}
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            out.append(coco)
        return out[0], out[1]

    def stats(self) -> list[float]:
        """COCOeval's first six ``stats`` in percent (AP, AP50, AP75, APs, APm, APl), NaN where COCOeval gives -1
        (undefined); computed once per state."""
        if self._stats is None:
            if self.images == 0:
                self._stats = [math.nan] * 6
                return self._stats
            from pycocotools.cocoeval import COCOeval

            gt, dt = self.coco_objects()
            evaluator = COCOeval(gt, dt, "bbox")
            with contextlib.redirect_stdout(io.StringIO()):
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            self._stats = [math.nan if v < 0 else 100.0 * float(v) for v in evaluator.stats[:6]]
        return self._stats

    def compute(self) -> float:
        return self.stats()[0]

    def details(self) -> dict[str, float | None]:
        """``{"map_50", "map_75", "map_s", "map_m", "map_l"}`` in percent (None, not NaN, when undefined, so that
        ``summary.json`` and ``metrics.jsonl`` stay standard JSON)."""
        return {k: None if math.isnan(v) else v for k, v in zip(DETAIL_KEYS, self.stats()[1:])}


METRICS.add("map", MeanAP, description="COCO box AP@[.5:.95] by pycocotools' COCOeval (%), detection")

__all__ = ["DETAIL_KEYS", "MeanAP", "is_detection_output"]
