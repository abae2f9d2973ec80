"""Detection models (``outputs="detection"``): faithful to torchvision's own RetinaNet / Faster R-CNN (golden losses and
detections on the same weights and inputs), the detection contract's taps and eval output, the teacher's RoI logits on
given proposals, frozen BN, ImageNet trunk loading and the parameter counts of the full-size models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from kdlab.models import MODELS, create, model_names, probe_taps
from kdlab.models.detection.zoo import ZOO

K = 5
DETECTION = [n for n in model_names() if MODELS.meta(n).get("outputs") == "detection"]


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two 64x64-padded images (the second 56x48 before padding, stored at twice the size), three boxes, one of them
    padding and one crowd (label -1)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=g)
    images[1, :, 56:, :] = 0
    images[1, :, :, 48:] = 0
    boxes = torch.tensor(
        [[[4.0, 6.0, 30.0, 34.0], [20.0, 10.0, 60.0, 40.0], [1.0, 1.0, 9.0, 9.0]],
         [[2.0, 3.0, 22.0, 19.0], [10.0, 12.0, 44.0, 50.0], [0.0, 0.0, 0.0, 0.0]]]
    )  # fmt: skip
    return {
        "images": images,
        "image_sizes": torch.tensor([[64, 64], [56, 48]]),
        "original_sizes": torch.tensor([[64, 64], [112, 96]]),
        "boxes": boxes,
        "labels": torch.tensor([[1, 4, -1], [0, 2, -1]]),
    }


class _PreparedTransform(GeneralizedRCNNTransform):
    """torchvision's transform with its resize/normalise/pad replaced by the batch kdlab's data path prepared; its
    ``postprocess`` (boxes back to the original sizes) is torchvision's."""

    def __init__(self, batch: dict[str, torch.Tensor], label_offset: int) -> None:
        super().__init__(64, 64, [0.0] * 3, [1.0] * 3)
        self.batch, self.offset = batch, label_offset

    def forward(self, images, targets=None):
        sizes = [tuple(s) for s in self.batch["image_sizes"].tolist()]
        if targets is not None:
            targets = [
                {"boxes": b[lab >= 0], "labels": lab[lab >= 0] + self.offset}
                for b, lab in zip(self.batch["boxes"], self.batch["labels"])
            ]
        return ImageList(self.batch["images"], sizes), targets


def _tv_call(tv: nn.Module, batch: dict[str, torch.Tensor], offset: int):
    """torchvision's own ``forward`` on the prepared batch (original-size dummies only give the original sizes)."""
    tv.transform = _PreparedTransform(batch, offset).train(tv.training)
    dummies = [torch.zeros(3, h, w) for h, w in batch["original_sizes"].tolist()]
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    return tv(dummies, targets if tv.training else None)


def _torchvision_twin(model: nn.Module) -> nn.Module:
    """The torchvision detector built from ``model``'s own parts (deep copies), same weights."""
    if type(model).__name__ == "RetinaNetDetector":
        tv = RetinaNet(
            copy.deepcopy(model.backbone),
            K,
            anchor_generator=copy.deepcopy(model.anchor_generator),
            head=copy.deepcopy(model.head),
            detections_per_img=100,
            score_thresh=0.0,
        )
    else:
        tv = FasterRCNN(
            copy.deepcopy(model.backbone),
            num_classes=None,
            rpn_anchor_generator=copy.deepcopy(model.rpn.anchor_generator),
            box_head=copy.deepcopy(model.roi_heads.box_head),
            box_predictor=copy.deepcopy(model.roi_heads.box_predictor),
            box_score_thresh=0.0,
            **{k: getattr(model.rpn, a)[m] for k, a, m in _RPN_TOPN},
            rpn_batch_size_per_image=model.rpn.fg_bg_sampler.batch_size_per_image,
            box_batch_size_per_image=model.roi_heads.fg_bg_sampler.batch_size_per_image,
        )
    missing, unexpected = tv.load_state_dict(model.state_dict(), strict=True)
    assert not missing and not unexpected
    return tv


