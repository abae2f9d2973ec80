"""The ``map`` metric: pycocotools' COCOeval on in-memory COCO objects built from the detection batches.

Golden: the metric on hand-made detections equals pycocotools run directly on the same json files (AP, AP50, AP75,
APs/m/l); perfect detections score 100; two processes, each evaluating its own shard, give the one-process numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from coco_tiny import edit_annotations, make_coco

from kdlab.config import build_config
from kdlab.metrics import evaluate, resolve_metrics
from kdlab.metrics_detection import MeanAP
from kdlab.types import Batch


def _loader(root, **data):
    from kdlab.data import load_dataset, make_loader

    settings = {"name": "coco", "root": str(root), "min_size": 32, "max_size": 64, "workers": 0, "batch_size": 4}
    cfg = build_config({"data": {**settings, **data}, "model": {"student": "convnet_s"}}, [])
    splits = load_dataset(cfg.data)
    return splits, make_loader(splits, cfg.data, torch.device("cpu"), 0)


def _hand_made(payload: dict, seed: int = 0) -> list[dict]:
    """COCO-format results for the images of ``payload``: each ground-truth box found with a jitter (multiples of
    0.25 pixels, exact in float32), some with the wrong class, some missed, plus false positives; varied scores."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in payload["categories"]]
    out = []
    for ann in payload["annotations"]:
        if rng.random() < 0.2:
            continue  # missed
        x, y, w, h = ann["bbox"]
        jitter = rng.integers(-8, 9, 4) / 4.0
        cat = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(cats))
        box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
        out.append({"image_id": ann["image_id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    for img in payload["images"]:
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = float(rng.integers(0, img["width"] - 8)), float(rng.integers(0, img["height"] - 8))
            box = [x, y, float(rng.integers(4, 9)), float(rng.integers(4, 9))]
            cat = int(rng.choice(cats))
            out.append({"image_id": img["id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    return out


def _as_logits(results: list[dict], splits, batch: Batch, d: int = 100) -> torch.Tensor:
    """``[B, d, 6]`` detections of the batch's images (xyxy, score, contiguous label; padded rows label -1)."""
    label_of = {c: k for k, c in enumerate(splits.category_ids)}
    out = torch.zeros(batch.size, d, 6)
    out[..., 5] = -1
    for j, pos in enumerate(batch.index.tolist()):
        image_id = int(splits.test.image_ids[pos])
        rows = [r for r in results if r["image_id"] == image_id]
        for k, r in enumerate(rows[:d]):
            x, y, w, h = r["bbox"]
            out[j, k] = torch.tensor([x, y, x + w, y + h, r["score"], label_of[r["category_id"]]])
    return out


def _official(ann_file, results) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(results)
        e = COCOeval(gt, dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [math.nan if v < 0 else 100.0 * v for v in e.stats[:6]]


def _metric_over(splits, loader, results) -> tuple[float, dict]:
    metric = MeanAP(splits.num_classes, torch.device("cpu"))
    for batch in loader.eval_batches("test"):
        metric.update(_as_logits(results, splits, batch), batch.y)
    return metric.compute(), metric.details()


def test_map_equals_pycocotools_on_the_json_files(tmp_path):
    # bigger images than coco_tiny's default so that small (< 32^2), medium and large boxes all occur
    root = make_coco(tmp_path / "coco", n_train=2, n_val=16, size=(240, 320), crowd=True, empty_val=1)
    ann_file = root / "annotations" / "instances_val2017.json"

    def add_small_boxes(payload):  # a few boxes under 32^2 pixels (COCO's "small")
        for k, img in enumerate(payload["images"][:5]):
            w, h = 12 + 2 * k, 20
            bbox = [float(5 + 3 * k), 7.0, float(w), float(h)]
            ann = {"id": 9000 + k, "image_id": img["id"], "category_id": 3, "bbox": bbox, "area": float(w * h)}
            payload["annotations"].append({**ann, "iscrowd": 0})

    edit_annotations(root, "val", add_small_boxes)
    payload = json.loads(ann_file.read_text())
    results = _hand_made(payload)
    splits, loader = _loader(root, eval_batch_size=5)
    want = _official(ann_file, results)
    got, details = _metric_over(splits, loader, results)
    assert all(not math.isnan(v) for v in want), want  # every size range defined: a real comparison of all six
    assert 5.0 < want[0] < 95.0, want  # neither trivial end
    assert got == pytest.approx(want[0], abs=1e-9)
    for key, value in zip(("map_50", "map_75", "map_s", "map_m", "map_l"), want[1:]):
        assert details[key] == pytest.approx(value, abs=1e-9), key


def test_perfect_detections_score_100_and_none_score_0(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=6, crowd=True)
    payload = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in payload["annotations"]
        if not a["iscrowd"]
    ]
    splits, loader = _loader(root)
    value, details = _metric_over(splits, loader, perfect)
    assert value == pytest.approx(100.0)
    assert details["map_50"] == pytest.approx(100.0) and details["map_75"] == pytest.approx(100.0)
    assert all(v is None or v == pytest.approx(100.0) for v in details.values())
    assert _metric_over(splits, loader, [])[0] == 0.0


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of 64x64: ground truth ``[n, 4, 7]`` (some padded, one crowd) and detections ``[n, 6, 6]``
    (jittered truths, false positives, padding), a pure function of ``seed``."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 40, (n, 4, 2), generator=g).float()
    wh = torch.randint(6, 48, (n, 4, 2), generator=g).float()
    labels = torch.randint(0, 3, (n, 4), generator=g).float()
    present = torch.rand(n, 4, generator=g) < 0.75
    y = torch.cat([xy, xy + wh, labels[..., None], torch.zeros(n, 4, 1), (wh[..., :1] * wh[..., 1:])], dim=2)
    y[..., 4] = torch.where(present, y[..., 4], -1.0)
    y[0, 0, 5] = 1.0  # a crowd box
    det = torch.zeros(n, 6, 6)
    det[:, :4, :4] = y[..., :4] + torch.randint(-3, 4, (n, 4, 4), generator=g).float()
    wrong = torch.randint(0, 3, (n, 4), generator=g).float()
    det[:, :4, 5] = torch.where(torch.rand(n, 4, generator=g) < 0.8, y[..., 4], wrong)
    det[:, 4:, :2] = torch.randint(0, 40, (n, 2, 2), generator=g).float()
    det[:, 4:, 2:4] = det[:, 4:, :2] + 10
    det[:, 4:, 5] = torch.randint(0, 3, (n, 2), generator=g).float()
    det[..., 4] = torch.rand(n, 6, generator=g)
    det[:, 5, 5] = -1  # padding row
    return det, y


def test_evaluate_on_detections_has_no_loss_and_counts_images():
    det, y = _synthetic(9, 0)
    batches = [Batch(x=det[i : i + 4], y=y[i : i + 4], index=torch.arange(1)) for i in range(0, 9, 4)]
    out = evaluate(torch.nn.Identity(), iter(batches), ("map",))
    assert out["n"] == 9 and "loss" not in out
    metric = MeanAP(3, torch.device("cpu"))
    metric.update(det, y)
    assert out["map"] == pytest.approx(metric.compute(), abs=1e-12) and 0 < out["map"] < 100
    with pytest.raises(ValueError, match="cannot score"):
        evaluate(torch.nn.Identity(), iter(batches), ("top1",))
    with pytest.raises(ValueError, match="detections"):
        MeanAP(3, torch.device("cpu")).update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_detection_metrics_do_not_mix_with_classification_ones():
    assert resolve_metrics([], ("map",)) == ("map",)  # no top-1 on boxes
    with pytest.raises(ValueError, match=r"\['top1'\] cannot score .* boxes"):
        resolve_metrics(["top1", "map"], ("map",))
    with pytest.raises(ValueError, match=r"\['map'\] cannot score .* class scores"):
        resolve_metrics(["map"], None)


def _shard_entry(rank: int, port: int, out: str) -> None:
    """A spawned rank: evaluate its part of the images through the trainer's evaluate with the real collectives."""
    import os

    import torch.distributed as dist

    from kdlab.distributed import reduce_sum
    from kdlab.train.evaluation import evaluate as train_evaluate

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        det, y = _synthetic(11, 3)
        lo, hi = (0, 4) if rank == 0 else (4, 11)  # unequal shards: rows are gathered with padding
        batches = [
            Batch(x=det[i : min(i + 3, hi)], y=y[i : min(i + 3, hi)], index=torch.arange(1)) for i in range(lo, hi, 3)
        ]
        got = train_evaluate(torch.nn.Identity(), iter(batches), reduce=reduce_sum, names=("map",))
        with open(f"{out}.{rank}", "w") as f:
            json.dump(got, f)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_sync_renumbers_each_process_images_after_the_ones_before():
    """The fast sibling of the two-process test: two metrics (the ranks) and a gather that concatenates their
    tensors in rank order, as ``gather_rows`` does."""
    det, y = _synthetic(11, 3)
    ranks = [MeanAP(3, torch.device("cpu")) for _ in range(2)]
    ranks[0].update(det[:4], y[:4])
    ranks[1].update(det[4:7], y[4:7])
    ranks[1].update(det[7:], y[7:])
    sent = []
    for m in ranks:  # what each rank hands to gather_rows, call by call: counts, detections, ground truth
        d, g = m._cat()
        sent.append([torch.tensor([[m.images, d.shape[0], g.shape[0]]], dtype=torch.float64), d, g])
    for m in ranks:
        calls = iter(range(3))
        m.sync(lambda t: t * 0, lambda t, calls=calls: torch.cat([sent[0][(i := next(calls))], sent[1][i]]))
    one = MeanAP(3, torch.device("cpu"))
    one.update(det, y)
    for m in ranks:
        assert m.images == 11
        assert m.stats() == pytest.approx(one.stats(), abs=1e-12, nan_ok=True)
    assert torch.equal(ranks[1]._cat()[0], one._cat()[0]) and torch.equal(ranks[1]._cat()[1], one._cat()[1])


@pytest.mark.slow
def test_two_processes_give_the_one_process_map(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "m")
    torch.multiprocessing.start_processes(_shard_entry, args=(port, out), nprocs=2, join=True, start_method="spawn")
    det, y = _synthetic(11, 3)
    want = evaluate(torch.nn.Identity(), iter([Batch(x=det, y=y, index=torch.arange(1))]), ("map",))
    assert 0 < want["map"] < 100
    for rank in range(2):
        got = json.loads((tmp_path / f"m.{rank}").read_text())
        assert got["n"] == 11
        for k in ("map", "map_50", "map_75", "map_s", "map_m", "map_l"):
            assert (got[k] is None) == (want[k] is None), (rank, k)
            assert got[k] is None or got[k] == pytest.approx(want[k], abs=1e-12), (rank, k)
