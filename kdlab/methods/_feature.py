"""Parts shared by the feature-level methods (``fitnet``, ``at``, ``nst``, ``sp``, ``cc``, ``rkd``, ``pkt``,
``kdsvd``, ``ft``): the common config fields, tap resolution against the build context, and the error raised when
a method cannot pair a student with a teacher.

Tap lists follow the CRD benchmark: "every stage" is ``stage1`` .. ``stageN`` (RepDistiller's ``feat[1:-1]``,
mdistiller's ``feats[1:]``), "the last stage" is ``stageN`` (``feat[-2]`` / ``feats[-1]``), the embedding is
``pool`` (``feat[-1]`` / ``pooled_feat``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor

from kdlab.method_configs._feature import LAST_STAGE, FeatureConfig
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.models.base import TapError
from kdlab.types import Needs, StepIO

_STAGE = re.compile(r"stage(\d+)")


class PairError(TapError):
    """A method cannot pair the student's taps with the teacher's (counts or shapes); raised when the run is built."""


def stage_taps(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The canonical stage taps ``stage1`` .. ``stageN`` among ``shapes``' names, in stage order."""
    found = [(int(m.group(1)), name) for name in shapes if (m := _STAGE.fullmatch(name))]
    return [name for _, name in sorted(found)]


def _describe(shapes: Mapping[str, tuple[int, ...]], taps: Sequence[str]) -> str:
    return ", ".join(f"{t} {list(shapes[t])}" for t in taps)


class FeatureMethod(DistillMethod):
    """Base of the feature-level methods: reads one teacher, declares ``self.student_tap_names`` /
    ``self.teacher_tap_names`` as its needs, and computes the cross-entropy term.

    Args:
        cfg: the method's config (a :class:`FeatureConfig`).
        ctx: the build context; the student's and the (single) teacher's tap shapes come from it.
    """

    mixed_labels = "soft"  # the task term through StepIO.cross_entropy; feature terms read no label

    def __init__(self, cfg: FeatureConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.s_shapes: Mapping[str, tuple[int, ...]] = ctx.student_shapes
        if len(ctx.teacher_shapes) != 1:
            have = "none" if not ctx.teacher_shapes else str(len(ctx.teacher_shapes))
            raise PairError(f"method {cfg.name!r} distils from exactly one teacher; model.teachers has {have}")
        self.t_shapes: Mapping[str, tuple[int, ...]] = ctx.teacher_shapes[0]
        self.student_tap_names: list[str] = []
        self.teacher_tap_names: list[str] = []

    # ------------------------------------------------------------------------------------------ taps

    def _check_tap(self, who: str, tap: str) -> str:
        shapes = self.s_shapes if who == "student" else self.t_shapes
        if tap not in shapes or tap == "logits":
            available = ", ".join(n for n in shapes if n != "logits")
            raise PairError(f"method {self.cfg.name!r}: the {who} cannot provide tap {tap!r}; it provides: {available}")
        return tap

    def resolve_tap(self, who: str, tap: str) -> str:
        """One tap name of the ``who`` (``"student"``/``"teacher"``) model; ``"last"`` is its last stage map."""
        shapes = self.s_shapes if who == "student" else self.t_shapes
        if tap == LAST_STAGE:
            stages = stage_taps(shapes)
            if not stages:
                raise PairError(f"method {self.cfg.name!r}: the {who} has no stage taps (stage1..stageN)")
            return stages[-1]
        return self._check_tap(who, tap)

    def resolve_stage_taps(self, student: Sequence[str], teacher: Sequence[str]) -> tuple[list[str], list[str]]:
        """Paired tap lists (empty config lists mean every stage), checked to be of equal length."""
        s_taps = [self._check_tap("student", t) for t in student] or stage_taps(self.s_shapes)
        t_taps = [self._check_tap("teacher", t) for t in teacher] or stage_taps(self.t_shapes)
        if len(s_taps) != len(t_taps) or not s_taps:
            raise PairError(
                f"method {self.cfg.name!r} pairs student and teacher maps one to one, but the student gives "
                f"{len(s_taps)} ({_describe(self.s_shapes, s_taps)}) and the teacher {len(t_taps)} "
                f"({_describe(self.t_shapes, t_taps)}); set method.student_taps and method.teacher_taps to lists "
                "of equal length"
            )
        return s_taps, t_taps

    def pair_error(self, message: str, s_taps: Sequence[str], t_taps: Sequence[str]) -> PairError:
        """A :class:`PairError` naming the method, the message and the taps with their shapes."""
        return PairError(
            f"method {self.cfg.name!r}: {message} (student: {_describe(self.s_shapes, s_taps)}; "
            f"teacher: {_describe(self.t_shapes, t_taps)})"
        )

    # ------------------------------------------------------------------------------------------ contract

    def needs(self) -> Needs:
        return Needs(student_taps=frozenset(self.student_tap_names), teacher_taps=frozenset(self.teacher_tap_names))

    def ce(self, io: StepIO) -> Tensor:
        """``ce_weight * CE(z_s, y)`` with the configured label smoothing."""
        return self.cfg.ce_weight * io.cross_entropy(io.s.logits, self.cfg.label_smoothing)
