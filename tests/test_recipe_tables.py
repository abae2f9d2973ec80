"""The seed tables as recipes (issue 18, "Recipes"): every number of DIST Tables 2-4, TeKAP's teaching-assistant,
ImageNet, robustness, class-imbalance and transfer tables and TGeo-KD's ImageNet table appears as a target of a sweep
spec; Table 4's recipes are their strategy files plus a model and a method; the spec's metric targets and named
analyses are checked strictly.

The seed numbers below are transcribed from the seeds (../shared/seeds/), independently of the configs' generator.
"""

from __future__ import annotations

import pytest

from kdlab.config import ConfigError, load_config
from kdlab.experiments.spec import analysis_commands, expand, load_spec, parse_spec

from conftest import REPO

SWEEPS = REPO / "configs" / "sweeps"

# (sweep, row label, pair) -> {metric: seed number}
DIST_T3 = {
    ("KD", "resnet34→resnet18"): 71.21,
    ("KD", "resnet50→resnet18"): 71.35,
    ("KD", "resnet101→resnet18"): 71.09,
    ("KD", "resnet152→resnet18"): 71.12,
    ("KD", "resnet50→resnet34"): 74.73,
    ("KD", "resnet101→resnet34"): 74.89,
    ("KD", "resnet152→resnet34"): 74.87,
    ("DIST", "resnet34→resnet18"): 72.07,
    ("DIST", "resnet50→resnet18"): 72.12,
    ("DIST", "resnet101→resnet18"): 72.08,
    ("DIST", "resnet152→resnet18"): 72.24,
    ("DIST", "resnet50→resnet34"): 75.06,
    ("DIST", "resnet101→resnet34"): 75.36,
    ("DIST", "resnet152→resnet34"): 75.42,
    ("Student", "resnet18"): 69.76,
    ("Student", "resnet34"): 73.31,
    ("Teacher", "resnet50"): 76.13,
    ("Teacher", "resnet101"): 77.37,
    ("Teacher", "resnet152"): 78.31,
}
_R50, _SWL = "timm:resnet50", "timm:swin_large_patch4_window7_224"
# DIST Table 4: student -> (teacher, student alone, KD, RKD, SRRL, DIST)
DIST_T4 = {
    "resnet18": (_R50, 73.4, 72.6, 72.9, 71.2, 74.5),
    "resnet34": (_R50, 76.8, 77.2, 76.6, 76.7, 77.8),
    "mobilenet_v2": (_R50, 73.6, 71.7, 73.1, 69.2, 74.4),
    "efficientnet_b0": (_R50, 78.0, 77.4, 77.5, 77.3, 78.6),
    "resnet50": (_SWL, 78.5, 80.0, 78.9, 78.6, 80.2),
    "timm:swin_tiny_patch4_window7_224": (_SWL, 81.3, 81.5, 81.2, 81.5, 82.3),
}
# DIST Table 2 (top-1, top-5)
DIST_T2 = {
    "Teacher": ((73.31, None), (76.16, 92.86)),
    "Student": ((69.76, 89.08), (70.13, 89.49)),
    "KD": ((70.66, 89.88), (70.68, 90.30)),
    "OFD": ((71.08, 90.07), (71.25, 90.34)),
    "CRD": ((71.17, 90.13), (71.37, 90.41)),
    "SRRL": ((71.73, 90.60), (72.49, 90.92)),
    "ReviewKD": ((71.61, 90.51), (72.56, 91.00)),
    "DIST": ((72.07, 90.42), (73.24, 91.12)),
}
# TGeo-KD Table 2 (top-1, top-5): ResNet-34 -> ResNet-18, ResNet-50 -> MobileNetV1 (None: not in that half)
TGEO_T2 = {
    "Teacher": ((73.31, 91.42), (76.16, 92.87)),
    "Student": ((69.75, 89.07), (68.87, 88.76)),
    "AT": ((71.03, 90.04), (70.18, 89.68)),
    "NST": ((70.29, 89.53), None),
    "FSP": ((70.58, 89.61), None),
    "FT": (None, (69.88, 89.50)),
    "AB": (None, (68.89, 88.71)),
    "RKD": ((70.40, 89.78), (68.50, 88.32)),
    "Overhaul (OFD)": ((71.03, 90.15), (71.33, 90.33)),
    "CRD": ((71.17, 90.13), (69.07, 88.94)),
    "Vanilla KD": ((70.67, 90.04), (70.49, 89.92)),
    "ANL-KD": ((71.83, 90.21), (70.40, 89.25)),
    "ADA-KD": ((71.96, 90.45), (71.08, 90.17)),
    "WLS-KD": ((72.04, 90.70), (71.52, 90.34)),
    "RW-KD": ((70.62, 89.76), (70.15, 89.40)),
    "TGeo-KD": ((72.89, 91.80), (72.46, 90.95)),
}
# TeKAP teaching-assistant table: pair -> (TAKD, TeKAP (L), TeKAP (F+L))
TEKAP_TA = {
    "resnet32x4→resnet8x4": (73.81, 74.79, 75.98),
    "wrn_40_2→wrn_40_1": (73.78, 73.80, 74.41),
    "wrn_40_2→wrn_16_2": (75.12, 75.21, 76.20),
    "vgg13→vgg8": (73.23, 74.00, 74.42),
    "resnet56→resnet20": (70.83, 71.32, 71.92),
    "resnet32x4→shufflenetv1": (74.53, 74.92, 75.60),
    "resnet32x4→shufflenetv2": (74.82, 75.43, 77.38),
    "wrn_40_2→shufflenetv1": (75.34, 76.75, 76.59),
}


