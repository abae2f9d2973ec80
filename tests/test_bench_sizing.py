"""``kdlab bench`` sizes its synthetic training set for what each method needs: a method with a held-out split
(TGeo-KD, RW-KD) gets one with a sample of every class and still ``steps`` full training batches per epoch."""

from __future__ import annotations

import json

import pytest
import torch

from kdlab.bench import bench_config, heldout_sizing, needs_heldout
from kdlab.cli.main import main
from kdlab.data.split import stratified_split


@pytest.mark.parametrize(
    ("batch_size", "steps", "classes"), [(64, 1, 100), (64, 10, 100), (256, 1, 100), (64, 1, 10), (8, 3, 1000)]
)
def test_heldout_sizing_leaves_full_batches_and_every_class_held_out(batch_size, steps, classes):
    n, fraction = heldout_sizing(batch_size, steps, classes)
    y = torch.arange(n) % classes  # the synthetic source's label counts
    train, val = stratified_split(y, fraction, 0)
    assert len(train) // batch_size >= steps
    assert torch.equal(torch.unique(y[val]), torch.arange(classes))
    if classes <= batch_size * steps:  # otherwise the split's one training sample per class sets the size
        assert len(train) // batch_size == steps
    if classes <= batch_size:
        assert len(val) % batch_size == 0


def test_only_methods_with_a_heldout_split_get_one():
    assert not needs_heldout(bench_config({"name": "kd"}).method)
    assert bench_config({"name": "kd"}, steps=3).data.train_size == 3 * 64
    for spec in ({"name": "tgeo_kd"}, {"name": "rw_kd"}, {"name": "tekap", "inner": {"name": "tgeo_kd"}}):
        cfg = bench_config(spec, steps=1, batch_size=16, num_classes=10)
        assert needs_heldout(cfg.method)
        assert (cfg.data.train_size, cfg.data.val_fraction) == (32, 0.5)


def test_bench_methods_times_tgeo_kd(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "methods",
            "--methods",
            "kd,tgeo_kd",
            "--teacher",
            "convnet_xs",
            "--student",
            "convnet_xs",
            "--batch-size",
            "16",
            "--image-size",
            "8",
            "--num-classes",
            "10",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"kd", "tgeo_kd"}
    assert rows["tgeo_kd"]["timed_steps"] == 2 and rows["tgeo_kd"]["median_step_s"] > 0
