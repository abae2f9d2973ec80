"""Evaluation metrics against scikit-learn (AUC, NLL), a direct formula (ECE, top-k) and across shards."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from kdlab.metrics import METRICS, binary_auc, evaluate, higher_is_better, resolve_metrics, select_key
from kdlab.types import Batch


def _run(name: str, logits: torch.Tensor, y: torch.Tensor, chunks: int = 3) -> float:
    m = METRICS.get(name)(logits.shape[1], torch.device("cpu"))
    for lg, yy in zip(logits.chunk(chunks), y.chunk(chunks)):
        m.update(lg, yy)
    return m.compute()


def _data(n: int, k: int, seed: int, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) + 1.5 * torch.nn.functional.one_hot(y, k)
    if ties:
        logits = (logits * 2).round() / 2  # many tied scores
    return logits.float(), y


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_auc_matches_sklearn(seed: int, ties: bool) -> None:
    logits, y = _data(301, 2, seed, ties)
    p = logits.double().softmax(1).numpy()
    assert _run("auc", logits, y) == pytest.approx(roc_auc_score(y.numpy(), p[:, 1]), abs=1e-12)


@pytest.mark.parametrize("k", [3, 7])
def test_multiclass_auc_is_macro_one_vs_rest(k: int) -> None:
    logits, y = _data(400, k, k, ties=True)
    p = logits.double().softmax(1).numpy()
    want = roc_auc_score(y.numpy(), p, multi_class="ovr", average="macro")
    assert _run("auc", logits, y) == pytest.approx(want, abs=1e-12)


def test_auc_of_one_class_is_nan_and_binary_auc_formula() -> None:
    assert math.isnan(_run("auc", torch.randn(10, 2), torch.zeros(10, dtype=torch.long)))
    # perfect, reversed and all-tied rankings
    s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    pos = torch.tensor([False, False, True, True])
    assert float(binary_auc(s, pos)) == 1.0
    assert float(binary_auc(-s, pos)) == 0.0
    assert float(binary_auc(torch.zeros(4), pos)) == 0.5


@pytest.mark.parametrize("k", [2, 5])
def test_nll_matches_sklearn_log_loss(k: int) -> None:
    logits, y = _data(257, k, 3)
    p = logits.double().softmax(1).numpy()
    assert _run("nll", logits, y) == pytest.approx(log_loss(y.numpy(), p, labels=list(range(k))), rel=1e-9)


def _ece_reference(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("k", [2, 10])
def test_ece_matches_binned_formula(k: int) -> None:
    logits, y = _data(500, k, 4)
    p = logits.double().softmax(1).numpy()
    assert _run("ece", logits, y) == pytest.approx(_ece_reference(p, y.numpy()), abs=1e-12)


def test_topk_counts_hits() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    y = torch.tensor([0, 2, 0, 1])
    assert _run("top1", logits, y, chunks=2) == 25.0
    assert _run("top5", logits, y, chunks=2) == 100.0  # k > K counts as K


def test_sync_over_shards_equals_one_process() -> None:
    """Two shards combined by sync (sums added, rows concatenated as the collectives would) give the single-process
    value of every metric."""
    logits, y = _data(200, 3, 5, ties=True)
    for name in METRICS.names():
        if METRICS.get(name).task == "detection":  # scores boxes, not logits: tests/test_detection_metric.py
            continue
        a, b = (METRICS.get(name)(3, torch.device("cpu")) for _ in range(2))
        a.update(logits[:90], y[:90])
        b.update(logits[90:], y[90:])
        # what rank 1 contributes to each collective, in the order rank 0's sync calls them
        if name == "auc":
            contrib = iter([torch.cat(b.probs), torch.cat(b.labels)])
            a.sync(lambda t: t, lambda t, c=contrib: torch.cat([t, next(c)]))
        else:
            a.sync(lambda t, s=b.sums: t + s, lambda t: t)
        assert a.compute() == pytest.approx(_run(name, logits, y, chunks=1), abs=1e-12), name


def test_evaluate_reports_requested_metrics_and_loss() -> None:
    logits, y = _data(64, 2, 6)
    model = torch.nn.Identity()
    batches = [Batch(x=logits[i : i + 16], y=y[i : i + 16], index=torch.arange(16)) for i in range(0, 64, 16)]
    out = evaluate(model, iter(batches), ("top1", "auc", "nll", "ece"))
    assert set(out) == {"top1", "auc", "nll", "ece", "loss", "n"}
    assert out["n"] == 64 and out["loss"] == pytest.approx(out["nll"])
    p = logits.double().softmax(1).numpy()
    assert out["auc"] == pytest.approx(roc_auc_score(y.numpy(), p[:, 1]), abs=1e-12)


def test_selection_direction_and_names() -> None:
    assert higher_is_better("auc") and not higher_is_better("nll") and not higher_is_better("loss")
    recs = [{"auc": 0.7, "nll": 0.5}, {"auc": 0.8, "nll": 0.6}]
    assert max(recs, key=select_key("auc"))["auc"] == 0.8
    assert max(recs, key=select_key("nll"))["nll"] == 0.5
    assert resolve_metrics([], ("auc", "nll")) == ("top1", "auc", "nll")
    assert resolve_metrics([], None) == ("top1", "top5")
    with pytest.raises(ValueError, match="did you mean 'auc'"):
        resolve_metrics(["acu"], None)


def _shard_entry(rank: int, port: int, out: str) -> None:
    """A spawned rank: evaluate its half of a split through the trainer's evaluate with the real collectives."""
    import json
    import os

    import torch.distributed as dist

    from kdlab.distributed import reduce_sum
    from kdlab.train.trainer import evaluate as train_evaluate

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        logits, y = _data(203, 3, 8, ties=True)
        lo, hi = (0, 90) if rank == 0 else (90, 203)  # unequal shards: AUC's rows are gathered with padding
        batches = [
            Batch(x=logits[i : min(i + 32, hi)], y=y[i : min(i + 32, hi)], index=torch.arange(1))
            for i in range(lo, hi, 32)
        ]
        got = train_evaluate(torch.nn.Identity(), iter(batches), reduce=reduce_sum, names=("top1", "auc", "nll", "ece"))
        with open(f"{out}.{rank}", "w") as f:
            json.dump(got, f)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_two_processes_reduce_to_the_one_process_metrics(tmp_path):
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "m")
    torch.multiprocessing.start_processes(_shard_entry, args=(port, out), nprocs=2, join=True, start_method="spawn")
    logits, y = _data(203, 3, 8, ties=True)
    want = evaluate(
        torch.nn.Identity(), iter([Batch(x=logits, y=y, index=torch.arange(1))]), ("top1", "auc", "nll", "ece")
    )
    for rank in range(2):
        got = json.loads((tmp_path / f"m.{rank}").read_text())
        assert got["n"] == 203
        for k in ("top1", "auc", "nll", "ece", "loss"):
            assert got[k] == pytest.approx(want[k], abs=1e-12), (rank, k)
