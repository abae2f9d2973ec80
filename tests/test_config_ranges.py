"""Declared ranges of numeric config fields (kdlab/ranges.py) and scientific notation.

The bad-input catalogue (tests/test_bad_input_catalogue.py) tries a value outside each declared range through the
CLI; here: every numeric field of every config dataclass declares one, the range arithmetic, and what loading accepts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest

from kdlab.config import ConfigError, MethodConfig, RunConfig, build_config, load_config
from kdlab.methods import METHODS
from kdlab.ranges import Range, field_range, out_of_range_message, violations


def _numeric(tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return any(_numeric(a) for a in typing.get_args(tp))
    return tp in (int, float)


def _config_classes() -> list[type]:
    """Every dataclass reachable from RunConfig, every registered method's Config and their nested configs."""
    seen: list[type] = []

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            for arg in [tp, *typing.get_args(tp), *(b for a in typing.get_args(tp) for b in typing.get_args(a))]:
                if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                    walk(arg)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for d in default if isinstance(default, list) else [default]:
                if isinstance(d, MethodConfig):
                    walk(type(d))

    walk(RunConfig)
    for name in METHODS.names():
        walk(METHODS.get(name).Config)
    return seen


def test_every_numeric_field_declares_a_range():
    classes = _config_classes()
    assert len(classes) > 30  # the run sections and the methods' configs were reached
    missing = [
        f"{cls.__module__}.{cls.__qualname__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if _numeric(typing.get_type_hints(cls)[f.name]) and field_range(f) is None
    ]
    assert missing == [], "numeric fields without metadata=rng(...): " + ", ".join(missing)


def test_every_default_is_inside_its_range():
    for cls in _config_classes():
        for f in dataclasses.fields(cls):
            r = field_range(f)
            if r is None:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert violations(default, r, f.name) == [], f"{cls.__qualname__}.{f.name} = {default!r} outside {r}"


@pytest.mark.parametrize(
    ("r", "inside", "outside", "words"),
    [
        (Range(gt=0), [1e-12, 5.0], [0.0, -1.0], "> 0"),
        (Range(ge=1), [1, 2], [0, -3], ">= 1"),
        (Range(ge=0, lt=1), [0.0, 0.999], [1.0, -0.1], "in [0, 1)"),
        (Range(gt=0, le=1), [1.0, 0.5], [0.0, 1.01], "in (0, 1]"),
        (Range(), [-1e9, 0.0], [math.inf, math.nan], "a finite number"),
    ],
)
def test_range_arithmetic(r, inside, outside, words):
    assert all(r.contains(v) for v in inside)
    assert not any(r.contains(v) for v in outside)
    assert not any(r.contains(v) for v in r.outside())
    assert r.describe() == words


def test_range_message_names_key_value_range_and_fix():
    msg = out_of_range_message("optim.lr", -0.1, Range(gt=0), 0.05)
    assert msg == "optim.lr must be > 0, got -0.1. Fix: set optim.lr to a value > 0, e.g. optim.lr=0.05"
    assert violations([0.5, -1, 2], Range(ge=0), "k") == [("k.1", -1)]
    assert [k for k, _ in violations({"a": 1.0, "b": math.nan}, Range(), "t")] == ["t.b"]
    with pytest.raises(ValueError):
        Range(gt=0, ge=0)


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "1.0e-3", "+1e-3", ".1e-2", "0.001"])
def test_scientific_notation_in_overrides(text):
    cfg = build_config(
        {}, [f"optim.lr={text}", f"optim.weight_decay={text}", "method.name=kd", f"method.temperature={text}"]
    )
    assert cfg.optim.lr == cfg.optim.weight_decay == cfg.method.temperature == pytest.approx(1e-3)
    assert isinstance(cfg.optim.lr, float)


def test_scientific_notation_in_yaml_and_integers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n  betas: [9e-1, 0.999]\ntrain:\n  epochs: 1e1\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.train.epochs) == (1e-3, 5e-4, [0.9, 0.999], 10)
    assert isinstance(cfg.train.epochs, int)
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer, got 1.5"):
        build_config({}, ["train.epochs=15e-1"])
    assert build_config({}, ["train.name=1e3"]).train.name == "1e3"  # only numeric fields read numbers


def test_loading_refuses_and_constructing_does_not():
    """Ranges are checked when a config is loaded (files, overrides, checkpoints' configs), by from_dict."""
    with pytest.raises(ConfigError, match=r"data.batch_size must be >= 1, got -8"):
        build_config({"data": {"batch_size": -8}})
    with pytest.raises(ConfigError, match=r"method.inner.temperature must be > 0, got 0.0"):
        build_config({"method": {"name": "tekap", "inner": {"name": "kd", "temperature": 0}}})
    with pytest.raises(ConfigError, match=r"method.terms.0.kd_weight must be >= 0, got -1.0"):
        build_config({"method": {"name": "sum", "terms": [{"name": "kd", "kd_weight": -1}]}})
    with pytest.raises(ConfigError, match=r"optim.milestones must be strictly increasing, got \[5, 3\]"):
        build_config({}, ["optim.milestones=[5, 3]"])


def test_milestones_past_a_shortened_run_only_warn(caplog, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {milestones: [150, 180]}\ntrain: {epochs: 2}\n")
    with caplog.at_level("WARNING"):
        cfg = load_config(path)
    assert cfg.train.epochs == 2 and "optim.milestones [150, 180] are not before the last epoch" in caplog.text
