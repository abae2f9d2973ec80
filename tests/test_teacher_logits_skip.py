"""``Needs.teacher_logits``: a frozen detector teacher whose method reads only its taps skips the work only its
logits (eval-mode detections) need -- the proposals, the RoI head and the post-processing (Faster R-CNN), the head and
post-processing (RetinaNet) -- with the taps it does return unchanged bit for bit; classifiers are untouched."""

from __future__ import annotations

import pytest
import torch

from kdlab.models import create
from kdlab.train.teacher import FrozenTeacher
from kdlab.types import Batch, Needs

K = 3
FPN = ("fpn.0", "fpn.1", "fpn.2", "fpn.3", "fpn.4")


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.randn(2, 3, 64, 64, generator=g),
        "image_sizes": torch.tensor([[64, 64], [56, 48]]),
        "original_sizes": torch.tensor([[64, 64], [112, 96]]),
        "boxes": torch.tensor([[[4.0, 6.0, 30.0, 34.0]], [[2.0, 3.0, 22.0, 19.0]]]),
        "labels": torch.tensor([[1], [0]]),
    }


def _teacher(name: str) -> FrozenTeacher:
    torch.manual_seed(0)
    return FrozenTeacher(create(name, num_classes=K), name, (0.0,) * 3, (1.0,) * 3)


class _Calls:
    """Counts the calls of some submodules (forward pre-hooks) and bound methods (wrapped on the instance)."""

    def __init__(self, owners: dict[str, object]) -> None:
        self.n = dict.fromkeys(owners, 0)
        for key, (obj, attr) in owners.items():
            self._wrap(key, obj, attr)

    def _wrap(self, key: str, obj: object, attr: str) -> None:
        inner = getattr(obj, attr)
        if isinstance(inner, torch.nn.Module):  # a submodule: count its forward calls
            inner.register_forward_pre_hook(lambda *_: self.n.__setitem__(key, self.n[key] + 1))
            return

        def counted(*args, **kwargs):
            self.n[key] += 1
            return inner(*args, **kwargs)

        setattr(obj, attr, counted)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    ("taps", "skipped", "run"),
    [
        (FPN, ["head", "postprocess"], []),  # cwd / mimic: FPN only
        (("fpn.0", "cls"), ["postprocess"], ["head"]),  # kd / dist on anchors: the head, no detections
        (("anchors",), ["head", "postprocess"], []),
    ],
)
def test_retinanet_teacher_skips_head_and_postprocessing_when_logits_are_not_read(taps, skipped, run) -> None:
    teacher = _teacher("retinanet_tiny")
    batch = Batch(_batch(), torch.zeros(2, 1, 7), torch.arange(2))
    full = teacher.outputs(batch, ("x",), taps)["x"]
    m = teacher.model
    calls = _Calls({"head": (m, "head"), "postprocess": (m, "postprocess_detections")})
    lean = teacher.outputs(batch, ("x",), taps, logits=False)["x"]
    _equal(lean.taps, full.taps)  # what is read is identical
    assert full.logits.shape == (2, m.detections_per_img, 6)
    assert lean.logits.shape == (2, 0, 6)  # no detections computed
    assert all(calls.n[k] == 0 for k in skipped), calls.n
    assert all(calls.n[k] == 1 for k in run), calls.n
    teacher.outputs(batch, ("x",), taps)  # logits=True: the full forward again
    assert calls.n["postprocess"] == 1


@pytest.mark.parametrize(
    ("taps", "skipped", "run"),
    [
        (FPN, ["rpn", "box", "postprocess"], []),  # cwd / mimic, and two-stage dist/kd (RoI head called by the method)
        (("fpn.0", "rois"), ["box", "postprocess"], ["rpn"]),
        (("rois", "roi_logits"), ["postprocess"], ["rpn", "box"]),
    ],
)
def test_faster_rcnn_teacher_skips_proposals_roi_head_and_postprocessing(taps, skipped, run) -> None:
    teacher = _teacher("faster_rcnn_tiny")
    batch = Batch(_batch(), torch.zeros(2, 1, 7), torch.arange(2))
    full = teacher.outputs(batch, ("x",), taps)["x"]
    m = teacher.model
    calls = _Calls(
        {"rpn": (m, "rpn"), "box": (m, "_box_branch"), "postprocess": (m.roi_heads, "postprocess_detections")}
    )
    lean = teacher.outputs(batch, ("x",), taps, logits=False)["x"]
    _equal(lean.taps, full.taps)
    assert lean.logits.shape == (2, 0, 6)
    assert all(calls.n[k] == 0 for k in skipped), calls.n
    assert all(calls.n[k] == 1 for k in run), calls.n