_RPN_TOPN = [
    ("rpn_pre_nms_top_n_train", "_pre_nms_top_n", "training"),
    ("rpn_pre_nms_top_n_test", "_pre_nms_top_n", "testing"),
    ("rpn_post_nms_top_n_train", "_post_nms_top_n", "training"),
    ("rpn_post_nms_top_n_test", "_post_nms_top_n", "testing"),
]


def _tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create(name, num_classes=K)
    with torch.no_grad():  # the heads' prior initialisation scores every anchor alike: spread them (no score ties)
        for key, p in model.named_parameters():
            if key.split(".")[-2] in ("cls_logits", "bbox_reg", "cls_score", "bbox_pred"):
                p.normal_(0.0, 0.1)
    if hasattr(model, "score_thresh"):
        model.score_thresh = 0.0  # random tiny weights score below 0.05: keep detections to compare
    else:
        model.roi_heads.score_thresh = 0.0
    return model


@pytest.mark.parametrize("name", ["retinanet_tiny", "faster_rcnn_tiny"])
def test_losses_and_detections_equal_torchvisions_own_model(name: str) -> None:
    model = _tiny(name)
    tv = _torchvision_twin(model)
    offset = 0 if name.startswith("retinanet") else 1
    batch = _batch()
    for train in (True, False):
        model.train(train)
        tv.train(train)
        torch.manual_seed(1)  # the RPN's and RoI head's samplers draw random numbers
        with torch.no_grad():
            logits, taps = model.forward_taps(batch)
        torch.manual_seed(1)
        with torch.no_grad():
            ref = _tv_call(tv, batch, offset)
        if train:
            losses = {k.removeprefix("loss."): v for k, v in taps.items() if k.startswith("loss.")}
            assert sorted(losses) == sorted(k.removeprefix("loss_") for k in ref)
            for key, value in ref.items():
                torch.testing.assert_close(losses[key.removeprefix("loss_")], value, rtol=0, atol=1e-6)
            assert all(float(v) > 0 for v in losses.values())
        else:
            assert logits.shape == (2, 100, 6)
            for i, det in enumerate(ref):
                n = det["boxes"].shape[0]
                assert n > 0
                torch.testing.assert_close(logits[i, :n, :4], det["boxes"], rtol=0, atol=1e-6)
                torch.testing.assert_close(logits[i, :n, 4], det["scores"], rtol=0, atol=1e-6)
                assert torch.equal(logits[i, :n, 5].long(), det["labels"] - offset)
                assert (logits[i, n:, 5] == -1).all() and (logits[i, n:, 4] == 0).all()


def test_retinanet_taps_and_train_logits() -> None:
    model = _tiny("retinanet_tiny").train()
    batch = _batch()
    names = [f"fpn.{i}" for i in range(5)] + ["cls", "anchors"]
    logits, taps = model.forward_taps(batch, names)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # P3-P7 of a 64x64 batch
    a = sum(h * w for h, w in sizes) * 9
    assert logits.shape == (2, a, K) and taps["cls"] is logits
    for i, (h, w) in enumerate(sizes):
        assert taps[f"fpn.{i}"].shape == (2, 16, h, w)
    assert taps["anchors"].shape == (2, a, 4)
    assert set(taps) == {*names, "loss.classification", "loss.bbox_regression"}
    assert all(taps[k].dim() == 0 for k in ("loss.classification", "loss.bbox_regression"))
    model.eval()
    dets, taps = model.forward_taps(batch, ["cls"])  # raw head outputs on request in eval mode too
    assert dets.shape == (2, 100, 6) and taps["cls"].shape == (2, a, K) and set(taps) == {"cls"}


def test_faster_rcnn_taps_and_train_logits() -> None:
    model = _tiny("faster_rcnn_tiny").train()
    batch = _batch()
    names = [f"fpn.{i}" for i in range(5)] + ["rois", "roi_logits"]
    logits, taps = model.forward_taps(batch, names)
    for i, s in enumerate((16, 8, 4, 2, 1)):  # P2-P6 of a 64x64 batch
        assert taps[f"fpn.{i}"].shape == (2, 16, s, s)
    r = logits.shape[0]
    assert logits.shape == (r, K + 1) and taps["roi_logits"] is logits
    rois = taps["rois"]
    assert rois.shape == (r, 5) and r == 2 * 64  # box_batch_size_per_image rows per image
    assert torch.equal(rois[:, 0], torch.arange(2).repeat_interleave(64).float())
    assert set(taps) >= {"loss.objectness", "loss.rpn_box_reg", "loss.classifier", "loss.box_reg"}
    assert (rois[:64, 3] <= 64).all() and (rois[64:, 3] <= 48).all() and (rois[64:, 4] <= 56).all()  # clipped


