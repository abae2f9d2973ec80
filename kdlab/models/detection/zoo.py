"""The registered detection models (students, teachers, tiny test variants); see :mod:`kdlab.models.detection`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from kdlab.models import register_model
from kdlab.models.detection.backbone import fpn_backbone, resnet_trunk
from kdlab.models.detection.faster_rcnn import FasterRCNNDetector
from kdlab.models.detection.retinanet import RetinaNetDetector

#: Settings of the tiny test variants: few proposals and sampled RoIs so that a step at 64x64 takes milliseconds.
_TINY_RCNN = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 200,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
}
#: Anchor base sizes of the tiny variants (64x64 images hold objects of 8-48 pixels). On tests/coco_tiny.py's boxes
#: (6-40 x 4-31 px) every box gets its best anchor through torchvision's low-quality matches (82 % at IoU >= 0.4).
#: From scratch the tiny RetinaNet needs a schedule that fits a short run: the COCO 1x recipe's lr 0.01, 500-step
#: warm-up and epoch-8/11 LR steps leave a 240-step run at 0 mAP (it ends at lr 5e-5); no warm-up, lr 0.05 at batch 4
#: and late steps reach a nonzero mAP in the same 240 steps (tests/test_detection_short_run.py).
_TINY_ANCHORS = (8, 16, 32, 64, 128)
_TINY_FPN = 16


def _check_channels(name: str, in_channels: int) -> None:
    if in_channels != 3:
        raise ValueError(f"{name} takes RGB images (in_channels=3), got in_channels={in_channels}")


def retinanet(trunk: str, num_classes: int = 80, in_channels: int = 3) -> RetinaNetDetector:
    """RetinaNet on a ResNet trunk (``"r50"``, ``"x101"`` or ``"tiny"``) with FPN P3-P7 (torchvision's v1 recipe:
    ``LastLevelP6P7(256, 256)`` from P5), frozen BN, stem and ``layer1`` frozen."""
    _check_channels(f"retinanet_{trunk}", in_channels)
    if trunk == "tiny":
        backbone = fpn_backbone(resnet_trunk("tiny"), [2, 3, 4], _TINY_FPN, LastLevelP6P7(_TINY_FPN, _TINY_FPN))
        return RetinaNetDetector(backbone, num_classes, _TINY_ANCHORS, input_size=(3, 64, 64))
    backbone = fpn_backbone(resnet_trunk(trunk), [2, 3, 4], 256, LastLevelP6P7(256, 256))
    return RetinaNetDetector(backbone, num_classes)


def faster_rcnn(trunk: str, num_classes: int = 80, in_channels: int = 3) -> FasterRCNNDetector:
    """Faster R-CNN on a ResNet trunk with FPN P2-P6 (``LastLevelMaxPool``), torchvision's ``fasterrcnn_resnet50_fpn``
    layout (two-layer 1024 box head), frozen BN, stem and ``layer1`` frozen."""
    _check_channels(f"faster_rcnn_{trunk}", in_channels)
    if trunk == "tiny":
        backbone = fpn_backbone(resnet_trunk("tiny"), [1, 2, 3, 4], _TINY_FPN, LastLevelMaxPool())
        return FasterRCNNDetector(
            backbone, num_classes, _TINY_ANCHORS, representation_size=32, input_size=(3, 64, 64), **_TINY_RCNN
        )
    backbone = fpn_backbone(resnet_trunk(trunk), [1, 2, 3, 4], 256, LastLevelMaxPool())
    return FasterRCNNDetector(backbone, num_classes)


#: name -> (builder, trunk, parameters for K = 80 (all, trainable), description)
ZOO: dict[str, tuple[Callable[..., nn.Module], str, tuple[int, int], str]] = {
    "retinanet_r50": (retinanet, "r50", (33_786_804, 33_564_404), "RetinaNet, ResNet-50 FPN (student)"),
    "faster_rcnn_r50": (faster_rcnn, "r50", (41_704_036, 41_481_636), "Faster R-CNN, ResNet-50 FPN (student)"),
    "retinanet_x101": (retinanet, "x101", (96_871_348, 96_446_196), "RetinaNet, ResNeXt-101 32x8d FPN (teacher)"),
    "faster_rcnn_x101": (
        faster_rcnn,
        "x101",
        (104_788_580, 104_363_428),
        "Faster R-CNN, ResNeXt-101 32x8d FPN (teacher)",
    ),
    "retinanet_tiny": (retinanet, "tiny", (219_212, 216_884), "tiny RetinaNet for tests (width 8, FPN 16)"),
    "faster_rcnn_tiny": (faster_rcnn, "tiny", (130_972, 128_644), "tiny Faster R-CNN for tests (width 8, FPN 16)"),
}


def _register(name: str) -> None:
    builder, trunk, _, doc = ZOO[name]

    def build(num_classes: int = 80, in_channels: int = 3, **_: object) -> nn.Module:
        return builder(trunk, num_classes, in_channels)

    build.__doc__ = f"``{name}``: {doc}."
    heavy = trunk != "tiny"
    size = (3, 64, 64) if trunk == "tiny" else (3, 800, 1344)
    register_model(name, family="detection", outputs="detection", heavy=heavy, input_size=size, description=doc)(build)


for _name in ZOO:
    _register(_name)

__all__ = ["ZOO", "faster_rcnn", "retinanet"]
