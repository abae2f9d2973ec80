"""The coco source and the detection loader: the batch contract, boxes through resize and flip (golden values), the
source's rules (labels, crowd boxes, empty images, dropped boxes) and bad input through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from coco_tiny import edit_annotations, make_coco
from segmentation_util import cli

from kdlab.config import build_config
from kdlab.data.detection import SIZE_DIVISIBLE, flip_boxes, resize_boxes, resized_hw


def _data(root, **data):
    from kdlab.data import load_dataset, make_loader

    settings = {"name": "coco", "root": str(root), "min_size": 96, "max_size": 200, "workers": 0, "batch_size": 4}
    cfg = build_config({"data": {**settings, **data}, "model": {"student": "convnet_s"}}, [])
    splits = load_dataset(cfg.data)
    return splits, make_loader(splits, cfg.data, torch.device("cpu"), 0)


def test_resize_rule_is_torchvisions():
    # shorter side to 800 unless the longer would pass 1333; floor of size * scale
    assert resized_hw(480, 640, 800, 1333) == (800, 1066)
    assert resized_hw(640, 480, 800, 1333) == (1066, 800)
    assert resized_hw(100, 1000, 800, 1333) == (133, 1333)  # the longer side decides
    assert resized_hw(427, 640, 800, 1333) == (800, 1199)  # 800 / 427 * 427 must not floor to 799
    boxes = np.array([[10.0, 5.0, 30.0, 20.0]], dtype=np.float32)
    assert resize_boxes(boxes, (48, 64), (96, 128)).tolist() == [[20.0, 10.0, 60.0, 40.0]]
    assert resize_boxes(boxes, (48, 64), (64, 85))[0].tolist() == pytest.approx(
        [10 * 85 / 64, 5 * 4 / 3, 30 * 85 / 64, 20 * 4 / 3]
    )
    assert flip_boxes(boxes, 64).tolist() == [[34.0, 5.0, 54.0, 20.0]]


def _plant_known_box(root):
    """Image 1 of train and image 1001 of val get exactly one box, xywh [10, 5, 20, 15] of category 3."""

    def edit(payload):
        first = payload["images"][0]["id"]
        payload["annotations"] = [a for a in payload["annotations"] if a["image_id"] != first]
        ann = {"id": 777, "image_id": first, "category_id": 3, "bbox": [10.0, 5.0, 20.0, 15.0], "area": 300.0}
        payload["annotations"].append({**ann, "iscrowd": 0})

    edit_annotations(root, "train", edit)
    edit_annotations(root, "val", edit)


def test_boxes_survive_resize_and_flip_golden(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=4)  # 48x64 images, one batch per epoch
    _plant_known_box(root)
    splits, loader = _data(root)  # min_size 96: scale 2 -> 96x128
    assert splits.train.image_ids[0] == 1 and splits.test.image_ids[0] == 1001
    batch = next(iter(loader.eval_batches("test")))
    x = batch.x
    assert x["image_sizes"][0].tolist() == [96, 128] and x["original_sizes"][0].tolist() == [48, 64]
    assert x["boxes"][0, 0].tolist() == [20.0, 10.0, 60.0, 40.0] and x["labels"][0, 0] == 1  # id 3 -> label 1
    assert batch.y[0, 0].tolist() == [10.0, 5.0, 30.0, 20.0, 1.0, 0.0, 300.0]
    reference = next(iter(loader.eval_batches("train"))).x["images"][0]  # training image 0, unflipped
    seen = set()
    for epoch in range(8):
        for b in loader.train_batches(epoch):
            (j,) = (b.index == 0).nonzero()[:, 0].tolist() or [None]
            if j is None:
                continue
            box, y = b.x["boxes"][j, 0].tolist(), b.y[j, 0].tolist()
            flipped = box == [68.0, 10.0, 108.0, 40.0]  # 128 - 60, 128 - 20
            assert flipped or box == [20.0, 10.0, 60.0, 40.0], box
            assert y == ([34.0, 5.0, 54.0, 20.0] if flipped else [10.0, 5.0, 30.0, 20.0]) + [1.0, 0.0, 300.0]
            image = b.x["images"][j, :, :96, :128]
            assert torch.equal(image, reference[:, :96, :128].flip(-1) if flipped else reference[:, :96, :128])
            seen.add(flipped)
    assert seen == {True, False}  # both cases met


def test_batch_contract_padding_crowd_and_empty_images(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=8, n_val=5, crowd=True, empty_train=2, empty_val=2)
    splits, loader = _data(root, min_size=40, max_size=70, eval_batch_size=7)
    assert splits.num_classes == 3 and splits.category_ids == (1, 3, 7) and splits.metrics == ("map",)
    assert splits.record["train_images_without_boxes"] == 2 and len(splits.train) == 8  # dropped from training
    assert len(splits.test) == 7  # kept in evaluation
    (batch,) = list(loader.eval_batches("test"))
    x, y = batch.x, batch.y
    b, n = x["labels"].shape
    assert b == 7 and y.shape == (7, n, 7) and x["boxes"].shape == (7, n, 4) and n >= 1
    assert x["images"].dtype == torch.float32 and x["boxes"].dtype == torch.float32 and y.dtype == torch.float32
    assert x["labels"].dtype == torch.int64 and x["image_sizes"].dtype == torch.int64
    hp, wp = x["images"].shape[-2:]
    assert hp % SIZE_DIVISIBLE == 0 and wp % SIZE_DIVISIBLE == 0
    for j in range(b):
        h, w = x["image_sizes"][j].tolist()
        assert min(h, w) == 40 or max(h, w) == 70
        assert (x["images"][j, :, h:] == 0).all() and (x["images"][j, :, :, w:] == 0).all()  # zero padding
        assert x["images"][j, :, :h, :w].abs().sum() > 0
    pad = y[..., 4] < 0
    assert (x["labels"][pad] == -1).all() and (x["boxes"][pad] == 0).all()
    assert (pad.all(dim=1)).sum() == 2  # the two empty images: only padding rows
    crowd = y[..., 5] == 1
    assert crowd.sum() == 1 and (x["labels"][crowd] == -1).all() and (y[..., 4][crowd] >= 0).all()  # kept, not trained
    real = ~pad & ~crowd
    assert (x["labels"][real] == y[..., 4][real].long()).all()


def test_test_limit_evaluates_a_seeded_subset_in_id_order(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=8)
    full, _ = _data(root)
    a, _ = _data(root, test_limit=3)
    b, _ = _data(root, test_limit=3)
    other, _ = _data(root, test_limit=3, split_seed=1)
    ids = a.test.image_ids.tolist()
    assert len(ids) == 3 and ids == sorted(ids) and set(ids) <= set(full.test.image_ids.tolist())
    assert ids == b.test.image_ids.tolist() and ids != other.test.image_ids.tolist()
    for j, image_id in enumerate(ids):  # each image keeps its own annotations
        i = full.test.image_ids.tolist().index(image_id)
        assert np.array_equal(a.test.annotations(j)[0], full.test.annotations(i)[0])


def test_resume_replays_the_epoch_and_holdout_split(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=10, n_val=2)
    _, loader = _data(root, batch_size=3, val_fraction=0.2)
    assert len(loader.val) == 2 and loader.num_train == 8
    full = list(loader.train_batches(1))
    tail = list(loader.train_batches(1, start_step=1))
    assert len(tail) == len(full) - 1
    for a, b in zip(full[1:], tail):
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y)
        assert all(torch.equal(a.x[k], b.x[k]) for k in a.x)


def test_worker_processes_give_the_same_batches(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=6, n_val=2)
    _, inline = _data(root, batch_size=3)
    _, workers = _data(root, batch_size=3, workers=2)
    for a, b in zip(list(inline.train_batches(0)), list(workers.train_batches(0)), strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y)
        assert all(torch.equal(a.x[k], b.x[k]) for k in a.x)


def test_an_image_of_another_size_than_its_annotation_is_refused_naming_it(tmp_path):
    from kdlab.data.base import DataError

    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    edit_annotations(root, "val", lambda p: p["images"][1].update(height=50))
    _, loader = _data(root)
    with pytest.raises(DataError, match=r"000000001002\.jpg is 64x48 \(W x H\) but its annotation file says 64x50"):
        list(loader.eval_batches("test"))


SMALL = ["data.min_size=64", "data.max_size=64", "data.workers=0", "train.epochs=1", "train.device=cpu"]


def _config(tmp_path, root) -> str:
    config = tmp_path / "coco.yaml"
    config.write_text(
        f"model: {{student: retinanet_tiny}}\ndata: {{name: coco, root: {root}, batch_size: 4}}\n"
        "method: {name: ce}\ntrain: {select_by: map, threads: 1}\nlog: {progress: off}\n"
    )
    return str(config)


def _refused(tmp_path, root, *overrides) -> str:
    code, _, err = cli("train", _config(tmp_path, root), *SMALL, f"train.run_dir={tmp_path / 'runs'}", *overrides)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "runs").exists()  # nothing written
    return err


def test_unknown_category_id_exits_2_naming_file_annotation_and_fix(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)

    def edit(payload):
        payload["annotations"][1]["category_id"] = 99

    edit_annotations(root, "val", edit)
    err = _refused(tmp_path, root)
    ann_id = json.loads((root / "annotations" / "instances_val2017.json").read_text())["annotations"][1]["id"]
    assert "instances_val2017.json" in err and f"annotation id {ann_id}" in err and "category_id 99" in err
    assert "add the category to 'categories' or remove the annotation" in err


def test_missing_image_exits_2_naming_the_path(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    (root / "train2017" / "000000000003.jpg").unlink()
    err = _refused(tmp_path, root)
    assert str(root / "train2017" / "000000000003.jpg") in err and "is missing" in err


def test_bad_sizes_and_classification_subsets_exit_2(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    assert "need 1 <= min_size <= max_size" in _refused(tmp_path, root, "data.min_size=100", "data.max_size=50")
    assert "data.train_per_class=2 subsets a classification set" in _refused(tmp_path, root, "data.train_per_class=2")
    assert "['top1'] cannot score" in _refused(tmp_path, root, "train.metrics=[top1]")
    assert "not among the run's metrics ['map']" in _refused(tmp_path, root, "train.select_by=loss")


def test_classifier_on_boxes_and_detector_on_classes_exit_2(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    err = _refused(tmp_path, root, "model.student=convnet_s")
    assert "model 'convnet_s' does not detect objects, but dataset 'coco' has boxes" in err and "retinanet_tiny" in err
    err = _refused(tmp_path, root, "data.name=synthetic", "data.image_size=32")
    assert "model 'retinanet_tiny' is an object detector, but dataset 'synthetic' has no boxes" in err


def test_non_positive_boxes_are_dropped_and_counted(tmp_path, caplog):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)

    def edit(payload):
        payload["annotations"][0]["bbox"][2] = 0.0  # zero width
        payload["annotations"][1]["bbox"][3] = -3.0  # negative height

    edit_annotations(root, "train", edit)
    edit_annotations(root, "val", lambda p: p["annotations"][0]["bbox"].__setitem__(2, -1.0))
    with caplog.at_level("WARNING", logger="kdlab"):
        splits, _ = _data(root)
    assert splits.record["dropped_boxes"] == {"train": 2, "val": 1}
    assert "dropped 2 train and 1 val box(es) with non-positive width or height" in caplog.text
    total = len(json.loads((root / "annotations" / "instances_train2017.json").read_text())["annotations"])
    assert splits.train.boxes.shape[0] == total - 2


def test_report_headline_is_box_map_for_detection_rows():
    """The fast sibling of the CLI test below: store-style rows without top-1 but with a box mAP make cells whose
    headline is the mAP, and the tables say "box mAP"."""
    from kdlab.experiments.report import Cell, headline, markdown, summarize

    metrics = {"last": {"map": 31.5, "map_50": 50.0}, "best": {"map": 32.0}}
    rows = [
        {"row_label": "DIST", "pair": "x101→r50", "seed": s, "student": "retinanet_r50", "last_top1": None,
         "best_top1": None, "last_map": 31.5 + s, "best_map": 32.0 + s, "best_epoch": 11, "last_epoch": 12,
         "metrics": json.dumps(metrics), "select_by": "map", "target_top1": 39.8, "curve": [(12, 31.5 + s)]}
        for s in (0, 1)
    ]  # fmt: skip
    assert headline(rows[0]) == "map" and headline({"last_top1": 70.0, "last_map": None}) == "top1"
    (cell,) = summarize(rows)
    assert isinstance(cell, Cell) and cell.metric == "map" and cell.last_top1 == [31.5, 32.5]
    assert cell.best_top1 == [32.0, 33.0] and cell.diff == pytest.approx(32.0 - 39.8)
    text = markdown([cell], "coco")
    assert "Test box mAP (%)" in text and "| last box mAP | best box mAP |" in text and "32.00 ± 0.71 (n=2)" in text


@pytest.mark.slow
def test_detection_run_reports_map_in_summary_store_and_report(tmp_path):
    """A tiny RetinaNet (ce) through ``kdlab train`` on coco: summary.json, metrics.jsonl, the results store and the
    report carry the box mAP (and no top-1); select_by map chose the best epoch."""
    from kdlab.models import model_names

    if "retinanet_tiny" not in model_names():
        pytest.skip("needs the tiny detection models (kdlab/models/detection)")
    root = make_coco(tmp_path / "coco", n_train=8, n_val=4)
    edit_annotations(root, "train", lambda p: p["annotations"][0]["bbox"].__setitem__(2, 0.0))  # dropped, counted
    config = tmp_path / "ce.yaml"
    config.write_text(
        f"model: {{student: retinanet_tiny}}\ndata: {{name: coco, root: {root}, batch_size: 4, eval_batch_size: 4}}\n"
        "method: {name: ce}\ntrain: {select_by: map, threads: 1}\nlog: {progress: off}\n"
    )
    runs = tmp_path / "runs"
    code, out, err = cli(
        "train", str(config), *SMALL, "train.epochs=2", "train.eval_every=1", f"train.run_dir={runs}", "train.name=ce"
    )
    assert code == 0, err[-3000:]
    assert "map last" in out and "top1" not in out
    summary = json.loads((runs / "ce" / "summary.json").read_text())
    assert summary["metrics"] == ["map"] and summary["select_by"] == "map" and "top1" not in summary["last"]
    last = summary["last"]
    assert 0.0 <= last["map"] <= 100.0 and last["n"] == 4 and "loss" not in last
    assert set(last) >= {"map_50", "map_75", "map_s", "map_m", "map_l"}
    assert summary["header"]["data"]["dropped_boxes"] == {"train": 1, "val": 0}  # in the run record
    assert "dropped 1 train and 0 val box(es) with non-positive width or height" in err  # and logged
    records = [json.loads(line) for line in (runs / "ce" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test"]["map"] for r in records][-1] == last["map"]
    store = tmp_path / "results.sqlite"
    code, out, err = cli("results", "--import", str(runs / "ce"), "--store", str(store))
    assert code == 0 and f"map last {last['map']:.2f}" in out, err[-2000:]
    from kdlab.experiments.store import ResultsStore

    (row,) = ResultsStore(str(store), create=False).query()
    assert row["last_map"] == last["map"] and row["best_map"] == summary["best"]["map"] and row["last_top1"] is None
    code, out, err = cli("report", "imported", "--store", str(store), "--out", str(tmp_path / "report"))
    assert code == 0, err[-2000:]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Test box mAP (%)" in report and f"| {last['map']:.2f} (n=1) |" in report


@pytest.mark.slow
def test_map_under_torchrun_equals_one_process_eval(tmp_path):
    """2 gloo processes through the real command line, each evaluating its part of the 5 val images (3 + 2): the
    gathered box mAP (all six numbers) equals ``kdlab eval`` of the same exported model in one process. The student
    starts from a file whose class bias makes every anchor a detection, so the mAP is not trivially 0."""
    import os
    import socket
    import subprocess
    import sys

    from kdlab import models
    from kdlab.models import model_names

    from conftest import REPO

    if "retinanet_tiny" not in model_names():
        pytest.skip("needs the tiny detection models (kdlab/models/detection)")
    root = make_coco(tmp_path / "coco", n_train=4, n_val=5)
    model = models.create("retinanet_tiny", num_classes=3)
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 2.0)
    torch.save(model.state_dict(), tmp_path / "init.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}
    args = [
        _config(tmp_path, root), *SMALL, f"model.student_checkpoint={tmp_path / 'init.pt'}",
        "optim.lr=1e-9", f"train.run_dir={tmp_path / 'runs'}", "train.name=ddp",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    proc = subprocess.run([*cmd, "-m", "kdlab", "train", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("map last") == 1  # rank 0 reports
    last = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())["last"]
    assert last["n"] == 5 and last["map"] > 0
    code, out, err = cli("eval", str(tmp_path / "runs" / "ddp"))
    assert code == 0, err[-2000:]
    single = json.loads(out)
    for key in ("map", "map_50", "map_75", "map_s", "map_m", "map_l"):
        assert (single[key] is None) == (last[key] is None), key
        assert single[key] is None or single[key] == pytest.approx(last[key], abs=1e-9), key