@pytest.mark.parametrize("name", ["retinanet_tiny", "faster_rcnn_tiny"])
def test_eval_output_is_detections_in_original_pixels(name: str) -> None:
    model = _tiny(name).eval()
    batch = _batch()
    with torch.no_grad():
        dets = model(batch)
    assert dets.shape == (2, 100, 6) and dets.dtype == torch.float32
    real = dets[..., 5] >= 0
    assert real.any(dim=1).all()
    labels = dets[..., 5][real]
    assert ((labels >= 0) & (labels < K) & (labels == labels.round())).all()
    # the second image is 56x48 in the batch and 112x96 on disk: boxes are scaled by 2 and lie inside 96 x 112
    second = dets[1][real[1]]
    assert (second[:, [0, 2]] <= 96 + 1e-4).all() and (second[:, [1, 3]] <= 112 + 1e-4).all()
    assert second[:, 2].max() > 48  # beyond the resized width: really mapped back
    scores = dets[..., 4][real]
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (dets[..., 4][~real] == 0).all()


def test_teacher_roi_class_logits_equal_the_roi_head_by_hand() -> None:
    student = _tiny("faster_rcnn_tiny").train()
    torch.manual_seed(3)
    teacher = create("faster_rcnn_tiny", num_classes=K).eval()
    batch = _batch()
    fpn = [f"fpn.{i}" for i in range(5)]
    _, s_taps = student.forward_taps(batch, ["rois"])
    with torch.no_grad():
        _, t_taps = teacher.forward_taps(batch, [*fpn, "rois", "roi_logits"])
        got = teacher.roi_class_logits({k: t_taps[k] for k in fpn}, s_taps["rois"], batch["image_sizes"])
        rois = s_taps["rois"]
        boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
        feats = {name: t_taps[f"fpn.{i}"] for i, name in enumerate(("0", "1", "2", "3", "pool"))}
        pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        pooled = pool(feats, boxes, [(64, 64), (56, 48)])
        want = teacher.roi_heads.box_predictor.cls_score(teacher.roi_heads.box_head(pooled))
        # on its own eval-mode proposals the teacher reproduces its own roi_logits tap
        own = teacher.roi_class_logits({k: t_taps[k] for k in fpn}, t_taps["rois"], batch["image_sizes"])
    assert got.shape == (rois.shape[0], K + 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(own, t_taps["roi_logits"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="grouped by image"):
        teacher.roi_class_logits({k: t_taps[k] for k in fpn}, rois.flip(0), batch["image_sizes"])


@pytest.mark.parametrize("name", ["retinanet_tiny", "faster_rcnn_tiny"])
def test_frozen_bn_and_frozen_stem(name: str) -> None:
    model = _tiny(name)
    trunk = model.imagenet_trunk
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in trunk.modules()) > 0
    frozen = {n.split(".")[0] for n, p in trunk.named_parameters() if not p.requires_grad}
    trained = {n.split(".")[0] for n, p in trunk.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "layer1"} and trained == {"layer2", "layer3", "layer4"}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model.train().backbone(x)
        b = model.eval().backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in a)  # BN behaves the same in both modes


def test_imagenet_trunk_loads_a_torchvision_layout_file(tmp_path) -> None:
    from kdlab.models.backbone_init import load_backbone_file

    model = _tiny("retinanet_tiny")
    torch.manual_seed(5)
    source = create("retinanet_tiny", num_classes=K).imagenet_trunk
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(10, 64), torch.randn(10)  # an ImageNet classifier head
    state["bn1.num_batches_tracked"] = torch.tensor(7)  # files saved from nn.BatchNorm2d carry step counters
    torch.save(state, tmp_path / "trunk.pth")
    load_backbone_file(model, tmp_path / "trunk.pth", "retinanet_tiny")
    for key, value in source.state_dict().items():
        assert torch.equal(model.imagenet_trunk.state_dict()[key], value), key