def _targets(name: str) -> dict[tuple[str, str], dict[str, float]]:
    spec = load_spec(SWEEPS / f"{name}.yaml")
    return {(r.label, r.pair): r.targets for r in expand(spec)}


def test_dist_table3_every_number_is_a_target() -> None:
    targets = _targets("dist_larger_teachers")
    assert {k: v["top1"] for k, v in targets.items()} == DIST_T3


def test_dist_table4_every_number_is_a_target_and_pairs_are_right() -> None:
    targets = _targets("dist_strong_strategies")
    want = {}
    for student, (teacher, *numbers) in DIST_T4.items():
        for label, top1 in zip(("Student", "KD", "RKD", "SRRL", "DIST"), numbers, strict=True):
            want[(label, f"{teacher}→{student}")] = top1
    assert {k: v["top1"] for k, v in targets.items()} == want
    spec = load_spec(SWEEPS / "dist_strong_strategies.yaml")
    for run in expand(spec):  # each row's config distils the pair it names (the ce rows train the student alone)
        model = run.config["model"]
        teacher, student = run.pair.split("→")
        assert model["student"] == student
        assert [t["name"] for t in model["teachers"]] == ([] if run.label == "Student" else [teacher])


DIST_T4_TEACHERS = {_R50: 80.1, _SWL: 86.3}  # Table 4's teacher column
# Table 4 students' dropout / stochastic depth as DIST's reference ran them (B2.yaml and B3.yaml give the reasons)
DIST_T4_REGULARISERS = {
    "resnet18": (0.0, None),
    "resnet34": (0.0, None),
    "resnet50": (0.0, None),
    "mobilenet_v2": (0.2, None),
    "efficientnet_b0": (0.2, 0.2),
    "timm:swin_tiny_patch4_window7_224": (0.0, 0.2),
}


def test_dist_table4_teacher_accuracies_are_targets_of_every_distillation_row_and_recipe() -> None:
    """80.1 (timm's ResNet-50 "strikes back") and 86.3 (Swin-L) are ``target.teacher_top1`` of each distillation
    recipe and of its sweep row: the number the run's measured teacher top-1 (run header, store, report) is read
    against. The Student rows train alone and have none."""
    import yaml

    spec = load_spec(SWEEPS / "dist_strong_strategies.yaml")
    rows = {(r.label, r.pair): r for r in spec.rows}
    checked = 0
    for run in expand(spec):
        teacher = run.pair.split("→")[0]
        recipe = yaml.safe_load(rows[(run.label, run.pair)].config.read_text())
        if run.label == "Student":
            assert "teacher_top1" not in run.targets and "teacher_top1" not in recipe["target"]
            continue
        assert run.targets["teacher_top1"] == recipe["target"]["teacher_top1"] == DIST_T4_TEACHERS[teacher]
        checked += 1
    assert checked == 24


def test_dist_table4_students_take_the_strategy_regularisers_as_the_reference_ran_them() -> None:
    """Every Table 4 recipe sets its student's dropout and stochastic depth (DIST_T4_REGULARISERS) and B3's Swin-T
    clips its gradients at norm 5, B2's students do not."""
    spec = load_spec(SWEEPS / "dist_strong_strategies.yaml")
    for row in spec.rows:
        cfg = load_config(row.config)
        m = cfg.model
        assert (m.student_dropout, m.student_drop_path) == DIST_T4_REGULARISERS[m.student], row.config
        assert cfg.train.clip_grad_norm == (5.0 if m.student == "timm:swin_tiny_patch4_window7_224" else None)


