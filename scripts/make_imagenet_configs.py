"""Emit the ImageNet recipes: the standard KD benchmark pairs ResNet-34 -> ResNet-18 and ResNet-50 -> MobileNetV1
for every method with a published ImageNet number or reference recipe, plus the `ce` baselines of the four models.

Run from the repository root: `python scripts/make_imagenet_configs.py`. Output: configs/imagenet/<method>/
<teacher>__<student>.yaml (and configs/imagenet/ce/<model>.yaml). A config is written only if its method can pair
the two models (each is built on the meta device first; a failure is printed and the config skipped).
configs/imagenet/tgeo_kd/ is written by another script and is not touched here.

Data: `imagenet` (streamed; class folders train/ and val/ under data.root), RandomResizedCrop 224 (scale 0.08-1)
+ flip for training, resize 256 + centre crop 224 for evaluation, ImageNet mean/std, 8 decoding workers.
Teachers: torchvision's ImageNet weights (IMAGENET1K_V1: resnet34-b627a593.pth 73.31, resnet50-0676ba61.pth
76.13/76.16 as the DIST paper prints), whose parameter names kdlab's ResNets share; put them under checkpoints/
or point model.teachers.0.checkpoint elsewhere (or train them with the ce configs).

Recipes (SGD momentum 0.9, weight decay 1e-4 on every parameter, 100 epochs, x0.1 after epochs 30/60/90):
- ce, crd, review_kd, dist, ofd: batch 256, lr 0.1 (torchvision's reference recipe; mdistiller's crd.yaml and
  reviewkd.yaml; DIST's B1 resnet_dist.yaml, 32 per GPU x 8, which also uses Nesterov momentum; OFD's paper).
  OFD on resnet50 -> mobilenetv1 uses mdistiller's batch 128, lr 0.05.
- kd, dkd, at, mlkd, tekap_kd: batch 512, lr 0.2 (mdistiller's kd.yaml, dkd.yaml, at.yaml); MLKD's own
  ImageNet setting is batch 512, lr 0.1 (../shared/reference/methods.md, MLKD).
Method settings:
- kd: T 1, CE 0.5, KD 0.5 (mdistiller ImageNet). dkd: CE 1, alpha 1, beta 0.5 (r34 -> r18) / 2.0 (r50 -> mv1), T 1,
  warm-up 1 epoch. dist: CE 1, DIST weight 2, beta = gamma = 1, tau 1. mlkd: T 1, CE 0.5, KD 0.5.
- crd: CE 1, CRD 0.8, no KD, 128-d embedding, 16384 negatives, T 0.07, momentum 0.5 (mdistiller defaults).
- review_kd: CE 1, weight 1 (r34 -> r18) / 8 (r50 -> mv1), warm-up 1 epoch, student pre-activation taps, ABF width at
  most 256 for MobileNetV1 (mdistiller reviewkd.yaml). ofd: CE 1, feature weight 1e-4 (mdistiller ofd.yaml).
  at: CE 1, AT weight 1000, p 2 (mdistiller defaults).
- tekap_kd: TeKAP(L) over the ImageNet KD above: 3 views, noise mix 0.1, N(0, 1) noise, weights 1 and 0.8 (the
  released TeKAP code's settings); the TeKAP slides report ResNet-34 -> ResNet-18 only.

Targets (top-1 %):
- DIST paper Table 2 (../shared/seeds/003_*.txt; torchvision teachers, B1 recipe): student ResNet-18 69.76,
  MobileNetV1 70.13, teachers 73.31 / 76.16; OFD 71.08 / 71.25, CRD 71.17 / 71.37, ReviewKD 71.61 / 72.56,
  DIST 72.07 / 73.24 (KD 70.66 / 70.68 there; the kd configs use mdistiller's recipe and number).
- mdistiller README: KD 71.03 / 70.50, DKD 71.70 / 72.05.
- TGeo-KD paper Table 2 (../shared/seeds/002_*.txt, "author-provided or author-verified" numbers): AT 71.03 / 70.18.
  It prints CRD 69.07 for ResNet-50 -> MobileNetV1 where the DIST paper prints 71.37; the configs take DIST's.
- TeKAP slides: KD + TeKAP(L) ResNet-34 -> ResNet-18 top-1 *error* 29.33, i.e. 70.67 % (anchors.md section 0).
- MLKD: the references kdlab holds print no ImageNet number for MLKD (its README has no table), so no target.
- Top-5 targets wherever the seed table prints one (DIST Table 2, TGeo-KD Table 2).

Issue 18 (big teachers, strong strategies, the remaining seed tables):
- DIST Table 3 (larger teachers, strategy B1): ResNet-18 from ResNet-34/50/101/152 and ResNet-34 from ResNet-50/101/
  152, KD and DIST. Teachers: torchvision IMAGENET1K_V1 weights (resnet101-63fe2227.pth 77.37, resnet152-394f9c45.pth
  78.31, the table's teacher column). DIST in the dist/ recipe above (DIST's resnet_dist.yaml); KD in DIST's own KD
  baseline, resnet_kdt4.yaml (T 4, CE 0.9, KD 1.0, batch 256, lr 0.1, same SGD as resnet_dist.yaml), written to kd_t4/
  because kd/ holds mdistiller's recipe. Assumption: DIST's Table 3 KD column was run with resnet_kdt4.yaml (the
  reference's only ImageNet KD baseline config).
- DIST Table 4 (strong strategies): students trained with strategy B2 (configs/imagenet/strategies/B2.yaml), Swin-T
  with B3 (B3.yaml); each recipe copies the strategy's data, optim and train sections verbatim (kdlab configs have no
  include mechanism; tests/test_data_imagenet.py checks that the copies equal the strategy files) and sets model,
  method, target. Teachers: timm:resnet50 with timm's "ResNet strikes back" A1 weights (resnet50.a1_in1k, 80.1 % at
  224 as the table prints) and timm:swin_large_patch4_window7_224 (ImageNet-22K pretrained, fine-tuned on 1K:
  swin_large_patch4_window7_224.ms_in22k_ft_in1k, 86.3 %), as local .safetensors files from timm's Hugging Face
  model cards (kdlab never downloads). Methods: KD (T 1, CE 1, KD 1: image_classification_sota's "kd" loss at
  the default kd_loss_weight 1, an assumption: the reference ships no B2 KD config), RKD (distance 25, angle 50 on
  the pooled embeddings, weight 1, CE 1), SRRL (CE 1, SRRL 1, no KD), DIST (CE 1, weight 2, tau 1: dist_b2.yaml).
  The ResNet-18 and Swin-T baselines are the strategy files themselves; the other students have ce configs here.
  The students' dropout and stochastic depth are set as the reference ran them (TABLE4_REGULARISERS: dropout 0.2 for
  MobileNetV2 and EfficientNet-B0 only, whose builders took the reference's `drop`; stochastic depth 0.2 for Swin-T
  and, torchvision's default, EfficientNet-B0); B3's gradient clipping at norm 5 is in its train section. The
  teachers' accuracies (80.1, 86.3) are each distillation recipe's target.teacher_top1, the test top-1 the run measures
  of its teacher at its start (the run header, which warns when the two differ by more than a point; the store's
  teacher_top1; the report's teacher row).
  A big teacher may run in bf16 and channels-last (train.teacher_precision=bf16, train.channels_last=true); the
  teacher cache cannot apply under B2/B3's per-step random views (kdlab/train/teacher_cache.py).
- DIST Table 2's SRRL (71.73 / 72.49): CE 1, SRRL 1, no KD (the CIFAR recipe's weights), batch 256, lr 0.1.
- TGeo-KD Table 2 baselines without a recipe before: NST, FSP, RKD (ResNet-34 -> ResNet-18), FT, AB, RKD
  (ResNet-50 -> MobileNetV1), ANL-KD, ADA-KD, WLS-KD, RW-KD (both pairs), with top-1 and top-5. Feature methods use the
  torchvision recipe (batch 256, lr 0.1) and their CIFAR weights (NST 50, RKD 25/50, FSP/FT/AB with the methods'
  defaults and no initialisation stage); the sample-weighting wrappers wrap the ImageNet KD above (T 1, CE 0.5,
  KD 0.5; WLS-KD its own T 2, CE 1, KD 2.5), batch 512, lr 0.2, as TGeo-KD's own ImageNet recipe. Their top-1/top-5 are
  the table's (the starred re-implementations: means of TGeo-KD's runs).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "configs" / "imagenet"
PAIRS = [("resnet34", "resnet18"), ("resnet50", "mobilenetv1")]
TEACHER_WEIGHTS = {
    "resnet34": "checkpoints/resnet34-b627a593.pth",
    "resnet50": "checkpoints/resnet50-0676ba61.pth",
    "resnet101": "checkpoints/resnet101-63fe2227.pth",
    "resnet152": "checkpoints/resnet152-394f9c45.pth",
    "timm:resnet50": "checkpoints/resnet50.a1_in1k.safetensors",
    "timm:swin_large_patch4_window7_224": "checkpoints/swin_large_patch4_window7_224.ms_in22k_ft_in1k.safetensors",
}
STRATEGIES = ROOT / "configs" / "imagenet" / "strategies"
DIST_T3 = "DIST paper Table 3"
DIST_T4 = "DIST paper Table 4"
DATA = {"name": "imagenet", "root": "data/imagenet", "crop_size": 224, "resize_size": 256, "workers": 8}
MILESTONES = [30, 60, 90]
DIST_T2 = "DIST paper Table 2"
MDISTILLER = "mdistiller README"
TGEO_T2 = "TGeo-KD paper Table 2"

# ce baselines: model -> (top-1, source)
CE = {
    "resnet18": ({"top1": 69.76, "top5": 89.08}, DIST_T2),
    "mobilenetv1": ({"top1": 70.13, "top5": 89.49}, DIST_T2),
    "resnet34": ({"top1": 73.31, "top5": 91.42}, DIST_T2 + " (torchvision weights; top-5: TGeo-KD Table 2)"),
    "resnet50": ({"top1": 76.16, "top5": 92.86}, DIST_T2 + " (torchvision weights)"),
    "resnet101": ({"top1": 77.37}, "DIST paper Table 3 (torchvision weights)"),
    "resnet152": ({"top1": 78.31}, "DIST paper Table 3 (torchvision weights)"),
}

R34, R50 = PAIRS
NO_MLKD = "no ImageNet MLKD number in the references kdlab holds"


def _recipes() -> dict:
    """method -> (title, batch, lr, {pair: (top-1 or None, source, overrides)}, base method config); overrides
    starting with ``_`` change the recipe (``_batch``, ``_lr``), the others the method."""
    kd = {"name": "kd", "temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}
    return {
        "kd": ("KD (T 1, CE 0.5, KD 0.5)", 512, 0.2, {R34: (71.03, MDISTILLER, {}), R50: (70.50, MDISTILLER, {})}, kd),
        "dkd": (
            "DKD (CE 1, alpha 1, T 1, warm-up 1 epoch)",
            512,
            0.2,
            {R34: (71.70, MDISTILLER, {"beta": 0.5}), R50: (72.05, MDISTILLER, {"beta": 2.0})},
            {"name": "dkd", "ce_weight": 1.0, "alpha": 1.0, "temperature": 1.0, "warmup_epochs": 1},
        ),
        "dist": (
            "DIST (CE 1, DIST weight 2, beta = gamma = 1, tau 1; Nesterov momentum)",
            256,
            0.1,
            {
                R34: ({"top1": 72.07, "top5": 90.42}, DIST_T2, {}),
                R50: ({"top1": 73.24, "top5": 91.12}, DIST_T2, {}),
                **{pair: (top1, DIST_T3, {}) for pair, top1 in TABLE3_DIST.items()},
            },
            {"name": "dist", "ce_weight": 1.0, "dist_weight": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 1.0},
        ),
        "mlkd": (
            "MLKD (T 1, CE 0.5, KD 0.5; MLKD's ImageNet batch 512, lr 0.1)",
            512,
            0.1,
            {R34: (None, NO_MLKD, {}), R50: (None, NO_MLKD, {})},
            {"name": "mlkd", "temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
        ),
        "crd": (
            "CRD (CE 1, CRD 0.8, no KD, 128-d, 16384 negatives, T 0.07, momentum 0.5)",
            256,
            0.1,
            {
                R34: ({"top1": 71.17, "top5": 90.13}, DIST_T2, {}),
                R50: ({"top1": 71.37, "top5": 90.41}, DIST_T2 + " (TGeo-KD Table 2 prints 69.07 / 88.94)", {}),
            },
            {
                "name": "crd",
                "ce_weight": 1.0,
                "crd_weight": 0.8,
                "kd_weight": 0.0,
                "embed_dim": 128,
                "num_negatives": 16384,
                "temperature": 0.07,
                "momentum": 0.5,
            },
        ),
        "review_kd": (
            "ReviewKD (CE 1, warm-up 1 epoch, student pre-activation taps)",
            256,
            0.1,
            {
                R34: ({"top1": 71.61, "top5": 90.51}, DIST_T2, {"review_weight": 1.0}),
                R50: ({"top1": 72.56, "top5": 91.00}, DIST_T2, {"review_weight": 8.0, "max_mid_channels": 256}),
            },
            {"name": "review_kd", "ce_weight": 1.0, "warmup_epochs": 1, "student_preact": True},
        ),
        "at": (
            "AT (CE 1, AT weight 1000, p 2)",
            512,
            0.2,
            {R34: ({"top1": 71.03, "top5": 90.04}, TGEO_T2, {}), R50: ({"top1": 70.18, "top5": 89.68}, TGEO_T2, {})},
            {"name": "at", "ce_weight": 1.0, "at_weight": 1000.0},
        ),
        "ofd": (
            "OFD (CE 1, feature weight 1e-4)",
            256,
            0.1,
            {
                R34: ({"top1": 71.08, "top5": 90.07}, DIST_T2, {}),
                R50: ({"top1": 71.25, "top5": 90.34}, DIST_T2, {"_batch": 128, "_lr": 0.05}),
            },
            {"name": "ofd", "ce_weight": 1.0, "ofd_weight": 0.0001},
        ),
        "tekap_kd": (
            "TeKAP(L) over KD (T 1, CE 0.5, KD 0.5; 3 views, noise mix 0.1, N(0, 1), weights 1 and 0.8)",
            512,
            0.2,
            {R34: (70.67, "TeKAP slides (top-1 error 29.33)", {})},
            {
                "name": "tekap",
                "inner": kd,
                "num_views": 3,
                "noise_weight": 0.1,
                "clean_weight": 1.0,
                "view_weight": 0.8,
                "noise_std": 1.0,
            },
        ),
        **_issue18_recipes(kd),
    }


# DIST Table 3 (strategy B1, torchvision teachers): top-1 of DIST and of KD by (teacher, student).
TABLE3_DIST = {
    ("resnet50", "resnet18"): 72.12,
    ("resnet101", "resnet18"): 72.08,
    ("resnet152", "resnet18"): 72.24,
    ("resnet50", "resnet34"): 75.06,
    ("resnet101", "resnet34"): 75.36,
    ("resnet152", "resnet34"): 75.42,
}
TABLE3_KD = {
    ("resnet34", "resnet18"): 71.21,
    ("resnet50", "resnet18"): 71.35,
    ("resnet101", "resnet18"): 71.09,
    ("resnet152", "resnet18"): 71.12,
    ("resnet50", "resnet34"): 74.73,
    ("resnet101", "resnet34"): 74.89,
    ("resnet152", "resnet34"): 74.87,
}


def _tgeo(r34: tuple[float, float] | None, r50: tuple[float, float] | None, extra: dict | None = None) -> dict:
    """TGeo-KD Table 2 rows ``{pair: ({top1, top5}, source, overrides)}`` for the pairs given."""
    rows = {}
    for pair, numbers in ((R34, r34), (R50, r50)):
        if numbers is not None:
            rows[pair] = ({"top1": numbers[0], "top5": numbers[1]}, TGEO_T2, dict(extra or {}))
    return rows


def _issue18_recipes(kd: dict) -> dict:
    """The recipes added for issue 18 (see the module docstring): DIST's KD baseline for Table 3, SRRL for Table 2
    and TGeo-KD's remaining ImageNet baselines."""
    wls_inner = {"name": "kd", "temperature": 2.0, "ce_weight": 1.0, "kd_weight": 2.5}
    return {
        "kd_t4": (
            "KD as DIST's baseline (resnet_kdt4.yaml: T 4, CE 0.9, KD 1.0; Nesterov momentum)",
            256,
            0.1,
            {pair: (top1, DIST_T3, {}) for pair, top1 in TABLE3_KD.items()},
            {"name": "kd", "temperature": 4.0, "ce_weight": 0.9, "kd_weight": 1.0},
        ),
        "srrl": (
            "SRRL (CE 1, SRRL 1, no KD)",
            256,
            0.1,
            {R34: ({"top1": 71.73, "top5": 90.60}, DIST_T2, {}), R50: ({"top1": 72.49, "top5": 90.92}, DIST_T2, {})},
            {"name": "srrl", "ce_weight": 1.0, "srrl_weight": 1.0, "kd_weight": 0.0},
        ),
        "nst": ("NST (CE 1, NST 50)", 256, 0.1, _tgeo((70.29, 89.53), None), {"name": "nst", "nst_weight": 50.0}),
        "fsp": (
            "FSP (CE 1, FSP 1, no initialisation stage)",
            256,
            0.1,
            _tgeo((70.58, 89.61), None),
            {"name": "fsp", "init_epochs": 0},
        ),
        "rkd": (
            "RKD (CE 1, RKD 1: distance 25, angle 50 on the pooled embeddings)",
            256,
            0.1,
            _tgeo((70.40, 89.78), (68.50, 88.32)),
            {"name": "rkd", "rkd_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
        ),
        "ft": (
            "FT (CE 1, FT 200, no initialisation stage)",
            256,
            0.1,
            _tgeo(None, (69.88, 89.50)),
            {"name": "ft", "ft_weight": 200.0, "init_epochs": 0},
        ),
        "ab": (
            "AB (CE 1, AB 1, margin 1, no initialisation stage)",
            256,
            0.1,
            _tgeo(None, (68.89, 88.71)),
            {"name": "ab", "ab_weight": 1.0, "margin": 1.0, "init_epochs": 0},
        ),
        "anl_kd": (
            "ANL-KD over KD (T 1, CE 0.5, KD 0.5; alpha 1 -> 0)",
            512,
            0.2,
            _tgeo((71.83, 90.21), (70.40, 89.25)),
            {"name": "anl_kd", "inner": kd, "alpha_start": 1.0, "alpha_end": 0.0},
        ),
        "ada_kd": (
            "ADA-KD over KD (T 1, CE 0.5, KD 0.5)",
            512,
            0.2,
            _tgeo((71.96, 90.45), (71.08, 90.17)),
            {"name": "ada_kd", "inner": kd},
        ),
        "wls_kd": (
            "WLS-KD over KD (T 2, CE 1, KD 2.5)",
            512,
            0.2,
            _tgeo((72.04, 90.70), (71.52, 90.34)),
            {"name": "wls_kd", "inner": wls_inner},
        ),
        "rw_kd": (
            "RW-KD over KD (T 1, CE 0.5, KD 0.5; meta step every 10 steps, lr 1e-3, 10% held out)",
            512,
            0.2,
            _tgeo((70.62, 89.76), (70.15, 89.40)),
            {"name": "rw_kd", "inner": kd, "holdout_fraction": 0.1, "meta_every": 10, "meta_lr": 0.001},
        ),
    }


# DIST Table 4: (teacher, student) -> top-1 of the student alone ("ce") and of each method; the strategy is B3 for
# Swin-T, B2 otherwise.
SWIN_L, SWIN_T = "timm:swin_large_patch4_window7_224", "timm:swin_tiny_patch4_window7_224"
TABLE4 = {
    ("timm:resnet50", "resnet18"): {"ce": 73.4, "kd": 72.6, "rkd": 72.9, "srrl": 71.2, "dist": 74.5},
    ("timm:resnet50", "resnet34"): {"ce": 76.8, "kd": 77.2, "rkd": 76.6, "srrl": 76.7, "dist": 77.8},
    ("timm:resnet50", "mobilenet_v2"): {"ce": 73.6, "kd": 71.7, "rkd": 73.1, "srrl": 69.2, "dist": 74.4},
    ("timm:resnet50", "efficientnet_b0"): {"ce": 78.0, "kd": 77.4, "rkd": 77.5, "srrl": 77.3, "dist": 78.6},
    (SWIN_L, "resnet50"): {"ce": 78.5, "kd": 80.0, "rkd": 78.9, "srrl": 78.6, "dist": 80.2},
    (SWIN_L, SWIN_T): {"ce": 81.3, "kd": 81.5, "rkd": 81.2, "srrl": 81.5, "dist": 82.3},
}
TABLE4_TEACHERS = {"timm:resnet50": 80.1, SWIN_L: 86.3}
# The students' regularisers as DIST's reference ran them (B2.yaml and B3.yaml say why): dropout before the classifier
# only where the reference's builder applied its `drop` (MobileNetV2; EfficientNet-B0 keeps torchvision's 0.2, as its
# stochastic depth 0.2: an assumption), stochastic depth 0.2 for Swin-T (B3, timm's drop_path_rate).
TABLE4_REGULARISERS = {
    "resnet18": {"student_dropout": 0.0},
    "resnet34": {"student_dropout": 0.0},
    "resnet50": {"student_dropout": 0.0},
    "mobilenet_v2": {"student_dropout": 0.2},
    "efficientnet_b0": {"student_dropout": 0.2, "student_drop_path": 0.2},
    SWIN_T: {"student_dropout": 0.0, "student_drop_path": 0.2},
}
TABLE4_METHODS = {
    "kd": ("KD (T 1, CE 1, KD 1)", {"name": "kd", "temperature": 1.0, "ce_weight": 1.0, "kd_weight": 1.0}),
    "rkd": (
        "RKD (CE 1, RKD 1: distance 25, angle 50 on the pooled embeddings)",
        {"name": "rkd", "rkd_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
    ),
    "srrl": ("SRRL (CE 1, SRRL 1, no KD)", {"name": "srrl", "ce_weight": 1.0, "srrl_weight": 1.0, "kd_weight": 0.0}),
    "dist": (
        "DIST (CE 1, DIST weight 2, beta = gamma = 1, tau 1)",
        {"name": "dist", "ce_weight": 1.0, "dist_weight": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 1.0},
    ),
}


def file_name(model: str) -> str:
    """A model name as it appears in a config file name (``timm:resnet50`` -> ``timm-resnet50``)."""
    return model.replace(":", "-")


def table4_strategy(student: str) -> str:
    """DIST Table 4's strategy of ``student``: B3 for Swin-T, B2 for the others."""
    return "B3" if student == SWIN_T else "B2"


def strategy_sections(name: str) -> dict:
    """The ``data``, ``optim`` and ``train`` sections of ``configs/imagenet/strategies/<name>.yaml``."""
    data = yaml.safe_load((STRATEGIES / f"{name}.yaml").read_text())
    return {key: data[key] for key in ("data", "optim", "train")}


def _strong() -> dict[Path, dict]:
    """DIST Table 4: every (teacher, student) pair with KD, RKD, SRRL and DIST, and the students' ce baselines that
    the strategy files are not (ResNet-18 is B2.yaml's and Swin-T B3.yaml's own student)."""
    out: dict[Path, dict] = {}
    for (teacher, student), numbers in TABLE4.items():
        strategy = table4_strategy(student)
        sections = strategy_sections(strategy)
        t_top1 = TABLE4_TEACHERS[teacher]
        for method, top1 in numbers.items():
            cfg: dict = {}
            if method == "ce":
                if student in ("resnet18", SWIN_T):
                    continue  # the strategy file itself
                cfg["description"] = (
                    f"{student} trained alone with cross-entropy under strategy {strategy} of DIST Table 1 (sections "
                    f"copied from configs/imagenet/strategies/{strategy}.yaml). Target: {DIST_T4} student"
                )
                cfg["target"] = {"top1": top1}
                cfg["model"] = {"student": student, **TABLE4_REGULARISERS[student]}
                cfg.update(copy.deepcopy(sections))
                cfg["method"] = {"name": "ce"}
                out[OUT / "ce" / f"{file_name(student)}_{strategy.lower()}.yaml"] = _ordered(cfg)
                continue
            title, settings = TABLE4_METHODS[method]
            cfg["description"] = (
                f"{title} {teacher} ({t_top1} %) -> {student} on ImageNet under strategy {strategy} of DIST Table 1 "
                f"(data, optim, train copied from configs/imagenet/strategies/{strategy}.yaml; teacher weights from "
                f"a local timm file). Target: {DIST_T4}"
            )
            cfg["target"] = {"top1": top1, "teacher_top1": t_top1}
            cfg["model"] = {
                "student": student,
                **TABLE4_REGULARISERS[student],
                "teachers": [{"name": teacher, "checkpoint": TEACHER_WEIGHTS[teacher]}],
            }
            cfg.update(copy.deepcopy(sections))
            cfg["method"] = dict(settings)
            out[OUT / method / f"{file_name(teacher)}__{file_name(student)}.yaml"] = _ordered(cfg)
    return out


def _ordered(cfg: dict) -> dict:
    """``cfg`` with its sections in the order of the other recipes."""
    order = ("description", "target", "model", "data", "method", "optim", "train")
    return {k: cfg[k] for k in order if k in cfg}


def _config(
    description: str,
    top1: float | dict | None,
    student: str,
    teacher: str | None,
    method: dict,
    batch: int,
    lr: float,
    nesterov: bool = False,
) -> dict:
    cfg: dict = {"description": description}
    if top1 is not None:
        cfg["target"] = dict(top1) if isinstance(top1, dict) else {"top1": top1}
    cfg["model"] = {"student": student}
    if teacher is not None:
        cfg["model"]["teachers"] = [{"name": teacher, "checkpoint": TEACHER_WEIGHTS[teacher]}]
    cfg["data"] = {**DATA, "batch_size": batch}
    cfg["method"] = method
    cfg["optim"] = {"lr": lr, "weight_decay": 0.0001, "milestones": MILESTONES}
    if nesterov:
        cfg["optim"]["nesterov"] = True
    cfg["train"] = {"epochs": 100}
    return cfg


def buildable(cfg: dict) -> str | None:
    """``None`` if the recipe builds (on the meta device, no data), else why not."""
    from kdlab.config import build_config
    from kdlab.train.build import check_on_meta

    try:
        check_on_meta(build_config(cfg), 1000, (3, 224, 224), num_train=1_281_167)
    except (ValueError, KeyError) as err:
        return str(err)
    return None


def emit() -> dict[Path, dict]:
    """Every config by output path."""
    out: dict[Path, dict] = {}
    for model, (top1, source) in CE.items():
        desc = (
            f"{model} trained alone with cross-entropy on ImageNet (batch 256, lr 0.1, 100 epochs, decay at 30/60/90, "
            f"wd 1e-4). Target: {source}"
        )
        out[OUT / "ce" / f"{model}.yaml"] = _config(desc, top1, model, None, {"name": "ce"}, 256, 0.1)
    for method, (title, batch, lr, rows, base) in _recipes().items():
        for (teacher, student), (top1, source, extra) in rows.items():
            b, r = extra.get("_batch", batch), extra.get("_lr", lr)
            settings = {**base, **{k: v for k, v in extra.items() if not k.startswith("_")}}
            detail = ", ".join(f"{k} {v}" for k, v in extra.items() if not k.startswith("_"))
            target = f"Target: {source}" if top1 is not None else f"No target: {source}"
            desc = (
                f"{title}{' (' + detail + ')' if detail else ''} {teacher} -> {student} on ImageNet (batch {b}, "
                f"lr {r}, "
                f"100 epochs, decay at 30/60/90, wd 1e-4; teacher: torchvision weights). {target}"
            )
            out[OUT / method / f"{teacher}__{student}.yaml"] = _config(
                desc, top1, student, teacher, settings, b, r, nesterov=method in ("dist", "kd_t4")
            )
    out.update(_strong())
    return out


def main() -> None:
    for path, cfg in emit().items():
        why = buildable(cfg)
        if why is not None:
            print(f"skipped {path.relative_to(ROOT)}: {why}", file=sys.stderr)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# generated by scripts/make_imagenet_configs.py\n" + yaml.safe_dump(cfg, sort_keys=False, width=120)
        )
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