@pytest.mark.parametrize("name", DETECTION)
def test_parameter_counts_on_meta(name: str) -> None:
    builder, trunk, (total, trainable), _ = ZOO[name]
    with torch.device("meta"):
        model = builder(trunk, 80)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    if trunk == "r50":  # torchvision's documented counts at its COCO class counts (91 sigmoid / 90 + background)
        with torch.device("meta"):
            ref = builder(trunk, 91 if name.startswith("retinanet") else 90)
        want = 34_014_999 if name.startswith("retinanet") else 41_755_286
        assert sum(p.numel() for p in ref.parameters()) == want


@pytest.mark.parametrize("name", ["retinanet_tiny", "faster_rcnn_tiny"])
def test_build_time_probe_and_registry(name: str) -> None:
    model = create(name, num_classes=K)
    shapes = probe_taps(model, model.tap_names(), (3, 64, 64))
    assert shapes["logits"] == (100, 6)  # eval mode: detections
    assert shapes["fpn.0"][0] == 16
    assert MODELS.meta(name)["family"] == "detection" and tuple(model.input_size) == MODELS.meta(name)["input_size"]
    with pytest.raises(ValueError, match="boxes and labels"):
        model.train()({"images": torch.zeros(1, 3, 64, 64), "image_sizes": torch.tensor([[64, 64]])})


@pytest.mark.parametrize("name", ["retinanet_r50", "faster_rcnn_x101"])
def test_full_size_taps_on_meta(name: str) -> None:
    """The build-time checks run on the meta device (``check_on_meta``): shapes only, at the registered probe size."""
    with torch.device("meta"):
        model = create(name, num_classes=80)
    shapes = probe_taps(model, model.tap_names(), (3, 800, 1344))
    assert shapes["logits"] == (100, 6)
    if name.startswith("retinanet"):
        levels = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]  # P3-P7; P6, P7 by stride-2 convolutions
        assert shapes["cls"] == (9 * sum(h * w for h, w in levels), 80)
    else:
        levels = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]  # P2-P5, P6 by max-pooling
        assert shapes["rois"] == (5,) and shapes["roi_logits"] == (81,)
    assert [shapes[f"fpn.{i}"] for i in range(5)] == [(256, h, w) for h, w in levels]


@pytest.mark.parametrize("name", ["retinanet_tiny", "faster_rcnn_tiny"])
def test_teacher_loads_a_torchvision_layout_checkpoint(name: str, tmp_path) -> None:
    """``model.teachers.0.checkpoint``: a state dict saved from torchvision's own detector class (same parts, same
    class count) loads as it is, wrapped or not."""
    from kdlab.train.checkpoint import load_model_file

    tv = _torchvision_twin(_tiny(name))
    torch.save({"model": tv.state_dict()}, tmp_path / "teacher.pth")
    torch.manual_seed(9)
    teacher = create(name, num_classes=K)
    load_model_file(teacher, tmp_path / "teacher.pth", name)
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("name", ["retinanet_tiny", "faster_rcnn_tiny"])
def test_an_image_without_boxes_trains_as_background(name: str) -> None:
    """Images without (non-crowd) boxes, all labels -1, give finite losses and gradients: every anchor / proposal of
    them is background, as in torchvision (images kept without annotations, or only crowd boxes)."""
    model = _tiny(name).train()
    batch = _batch()
    batch["labels"][1] = -1  # the second image has only padding / crowd rows
    _, taps = model.forward_taps(batch, ())
    losses = [v for k, v in taps.items() if k.startswith("loss.")]
    assert losses and all(torch.isfinite(v) for v in losses)
    sum(losses).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    batch["labels"][0] = -1  # no box in the whole batch
    model.zero_grad()
    _, taps = model.forward_taps(batch, ())
    assert all(torch.isfinite(v) for k, v in taps.items() if k.startswith("loss."))
