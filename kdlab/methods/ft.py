"""``ft``: Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS 2018,
arXiv 1802.04977.

Objective, in two stages:

- initialisation (``init_epochs`` epochs, the paraphraser alone): the teacher's paraphraser ``P`` learns to
  reconstruct the teacher's map, ``mean (P(f_t) - f_t)^2`` (:func:`paraphraser_reconstruction`);
- main stage: ``ce_weight * CE(z_s, y) + ft_weight * mean |a(T(f_s)) - a(P_enc(f_t))|`` with ``f`` the last stage
  maps, ``T`` the student's translator (trained with the student), ``P_enc`` the encoder of the paraphraser (frozen)
  and ``a(F) = normalize(mean_c F^2)`` (:func:`kdlab.losses.factor_transfer`), ``ft_weight = 200``.

Reference: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/FT.py`` (p1 2, p2 1), ``models/util.py::Paraphraser``
and ``Translator`` (rate k 0.5), ``train_student.py`` / ``helper/pretrain.py`` / ``helper/loops.py`` (``feat[-2]``,
``--init_epochs 30``, run as ``--distill factor -a 0 -b 200``). The init stage trains only the paraphraser (student
and teacher in eval mode) on the augmented training set with SGD, momentum 0.9, weight decay 5e-4, at lr 0.01 for
ResNet/WRN students and the run's lr (0.05; 0.01 for MobileNet/ShuffleNet) otherwise; in the main stage the
paraphraser is in eval mode and not optimised. Adapters for resnet32x4 -> resnet8x4: paraphraser 2,065,536
parameters (trained in the init stage only), translator 1,033,728.

kdlab's stages: ``Stage("init", init_epochs, trains="adapters", lr=init_lr)``. The trainer keeps the student in eval
mode during a stage that trains only the adapters, and the translator gets no gradient there (the optimiser skips
it), so only the paraphraser changes; in the main stage the paraphraser gets no gradient and is skipped in turn.

Deviations:
- The init stage's default length is a fraction of the run (:mod:`kdlab.schedule`'s rule: 30 / 240 of ``train.epochs``
  in whole epochs), not a fixed 30 epochs: a 240-epoch run gets the reference's 30, a 20-epoch run 3, where a fixed 30
  would be longer than the run it prepares. The CIFAR-100 recipes set 30 explicitly.
- ``init_lr`` defaults to the reference's 0.01 (its value for ResNet/WRN students, e.g. resnet8x4); a method cannot
  see the student's name, so for other students set ``init_lr: null`` (the run's ``optim.lr``), as the shipped
  recipes do for VGG, MobileNetV2 and ShuffleNet students.
- The paraphraser's factor is computed without gradient in the main stage (the reference excludes the paraphraser
  from the main optimiser instead; the result is the same). A data-parallel wrapper must allow unused parameters
  (the translator in the init stage, the paraphraser in the main stage).
- Pooling to the smaller map's ``(H, W)`` rather than ``(H, H)`` (the same for square maps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import losses
from kdlab.method_configs.ft import FTConfig
from kdlab.methods import register_method
from kdlab.methods._init_stage import INIT_STAGE, InitStageMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


def _conv_block(c_in: int, c_out: int, bn: bool, transposed: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return [conv(c_in, c_out, 3, 1, 1), *([nn.BatchNorm2d(c_out)] if bn else []), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """FT's paraphraser: a convolutional autoencoder of the teacher's map (RepDistiller ``Paraphraser``).

    Encoder: three 3x3 convs ``C -> C -> rC -> rC``; decoder: three 3x3 transposed convs ``rC -> rC -> C -> C``; each
    conv (with bias, stride 1, padding 1) is followed by LeakyReLU(0.1), and by BN first when ``bn`` (off for the
    paraphraser, as in the reference).

    Args:
        t_shape: ``(C, H, W)`` of the teacher map.
        rate: the factor's channel ratio ``r`` (``rC = field(default=int(C * r)``)., metadata=rng(gt=0))
        bn: batch normalisation after each conv.

    Shapes:
        :meth:`encode`: ``[B, C, H, W]`` -> ``[B, rC, H, W]``;
        ``forward``: ``[B, C, H, W]`` -> ``(factor [B, rC, H, W], reconstruction [B, C, H, W])``.
    """

    def __init__(self, t_shape: tuple[int, ...], rate: float = 0.5, bn: bool = False) -> None:
        super().__init__()
        c = t_shape[0]
        f = int(c * rate)
        self.encoder = nn.Sequential(*_conv_block(c, c, bn), *_conv_block(c, f, bn), *_conv_block(f, f, bn))
        self.decoder = nn.Sequential(
            *_conv_block(f, f, bn, transposed=True),
            *_conv_block(f, c, bn, transposed=True),
            *_conv_block(c, c, bn, transposed=True),
        )

    def encode(self, t_feat: Tensor) -> Tensor:
        """The factor ``[B, rC, H, W]`` of a teacher map ``[B, C, H, W]``."""
        return self.encoder(t_feat)

    def forward(self, t_feat: Tensor) -> tuple[Tensor, Tensor]:
        """``(factor [B, rC, H, W], reconstruction [B, C, H, W])``."""
        factor = self.encoder(t_feat)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT's translator: the student-side encoder, three 3x3 convs ``C_s -> C_s -> rC_t -> rC_t``, each with BN and
    LeakyReLU(0.1) (RepDistiller ``Translator``).

    Args:
        s_shape: ``(C_s, H, W)`` of the student map.
        t_shape: ``(C_t, H', W')`` of the teacher map (sets the factor's channels ``int(C_t * rate)``).
        rate: the factor's channel ratio.

    Shapes:
        ``[B, C_s, H, W]`` -> ``[B, int(C_t * rate), H, W]``.
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], rate: float = 0.5) -> None:
        super().__init__()
        c, f = s_shape[0], int(t_shape[0] * rate)
        self.encoder = nn.Sequential(*_conv_block(c, c, True), *_conv_block(c, f, True), *_conv_block(f, f, True))

    def forward(self, s_feat: Tensor) -> Tensor:
        """``[B, C_s, H, W]`` -> ``[B, rC_t, H, W]``."""
        return self.encoder(s_feat)


def paraphraser_reconstruction(paraphraser: Paraphraser, t_feat: Tensor) -> Tensor:
    """FT's init-stage loss: ``mean (P(f_t) - f_t)^2`` (RepDistiller's ``nn.MSELoss`` on the reconstruction).

    Args:
        paraphraser: the teacher's paraphraser.
        t_feat: ``[B, C, H, W]`` teacher map.

    Returns:
        A scalar.
    """
    _, reconstruction = paraphraser(t_feat)
    return F.mse_loss(reconstruction, t_feat)


@register_method(
    "ft", description="FT: paraphraser init stage, then CE + L1 between translated and paraphrased factor maps"
)
class FT(InitStageMethod):
    """Factor transfer: the student's translated factor matches the teacher's paraphrased factor.

    ``adapters["paraphraser"]`` (:class:`Paraphraser`, trained in the init stage only) and
    ``adapters["translator"]`` (:class:`Translator`, trained with the student in the main stage).
    """

    Config = FTConfig
    init_trains = "adapters"  # the paraphraser (the translator gets no gradient there)

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        s_tap = self.resolve_tap("student", cfg.student_tap)
        t_tap = self.resolve_tap("teacher", cfg.teacher_tap)
        s_shape, t_shape = self.s_shapes[s_tap], self.t_shapes[t_tap]
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise self.pair_error("FT needs spatial maps [C, H, W]", [s_tap], [t_tap])
        self.student_tap_names, self.teacher_tap_names = [s_tap], [t_tap]
        self.adapters["translator"] = Translator(s_shape, t_shape, cfg.rate)
        self.adapters["paraphraser"] = Paraphraser(t_shape, cfg.rate)

    def init_loss(self, io: StepIO) -> LossOut:
        """The initialisation stage's loss: the paraphraser's reconstruction of the teacher map."""
        t_feat = io.t.taps[self.teacher_tap_names[0]]
        return LossOut({"reconstruction": paraphraser_reconstruction(self.adapters["paraphraser"], t_feat)})

    def loss(self, io: StepIO) -> LossOut:
        """Init stage: :meth:`init_loss` (``{"reconstruction": ...}``); main stage: ``{"ce": ..., "ft": ...}``."""
        if io.progress.stage == INIT_STAGE:
            return self.init_loss(io)
        cfg = self.cfg
        s_factor = self.adapters["translator"](io.s.taps[self.student_tap_names[0]])
        with torch.no_grad():
            t_factor = self.adapters["paraphraser"].encode(io.t.taps[self.teacher_tap_names[0]])
        term = losses.factor_transfer(s_factor, t_factor, cfg.p)
        return LossOut({"ce": self.ce(io), "ft": cfg.ft_weight * term})