@pytest.mark.parametrize(
    ("name", "table", "pairs"),
    [
        ("dist_imagenet", DIST_T2, ("resnet34→resnet18", "resnet50→mobilenetv1")),
        ("tgeo_kd_imagenet", TGEO_T2, ("resnet34→resnet18", "resnet50→mobilenetv1")),
    ],
)
def test_imagenet_tables_with_top1_and_top5(name, table, pairs) -> None:
    targets = _targets(name)
    want = {}
    for label, cells in table.items():
        for pair, cell in zip(pairs, cells, strict=True):
            if cell is not None:
                want[(label, pair)] = {"top1": cell[0]} if cell[1] is None else {"top1": cell[0], "top5": cell[1]}
    assert targets == want


def test_tekap_tables_every_number_is_a_target() -> None:
    ta = _targets("tekap_ta_cifar100")
    want = {}
    for pair, numbers in TEKAP_TA.items():
        for label, top1 in zip(("TAKD", "TeKAP (L)", "TeKAP (F+L)"), numbers, strict=True):
            want[(label, pair)] = top1
    assert {k: v["top1"] for k, v in ta.items()} == want
    imagenet = _targets("tekap_imagenet")  # the slide prints error rates: 100 - error
    assert {k[0]: v for k, v in imagenet.items()} == {
        "Teacher": {"top1": 73.31, "top5": 91.42},
        "Student": {"top1": 69.75, "top5": 89.07},
        "KD": {"top1": 70.41, "top5": 89.70},
        "KD + TeKAP (L)": {"top1": 70.67, "top5": 89.92},
    }
    imbalance = _targets("tekap_imbalance_cifar100")
    assert {k: v["top1"] for k, v in imbalance.items()} == {
        ("Baseline (KD)", "resnet32x4→resnet8x4"): 41.71,
        ("Baseline (KD)", "wrn_40_2→wrn_16_2"): 52.08,
        ("Baseline (KD)", "vgg13→vgg8"): 47.52,
        ("KD + TeKAP (L)", "resnet32x4→resnet8x4"): 46.42,
        ("KD + TeKAP (L)", "wrn_40_2→wrn_16_2"): 52.72,
        ("KD + TeKAP (L)", "vgg13→vgg8"): 51.25,
    }
    spec = load_spec(SWEEPS / "tekap_imbalance_cifar100.yaml")
    assert all(run.config["data"]["imbalance_ratio"] == 100 for run in expand(spec))


def test_tekap_analysis_specs_hold_the_slides_numbers() -> None:
    rob = load_spec(SWEEPS / "tekap_robustness_cifar100.yaml")
    assert [a.name for a in rob.analysis] == ["robustness"]
    assert rob.analysis[0].targets == {
        "Teacher": {"top1": 29.88, "top5": 51.43},
        "Student": {"top1": 21.44, "top5": 44.47},
        "KD": {"top1": 21.12, "top5": 44.04},
        "KD + TeKAP (L)": {"top1": 22.47, "top5": 45.72},
    }
    transfer = load_spec(SWEEPS / "tekap_transfer_cifar100.yaml")
    by_dataset = {a.args[a.args.index("--dataset") + 1]: a.targets for a in transfer.analysis}
    assert by_dataset == {
        "stl10": {"Student": {"top1": 70.33}, "KD": {"top1": 71.01}, "KD + TeKAP (L)": {"top1": 72.94}},
        "tiny_imagenet": {"Student": {"top1": 34.82}, "KD": {"top1": 35.53}, "KD + TeKAP (L)": {"top1": 35.81}},
    }
    commands = analysis_commands(transfer, expand(transfer))
    assert len(commands) == 6 and all(c[:3] == ["kdlab", "analyze", "transfer"] for c in commands)
    assert commands[0][3].endswith("Student__wrn_40_2-wrn_16_2__s0")
    imbalance = load_spec(SWEEPS / "tekap_imbalance_cifar100.yaml")
    assert len(analysis_commands(imbalance, expand(imbalance))) == 6  # no targets: every run is analysed


@pytest.mark.parametrize("strategy", ["B2", "B3"])
def test_table4_recipes_are_the_strategy_files_plus_model_and_method(strategy: str) -> None:
    """kdlab configs have no include mechanism, so Table 4's recipes copy their strategy's data, optim and train
    sections: the copies must equal the strategy file (re-run scripts/make_imagenet_configs.py after editing it)."""
    spec = load_spec(SWEEPS / "dist_strong_strategies.yaml")
    base = load_config(REPO / "configs" / "imagenet" / "strategies" / f"{strategy}.yaml")
    checked = 0
    for row in spec.rows:
        cfg = load_config(row.config)
        if (cfg.model.student == "timm:swin_tiny_patch4_window7_224") != (strategy == "B3"):
            continue
        assert (cfg.data, cfg.optim, cfg.train) == (base.data, base.optim, base.train), row.config
        checked += 1
    assert checked == (5 if strategy == "B3" else 25)


