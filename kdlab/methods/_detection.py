"""Object-detection support shared by the methods that accept it (issue 20; the detection contract).

A detection model (``kdlab.models.detection``) returns, in training mode, its classification outputs as ``logits``
(RetinaNet: per-anchor class logits ``[B, A, K]``; Faster R-CNN: RoI-head logits ``[R, K + 1]`` on the student's
sampled proposals) and always its own detection losses as ``"loss.<name>"`` taps; a frozen teacher in eval mode
returns post-processed detections as ``logits`` and the raw outputs only as taps (``"cls"``, ``"fpn.<l>"``).
A method accepts detection pairs when its class sets ``detection_outputs = True``; :func:`check_detection_pair`
refuses any other when the run is built. The task term of a detection student is the sum of its own losses,
``io.task_loss(io.s.logits)``, reported as ``ce`` like the cross-entropy of the other tasks.

The pieces here keep the detection forms out of the methods' math:

- :func:`detection_kind`: ``"one_stage"`` (a ``cls`` tap), ``"two_stage"`` (``roi_logits``/``rois`` taps) or None;
- :class:`DetectionPair`: the student's and the teachers' class-score rows of one step (one matrix per FPN level for
  a one-stage pair, the RoI rows for a two-stage pair: the teachers' RoI head evaluated on the student's proposals
  through ``roi_class_logits``), and the paired FPN levels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kdlab.config import ConfigError
from kdlab.losses.detection import anchor_rows
from kdlab.types import DEFAULT_VIEW, Needs, StepIO

ONE_STAGE = "one_stage"
TWO_STAGE = "two_stage"

_FPN = re.compile(r"fpn\.(\d+)")


class DetectionOutputError(ConfigError):
    """A method (or a method setting) cannot handle the outputs of a detection pair."""


def detection_kind(taps: Mapping[str, object]) -> str | None:
    """``"two_stage"`` when the model's taps (or tap shapes) include ``roi_logits`` or ``rois``, ``"one_stage"`` when
    they include ``cls``, None for any other model."""
    if "roi_logits" in taps or "rois" in taps:
        return TWO_STAGE
    if "cls" in taps:
        return ONE_STAGE
    return None


def fpn_taps(taps: Mapping[str, object]) -> list[str]:
    """The ``fpn.<l>`` tap names among ``taps``, finest level first."""
    found = [(int(m.group(1)), name) for name in taps if (m := _FPN.fullmatch(name))]
    return [name for _, name in sorted(found)]


def _detection_methods() -> list[str]:
    from kdlab.registry import METHODS

    return [n for n in METHODS.names() if getattr(METHODS.get(n), "detection_outputs", False) is True]


def accepts_detection(method_cfg: object) -> bool:
    """Whether the method a config names accepts detection outputs, known before it is built: its class's
    ``detection_outputs``; a ``sum`` accepts them when every term does."""
    from kdlab.registry import METHODS

    terms = getattr(method_cfg, "terms", None)
    if getattr(method_cfg, "name", None) == "sum" and terms:
        return all(accepts_detection(t) for t in terms)
    return bool(getattr(METHODS.get(method_cfg.name), "detection_outputs", False))


def check_detection_pair(method_cfg: object, student_taps: Mapping[str, object], model_name: str) -> None:
    """Refuse a method without detection support on a detection student (checked before the method is built).

    Raises:
        DetectionOutputError: naming the method, the model and the methods that accept detection outputs.
    """
    if detection_kind(student_taps) is None or accepts_detection(method_cfg):
        return
    raise DetectionOutputError(
        f"method {method_cfg.name!r} does not support object-detection outputs, but model {model_name!r} is a "
        f"detector; use one of the methods that do: {', '.join(_detection_methods())} (or a sum of them)"
    )


def refuse(method: str, settings: Mapping[str, bool]) -> None:
    """Raise :class:`DetectionOutputError` for the first ``setting`` that is on (True) on a detection pair."""
    for name, on in settings.items():
        if on:
            raise DetectionOutputError(
                f"{method}: method.{name} does not apply to object-detection outputs; leave it at its default "
                "(configs/coco/ has the detection recipes)"
            )


class DetectionPair:
    """The class scores and FPN levels a method reads from a detection student and its teachers.

    Built from the :class:`kdlab.methods.base.BuildContext` when the student is a detector (:meth:`build` returns None
    otherwise). A one-stage student (RetinaNet) pairs with teachers that give a ``cls`` tap of the same shape (the
    same anchors); a two-stage student (Faster R-CNN) with teachers that expose ``roi_class_logits`` (their RoI head on
    the student's proposals).

    Args:
        method: the method's name (for messages).
        kind: ``"one_stage"`` or ``"two_stage"``.
        student_fpn: the student's ``fpn.<l>`` taps, finest first.
        teacher_fpn: per teacher, its ``fpn.<l>`` taps.
        teacher_models: the frozen teachers (two-stage: each has ``roi_class_logits``).
    """

    def __init__(
        self,
        method: str,
        kind: str,
        student_fpn: Sequence[str],
        teacher_fpn: Sequence[Sequence[str]],
        teacher_models: Sequence[nn.Module] = (),
    ) -> None:
        self.method = method
        self.kind = kind
        self.student_fpn = list(student_fpn)
        self.teacher_fpn = [list(t) for t in teacher_fpn]
        self.teacher_models = list(teacher_models)

    @classmethod
    def build(cls, method: str, ctx: object, class_scores: bool = True) -> DetectionPair | None:
        """The pair of ``ctx`` (a ``BuildContext``), or None when the student is not a detector.

        Args:
            method: the method's name (for messages).
            ctx: the build context.
            class_scores: the method reads the teachers' class scores (``kd``, ``dist``), so each teacher must give
                them on the student's anchors or proposals; False for methods that read only FPN levels.

        Raises:
            DetectionOutputError: a teacher that is not a detector, or cannot give the class scores the student's
                kind needs, or a one-stage teacher whose ``cls`` shape differs from the student's (other anchors).
        """
        s_taps = ctx.student_taps or ctx.student_shapes
        kind = detection_kind(s_taps)
        if kind is None:
            return None
        s_fpn = fpn_taps(ctx.student_shapes or s_taps)
        if not ctx.teacher_shapes and not ctx.teacher_taps:
            raise DetectionOutputError(f"{method} distils from a teacher, but model.teachers is empty")
        t_maps = list(ctx.teacher_shapes) or list(ctx.teacher_taps)
        t_fpn = [fpn_taps(t) for t in t_maps]
        teacher_models = list(getattr(ctx, "teacher_models", ()) or ())
        for i, t in enumerate(t_maps):
            if not t_fpn[i]:
                raise DetectionOutputError(
                    f"{method}: model.teachers.{i} has no FPN taps (fpn.0 ...); a detection student distils from a "
                    "detection teacher"
                )
            if not class_scores:
                continue
            if kind == ONE_STAGE:
                if "cls" not in t:
                    raise DetectionOutputError(
                        f"{method}: the one-stage student's per-anchor class scores need a one-stage teacher with a "
                        f"'cls' tap; model.teachers.{i} has none (a two-stage teacher works with mimic or cwd)"
                    )
                s_cls = ctx.student_shapes.get("cls") if ctx.student_shapes else None
                t_cls = t.get("cls") if isinstance(t, Mapping) else None
                if s_cls is not None and t_cls is not None and tuple(s_cls) != tuple(t_cls):
                    raise DetectionOutputError(
                        f"{method}: the student's 'cls' is {list(s_cls)} and model.teachers.{i}'s {list(t_cls)}; "
                        "the per-anchor scores pair only on the same anchors: give both the same anchor settings"
                    )
            elif i >= len(teacher_models) or not hasattr(teacher_models[i], "roi_class_logits"):
                raise DetectionOutputError(
                    f"{method}: the two-stage student's RoI class logits need a two-stage teacher whose RoI head runs "
                    f"on the student's proposals (roi_class_logits); model.teachers.{i} has none"
                )
        return cls(method, kind, s_fpn, t_fpn, teacher_models)

    # ------------------------------------------------------------------------------------------ needs

    def needs(self, class_scores: bool = True, fpn: bool = False) -> Needs:
        """The taps this pair reads: for class scores, the student's FPN taps (level sizes) and the teachers'
        ``cls`` (one-stage), or the student's ``rois`` and the teachers' FPN taps (two-stage); with ``fpn``, every
        FPN level of both."""
        s_taps: set[str] = set()
        t_taps: set[str] = set()
        if class_scores and self.kind == ONE_STAGE:
            s_taps.update(self.student_fpn)
            t_taps.add("cls")
        elif class_scores:
            s_taps.add("rois")
            for names in self.teacher_fpn:
                t_taps.update(names)
        if fpn:
            s_taps.update(self.student_fpn)
            for names in self.teacher_fpn:
                t_taps.update(names)
        return Needs(student_taps=frozenset(s_taps), teacher_taps=frozenset(t_taps), teacher_logits=False)

    # ------------------------------------------------------------------------------------------ rows

    def student_scores(self, io: StepIO) -> Tensor:
        """The student's class logits: ``[B, A, K]`` (one-stage) or ``[R, K + 1]`` (two-stage)."""
        if self.kind == ONE_STAGE:
            return io.s.taps["cls"] if "cls" in io.s.taps else io.s.logits
        return io.s.taps["roi_logits"] if "roi_logits" in io.s.taps else io.s.logits

    def teacher_scores(self, io: StepIO) -> Tensor:
        """``[M, B, A, K]`` (one-stage: every teacher's ``cls`` tap) or ``[M, R, K + 1]`` (two-stage: every teacher's
        RoI head on the student's proposals ``io.s.taps["rois"]``, without gradients)."""
        if self.kind == ONE_STAGE:
            return torch.stack([t[DEFAULT_VIEW].taps["cls"] for t in io.teachers])
        rois = io.s.taps["rois"].detach()
        sizes = io.batch.x["image_sizes"]
        out = []
        with torch.no_grad():
            for model, names, t in zip(self.teacher_models, self.teacher_fpn, io.teachers):
                feats = {n: t[DEFAULT_VIEW].taps[n] for n in names}
                out.append(model.roi_class_logits(feats, rois, sizes))
        return torch.stack(out)

    def class_rows(self, io: StepIO) -> list[tuple[Tensor, Tensor]]:
        """``(student [R, C], teachers [M, R, C])`` per group of rows: one group per FPN level for a one-stage pair
        (:func:`kdlab.losses.detection.anchor_rows`: a row per position, ``a * K`` columns), one group of RoI rows
        (``K + 1`` columns) for a two-stage pair."""
        s, t = self.student_scores(io), self.teacher_scores(io)
        if self.kind == TWO_STAGE:
            return [(s, t)]
        sizes = [tuple(io.s.taps[n].shape[-2:]) for n in self.student_fpn]
        return list(zip(anchor_rows(s, sizes), anchor_rows(t, sizes)))

    def anchor_scores(self, io: StepIO) -> tuple[Tensor, Tensor]:
        """``(student [R, C], teachers [M, R, C])`` with one row per anchor (one-stage: ``K`` sigmoid scores) or per
        RoI (two-stage: ``K + 1`` softmax classes)."""
        s, t = self.student_scores(io), self.teacher_scores(io)
        if self.kind == ONE_STAGE:
            return s.reshape(-1, s.shape[-1]), t.reshape(t.shape[0], -1, t.shape[-1])
        return s, t

    def fpn_pairs(self, io: StepIO, teacher: int = 0) -> list[tuple[str, Tensor, Tensor]]:
        """``(student tap name, student map, teacher map)`` per FPN level, finest first, for teacher ``teacher``."""
        t_names = self.teacher_fpn[teacher]
        t_out = io.teachers[teacher][DEFAULT_VIEW]
        return [(s, io.s.taps[s], t_out.taps[tn]) for s, tn in zip(self.student_fpn, t_names)]


def check_fpn_pair(
    method: str, student_shapes: Mapping[str, tuple[int, ...]], teacher_shapes: Mapping[str, tuple[int, ...]]
) -> list[tuple[str, str, int, int]]:
    """Pair the student's FPN levels with the teacher's, one to one: ``(s_tap, t_tap, C_s, C_t)`` per level.

    Raises:
        DetectionOutputError: different level counts, or different spatial sizes at a level.
    """
    s_fpn, t_fpn = fpn_taps(student_shapes), fpn_taps(teacher_shapes)
    if not s_fpn or len(s_fpn) != len(t_fpn):
        raise DetectionOutputError(
            f"{method}: the student has {len(s_fpn)} FPN levels and the teacher {len(t_fpn)}; the level-by-level "
            "terms need the same levels (e.g. RetinaNet P3-P7 with RetinaNet, Faster R-CNN P2-P6 with Faster R-CNN)"
        )
    pairs = []
    for s, t in zip(s_fpn, t_fpn):
        s_shape, t_shape = tuple(student_shapes[s]), tuple(teacher_shapes[t])
        if s_shape[1:] != t_shape[1:]:
            raise DetectionOutputError(
                f"{method}: student {s} is {list(s_shape)} and teacher {t} {list(t_shape)}; the levels must have the "
                "same spatial size (the same strides)"
            )
        pairs.append((s, t, s_shape[0], t_shape[0]))
    return pairs


__all__ = [
    "ONE_STAGE",
    "TWO_STAGE",
    "DetectionOutputError",
    "DetectionPair",
    "accepts_detection",
    "check_detection_pair",
    "check_fpn_pair",
    "detection_kind",
    "fpn_taps",
    "refuse",
]
