"""Dense prediction (segmentation) support shared by the methods that accept it.

A method accepts dense outputs (logits ``[B, K, h, w]``, labels ``[B, H, W]`` with ignore index 255) when its class
sets ``dense_outputs = True`` (:class:`kdlab.methods.base.DistillMethod`); :func:`check_output_kind` refuses any
other method on a dense pair when the run is built. The helpers here keep the dense forms out of the methods' math:

- :func:`logit_rows`: student and teacher logits as one ``[K]`` row per labelled pixel (at the logits' resolution),
  so a classification loss over rows is its pixel-wise form (:mod:`kdlab.losses.dense`);
- :func:`with_aux`: the reference's auxiliary-head supervision (CIRKD / DIST_KD ``train_kd.py``:
  ``task = CE(main) + 0.4 CE(aux)``, ``kd = L(main_s, main_t) + 0.4 L(aux_s, aux_t)``): the method's loss again on
  the models' ``aux`` tap in place of the logits, its terms weighted by ``aux_weight`` and named ``<term>.aux``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

from kdlab.config import ConfigError
from kdlab.losses.dense import pixel_rows, valid_mask
from kdlab.types import LossOut, Needs, Outputs, StepIO

AUX_TAP = "aux"


class DenseOutputError(ConfigError):
    """A method that cannot handle dense (per-pixel) outputs was paired with a segmentation model."""


def is_dense(logits: Tensor) -> bool:
    """Whether ``logits`` are dense ``[B, K, h, w]`` (segmentation) rather than ``[B, K]``."""
    return logits.dim() == 4


def logit_rows(io: StepIO, s_logits: Tensor, t_logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(s [P, K], t [..., P, K])`` per labelled pixel for dense logits; unchanged ``[B, K]`` / ``[..., B, K]``.

    ``s_logits`` is ``[B, K, h, w]``, ``t_logits`` ``[B, K, h, w]`` or stacked ``[M, B, K, h, w]``; the pixels whose
    nearest label (``io.y`` ``[B, H, W]`` resampled to ``h x w``) is 255 are left out of both.
    """
    if not is_dense(s_logits):
        return s_logits, t_logits
    mask = valid_mask(io.y, tuple(s_logits.shape[-2:]))
    return pixel_rows(s_logits, mask), pixel_rows(t_logits, mask)


def _aux_outputs(views: Mapping[str, Outputs]) -> dict[str, Outputs]:
    return {v: out.replace(logits=out.taps[AUX_TAP]) for v, out in views.items() if AUX_TAP in out.taps}


def aux_view(io: StepIO) -> StepIO:
    """``io`` with every model's logits replaced by its ``aux`` tap (auxiliary-head logits)."""
    return io.replace(student=_aux_outputs(io.student), teachers=tuple(_aux_outputs(t) for t in io.teachers))


def with_aux(loss: Callable[[StepIO], LossOut], io: StepIO, aux_weight: float) -> LossOut:
    """``loss(io)`` plus, when ``aux_weight > 0``, ``aux_weight`` times each term of ``loss`` on :func:`aux_view`,
    as the extra term ``<name>.aux``."""
    out = loss(io)
    if aux_weight > 0:
        aux = loss(aux_view(io))
        for name, value in aux.terms.items():
            out.terms[f"{name}.aux"] = aux_weight * value
    return out


def aux_needs(needs: Needs, aux_weight: float) -> Needs:
    """``needs`` plus the ``aux`` tap of the student (and of the teachers when the method reads them)."""
    if aux_weight <= 0:
        return needs
    extra = Needs(
        student_taps=frozenset({AUX_TAP}),
        teacher_taps=frozenset({AUX_TAP}) if needs.teacher else frozenset(),
        teacher=needs.teacher,
    )
    return needs.union(extra)


def accepts_dense(method_cfg: object) -> bool:
    """Whether the method a config names accepts dense outputs, known before it is built: its class's
    ``dense_outputs``, or, for a wrapper with an ``inner`` method (TeKAP), the inner method's."""
    from kdlab.registry import METHODS

    inner = getattr(method_cfg, "inner", None)
    if inner is not None and hasattr(inner, "name"):
        return accepts_dense(inner)
    return bool(getattr(METHODS.get(method_cfg.name), "dense_outputs", False))


def check_output_kind(method: object, logits_shape: tuple[int, ...], method_name: str, model_name: str) -> None:
    """Refuse a method without dense support on a model whose logits are dense (``logits_shape`` is ``(K, h, w)``,
    the probe's shape without the batch dimension). ``method`` is a built method or a method config (checked before
    the method is built, so that a classification method never meets segmentation taps).

    Raises:
        DenseOutputError: naming the method, the model and the methods that accept dense outputs.
    """
    if hasattr(method, "name") and not isinstance(method, type) and not hasattr(method, "loss"):
        dense = accepts_dense(method)  # a config
    else:
        dense = getattr(method, "dense_outputs", False)
    if len(logits_shape) != 3 or dense:
        return
    from kdlab.registry import METHODS

    dense = [n for n in METHODS.names() if getattr(METHODS.get(n), "dense_outputs", False) is True]
    raise DenseOutputError(
        f"method {method_name!r} does not support dense (per-pixel) outputs, but model {model_name!r} predicts "
        f"[B, K, H, W] segmentation logits; use one of the methods that do: {', '.join(dense)} "
        "(tekap over one of them)"
    )


__all__ = [
    "AUX_TAP",
    "DenseOutputError",
    "accepts_dense",
    "aux_needs",
    "aux_view",
    "check_output_kind",
    "is_dense",
    "logit_rows",
    "with_aux",
]