def test_two_stage_teacher_roi_logits_on_student_proposals_unchanged_from_lean_fpn_taps() -> None:
    """Two-stage dist/kd read the teacher's FPN taps and call its RoI head on the student's proposals: the same
    logits from the lean forward."""
    teacher = _teacher("faster_rcnn_tiny")
    batch = Batch(_batch(), torch.zeros(2, 1, 7), torch.arange(2))
    full = teacher.outputs(batch, ("x",), FPN)["x"]
    lean = teacher.outputs(batch, ("x",), FPN, logits=False)["x"]
    rois = torch.tensor([[0.0, 2.0, 2.0, 30.0, 30.0], [1.0, 4.0, 4.0, 40.0, 20.0]])
    sizes = batch.x["image_sizes"]
    with torch.no_grad():
        a = teacher.model.roi_class_logits(dict(full.taps), rois, sizes)
        b = teacher.model.roi_class_logits(dict(lean.taps), rois, sizes)
    assert torch.equal(a, b)


def test_a_training_detector_ignores_the_flag() -> None:
    torch.manual_seed(0)
    model = create("retinanet_tiny", num_classes=K).train()
    logits, taps = model.forward_taps(_batch(), ("fpn.0",), logits=False)
    assert logits.shape[-1] == K and "loss.classification" in taps


def test_classifier_teacher_is_bit_identical_and_never_sees_the_flag() -> None:
    torch.manual_seed(0)
    model = create("resnet8", num_classes=10)
    teacher = FrozenTeacher(model, "resnet8", (0.5,) * 3, (0.25,) * 3, [0.4] * 3, [0.2] * 3)
    seen = []
    inner = model.forward_taps

    def spy(x, taps=(), **kwargs):
        seen.append(kwargs)
        return inner(x, taps, **kwargs)

    model.forward_taps = spy
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = Batch(x, torch.zeros(4, dtype=torch.long), torch.arange(4))
    taps = (model.tap_names()[0],)
    a = teacher.outputs(batch, ("x",), taps)["x"]
    b = teacher.outputs(batch, ("x",), taps, logits=False)["x"]
    assert torch.equal(a.logits, b.logits) and a.logits.shape == (4, 10)
    _equal(a.taps, b.taps)
    assert seen == [{}, {}]


def test_needs_union_reads_teacher_logits_when_either_does() -> None:
    lean, full = Needs(teacher_logits=False), Needs()
    assert not lean.union(lean).teacher_logits
    assert lean.union(full).teacher_logits and full.union(lean).teacher_logits
    assert Needs().teacher_logits  # the default: a method reads the logits


# ------------------------------------------------------------------------------------ through the trainer's step
REPO_COCO = "configs/coco"
SMALL = [
    "model.student_backbone=null",
    "data.min_size=64",
    "data.max_size=64",
    "data.batch_size=2",
    "data.workers=0",
    "train.device=cpu",
    "train.threads=1",
    "log.progress=off",
]


PAIRS = {"retinanet": ("retinanet_x101", "retinanet_r50"), "faster_rcnn": ("faster_rcnn_x101", "faster_rcnn_r50")}


@pytest.mark.parametrize(
    ("recipe", "kind"), [("cwd", "faster_rcnn"), ("dist_mimic", "retinanet"), ("kd", "faster_rcnn")]
)
def test_the_trainers_teacher_forward_skips_the_detections_nobody_reads(coco_tiny, tmp_path, recipe, kind) -> None:
    """The recipes' methods declare ``teacher_logits=False``; the trainer's teacher forward passes it on, so the
    frozen detector never post-processes during a training step, and the step's loss equals the one computed from
    the full teacher forward."""
    from kdlab.config import load_config
    from kdlab.train.trainer import Trainer

    from conftest import REPO

    teacher, student = PAIRS[kind]
    cfg = load_config(
        str(REPO / REPO_COCO / recipe / f"{teacher}__{student}.yaml"),
        [f"data.root={coco_tiny}", f"model.student={kind}_tiny", f"model.teachers.0.name={kind}_tiny",
         "model.teachers.0.checkpoint=null", *SMALL, f"train.run_dir={tmp_path}", "train.name=t"],
    )  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.run.needs.teacher_logits is False
    model = trainer.run.teachers[0].model
    post = model.roi_heads if kind == "faster_rcnn" else model
    calls = _Calls({"postprocess": (post, "postprocess_detections")})
    batch = next(trainer.run.data.train_batches(0))
    teachers = trainer.teacher_outputs(batch)
    assert calls.n["postprocess"] == 0 and teachers[0]["x"].logits.shape[1] == 0
    full = tuple(t.outputs(batch, ("x",), trainer.run.needs.teacher_taps) for t in trainer.run.teachers)
    assert calls.n["postprocess"] == 1
    torch.manual_seed(0)
    a = trainer.step_module(batch, teachers, trainer.start)
    torch.manual_seed(0)
    b = trainer.step_module(batch, full, trainer.start)
    assert a.terms.keys() == b.terms.keys()
    for k in a.terms:
        assert torch.equal(a.terms[k], b.terms[k]), k
