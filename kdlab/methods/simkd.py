"""``simkd``: Chen, Mei, Zhang, Wang, Feng, Chen, "Knowledge Distillation with the Reused Teacher Classifier",
CVPR 2022, arXiv 2203.14001; with the extensions of the study "Knowledge Distillation with the Reused Teacher
Classifier" (Hlaing, Röber, Kumar, Atsba, Baby): several projectors, a KL loss, label gating.

Objective (SimKD): a projector ``P`` maps the student's last feature map to the teacher's channel count; the
student's prediction is the teacher's frozen classifier ``g_t`` on the average-pooled projection::

    L = simkd_weight * mean (P(f_s) - f_t)^2  [+ ce_weight * CE(z_s, y) + kd_weight * KD_T(z_s, z_t)]
    prediction = g_t(avgpool(P(f_s)))

with ``f`` the last stage map (``stageN``), the larger of the two maps average-pooled to the smaller's size before
the projector (:func:`kdlab.losses.match_spatial`), and :func:`kdlab.losses.simkd` the per-sample MSE.

Reference: DefangChen/SimKD@2b389c3 ``models/util.py`` (``SimKD``), ``train_student.py`` and ``helper/loops.py``
(``train_distill``/``validate_distill``, ``--distill simkd -c 0 -d 0 -b 1``, ``--factor 2``).

- Projector (``adapters["projectors"][tap]``): conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 -> BN -> ReLU,
  no conv bias, inner width ``C_t // factor``. resnet32x4 -> resnet8x4: 214,016 (factor 2), 70,400 (4), 26,240 (8).
- The teacher's classifier is copied into a :class:`~kdlab.methods._teacher_head.FrozenHead` (buffers, saved in
  the method's state dict): never optimised, never given a gradient, never changed, and a training checkpoint alone
  rebuilds the deployable model. Gradients flow through it into the projector and the student.
- ``ce`` and ``kd`` are the reference's ``-c``/``-d`` terms on the *student's own* logits ``z_s`` (computed before the
  reference replaces ``logit_s`` by the projected prediction). ``ce`` is always part of the loss, weighted 0 by
  default exactly as the reference's ``0 * loss_cls``: the student's own classifier then gets zero gradients (and
  weight decay) like in the reference, and every student parameter is in the graph (DDP without unused parameters).
- :meth:`SimKD.export` returns :class:`SimKDStudent`: the student without its own classifier, the last projector,
  average pooling and a frozen copy of the teacher's classifier; it runs without the teacher (the reference runs the
  teacher at test time only to learn its map size, which is fixed when the run is built). Its parameter count and
  the added cost over the bare student are logged once (:meth:`SimKDStudent.cost`).
- The training metric ``top1`` is the accuracy (%) of the prediction through the reused classifier on the training
  batch, like the reference's training accuracy.

Extensions (each a field of the one config):

- ``projectors``: ``last`` is SimKD. ``multi`` (the study's "multiple projectors (biased)": "one after 2/3 of the
  model's layers and one at the end") adds a projector after student stage ``i = round(2N/3)`` (at most ``N - 1``)
  of ``N`` stages; ``all`` (the study's "all-layer projectors (unbiased)") puts one after every student stage.
  Student stage ``i`` is matched to the teacher stage of the same relative depth, ``j = round(i * M / N)`` (at least
  1) of the teacher's ``M`` stages (:func:`stage_pairs`); each projector outputs that teacher stage's channel count
  and is trained with the per-sample MSE to it (the term ``inner``, the sum over the intermediate projectors,
  weighted by ``simkd_weight``). Decision: an intermediate projector's output is *not* run through the teacher's
  remaining stages. The study says nothing more than where the projectors sit, and the model contract has no entry
  point to resume a network at a stage; so only the last projector, which matches the map the teacher's classifier
  reads, goes through the classifier, gives the prediction and is deployed (the intermediate projectors are
  training-time aids and are not part of the export).
- ``loss``: ``l2`` (SimKD's MSE on the last projector's map) or ``kl`` (``T^2 * KL(softmax(z_t/T) ||
  softmax(g_t(avgpool(P(f_s)))/T))``, :func:`kdlab.losses.kd` between the teacher's logits and the prediction
  through the reused classifier, temperature ``temperature``). Under ``kl`` the intermediate projectors keep their
  MSE (they have no prediction).
- ``label_gating``: a sample contributes to the teacher-dependent terms (``simkd``, ``inner``, ``kd``) only if the
  teacher's top-1 prediction is its label; each such term is the mean over the kept samples (0 when none is kept),
  so a teacher that is always right gives the ungated loss. ``ce`` (ground truth, no teacher) is not gated. The
  metric ``gated_fraction`` is the fraction of the batch masked out.

On small training sets (issue 22, ``benchmarks/simkd_probe.py``, report ``benchmarks/results/simkd_probe_50pc.md``):
with ``ce_weight: 0`` the student learns only by regressing the teacher's last map, and the prediction is only as
good as that regression. On 500 CIFAR-10 images (160 steps of 64) the projection explains 15 % of the teacher map's
per-channel variance on the training images and on the test images alike, and the exported model's training
top-1 (25.0 %) equals its test top-1 (25.2 %): it underfits, it does not overfit. The evaluated model is the export
(student backbone + projector + the teacher's frozen classifier; its top-1 is the run's), the frozen head on the
teacher's own map gives the teacher's logits exactly (81.15 %: re-normalising the pretrained teacher's inputs is
applied to its map and its logits alike), the projector trains (gradient norm 0.29 against the backbone's 0.39 in
the first steps) and the loss is the reference's ``nn.MSELoss()`` at weight 1. No defect was found; the deficit
against the student alone is the method's dependence on a long regression.

Deviations:
- Inner width ``max(1, C_t // factor)`` (the reference would build a zero-width layer for ``C_t < factor``).
- The larger map is pooled to the smaller's ``(H, W)`` where the reference pools to ``(H, H)`` (same for square maps).
- The exported model drops the student's own (unused) classifier, so its parameter count is what is deployed.
- The study's "(biased)"/"(unbiased)" labels are read as the placement of the projectors (weighted towards the end,
  or uniform); they could also mean projector convolutions with or without a bias, which kdlab does not offer.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import losses
from kdlab.method_configs.simkd import SimKDConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod, PairError, stage_taps
from kdlab.methods._teacher_head import FrozenHead
from kdlab.methods.base import BuildContext
from kdlab.models.base import TapError
from kdlab.types import LossOut, StepIO

log = logging.getLogger("kdlab")


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def stage_pairs(num_student: int, num_teacher: int, projectors: str) -> list[tuple[int, int]]:
    """The (student stage, teacher stage) pairs, 1-based, that get a projector; the last pair is ``(N, M)``.

    ``last``: ``[(N, M)]``. ``multi``: student stage ``round(2N/3)`` (clamped to ``1 .. N-1``) and ``N``.
    ``all``: every student stage. Student stage ``i`` pairs with teacher stage ``round(i * M / N)`` (at least 1),
    the stage of the same relative depth; halves round up.

    Args:
        num_student: ``N``, the student's stage count.
        num_teacher: ``M``, the teacher's stage count.
        projectors: ``"last"``, ``"multi"`` or ``"all"``.
    """
    if num_student < 1 or num_teacher < 1:
        raise ValueError(f"stage_pairs needs at least one stage on each side, got {num_student} and {num_teacher}")

    def teacher_stage(i: int) -> int:
        return max(1, min(num_teacher, _round_half_up(i * num_teacher / num_student)))

    if projectors == "last":
        students = [num_student]
    elif projectors == "multi":
        inner = min(max(_round_half_up(2 * num_student / 3), 1), num_student - 1)
        students = [inner, num_student] if inner >= 1 else [num_student]
    elif projectors == "all":
        students = list(range(1, num_student + 1))
    else:
        raise ValueError(f"projectors must be 'last', 'multi' or 'all', got {projectors!r}")
    return [(i, num_teacher if i == num_student else teacher_stage(i)) for i in students]


class Projector(nn.Module):
    """SimKD's projector: conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 -> BN -> ReLU, no conv bias.

    Args:
        in_channels: ``C_s``.
        out_channels: ``C_t``.
        factor: the inner width is ``max(1, C_t // factor)``.

    Shapes:
        ``[B, C_s, H, W]`` -> ``[B, C_t, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2) -> None:
        super().__init__()
        width = max(1, out_channels // factor)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_s, H, W]`` -> ``[B, C_t, H, W]``."""
        return self.body(x)


def _headless(student: nn.Module) -> nn.Module:
    """A view of ``student`` whose final linear layer is the identity: the same submodules and parameters (shared),
    without the classifier's. Models whose classifier is not a direct child (timm, hooked modules) are returned as is.
    """
    try:
        head = student.classifier
    except AttributeError:
        return student
    name = next((n for n, m in student._modules.items() if m is head), None)
    if name is None:
        return student
    twin = copy.copy(student)
    twin._modules = type(student._modules)(student._modules)
    twin._modules[name] = nn.Identity()
    return twin


def _pool_to(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    return x if size is None else F.adaptive_avg_pool2d(x, size)


class SimKDStudent(nn.Module):
    """The deployable SimKD model: student backbone -> (pool to the teacher's map size) -> projector -> average pool
    -> the teacher's classifier (frozen copy). Needs no teacher.

    Args:
        student: the student (its own classifier is bypassed and not part of this module's parameters).
        tap: the student's last stage tap (``stageN``).
        projector: the trained projector (shared with the method).
        pool_to: ``(H_t, W_t)`` when the student's map is larger than the teacher's, else None.
        classifier: frozen ``nn.Linear`` (the teacher's).

    Shapes:
        ``[B, C, H, W]`` images -> ``[B, K]`` logits.
    """

    def __init__(
        self,
        student: nn.Module,
        tap: str,
        projector: nn.Module,
        pool_to: tuple[int, int] | None,
        classifier: nn.Linear,
    ) -> None:
        super().__init__()
        self.backbone = _headless(student)
        self.projector = projector
        self.classifier = classifier
        self.tap = tap
        self.pool_to = pool_to
        self.bare_student_parameters = sum(p.numel() for p in student.parameters())
        self.training = student.training

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` images -> ``[B, C_t, h, w]`` projected student map."""
        _, feats = self.backbone.forward_taps(x, (self.tap,))
        return self.projector(_pool_to(feats[self.tap], self.pool_to))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, K]``."""
        return self.classifier(self.features(x).mean(dim=(2, 3)))

    def cost(self) -> dict[str, int]:
        """Parameter counts: ``backbone``, ``projector``, ``classifier``, ``total``, ``student`` (the bare student,
        its own classifier included) and ``added`` (``total - student``)."""
        parts = {
            "backbone": sum(p.numel() for p in self.backbone.parameters()),
            "projector": sum(p.numel() for p in self.projector.parameters()),
            "classifier": sum(p.numel() for p in self.classifier.parameters()),
        }
        total = sum(parts.values())
        student = self.bare_student_parameters
        return {**parts, "total": total, "student": student, "added": total - student}


@register_method("simkd", description="SimKD: projector + MSE to the teacher's last map, reused teacher classifier")
class SimKD(FeatureMethod):
    """SimKD and the study's extensions (several projectors, KL through the reused classifier, label gating)."""

    #: Mixup/CutMix: with ``label_gating`` the teacher-is-right gate compares with the dominant label.
    mixed_labels = "dominant"

    Config = SimKDConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        s_stages, t_stages = stage_taps(self.s_shapes), stage_taps(self.t_shapes)
        if not s_stages or not t_stages:
            who = "student" if not s_stages else "teacher"
            raise PairError(f"method 'simkd' projects stage maps, but the {who} has no stage taps (stage1..stageN)")
        self.pairs: list[tuple[str, str]] = [
            (s_stages[i - 1], t_stages[j - 1]) for i, j in stage_pairs(len(s_stages), len(t_stages), cfg.projectors)
        ]
        projectors = nn.ModuleDict()
        for s_tap, t_tap in self.pairs:
            s_shape, t_shape = self.s_shapes[s_tap], self.t_shapes[t_tap]
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise self.pair_error("projectors need [C, H, W] stage maps", [s_tap], [t_tap])
            if s_shape[1] == t_shape[1] and s_shape[2] != t_shape[2]:
                raise self.pair_error("maps of equal height but different width cannot be pooled", [s_tap], [t_tap])
            projectors[s_tap] = Projector(s_shape[0], t_shape[0], cfg.factor)
        self.adapters["projectors"] = projectors.to(ctx.device)
        self.student_tap_names = [s for s, _ in self.pairs]
        self.teacher_tap_names = list(dict.fromkeys(t for _, t in self.pairs))
        s_last, t_last = self.pairs[-1]
        s_shape, t_shape = self.s_shapes[s_last], self.t_shapes[t_last]
        #: where the export pools the student's map (the reference pools the larger map to the smaller's size)
        self.pool_to: tuple[int, int] | None = tuple(t_shape[1:]) if s_shape[1] > t_shape[1] else None
        if not ctx.teacher_classifiers:
            raise PairError("method 'simkd' reuses the teacher's classifier, but the build context has none")
        try:
            self.head = FrozenHead(ctx.teacher_classifiers[0], t_shape[0], "simkd", persistent=True)
        except TapError as err:
            raise PairError(
                f"{err} (simkd reuses the classifier on the teacher's last stage map {t_last} {list(t_shape)}, so that "
                "map must be what the classifier reads after pooling: ResNet, WRN and VGG teachers qualify, "
                "MobileNetV2 and ShuffleNet teachers, whose last stage is followed by another convolution, do not)"
            ) from None
        self._logged_cost = False

    def _gated_mean(self, per_sample: Tensor, keep: Tensor | None) -> Tensor:
        """Batch mean of ``[B]`` values, over the samples in ``keep`` (``[B]`` bool) when gating."""
        if keep is None:
            return per_sample.mean()
        kept = torch.where(keep, per_sample, torch.zeros_like(per_sample)).sum()
        return kept / keep.sum().clamp(min=1)

    def project(self, s_taps: dict[str, Tensor], t_taps: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
        """``[(P_i(student map), teacher map)]`` for every projector, spatially matched, last projector last."""
        out = []
        for s_tap, t_tap in self.pairs:
            source, target = losses.match_spatial(s_taps[s_tap], t_taps[t_tap])
            out.append((self.adapters["projectors"][s_tap](source), target))
        return out

    def predict(self, projected: Tensor) -> Tensor:
        """``[B, C_t, H, W]`` last projection -> ``[B, K]`` logits through the reused teacher classifier."""
        return self.head(projected.mean(dim=(2, 3)))

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s, t, y = io.s, io.t, io.y
        keep = t.logits.argmax(dim=1) == y if cfg.label_gating else None
        terms = {"ce": self.ce(io)}
        if cfg.kd_weight:
            kd = losses.kd(s.logits, t.logits, cfg.temperature, reduction="none")
            terms["kd"] = cfg.kd_weight * self._gated_mean(kd, keep)
        projected = self.project(s.taps, t.taps)
        last, target = projected[-1]
        logits = self.predict(last)
        if cfg.loss == "l2":
            main = losses.simkd(last, target, reduction="none")
        else:
            main = losses.kd(logits, t.logits, cfg.temperature, reduction="none")
        terms["simkd"] = cfg.simkd_weight * self._gated_mean(main, keep)
        if len(projected) > 1:
            inner = [self._gated_mean(losses.simkd(p, q, reduction="none"), keep) for p, q in projected[:-1]]
            terms["inner"] = cfg.simkd_weight * torch.stack(inner).sum()
        metrics = {"top1": (logits.detach().argmax(dim=1) == y).float().mean() * 100}
        if keep is not None:
            metrics["gated_fraction"] = 1.0 - keep.float().mean()
        return LossOut(terms, metrics)

    def export(self, student: nn.Module) -> SimKDStudent:
        """The deployable model (:class:`SimKDStudent`), sharing the student's and the last projector's weights."""
        s_last = self.pairs[-1][0]
        model = SimKDStudent(student, s_last, self.adapters["projectors"][s_last], self.pool_to, self.head.as_linear())
        if not self._logged_cost:
            self._logged_cost = True
            c = model.cost()
            log.info(
                "simkd: the deployable model has %d parameters (student backbone %d + projector %d + teacher "
                "classifier %d), %+d (%+.1f%%) over the bare student's %d",
                c["total"],
                c["backbone"],
                c["projector"],
                c["classifier"],
                c["added"],
                100.0 * c["added"] / max(c["student"], 1),
                c["student"],
            )
        return model

    def projector_parameters(self) -> dict[str, int]:
        """Parameter count of each projector, by student tap."""
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.adapters["projectors"].items()}
