"""Distributed training on CPU: 2 gloo processes started by the tests (``torch.multiprocessing`` and ``torchrun``).

One launch trains several tiny runs on both ranks and writes what each rank ended with; the tests compare ranks
with each other and with one process at the same global batch, computed here. Equivalence with one process needs a
student without batch-coupled layers (BatchNorm in training mode normalises each rank's shard by its own
statistics, and SyncBatchNorm does not run on CPU), so those runs replace BatchNorm by the identity in every model.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from kdlab import models
from kdlab.config import ConfigError, dump_config
from kdlab.data import load_dataset
from kdlab.data.loader import DeviceLoader
from kdlab.methods import BuildContext, build_method
from kdlab.train import distributed
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.train.weight_scaling import _agree
from kdlab.types import Batch, Outputs, StepIO

from conftest import REPO, sigterm_during_step, tiny_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn_name: str, port: int, out: str, init_group: bool, args: tuple) -> None:
    """Runs in each spawned process: the torchrun environment, one thread, then ``fn_name(rank, out, *args)``."""
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
        }
    )
    torch.set_num_threads(1)
    if init_group:
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        globals()[fn_name](rank, Path(out), *args)
    finally:
        if init_group:
            dist.barrier()  # no rank leaves while another still talks to it
            gc.collect()  # the runs' DDP wrappers go before their process group
            dist.destroy_process_group()


def launch(fn_name: str, out: Path, *args: object, init_group: bool = True) -> None:
    """Run ``fn_name`` on 2 spawned ranks (a worker's exception fails the test with its traceback)."""
    torch.multiprocessing.start_processes(
        _entry,
        args=(fn_name, _free_port(), str(out), init_group, args),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )


def _no_batchnorm(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.Identity())
        else:
            _no_batchnorm(child)
    return model


def _patch_models_without_batchnorm() -> None:
    create = models.create
    models.create = lambda *a, **kw: _no_batchnorm(create(*a, **kw))


def _kd_config(tmp: Path, name: str, *overrides: str):
    return tiny_config(tmp, "train.epochs=1", f"train.name={name}", *overrides, method="kd")


def _crd_config(tmp: Path, name: str):
    return tiny_config(
        tmp, "train.epochs=1", f"train.name={name}", "method.num_negatives=16", "method.embed_dim=8", method="crd"
    )


def _state(trainer: Trainer) -> dict:
    return {
        "student": {k: v.clone() for k, v in trainer.run.student.state_dict().items()},
        "method": {k: v.clone() for k, v in trainer.run.method.state_dict().items()},
        "history": trainer.history,
        "steps": trainer.global_step,
    }


# ---------------------------------------------------------------------------------------------- workers (spawned)


def _work_runs(rank: int, out: Path) -> None:
    """Several 2-rank runs in one launch (the group is already initialised, so the trainers join it)."""
    results = {}
    results["kd_bn"] = _state(_fit(_kd_config(out, "kd_bn")))
    try:
        Trainer(_kd_config(out, "sync", "train.sync_bn=true"))
        results["sync_bn_error"] = None
    except ConfigError as err:
        results["sync_bn_error"] = str(err)
    _patch_models_without_batchnorm()
    results["kd"] = _state(_fit(_kd_config(out, "kd")))
    results["crd"] = _state(_fit(_crd_config(out, "crd")))
    results["dist"] = _dist_gradients(rank)
    results["helpers"] = _helpers(rank)
    results["checkpoint_on_return"] = _checkpoint_on_return(rank, out)
    torch.save(results, out / f"rank{rank}.pt")


def _checkpoint_on_return(rank: int, out: Path) -> dict | None:
    """Both ranks save a checkpoint while rank 0's write is slow (1 s); what each rank finds on disk the moment its
    ``save_checkpoint`` returns (a rank that stops right after must not leave before the file is complete)."""
    import kdlab.train.trainer as trainer_module

    trainer = Trainer(_kd_config(out, "slow_write"))
    if rank == 0:
        save = trainer_module.atomic_save

        def slow(state, path):
            time.sleep(1.0)
            save(state, path)

        trainer_module.atomic_save = slow
    try:
        trainer.save_checkpoint(trainer.start)
    finally:
        if rank == 0:
            trainer_module.atomic_save = save
    path = out / "runs" / "slow_write" / "checkpoint.pt"
    return read_file(path)["progress"] if path.exists() else None


def _fit(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer


def _dist_problem():
    """A global batch of 16 (inputs, labels, teacher logits) and a linear student, the same on every rank."""
    g = torch.Generator().manual_seed(3)
    x, y, t = torch.randn(16, 5, generator=g), torch.randint(0, 4, (16,), generator=g), torch.randn(16, 4, generator=g)
    torch.manual_seed(4)
    return x, y, t, nn.Linear(5, 4)


def _dist_loss(student: nn.Module, x, y, t, index, gather: bool):
    method = build_method(build_method_config("dist", gather_logits=gather), BuildContext(num_classes=4))
    io = StepIO({"x": Outputs(student(x))}, ({"x": Outputs(t)},), Batch(x=x, y=y, index=index))
    return method.loss(io)


def build_method_config(name: str, **fields):
    from kdlab.config import build_config

    return build_config({"method": {"name": name, **fields}}, []).method


def _dist_gradients(rank: int) -> dict:
    x, y, t, lin = _dist_problem()
    ddp = nn.parallel.DistributedDataParallel(lin)
    part = slice(8 * rank, 8 * rank + 8)
    out = _dist_loss(ddp, x[part], y[part], t[part], torch.arange(16)[part], gather=True)
    out.total.backward()
    local = _dist_loss(lin, x[part], y[part], t[part], torch.arange(16)[part], gather=False)
    return {
        "dist": out.terms["dist"].detach(),
        "dist_local": local.terms["dist"].detach(),
        "grad_w": lin.weight.grad.clone(),
        "grad_b": lin.bias.grad.clone(),
    }


def _helpers(rank: int) -> dict:
    # uneven rows: rank 0 has 3, rank 1 has 5
    full = torch.arange(8 * 2, dtype=torch.float64).reshape(8, 2) / 7
    own = slice(0, 3) if rank == 0 else slice(3, 8)
    x = full[own].clone().requires_grad_(True)
    gathered = distributed.all_gather_with_grad(x)
    (gathered.sin() * torch.arange(1, 9, dtype=torch.float64)[:, None]).sum().backward()
    rows, where = distributed.gather_rows(full[own] * 1)
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), float(rank + 1))
    distributed.average_gradients([p])
    return {
        "gathered": gathered.detach(),
        "grad": x.grad,
        "rows": rows,
        "where": (where.start, where.stop),
        "avg": p.grad,
        "factors": _agree({"kd": 1.0 + rank, "ce": 2.0}, torch.device("cpu")),  # train.weight_scaling's per-rank mean
    }


