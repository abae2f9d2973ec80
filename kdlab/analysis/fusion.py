"""The learned (or scheduled) fusion ratio of a sample-weighting run over training: ``kdlab analyze fusion RUN``.

Reads ``RUN/metrics.jsonl`` only (no model is rebuilt): the per-epoch means of the statistics the fusion wrappers log
(:mod:`kdlab.methods.fusion`): the ratio ``alpha_i`` (share of the distillation term) over the training batches, its
mean, spread (std and the batch quantiles q10/q50/q90), its mean over the samples the teacher gets right and over those
it gets wrong (``mass / share``), its mean per class (``class_mass.c / class_share.c``, logged up to 32 classes), the
outer loop's held-out loss and hypergradient norm, and for the learned policies the batch mean and spread of each
input block of the ratio network (``feature.<name>.mean/.std``: the per-sample L2 norm of the block).

The table has one row per epoch; the notes answer the three questions of issue 22: does the ratio move away from its
initial value, toward the distillation or the label term, and does it separate teacher-right from teacher-wrong
samples. Tables ``per_class`` and ``features`` go to their own CSV files; the PNG plots all three over epochs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from kdlab.analysis.common import AnalysisError, AnalysisResult
from kdlab.paths import why_unusable

_CLASS = re.compile(r"^alpha\.class_mass\.(\d+)$")
_FEATURE = re.compile(r"^feature\.(.+)\.(mean|std)$")


def read_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The main stage's per-epoch training metrics of ``run_dir/metrics.jsonl`` that hold a logged ratio."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise AnalysisError(
            f"{path} {why_unusable(path)}: give a run directory of a fusion run (tgeo_kd, rw_kd, anl_kd...)"
        )
    rows = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        train = record.get("train", {})
        if record.get("stage", "main") == "main" and "alpha.mean" in train:
            rows.append({"epoch": record.get("epoch"), **train})
    if not rows:
        raise AnalysisError(
            f"{path} logs no fusion ratio (alpha.mean): the run's method is not a sample-weighting policy "
            "(tgeo_kd, rw_kd, anl_kd, ada_kd, wls_kd)"
        )
    return rows


def _ratio(mass: float | None, share: float | None) -> float:
    if mass is None or share is None or share <= 0:
        return math.nan
    return mass / share


def epoch_table(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
    """``(per-epoch rows, per-class rows, per-feature rows)`` from :func:`read_epochs`'s records."""
    main, per_class, features = [], [], []
    for r in rows:
        wrong = r.get("alpha.teacher_wrong")
        main.append(
            {
                "epoch": r["epoch"],
                "alpha_mean": r["alpha.mean"],
                "alpha_std": r.get("alpha.std", math.nan),
                "q10": r.get("alpha.q10", math.nan),
                "q50": r.get("alpha.q50", math.nan),
                "q90": r.get("alpha.q90", math.nan),
                "teacher_wrong": wrong if wrong is not None else math.nan,
                "alpha_right": _ratio(r.get("alpha.mass_right"), None if wrong is None else 1.0 - wrong),
                "alpha_wrong": _ratio(r.get("alpha.mass_wrong"), wrong),
                "heldout_ce": r.get("meta.heldout_ce", math.nan),
                "hypergrad_norm": r.get("meta.hypergrad_norm", math.nan),
            }
        )
        classes = sorted(int(m.group(1)) for k in r if (m := _CLASS.match(k)))
        if classes:
            row = {"epoch": r["epoch"]}
            for c in classes:
                row[f"class_{c}"] = _ratio(r[f"alpha.class_mass.{c}"], r.get(f"alpha.class_share.{c}"))
            per_class.append(row)
        feats = {}
        for k, v in r.items():
            if m := _FEATURE.match(k):
                feats[f"{m.group(1)}.{m.group(2)}"] = v
        if feats:
            features.append({"epoch": r["epoch"], **feats})
    return main, per_class, features


