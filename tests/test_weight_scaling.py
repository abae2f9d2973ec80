"""``train.weight_scaling``: the rule's arithmetic (gradient norms, ratios, factors), and on built runs that the scaled
terms have the reference's gradient ratios at step 0, that a changed weight keeps its ratio to the default, and that
measuring changes nothing of the run."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods import METHODS
from kdlab.methods.scaling import (
    apply_scales,
    gradient_norms,
    gradient_ratios,
    reference_ratios,
    scale_factors,
)
from kdlab.train.build import build_run
from kdlab.train.weight_scaling import calibrate, default_method, measure_ratios
from kdlab.types import LossOut

from conftest import tiny_config


def test_gradient_norms_are_the_l2_norms_of_each_terms_gradient():
    w = torch.tensor([1.0, -2.0, 2.0], requires_grad=True)
    v = torch.tensor([3.0, 0.0, 4.0], requires_grad=True)
    c = torch.tensor([1.0, 1.0, 1.0])
    terms = {"ce": (w**2).sum(), "hint": 3 * (v * c).sum() + 0 * w.sum(), "const": torch.tensor(2.0)}
    norms = gradient_norms(terms, [w, v])
    assert norms["ce"] == pytest.approx(2 * 3.0)  # d/dw = 2w, |w| = 3
    assert norms["hint"] == pytest.approx(3 * math.sqrt(3))  # d/dv = 3c
    assert norms["const"] == 0.0
    assert w.grad is None and v.grad is None  # .grad untouched


def test_ratios_are_relative_to_the_cross_entropy_and_empty_without_one():
    assert gradient_ratios({"ce": 2.0, "at": 50.0, "kd": 1.0}) == {"at": 25.0, "kd": 0.5}
    assert gradient_ratios({"at": 50.0}) == {}
    assert gradient_ratios({"ce": 0.0, "at": 50.0}) == {}


def test_factor_is_reference_over_measured_and_one_where_undefined():
    measured = {"at": 255.0, "kd": 16.0, "new": 3.0, "dead": 0.0, "nan": float("nan")}
    reference = {"at": 3.1, "kd": 13.0, "dead": 1.0, "nan": 1.0, "zero_ref": 0.0}
    f = scale_factors(measured, reference)
    assert f["at"] == pytest.approx(3.1 / 255.0)
    assert f["kd"] == pytest.approx(13.0 / 16.0)
    assert f["new"] == f["dead"] == f["nan"] == 1.0
    assert scale_factors({"batch": 0.044}, {"batch": 2.76}) == {"batch": 1.0}  # never strengthened
    assert scale_factors({"zero_ref": 2.0}, reference) == {"zero_ref": 1.0}


def test_apply_scales_multiplies_terms_and_keeps_the_unscaled_values_as_metrics():
    out = LossOut({"ce": torch.tensor(2.0), "at": torch.tensor(10.0)}, {"acc": torch.tensor(0.5)})
    scaled = apply_scales(out, {"at": 0.1})
    assert float(scaled.terms["at"]) == pytest.approx(1.0)
    assert float(scaled.terms["ce"]) == 2.0
    assert float(scaled.metrics["at_unscaled"]) == 10.0 and float(scaled.metrics["acc"]) == 0.5
    assert apply_scales(out, {}) is out


def test_the_reference_names_registered_methods_and_positive_ratios():
    names = set(METHODS.names())
    for method in ("at", "fitnet", "dist", "kd", "crd"):
        ref = reference_ratios(method)
        assert ref, method
        assert all(r > 0 and math.isfinite(r) for r in ref.values())
    from kdlab.methods.gradient_reference import RATIOS

    assert set(RATIOS) <= names
    assert reference_ratios("no_such_method") == {}


def _scaled_ratios(run, scales):
    """The step-0 ratios of the run's own method with ``scales`` applied to its terms."""
    from kdlab.train import weight_scaling

    real = weight_scaling.TrainStep.forward

    def forward(self, *a, **kw):
        return apply_scales(real(self, *a, **kw), scales)

    weight_scaling.TrainStep.forward = forward
    try:
        return measure_ratios(run, run.method)
    finally:
        weight_scaling.TrainStep.forward = real


@pytest.mark.parametrize("method", ["at", "dist"])
def test_scaled_terms_have_the_reference_ratio_at_step_0(tmp_path, method):
    run = build_run(tiny_config(tmp_path, "train.weight_scaling=gradient", method=method))
    scales = calibrate(run)
    ref = reference_ratios(method)
    assert scales and set(scales) <= set(ref)
    before = measure_ratios(run, run.method)
    after = _scaled_ratios(run, scales)
    for term in scales:  # a term is brought down to the reference ratio; one below it is left alone
        assert after[term] == pytest.approx(min(ref[term], before[term]), rel=1e-4)