def _resume_config(tmp: Path, name: str):
    return tiny_config(tmp, "train.epochs=2", f"train.name={name}", "log.progress=plain", method="kd")


def _work_full_and_stopped(rank: int, out: Path) -> None:
    """An uninterrupted 2-epoch run ``full``, and the same run ``cut`` where a SIGTERM reaches rank 1 only, during
    its 4th step."""
    for name in ("full", "cut"):
        trainer = Trainer(_resume_config(out, name))
        if name == "cut" and rank == 1:
            sigterm_during_step(trainer, 4)
        try:
            trainer.fit()
            stopped = None
        except TrainingInterrupted:
            stopped = trainer.global_step
        torch.save({"stopped": stopped, **_state(trainer)}, out / f"{name}_rank{rank}.pt")


# ------------------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both ranks' results of :func:`_work_runs`, and one-process runs of the same configs at the global batch."""
    out = tmp_path_factory.mktemp("ddp")
    launch("_work_runs", out)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as mp:
        create = models.create
        mp.setattr(models, "create", lambda *a, **kw: _no_batchnorm(create(*a, **kw)))
        one = {"kd": _state(_fit(_kd_config(single, "kd"))), "crd": _state(_fit(_crd_config(single, "crd")))}
    return ranks, one, out


def _assert_states(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_student_parameters_identical_on_both_ranks(runs):
    (r0, r1), _, out = runs
    for run in ("kd_bn", "kd", "crd"):
        assert r0[run]["steps"] == r1[run]["steps"] == 6  # 96 samples, global batch 16
        # parameters (DDP) and, after the evaluation's broadcast, BN running statistics
        _assert_states(r0[run]["student"], r1[run]["student"], exact=True)
        _assert_states(r0[run]["method"], r1[run]["method"], exact=True)
    # rank 0 wrote the run; evaluation covered the whole test set across ranks, and both ranks agree on it
    summary = json.loads((out / "runs" / "kd_bn" / "summary.json").read_text())
    assert summary["last"]["n"] == 48 and summary["steps"] == 6
    assert r0["kd_bn"]["history"][-1]["test"] == r1["kd_bn"]["history"][-1]["test"]
    ckpt = read_file(out / "runs" / "kd_bn" / "checkpoint.pt")
    assert ckpt["world_size"] == WORLD
    # the checkpoint's weights are rank 0's (BN running statistics included)
    _assert_states(ckpt["student"], r0["kd_bn"]["student"], exact=True)


def test_two_ranks_match_one_process_at_the_global_batch_for_kd(runs):
    (r0, r1), one, _ = runs
    _assert_states(r0["kd"]["student"], one["kd"]["student"], exact=False)
    _assert_states(r1["kd"]["student"], one["kd"]["student"], exact=False)
    # the logged (rank-averaged) training loss and the test metrics are the one-process ones
    got, want = r0["kd"]["history"][-1], one["kd"]["history"][-1]
    assert got["train"]["loss"] == pytest.approx(want["train"]["loss"], rel=1e-5)
    assert got["test"]["top1"] == want["test"]["top1"] and got["test"]["n"] == want["test"]["n"] == 48
    assert got["test"]["loss"] == pytest.approx(want["test"]["loss"], rel=1e-5)


def test_crd_banks_identical_across_ranks_and_equal_to_one_process(runs):
    (r0, r1), one, _ = runs
    m0, m1 = r0["crd"]["method"], r1["crd"]["method"]
    for key in ("memory_student", "memory_teacher", "z_student", "z_teacher"):
        assert torch.equal(m0[key], m1[key]), key
    # the banks moved (updates of both ranks' samples are applied), and match one process at the global batch
    _assert_states(m0, one["crd"]["method"], exact=False)
    _assert_states(r0["crd"]["student"], one["crd"]["student"], exact=False)


def test_dist_gathered_logits_give_the_one_process_loss_and_gradients(runs):
    (r0, r1), _, _ = runs
    x, y, t, lin = _dist_problem()
    want = _dist_loss(lin, x, y, t, torch.arange(16), gather=False)
    want.total.backward()
    for r in (r0, r1):
        assert r["dist"]["dist"] == pytest.approx(float(want.terms["dist"].detach()), rel=1e-5)
        torch.testing.assert_close(r["dist"]["grad_w"], lin.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["dist"]["grad_b"], lin.bias.grad, rtol=1e-5, atol=1e-6)
    # without gathering, each rank's intra-class term sees only its shard: a different value
    assert abs(float(r0["dist"]["dist_local"]) - float(want.terms["dist"].detach())) > 1e-4


def test_collective_helpers(runs):
    (r0, r1), _, _ = runs
    full = torch.arange(16, dtype=torch.float64).reshape(8, 2) / 7
    weights = torch.arange(1, 9, dtype=torch.float64)[:, None]
    for r, own in ((r0, slice(0, 3)), (r1, slice(3, 8))):
        h = r["helpers"]
        assert torch.equal(h["gathered"], full) and torch.equal(h["rows"], full)
        assert h["where"] == (own.start, own.stop)
        # both ranks compute the same loss of the gathered rows: each rank's rows get the sum of both gradients
        torch.testing.assert_close(h["grad"], 2 * full[own].cos() * weights[own])
        assert torch.equal(h["avg"], torch.full((3,), 1.5))
        assert h["factors"] == {"ce": 2.0, "kd": 1.5}


def test_every_rank_returns_from_a_checkpoint_only_once_rank_0_has_written_it(runs):
    """Found by the detection DDP test: rank 1 stopped at an epoch's end and read the previous checkpoint while rank 0
    was still writing the one of the agreed step (under torchrun the exiting rank would stop rank 0 mid-write)."""
    (r0, r1), _, _ = runs
    assert r0["checkpoint_on_return"] is not None
    assert r1["checkpoint_on_return"] == r0["checkpoint_on_return"]


def test_sync_bn_on_cpu_is_a_clear_error(runs):
    (r0, _), _, _ = runs
    assert "train.sync_bn" in r0["sync_bn_error"] and "CUDA" in r0["sync_bn_error"]


def test_killed_and_resumed_run_ends_identical_to_uninterrupted(tmp_path):
    launch("_work_full_and_stopped", tmp_path)
    stops = [torch.load(tmp_path / f"cut_rank{r}.pt", weights_only=False)["stopped"] for r in range(WORLD)]
    # the signal reached rank 1 only; both ranks stopped after the same step, mid-epoch (6 steps per epoch)
    assert stops[0] == stops[1] and 4 <= stops[0] < 6
    ckpt = read_file(tmp_path / "runs" / "cut" / "checkpoint.pt")
    assert ckpt["progress"]["global_step"] == stops[0] and ckpt["world_size"] == WORLD
    full = read_file(tmp_path / "runs" / "full" / "checkpoint.pt")
    rank1 = torch.load(tmp_path / "full_rank1.pt", weights_only=False)["student"]
    _assert_states(rank1, full["student"], exact=True)  # rank 1 ends with the weights of rank 0's checkpoint

    # resuming with another number of processes is refused with a clear message
    with pytest.raises(ConfigError, match=r"2 process.*this run has 1.*nproc_per_node=2"):
        Trainer(_resume_config(tmp_path, "cut"), resume=True).fit()

    # resume through the real command line under torchrun (new processes; the trainer joins the group itself)
    config = tmp_path / "cut.yaml"
    config.write_text(dump_config(_resume_config(tmp_path, "cut")))
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", f"--master_port={_free_port()}"]
    proc = subprocess.run(
        [*cmd, "-m", "kdlab", "train", str(config), "--resume"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("test top1") == 1  # rank 0 reports, rank 1 stays silent
    assert "per-process batch 8" in proc.stderr and proc.stderr.count("INFO resumed") == 1

    resumed = read_file(tmp_path / "runs" / "cut" / "checkpoint.pt")
    assert resumed["progress"] == full["progress"] and resumed["progress"]["global_step"] == 12
    _assert_states(resumed["student"], full["student"], exact=True)
    _assert_states(resumed["method"], full["method"], exact=True)
    assert [h["test"] for h in resumed["history"]] == [h["test"] for h in full["history"]]
    summary = json.loads((tmp_path / "runs" / "cut" / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["last"]["n"] == 48


def test_loader_shards_are_the_one_process_batch(tmp_path):
    cfg = tiny_config(tmp_path, "data.train_size=90")  # 90 = 5 x 16 + 10: a last partial batch
    splits = load_dataset(cfg.data)
    one = DeviceLoader(splits, cfg.data, torch.device("cpu"), seed=5)
    a, b = (DeviceLoader(splits, cfg.data, torch.device("cpu"), seed=5) for _ in range(2))
    with pytest.raises(ConfigError, match=r"data.batch_size=16 .* divisible by the 3 processes"):
        a.shard(0, 3)
    a.shard(0, 2)
    b.shard(1, 2)
    assert a.steps_per_epoch() == b.steps_per_epoch() == one.steps_per_epoch() == 6
    for whole, s0, s1 in zip(one.train_batches(1), a.train_batches(1), b.train_batches(1)):
        assert s0.size == s1.size == whole.size // 2  # the last batch: 10 samples, 5 per rank
        assert torch.equal(torch.cat([s0.x, s1.x]), whole.x) and torch.equal(
            torch.cat([s0.index, s1.index]), whole.index
        )
    # evaluation shards cover the test set once
    idx = torch.cat([batch.index for loader in (a, b) for batch in loader.eval_batches("test", shard=True)])
    assert torch.equal(idx, torch.arange(48))


def test_last_partial_batch_is_trimmed_to_the_world_size(tmp_path):
    # 5 x 16 + 1: one sample left, fewer than the 2 ranks (kept as a batch: the merge rule is off)
    cfg = tiny_config(tmp_path, "data.train_size=81", "data.last_batch_min_fraction=0")
    splits = load_dataset(cfg.data)
    loader = DeviceLoader(splits, cfg.data, torch.device("cpu"), seed=0)
    assert loader.steps_per_epoch() == 6
    loader.shard(1, 2)
    assert loader.steps_per_epoch() == 5 and [b.size for b in loader.train_batches(0)] == [8] * 5