def fusion(run_dir: str | Path) -> AnalysisResult:
    """The fusion view of a run (see the module docstring)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    main, per_class, features = epoch_table(read_epochs(run_dir))
    columns = list(main[0])
    first, last = main[0], main[-1]
    move = last["alpha_mean"] - first["alpha_mean"]
    toward = "the distillation term" if move > 0 else "the label term"
    notes = [
        f"{run_dir.name}: {len(main)} epochs; alpha is the share of the distillation term, averaged over the training "
        "batches of each epoch (right/wrong: samples the teacher classifies correctly / wrongly).",
        f"alpha moves from {first['alpha_mean']:.4f} (epoch {first['epoch']}) to {last['alpha_mean']:.4f} "
        f"(epoch {last['epoch']}): {move:+.4f}, toward {toward}; spread (std) {first['alpha_std']:.4f} -> "
        f"{last['alpha_std']:.4f}.",
    ]
    gap = last["alpha_right"] - last["alpha_wrong"]
    if not math.isnan(gap):
        notes.append(
            f"last epoch: mean alpha {last['alpha_right']:.4f} on teacher-right samples, {last['alpha_wrong']:.4f} on "
            f"teacher-wrong ones (gap {gap:+.4f}; a policy that trusts the teacher where it is right has a positive "
            "gap)."
        )
    tables = {}
    if per_class:
        tables["per_class"] = (list(per_class[0]), per_class)
        spread = [v for k, v in per_class[-1].items() if k.startswith("class_") and not math.isnan(v)]
        if spread:
            notes.append(f"last epoch: per-class mean alpha from {min(spread):.4f} to {max(spread):.4f}.")
    if features:
        tables["features"] = (list(features[0]), features)

    def plot(fig) -> None:
        n = 1 + bool(per_class) + bool(features)
        axes = fig.subplots(1, n, squeeze=False)[0]
        ep = [r["epoch"] for r in main]
        ax = axes[0]
        mean = [r["alpha_mean"] for r in main]
        std = [r["alpha_std"] for r in main]
        ax.plot(ep, mean, label="mean", color="black")
        if not any(math.isnan(s) for s in std):
            ax.fill_between(
                ep,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                alpha=0.2,
                color="gray",
                label="± std",
            )
        ax.plot(ep, [r["q10"] for r in main], ":", color="gray", label="q10 / q90")
        ax.plot(ep, [r["q90"] for r in main], ":", color="gray")
        ax.plot(ep, [r["alpha_right"] for r in main], label="teacher right")
        ax.plot(ep, [r["alpha_wrong"] for r in main], label="teacher wrong")
        ax.set_xlabel("epoch")
        ax.set_ylabel("alpha (share of the KD term)")
        ax.set_title("fusion ratio")
        ax.legend(fontsize=7)
        i = 1
        if per_class:
            ax = axes[i]
            i += 1
            for key in per_class[0]:
                if key.startswith("class_"):
                    ax.plot([r["epoch"] for r in per_class], [r[key] for r in per_class], label=key[6:])
            ax.set_xlabel("epoch")
            ax.set_title("mean alpha per class")
            ax.legend(fontsize=6, ncol=2)
        if features:
            ax = axes[i]
            for key in features[0]:
                if key.endswith(".mean"):
                    ax.plot([r["epoch"] for r in features], [r[key] for r in features], label=key[:-5])
            ax.set_xlabel("epoch")
            ax.set_title("input blocks: mean per-sample L2 norm")
            ax.legend(fontsize=6, ncol=2)

    return AnalysisResult(
        name="fusion",
        title=f"Fusion ratio over training: {run_dir.name}",
        columns=columns,
        rows=main,
        notes=notes,
        plot=plot,
        figsize=(5.0 * (1 + bool(per_class) + bool(features)), 4.0),
        tables=tables,
    )


__all__ = ["epoch_table", "fusion", "read_epochs"]
