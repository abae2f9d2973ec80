"""Readable pair errors: when a method cannot take a student/teacher pair, say which pairs would work.

A feature method that pairs maps (FSP needs equal channel counts at each stage, KD-SVD equal channel counts or
widths, AT/AB equal stage counts...) fails when the run is built, with a message naming the shapes. That message
is wrapped here into lines of at most :data:`WIDTH` characters and followed by the pairs of the CIFAR-100 KD
benchmark (:data:`BENCHMARK_PAIRS`) with which the same method config *does* build, found by building each on the
meta device (shapes only, no weights, no data; :func:`kdlab.train.build.check_on_meta`) at the run's input size
and class count. The list is computed, never written by hand, so it is true for the method's current settings.
"""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from typing import Any

log = logging.getLogger("kdlab")

#: Width of the wrapped error lines.
WIDTH = 100

#: The teacher -> student pairs of the CIFAR-100 KD benchmark (CRD, Tian et al. ICLR 2020; mdistiller's tables).
BENCHMARK_PAIRS: tuple[tuple[str, str], ...] = (
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("vgg13", "mobilenetv2"),
    ("resnet50_cifar", "mobilenetv2"),
    ("resnet50_cifar", "vgg8"),
    ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"),
    ("wrn_40_2", "shufflenetv1"),
)


def working_pairs(cfg: Any, num_classes: int, input_size: tuple[int, int, int]) -> list[tuple[str, str]]:
    """The :data:`BENCHMARK_PAIRS` with which ``cfg``'s method (one teacher) builds at this input size."""
    from kdlab.config import TeacherConfig
    from kdlab.train.build import check_on_meta

    out = []
    for teacher, student in BENCHMARK_PAIRS:
        model = dataclasses.replace(cfg.model, student=student, teachers=[TeacherConfig(name=teacher)])
        trial = dataclasses.replace(cfg, model=model)
        try:
            check_on_meta(trial, num_classes, input_size)
        except Exception as err:  # any refusal means: not this pair
            log.debug("pair %s -> %s does not build: %s", teacher, student, err)
            continue
        out.append((teacher, student))
    return out


def wrap(message: str, width: int = WIDTH) -> str:
    """``message`` wrapped at ``width`` columns (continuation lines indented by two spaces; words never split)."""
    return "\n".join(
        textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
        for line in message.splitlines()
    )


def explain_pair_error(err: Exception, cfg: Any, num_classes: int, input_size: tuple[int, ...] | None) -> Exception:
    """``err`` (a method's refusal of the run's pair) as an error of the same type with a wrapped message that lists
    the benchmark pairs that would work; ``err`` itself for anything else (or when no pair works, or with several
    teachers). The type is kept, so the CLI's exit code does not change."""
    from kdlab.models.base import TapError

    if not isinstance(err, TapError) or len(cfg.model.teachers) != 1 or input_size is None or len(input_size) != 3:
        return err
    log.info("method %r cannot take this pair; checking which benchmark pairs it can take...", cfg.method.name)
    pairs = working_pairs(cfg, num_classes, tuple(input_size))
    if not pairs:
        return err
    here = f"{cfg.model.teachers[0].name}→{cfg.model.student}"
    listing = ", ".join(f"{t}→{s}" for t, s in pairs)  # no spaces: a pair never breaks across lines
    text = (
        f"{err}\nThe pair {here} does not fit method {cfg.method.name!r} with these settings; pairs of the CIFAR KD "
        f"benchmark that do: {listing}."
    )
    try:
        return type(err)(wrap(text))
    except TypeError:  # an error type with another constructor: keep the original
        return err
