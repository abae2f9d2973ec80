"""Object detection models (issue 20): RetinaNet and Faster R-CNN students and teachers on FPN backbones, built from
torchvision's detection parts, behind the detection contract's ``forward_taps`` (every module here registers models).

Papers and targets: the DIST paper (T. Huang, S. You, F. Wang, C. Qian, C. Xu, "Knowledge Distillation from A
Stronger Teacher", NeurIPS 2022, arXiv:2205.10536; its slides list detection among the tasks) reports COCO box mAP for
RetinaNet-R50 (37.4 alone, 39.8 with DIST) from RetinaNet-X101 (41.0), and Faster R-CNN-R50 (38.4, 40.4 with DIST)
from Cascade Mask R-CNN-X101 (45.6), trained with mmdetection's 1x schedule. References for the models:
torchvision ``models/detection/`` (``retinanet.py``, ``faster_rcnn.py``, ``backbone_utils.py``) and its detection
training recipe (``references/detection/``).

====================  ===================================  ===================  ==================
name                  architecture                         parameters (K = 80)  trainable (K = 80)
====================  ===================================  ===================  ==================
``retinanet_r50``     RetinaNet, ResNet-50 FPN (P3-P7)     33,786,804           33,564,404
``faster_rcnn_r50``   Faster R-CNN, ResNet-50 FPN (P2-P6)  41,704,036           41,481,636
``retinanet_x101``    RetinaNet, ResNeXt-101 32x8d FPN     96,871,348           96,446,196
``faster_rcnn_x101``  Faster R-CNN, ResNeXt-101 32x8d FPN  104,788,580          104,363,428
``retinanet_tiny``    width-8 ResNet-10-like, FPN 16 ch.   219,212              216,884
``faster_rcnn_tiny``  width-8 ResNet-10-like, FPN 16 ch.   130,972              128,644
====================  ===================================  ===================  ==================

Counted with ``sum(p.numel())`` (frozen BN statistics and affine terms are buffers, not parameters; "trainable"
leaves out the frozen stem and ``layer1``). With torchvision's COCO class counts (``num_classes=91`` for RetinaNet,
``90`` + background for Faster R-CNN) the R-50 models have torchvision's documented 34,014,999 and 41,755,286
parameters; ``tests/test_detection_models.py`` checks both on the meta device.

Teachers. ``retinanet_x101`` is the paper's teacher architecture (RetinaNet on ResNeXt-101 32x8d FPN; mmdetection's
is 64x4d, a deviation of width/cardinality only). The paper's two-stage teacher is Cascade Mask R-CNN-X101, which
torchvision's parts cannot build (no cascade heads): ``faster_rcnn_x101`` (Faster R-CNN on ResNeXt-101 32x8d FPN) is
the closest, with the same box-head interface (``roi_class_logits``: the teacher's RoI class logits on the student's
proposals), but it is a weaker teacher than the paper's 45.6 mAP one. Both teachers load a local checkpoint
(``model.teachers.0.checkpoint``: a kdlab run's export or a torchvision-layout state dict with the same class count).

Students start from an ImageNet trunk: ``model.student_backbone=<torchvision resnet50 .pth>`` loads the file into
``imagenet_trunk`` (``backbone.body``: ``conv1`` .. ``layer4``; the ``fc`` keys are dropped).

Deviations from the mmdetection configs behind the paper's numbers (``configs/_base_/models/retinanet_r50_fpn.py``,
``faster-rcnn_r50_fpn.py``): the models are torchvision's, as the issue asks, and keep torchvision's choices where the
two differ:

- RetinaNet's P6 is computed from P5 (torchvision's v1 ``LastLevelP6P7(256, 256)``; mmdetection's
  ``add_extra_convs='on_input'`` uses C5); its octave anchor sizes are truncated to integers
  (``int(32 * 2**(1/3)) = 40``);
- the trunk's BN affine weights are frozen (see :mod:`kdlab.models.detection.backbone`);
- Faster R-CNN keeps 2000 RPN proposals per image in training (mmdetection 1000), pools with ``sampling_ratio=2``
  (mmdetection 0, adaptive) and regresses boxes with smooth-L1 (``beta=1/9``) in the RPN and the RoI head
  (mmdetection L1).

Same in both: ResNet "pytorch" style (stride in the 3x3 convolution), FPN width 256, anchor scales and ratios,
focal loss (alpha 0.25, gamma 2) with an L1 box loss for RetinaNet, IoU thresholds, 256 / 512 sampled anchors / RoIs,
score threshold 0.05, NMS 0.5, 100 detections per image.

The contract (``forward_taps`` on the batch dict, the taps ``fpn.*``, ``cls``, ``rois``, ``roi_logits`` and the
``loss.*`` taps) is in :mod:`kdlab.models.detection.retinanet` and :mod:`kdlab.models.detection.faster_rcnn`.
"""