def test_a_changed_weight_keeps_its_ratio_to_the_default(tmp_path):
    run = build_run(tiny_config(tmp_path, "train.weight_scaling=gradient", "method.at_weight=500", method="at"))
    assert default_method(run) is not run.method  # measured at the registered defaults (at_weight 1000)
    scales = calibrate(run)
    at_default = measure_ratios(run, default_method(run))["at"]
    after = _scaled_ratios(run, scales)
    assert after["at"] == pytest.approx(0.5 * min(reference_ratios("at")["at"], at_default), rel=1e-4)


def test_warm_ups_are_over_where_the_terms_are_measured(tmp_path):
    # DKD ramps its term over the first 1/12 of the run: the ratio must not depend on the run's length
    short = build_run(tiny_config(tmp_path, "train.epochs=3", method="dkd"))
    long = build_run(tiny_config(tmp_path, "train.epochs=36", method="dkd"))
    a, b = measure_ratios(short, short.method), measure_ratios(long, long.method)
    assert a["dkd"] > 0 and a["dkd"] == pytest.approx(b["dkd"], rel=1e-5)


def test_measuring_changes_nothing_of_the_run(tmp_path):
    run = build_run(tiny_config(tmp_path, "train.weight_scaling=gradient", method="fitnet"))
    student = {k: v.clone() for k, v in run.student.state_dict().items()}
    method = {k: v.clone() for k, v in run.method.state_dict().items()}
    rng = torch.get_rng_state()
    assert calibrate(run)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, run.student.state_dict()[k]) for k, v in student.items())  # BN statistics included
    assert all(torch.equal(v, run.method.state_dict()[k]) for k, v in method.items())


def test_none_and_no_teacher_mean_no_factors(tmp_path):
    assert calibrate(build_run(tiny_config(tmp_path, method="at"))) == {}
    assert calibrate(build_run(tiny_config(tmp_path, "train.weight_scaling=gradient"))) == {}  # ce: no teacher


def test_cli_run_with_gradient_scaling_logs_the_factor_and_trains_the_scaled_term(tmp_path, caplog):
    import json
    import logging

    from catalogue_util import run_case
    from runrecord_util import write_tiny_config

    cfg = write_tiny_config(
        tmp_path,
        epochs=1,
        method={"name": "at"},
        model={"student": "convnet_xs", "teachers": [{"name": "convnet_s"}]},
    )
    caplog.set_level(logging.INFO, logger="kdlab")
    code, _, err = run_case(["train", str(cfg), "train.weight_scaling=gradient"])
    assert code == 0, err
    line = next(
        r.getMessage() for r in caplog.records if "train.weight_scaling=gradient: at term 'at'" in r.getMessage()
    )
    record = json.loads((tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()[0])["train"]
    factor = float(line.split("-> factor ")[1].split()[0])
    assert record["at"] == pytest.approx(factor * record["at_unscaled"], rel=2e-3)  # epoch means of the step values
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["header"]["method"]["term_scales"]["at"] == pytest.approx(factor, rel=1e-2)  # logged to 3 digits


def test_cli_refuses_an_unknown_scaling_with_exit_2(tmp_path):
    from catalogue_util import assert_clean_error, run_case
    from runrecord_util import write_tiny_config

    cfg = write_tiny_config(tmp_path, epochs=1)
    code, out, err = run_case(["train", str(cfg), "train.weight_scaling=resolution"])
    assert_clean_error(code, out, err, 2, "train.weight_scaling", "gradient")
    assert not (tmp_path / "runs" / "r").exists()


def test_the_demo_students_use_gradient_scaling_unless_told_otherwise():
    import dataclasses

    from kdlab.cli.main import build_parser
    from kdlab.demo import DemoSettings, _base

    assert _base(DemoSettings.fast())["train"]["weight_scaling"] == "gradient"
    assert _base(DemoSettings.full())["train"]["weight_scaling"] == "gradient"
    none = dataclasses.replace(DemoSettings.fast(), weight_scaling="none")
    assert _base(none)["train"]["weight_scaling"] == "none"
    assert build_parser().parse_args(["demo", "--weight-scaling", "none"]).weight_scaling == "none"
    assert build_parser().parse_args(["demo"]).weight_scaling == "gradient"