def test_takd_assistants_sit_between_teacher_and_student() -> None:
    """Each TAKD chain of the TA table has an assistant smaller than the teacher and larger than the student
    (TAKD's rule; the slide does not name them): parameter counts of the models built on the meta device."""
    import functools

    import torch

    from kdlab.models import count_parameters, create

    @functools.cache
    def params(name: str) -> int:
        with torch.device("meta"):
            return count_parameters(create(name, num_classes=100))

    for pair in TEKAP_TA:
        teacher, student = pair.split("→")
        cfg = load_config(REPO / "configs" / "cifar100" / "takd" / f"{teacher}__{student}.yaml")
        assert cfg.model.teachers[0].name == teacher and cfg.model.student == student
        (link,) = cfg.chain.assistants
        assert params(student) < params(link.model) < params(teacher), pair


def _spec(**extra) -> dict:
    return {"name": "s", "rows": [{"label": "KD", "config": {"method": {"name": "ce"}}}], **extra}


def test_spec_targets_and_analysis_are_checked() -> None:
    spec = parse_spec(_spec(rows=[{"label": "KD", "config": {}, "target": {"top1": 71.0, "top5": 90.0}}]))
    assert spec.rows[0].target == 71.0 and spec.rows[0].targets == {"top1": 71.0, "top5": 90.0}
    (run,) = expand(spec)
    assert run.target == 71.0 and run.targets == {"top1": 71.0, "top5": 90.0}
    with pytest.raises(ConfigError, match=r"rows\.0: target\.top5 must be a number"):
        parse_spec(_spec(rows=[{"label": "KD", "config": {}, "target": {"top1": 71.0, "top5": "high"}}]))
    with pytest.raises(ConfigError, match=r"analysis\.0: name must be one of robustness, .* got 'robust'"):
        parse_spec(_spec(analysis={"name": "robust"}))
    with pytest.raises(ConfigError, match=r"targets name row label\(s\) \['Teacher'\] that no row has"):
        parse_spec(_spec(analysis={"name": "robustness", "targets": {"Teacher": {"top1": 29.88}}}))
    with pytest.raises(ConfigError, match=r"analysis\.0: unknown key 'arg'.*Did you mean 'args'"):
        parse_spec(_spec(analysis={"name": "robustness", "arg": []}))


def test_sweep_dry_run_prints_the_named_analyses(capsys) -> None:
    """``kdlab sweep --dry-run`` lists the ``kdlab analyze`` command of every analysed run after the runs."""
    from kdlab.cli.main import main

    assert main(["sweep", str(SWEEPS / "tekap_robustness_cifar100.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("kdlab analyze")]
    assert len(lines) == 4
    assert lines[0].startswith("kdlab analyze robustness runs/sweeps/tekap_robustness_cifar100/Teacher__")
    assert lines[0].endswith("--attacks fgsm,pgd --epsilons 0,1/255,2/255,4/255,8/255")


def test_report_shows_the_published_top5_where_the_spec_gives_it(tmp_path) -> None:
    """A spec row with ``target: {top1, top5}`` gets a "paper top-5" column in the report's per-cell table (the
    planned cells of a spec report, before any run exists); rows without a top-5 leave the cell empty."""
    from kdlab.experiments.report import collect_from_spec, markdown

    spec = parse_spec(
        {
            "name": "t5",
            "run_dir": str(tmp_path / "runs"),
            "rows": [
                {"label": "KD", "config": {}, "target": {"top1": 70.67, "top5": 90.04}},
                {"label": "CE", "config": {}, "target": 69.75},
            ],
        }
    )
    _, problems, cells = collect_from_spec(spec)
    assert len(problems) == 2  # no run directories yet
    assert [c.target_top5 for c in cells] == [90.04, None]
    text = markdown(cells, "t5")
    assert "| paper | diff | paper top-5 |" in text
    per_cell = text.split("## Per cell")[1].splitlines()
    kd_line = next(line for line in per_cell if line.startswith("| KD |"))
    assert kd_line.endswith("| 70.67 |  | 90.04 |")  # no runs: no difference yet
    ce_line = next(line for line in per_cell if line.startswith("| CE |"))
    assert ce_line.endswith("| 69.75 |  |  |")
    without = markdown([c for c in cells if c.label == "CE"], "t")
    assert "paper top-5" not in without


def test_dist_table4_report_prints_the_published_teacher_accuracies(tmp_path) -> None:
    """The report of the Table 4 sweep (no run trained yet) has the teacher row with the table's teacher column."""
    from kdlab.experiments.report import report

    report(str(SWEEPS / "dist_strong_strategies.yaml"), tmp_path)
    lines = (tmp_path / "report.md").read_text().splitlines()
    teacher = next(x for x in lines if x.startswith("| teacher (measured) |"))
    assert teacher.count("(paper 80.10)") == 4 and teacher.count("(paper 86.30)") == 2
