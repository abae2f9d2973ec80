"""The detection batch (``batch.x``, the detection contract) as torchvision's ``ImageList`` and target dicts, and
torchvision's per-image detections as one padded ``[B, D, 6]`` tensor in original-image pixels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes


@dataclass
class DetectionInputs:
    """One detection batch in torchvision's terms.

    Attributes:
        images: ``ImageList(tensors [B, 3, H, W], image_sizes [(h, w)] * B)`` (sizes before padding).
        original_sizes: ``[(h, w)] * B`` of the images as stored (detections are mapped back to these).
        targets: per image ``{"boxes": [n, 4] xyxy resized pixels, "labels": [n] int64}`` without the padded and
            crowd rows (label ``-1``), labels shifted by ``label_offset``; None when the batch has no boxes.
    """

    images: ImageList
    original_sizes: list[tuple[int, int]]
    targets: list[dict[str, Tensor]] | None


def _sizes(t: Tensor) -> list[tuple[int, int]]:
    return [(int(h), int(w)) for h, w in t.tolist()]


def detection_inputs(x: Tensor | Mapping[str, Tensor], label_offset: int = 0) -> DetectionInputs:
    """``batch.x`` -> :class:`DetectionInputs`.

    Args:
        x: the detection batch dict (``images`` ``[B, 3, H, W]``, ``image_sizes`` ``[B, 2]``, ``original_sizes``
            ``[B, 2]``, ``boxes`` ``[B, N, 4]``, ``labels`` ``[B, N]`` with ``-1`` on rows that never train), or a
            plain ``[B, 3, H, W]`` tensor (whole unpadded images without boxes, e.g. the build-time tap probe).
        label_offset: added to every label (1 for Faster R-CNN, whose class 0 is the background).
    """
    if isinstance(x, Tensor):
        size = (int(x.shape[-2]), int(x.shape[-1]))
        sizes = [size] * x.shape[0]
        return DetectionInputs(ImageList(x, sizes), list(sizes), None)
    missing = [k for k in ("images", "image_sizes") if k not in x]
    if missing:
        raise KeyError(f"a detection batch needs the keys images and image_sizes; missing: {', '.join(missing)}")
    images = x["images"]
    sizes = _sizes(x["image_sizes"])
    original = _sizes(x["original_sizes"]) if "original_sizes" in x else list(sizes)
    targets = None
    if "boxes" in x and "labels" in x:
        targets = []
        for boxes, labels in zip(x["boxes"], x["labels"]):
            keep = labels >= 0
            targets.append({"boxes": boxes[keep].float(), "labels": labels[keep] + label_offset})
    return DetectionInputs(ImageList(images, sizes), original, targets)


def pack_detections(
    detections: list[dict[str, Tensor]],
    image_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    max_detections: int,
    label_offset: int = 0,
) -> Tensor:
    """torchvision's per-image detections -> ``[B, D, 6]`` rows ``(x1, y1, x2, y2, score, label)``.

    Boxes are mapped from resized to original-image pixels as torchvision's ``GeneralizedRCNNTransform.postprocess``
    does (``resize_boxes``); labels are shifted back by ``label_offset``; rows past an image's detections have label
    ``-1`` and score 0. ``D = max_detections``.
    """
    ref = detections[0]["boxes"] if detections else torch.zeros(0, 4)
    out = ref.new_zeros(len(detections), max_detections, 6)
    out[..., 5] = -1
    for i, det in enumerate(detections):
        n = min(int(det["boxes"].shape[0]), max_detections)
        boxes = resize_boxes(det["boxes"][:n], image_sizes[i], original_sizes[i])
        out[i, :n, :4] = boxes
        out[i, :n, 4] = det["scores"][:n]
        out[i, :n, 5] = (det["labels"][:n] - label_offset).to(out.dtype)
    return out


def require_targets(inputs: DetectionInputs, model_name: str) -> list[dict[str, Tensor]]:
    """The targets of a training batch; a clear error when the batch carries no ``boxes``/``labels``."""
    if inputs.targets is None:
        raise ValueError(
            f"{model_name} in training mode computes its detection losses and needs the batch keys boxes and labels "
            "(a detection data source, e.g. data.name=coco); call .eval() to get detections instead"
        )
    return inputs.targets


__all__ = ["DetectionInputs", "detection_inputs", "pack_detections", "require_targets"]
