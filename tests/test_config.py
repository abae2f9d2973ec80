"""Strict config loading: unknown keys, wrong types, overrides, round trips, shipped configs."""

from __future__ import annotations

import pytest

from kdlab.config import ConfigError, RunConfig, build_config, dump_config, load_config, to_dict

from conftest import REPO


def test_defaults_are_the_cifar100_benchmark_recipe():
    cfg = RunConfig()
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)
    assert cfg.optim.milestones == [150, 180, 210] and cfg.optim.gamma == 0.1
    assert cfg.data.batch_size == 64 and cfg.train.epochs == 240
    assert cfg.data.augment == "crop_flip" and cfg.data.crop_padding == 4


def test_a_config_without_a_method_section_is_ce_with_its_own_fields():
    # the default method section is the registered ce Config (with ce's fields such as aux_weight), not the bare
    # base class: a config without `method:` used to crash when the run was built (ce.needs read aux_weight)
    from kdlab.method_configs.ce import CEConfig

    for cfg in (RunConfig(), build_config({"train": {"epochs": 1}})):
        assert type(cfg.method) is CEConfig and cfg.method.name == "ce"
        assert cfg.method == CEConfig()
    assert to_dict(build_config({}))["method"] == to_dict(build_config({"method": {"name": "ce"}}))["method"]


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.weight_decy'.*Did you mean 'weight_decay'"):
        build_config({"optim": {"weight_decy": 1e-4}})
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*Did you mean 'train'"):
        build_config({"trian": {}})


def test_method_keys_are_checked_against_the_method_schema():
    with pytest.raises(ConfigError, match=r"'method\.temprature'.*Did you mean 'temperature'"):
        build_config({"method": {"name": "kd", "temprature": 2}})
    with pytest.raises(ConfigError, match=r"unknown method 'kdd'.*Did you mean 'kd'"):
        build_config({"method": {"name": "kdd"}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=abc", "train.epochs must be an integer, got 'abc'"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("data.download=maybe", "data.download must be a boolean"),
        ("optim.schedule=linear", "optim.schedule must be one of 'step', 'cosine', 'constant'"),
        ("optim.milestones=5", "optim.milestones must be a list"),
        ("model.teachers.0.name=3", "model.teachers.0.name must be a string"),
    ],
)
def test_wrong_types_name_the_field_and_the_expected_type(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        build_config({}, [override])


def test_overrides_and_round_trip():
    cfg = build_config(
        {},
        [
            "method.name=kd",
            "method.temperature=2",
            "model.teachers.0.name=resnet32x4",
            "model.teachers.0.checkpoint=t.pt",
            "optim.milestones=[1, 2]",
            "train.epochs=3",
        ],
    )
    assert cfg.method.temperature == 2.0 and isinstance(cfg.method.temperature, float)
    assert cfg.model.teachers[0].name == "resnet32x4" and cfg.model.teachers[0].checkpoint == "t.pt"
    assert cfg.optim.milestones == [1, 2] and cfg.train.epochs == 3
    import yaml

    again = build_config(yaml.safe_load(dump_config(cfg)))
    assert to_dict(again) == to_dict(cfg)


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        build_config({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="index 3 is past the end"):
        build_config({"model": {"teachers": [{"name": "a"}]}}, ["model.teachers.3.name=b"])


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_missing_required_teacher_name():
    with pytest.raises(ConfigError, match=r"missing required config key\(s\) in model\.teachers\.0: name"):
        build_config({"model": {"teachers": [{"checkpoint": "x.pt"}]}})


# run configs only: configs/sweeps/ holds sweep specs (kdlab.experiments.spec), not run configs
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "sweeps" not in p.relative_to(REPO / "configs").parts)


NUM_CLASSES = {"cifar100": 100, "cifar10": 10, "digits": 10, "imagenet": 1000}
NUM_CLASSES.update({"criteo": 2, "tabular_csv": 2, "breast_cancer": 2})
INPUT = {"cifar100": (3, 32, 32), "cifar10": (3, 32, 32), "digits": (1, 8, 8), "imagenet": (3, 224, 224)}
# token data: (L,) = [CLS] + one token per field (Criteo: 39 fields; HAI: about 80 sensor/actuator columns)
INPUT.update({"criteo": (40,), "tabular_csv": (80,), "breast_cancer": (31,)})
# segmentation: the probe size of DenseSplits.input_size (the crop divided by 8)
NUM_CLASSES.update({"cityscapes": 19, "voc": 21})
INPUT.update({"cityscapes": (3, 64, 128), "voc": (3, 64, 64)})
# detection: 80 COCO classes, the detectors' registered probe size
NUM_CLASSES["coco"] = 80
INPUT["coco"] = (3, 800, 1344)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO / "configs")) for p in SHIPPED])
def test_every_shipped_config_loads_strictly_and_builds(path):
    """Each shipped config loads, and its models and method build and fit together (on the meta device:
    shapes only, no data, no weights)."""
    from kdlab.train.build import check_on_meta

    cfg = load_config(path)
    assert dump_config(cfg)
    check_on_meta(cfg, NUM_CLASSES[cfg.data.name], INPUT[cfg.data.name])


def test_yaml_on_off_words_reach_string_choices():
    """YAML reads ``off`` as False; a choice field whose words include ``off`` gets the word back."""
    import yaml

    assert build_config({}, ["log.progress=off"]).log.progress == "off"
    assert build_config(yaml.safe_load("log: {progress: off}")).log.progress == "off"
    with pytest.raises(ConfigError, match=r"log\.progress must be one of"):
        build_config({}, ["log.progress=yes"])
