"""Emit the CIFAR-100 recipe configs of the CRD benchmark for `ce` (teachers and student baselines), `kd` and the
feature-level methods FitNet, AT, SP, CC, RKD, PKT, NST, VID and CRD, and AB, FT and FSP (with their init stage).

Published numbers (top-1 %, RepDistiller README, the table every later paper copies) are written into each
config's `target` so reports can compare. Run from the repository root: `python scripts/make_cifar100_configs.py`.
The logit-method recipes (dkd, dist, mlkd, logit standardisation, TeKAP) come from
`scripts/make_cifar100_logit_configs.py`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "configs" / "cifar100"

# Accuracy of each model trained alone (teachers and students rows of the CRD tables).
ALONE = {
    "wrn_40_2": 75.61,
    "resnet56": 72.34,
    "resnet110": 74.31,
    "resnet32x4": 79.42,
    "vgg13": 74.64,
    "resnet50_cifar": 79.34,
    "wrn_16_2": 73.26,
    "wrn_40_1": 71.98,
    "resnet20": 69.06,
    "resnet32": 71.14,
    "resnet8x4": 72.50,
    "vgg8": 70.36,
    "mobilenetv2": 64.60,
    "shufflenetv1": 70.50,
    "shufflenetv2": 71.82,
}
# (teacher, student): KD top-1 in the CRD tables.
KD = {
    ("wrn_40_2", "wrn_16_2"): 74.92,
    ("wrn_40_2", "wrn_40_1"): 73.54,
    ("resnet56", "resnet20"): 70.66,
    ("resnet110", "resnet20"): 70.67,
    ("resnet110", "resnet32"): 73.08,
    ("resnet32x4", "resnet8x4"): 73.33,
    ("vgg13", "vgg8"): 72.98,
    ("vgg13", "mobilenetv2"): 67.37,
    ("resnet50_cifar", "mobilenetv2"): 67.35,
    ("resnet50_cifar", "vgg8"): 73.81,
    ("resnet32x4", "shufflenetv1"): 74.07,
    ("resnet32x4", "shufflenetv2"): 74.45,
    ("wrn_40_2", "shufflenetv1"): 74.83,
}
SMALL_LR = ("mobilenetv2", "shufflenetv1", "shufflenetv2")  # lr 0.01 in the reference recipes

# Feature-level methods of the CRD tables: top-1 per pair, in the order of the KD pairs above (same-architecture
# columns, then cross-architecture). The method fields are RepDistiller's README commands: CE weight 1 (`-r 1`),
# no KD term (`-a 0`) and the method weight `-b`, which are also the methods' defaults; taps are the defaults
# (FitNet hint stage2, AT/NST every stage, SP the last stage, CC/RKD/PKT the pooled embedding).
FEATURE = {
    "fitnet": (
        "FitNet",
        "hint stage2, weight 100, CE 1, no KD: -a 0 -b 100",
        {"ce_weight": 1.0, "hint_weight": 100.0},
        [73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02, 64.14, 63.16, 70.69, 73.59, 73.54, 73.73],
    ),
    "at": (
        "AT",
        "every stage, weight 1000, CE 1, no KD: -a 0 -b 1000",
        {"ce_weight": 1.0, "at_weight": 1000.0},
        [74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43, 59.40, 58.58, 71.84, 71.73, 72.73, 73.32],
    ),
    "sp": (
        "SP",
        "last stage, weight 3000, CE 1, no KD: -a 0 -b 3000",
        {"ce_weight": 1.0, "sp_weight": 3000.0},
        [73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68, 66.30, 68.08, 73.34, 73.48, 74.56, 74.52],
    ),
    "cc": (
        "CC",
        "linear embeddings of size 128 on the pooled features, weight 0.02, CE 1, no KD: -a 0 -b 0.02",
        {"ce_weight": 1.0, "cc_weight": 0.02, "embed_dim": 128},
        [73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71, 64.86, 65.43, 70.25, 71.14, 71.29, 71.38],
    ),
    "rkd": (
        "RKD",
        "pooled features, distance 25, angle 50, weight 1, CE 1, no KD: -a 0 -b 1",
        {"ce_weight": 1.0, "rkd_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
        [73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48, 64.52, 64.43, 71.50, 72.28, 73.21, 72.21],
    ),
    "pkt": (
        "PKT",
        "pooled features, weight 30000, CE 1, no KD: -a 0 -b 30000",
        {"ce_weight": 1.0, "pkt_weight": 30000.0},
        [74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88, 67.13, 66.52, 73.01, 74.10, 74.69, 73.89],
    ),
    "nst": (
        "NST",
        "every stage, weight 50, CE 1, no KD: -a 0 -b 50",
        {"ce_weight": 1.0, "nst_weight": 50.0},
        [73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53, 58.16, 64.96, 71.28, 74.12, 74.68, 74.89],
    ),
    "vid": (
        "VID",
        "every stage, learned variances (initial 5), weight 1, CE 1, no KD: -a 0 -b 1",
        {"ce_weight": 1.0, "vid_weight": 1.0, "init_variance": 5.0},
        [74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23, 65.56, 67.57, 70.30, 73.38, 73.40, 73.61],
    ),
    "crd": (
        "CRD",
        "embedding 128, 16384 negatives from other classes, T 0.07, momentum 0.5, weight 0.8, CE 1, no KD: -a 0 -b 0.8",
        {
            "ce_weight": 1.0,
            "crd_weight": 0.8,
            "kd_weight": 0.0,
            "embed_dim": 128,
            "num_negatives": 16384,
            "temperature": 0.07,
            "momentum": 0.5,
        },
        [75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94, 69.73, 69.11, 74.30, 75.11, 75.65, 76.05],
    ),
}

# Methods with a 30-epoch initialisation stage before the main stage (RepDistiller `--init_epochs 30`), top-1 per pair
# in the order of the KD pairs; None where the tables have no number (FSP needs equal channel counts: N/A for
# wrn_40_2 -> wrn_40_1 and no cross-architecture column). The main stage is CE alone for AB and FSP (the reference's
# main-stage term is `loss_kd = 0`, so its `-b` has no effect) and CE + 200 FT for FT.
STAGED = {
    "ab": (
        "AB",
        "30-epoch init stage of student + connectors on the AB loss (margin 1) at the run's lr, then CE alone: "
        "-a 0 -b 1",
        {"ce_weight": 1.0, "init_epochs": 30, "ab_weight": 1.0, "margin": 1.0},
        [72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94, 66.06, 67.20, 70.65, 73.55, 74.31, 73.34],
    ),
    "ft": (
        "FT",
        "30-epoch init stage of the paraphraser, then CE + 200 FT on the last stage, no KD: -a 0 -b 200",
        {"ce_weight": 1.0, "ft_weight": 200.0, "init_epochs": 30},
        [73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58, 61.78, 60.99, 70.29, 71.75, 72.50, 72.03],
    ),
    "fsp": (
        "FSP",
        "30-epoch init stage of the student on the FSP loss of stem and every stage at the run's lr, then CE alone: "
        "-a 0 -b 50",
        {"ce_weight": 1.0, "init_epochs": 30, "fsp_weight": 1.0},
        [72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23],
    ),
}
# FT's init stage runs at lr 0.01 for ResNet/WRN students and at the run's lr otherwise (`helper/pretrain.py`).
FT_INIT_LR_001 = ("resnet", "wrn_")


def ft_init_lr(student: str) -> float | None:
    return 0.01 if student.startswith(FT_INIT_LR_001) else None


def lr_for(student: str) -> float:
    return 0.01 if student.startswith(SMALL_LR) else 0.05


def write(path: Path, cfg: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# generated by scripts/make_cifar100_configs.py\n" + yaml.safe_dump(cfg, sort_keys=False))


def main() -> None:
    for model, acc in ALONE.items():
        write(
            OUT / "ce" / f"{model}.yaml",
            {
                "description": f"{model} trained alone on CIFAR-100 (CRD benchmark recipe)",
                "target": {"top1": acc},
                "model": {"student": model},
                "data": {"name": "cifar100"},
                "method": {"name": "ce"},
                "optim": {"lr": lr_for(model)},
            },
        )
    for (teacher, student), acc in KD.items():
        write(
            OUT / "kd" / f"{teacher}__{student}.yaml",
            {
                "description": f"KD {teacher} -> {student} on CIFAR-100 (CRD benchmark: T=4, CE 0.1, KD 0.9)",
                "target": {"top1": acc},
                "model": {
                    "student": student,
                    "teachers": [{"name": teacher, "checkpoint": f"runs/ce__{teacher}__s0/checkpoint.pt"}],
                },
                "data": {"name": "cifar100"},
                "method": {"name": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
                "optim": {"lr": lr_for(student)},
            },
        )
    for method, (label, recipe, fields, accs) in FEATURE.items():
        for (teacher, student), acc in zip(KD, accs, strict=True):
            write(
                OUT / method / f"{teacher}__{student}.yaml",
                {
                    "description": f"{label} {teacher} -> {student} on CIFAR-100 (CRD benchmark: {recipe})",
                    "target": {"top1": acc},
                    "model": {
                        "student": student,
                        "teachers": [{"name": teacher, "checkpoint": f"runs/ce__{teacher}__s0/checkpoint.pt"}],
                    },
                    "data": {"name": "cifar100"},
                    "method": {"name": method, **fields},
                    "optim": {"lr": lr_for(student)},
                },
            )
    for method, (label, recipe, fields, accs) in STAGED.items():
        for (teacher, student), acc in zip(KD, accs):
            if acc is None:
                continue
            extra = {"init_lr": ft_init_lr(student)} if method == "ft" else {}
            write(
                OUT / method / f"{teacher}__{student}.yaml",
                {
                    "description": f"{label} {teacher} -> {student} on CIFAR-100 (CRD benchmark: {recipe})",
                    "target": {"top1": acc},
                    "model": {
                        "student": student,
                        "teachers": [{"name": teacher, "checkpoint": f"runs/ce__{teacher}__s0/checkpoint.pt"}],
                    },
                    "data": {"name": "cifar100"},
                    "method": {"name": method, **fields, **extra},
                    "optim": {"lr": lr_for(student)},
                },
            )


if __name__ == "__main__":
    main()
