"""kdlab ÷ mdistiller: images/s of one training step per method, same models, settings, threads and allocator
(issue 21, "Speed").

Teacher resnet32x4 -> student resnet8x4 (random weights: the weights do not change the cost), CIFAR-shaped inputs
(3x32x32, 100 classes), batch 64, SGD (lr 0.05, momentum 0.9, weight decay 5e-4: both sides' CIFAR-100 recipes), on
the CPU. Every method both libraries have: kd, dkd, crd, review_kd, fitnet, at, nst, ofd, pkt, rkd, sp, kdsvd, vid;
kdlab's side is its shipped recipe (``configs/cifar100/<method>/resnet32x4__resnet8x4.yaml``, method section),
mdistiller's is its ``configs/cifar100`` file for the same pair on top of its ``CFG`` defaults. ``kdsvd[width]`` is
kdlab's KDSVD with ``layout: width``, the reshape mdistiller uses (the shipped recipe is ``layout: channels``, the
paper's; ``kdlab/methods/kdsvd.py`` says why).

What is timed, per step (wall clock, ``time.perf_counter``):

- kdlab: :class:`kdlab.train.trainer.Trainer`'s own step time (what ``kdlab train`` and ``kdlab bench methods``
  report): producing the batch (gather, random crop, flip, normalise), the teacher forward, the method's loss, the
  one host sync of the logged scalars, backward, the optimiser step and any aux update (CRD's memory).
- mdistiller: its ``BaseTrainer.train_iter`` / ``CRDTrainer.train_iter`` (``mdistiller/engine/trainer.py``) as
  written, less the ``.cuda()`` copies: ``zero_grad``, the distiller's ``forward_train`` through
  ``torch.nn.DataParallel`` (a pass-through without GPUs), ``sum(l.mean())``, backward, ``SGD.step``, top-1/5
  accuracy, the meters and the progress message. Its batch is already in memory: the DataLoader (PIL augmentation
  in worker processes) is left out, in the reference's favour; CRD's ``contrastive_index`` (K = 16384 negatives from
  other classes, drawn by its dataset) is drawn once, also outside the timing.

CRD's memory bank has ``--num-data`` rows on both sides (default 50000, CIFAR-100's training set; kdlab's synthetic
training set for CRD then has that many images), so that K = 16384 negatives exist; the other methods' kdlab runs
use a training set of ``--warmup + --steps`` batches.

Protocol: four long-lived worker processes (kdlab and mdistiller, each with the system allocator and with tcmalloc
preloaded through ``LD_PRELOAD``), each with ``torch.set_num_threads(--threads)``. Every worker first runs one
untimed KD step. Then, ``--rounds`` times, for every method and allocator, the kdlab and the mdistiller worker each
build the run afresh and train ``--warmup`` untimed and ``--steps`` timed steps, in alternating order (kdlab first
in even rounds, mdistiller first in odd ones), so a change of load on a shared machine hits both sides alike. A
run's time is the median of its timed steps; the ratio of a round is mdistiller's step time ÷ kdlab's (= kdlab
images/s ÷ mdistiller images/s); the reported ratio is the median over rounds, the images/s the median over every
timed step.

Memory format (``--kdlab-layouts``): kdlab runs every method twice per round, in the reference's NCHW format (the
comparison at identical numerics: the same oneDNN convolutions in the same order) and with ``train.channels_last``
(kdlab's fp32 fast path on the CPU: oneDNN convolves channels-last tensors without reordering them to its blocked
format and back; mdistiller has no such switch); both are paired with the same mdistiller run of the round, and the
channels-last ratios get a table of their own.

Threads: each side runs on ``--threads`` intra-op threads, as its trainer would. On the CPU, MKL's LAPACK routines
on small batched matrices do not gain from a second thread and lose much (KDSVD's eigendecompositions measured 54x
the CPU time on two threads); kdlab runs its one LAPACK call of a training step single-threaded
(:func:`kdlab.losses.feature.single_threaded_lapack`), mdistiller's KDSVD calls ``torch.svd`` on the process's
threads, as its code does.

Requirements beyond kdlab's: a copy of mdistiller (``git archive`` of megvii-research/mdistiller, outside this
repository) named by ``--reference-dir``, and its config package ``yacs`` (``pip install yacs``); tensorboardX and
wandb are not needed (its ``engine`` package is loaded without its trainer). tcmalloc: ``kdlab.allocator``'s search
(``KDLAB_TCMALLOC=<path>``, ``ldconfig``, the usual library directories) or ``--tcmalloc PATH``; without one the
table has the system allocator only and says so. Missing requirements exit with code 2 and a message.

Usage::

    python benchmarks/vs_reference.py --reference-dir ../mdistiller [--rounds 2] [--steps 3] [--threads 2]
        [--methods kd,dkd,...] [--allocators system,tcmalloc] [--out benchmarks/results/vs_reference]

writes ``<out>.json`` and ``<out>.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import itertools
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
NUM_CLASSES = 100


@dataclasses.dataclass(frozen=True)
class Pair:
    """One method on both sides: kdlab's recipe (+ overrides) and mdistiller's distiller type and config file."""

    recipe: str
    ref_type: str
    ref_config: str
    overrides: tuple[tuple[str, object], ...] = ()


METHODS: dict[str, Pair] = {
    "kd": Pair("kd", "KD", "configs/cifar100/kd.yaml"),
    "dkd": Pair("dkd", "DKD", "configs/cifar100/dkd/res32x4_res8x4.yaml"),
    "crd": Pair("crd", "CRD", "configs/cifar100/crd.yaml"),
    "review_kd": Pair("review_kd", "REVIEWKD", "configs/cifar100/reviewkd.yaml"),
    "fitnet": Pair("fitnet", "FITNET", "configs/cifar100/fitnet.yaml"),
    "at": Pair("at", "AT", "configs/cifar100/at.yaml"),
    "nst": Pair("nst", "NST", "configs/cifar100/nst.yaml"),
    "ofd": Pair("ofd", "OFD", "configs/cifar100/ofd.yaml"),
    "pkt": Pair("pkt", "PKT", "configs/cifar100/pkt.yaml"),
    "rkd": Pair("rkd", "RKD", "configs/cifar100/rkd.yaml"),
    "sp": Pair("sp", "SP", "configs/cifar100/sp.yaml"),
    "kdsvd": Pair("kdsvd", "KDSVD", "configs/cifar100/kdsvd.yaml"),
    "kdsvd[width]": Pair("kdsvd", "KDSVD", "configs/cifar100/kdsvd.yaml", (("layout", "width"),)),
    "vid": Pair("vid", "VID", "configs/cifar100/vid.yaml"),
}
ALLOCATORS = ("system", "tcmalloc")
#: kdlab's memory formats: ``nchw`` (the reference's, the comparison at identical numerics) and ``channels_last``
#: (``train.channels_last``, kdlab's fp32 fast path on oneDNN CPUs; mdistiller has no such switch)
LAYOUTS = ("nchw", "channels_last")


class UsageError(Exception):
    """A bad argument or a missing requirement: exit code 2."""


# --------------------------------------------------------------------------------------------- workers


def _kdlab_runner(threads: int, num_data: int):
    """``run(label, warmup, steps) -> {"wall": [s], "cpu": [s]}`` of the timed steps through kdlab's Trainer.

    The step boundaries are the trainer's own clock readings (``time.perf_counter`` in ``kdlab/train/trainer.py``,
    one at the start of the epoch and one after each step); the trainer's module-level ``time`` is replaced in this
    worker process by a recorder that also reads the process CPU time at the same instants.
    """
    import yaml

    import kdlab.train.trainer as trainer_module
    from kdlab.bench import bench_config
    from kdlab.train.trainer import Trainer

    readings: list[tuple[float, float]] = []

    def perf_counter() -> float:
        wall = time.perf_counter()
        readings.append((wall, time.process_time()))
        return wall

    trainer_module.time = types.SimpleNamespace(perf_counter=perf_counter)
    tmp = tempfile.mkdtemp(prefix="kdlab_vs_reference_")

    def run(label: str, warmup: int, steps: int, channels_last: bool = False) -> dict[str, list[float]]:
        pair = METHODS[label]
        recipe_file = ROOT / "configs" / "cifar100" / pair.recipe / "resnet32x4__resnet8x4.yaml"
        recipe = yaml.safe_load(recipe_file.read_text())
        method = {**recipe["method"], **dict(pair.overrides)}
        n = warmup + steps
        cfg = bench_config(method, batch_size=BATCH, steps=n, epochs=1, threads=threads, run_dir=tmp, name="run")
        if label == "crd":
            cfg.data.train_size = num_data
            cfg.train.max_steps = n
        cfg.train.channels_last = channels_last
        trainer = Trainer(cfg, force=True)
        readings.clear()
        trainer.fit()
        if len(readings) != n + 1:
            raise RuntimeError(f"kdlab {label}: expected {n + 1} clock readings from the trainer, got {len(readings)}")
        wall = [b[0] - a[0] for a, b in itertools.pairwise(readings)]
        cpu = [b[1] - a[1] for a, b in itertools.pairwise(readings)]
        return {"wall": wall[warmup:], "cpu": cpu[warmup:]}

    return run


def _reference_runner(reference_dir: str, threads: int, num_data: int):
    """``run(label, warmup, steps) -> [step seconds]`` through mdistiller's distillers and its train_iter."""
    import torch

    ref = Path(reference_dir).resolve()
    sys.path.insert(0, str(ref))
    import mdistiller  # noqa: F401

    # mdistiller/engine/__init__.py imports its trainer (tensorboardX, wandb); cfg and utils do not need it
    engine = types.ModuleType("mdistiller.engine")
    engine.__path__ = [str(ref / "mdistiller" / "engine")]
    sys.modules["mdistiller.engine"] = engine
    from mdistiller.distillers import distiller_dict
    from mdistiller.engine.cfg import CFG
    from mdistiller.engine.utils import AverageMeter, accuracy
    from mdistiller.models import cifar_model_dict

    # CRD's ContrastMemory moves its alias sampler to CUDA unconditionally; the sampler is unused in the exact mode
    # (the dataset draws the negatives), so on the CPU the move is skipped
    sys.modules["mdistiller.distillers.CRD"].AliasMethod.cuda = lambda self: self

    def run(label: str, warmup: int, steps: int) -> dict[str, list[float]]:
        pair = METHODS[label]
        cfg = CFG.clone()
        cfg.merge_from_file(str(ref / pair.ref_config))
        torch.manual_seed(0)
        teacher = cifar_model_dict[cfg.DISTILLER.TEACHER][0](num_classes=NUM_CLASSES)
        student = cifar_model_dict[cfg.DISTILLER.STUDENT][0](num_classes=NUM_CLASSES)
        cls = distiller_dict[pair.ref_type]
        crd = cfg.SOLVER.TRAINER == "crd"
        distiller = cls(student, teacher, cfg, num_data) if crd else cls(student, teacher, cfg)
        distiller = torch.nn.DataParallel(distiller)  # as mdistiller's tools/train.py (a pass-through on CPU)
        optimizer = torch.optim.SGD(
            distiller.module.get_learnable_parameters(),
            lr=cfg.SOLVER.LR,
            momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
        distiller.train()
        g = torch.Generator().manual_seed(0)
        image = torch.randn(BATCH, 3, 32, 32, generator=g)
        target = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
        index = torch.randint(0, num_data, (BATCH,), generator=g)
        extra: dict = {"epoch": 1}
        if crd:
            negatives = torch.randint(0, num_data, (BATCH, cfg.CRD.NCE.K), generator=g)
            extra = {"index": index, "contrastive_index": torch.cat([index[:, None], negatives], 1)}
        meters = {k: AverageMeter() for k in ("training_time", "data_time", "losses", "top1", "top5")}
        wall, cpu = [], []
        for _ in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            # BaseTrainer.train_iter / CRDTrainer.train_iter, less the .cuda() copies
            optimizer.zero_grad()
            train_start_time = time.time()
            meters["data_time"].update(time.time() - train_start_time)
            img = image.float()
            preds, losses_dict = distiller(image=img, target=target, **extra)
            loss = sum([v.mean() for v in losses_dict.values()])
            loss.backward()
            optimizer.step()
            meters["training_time"].update(time.time() - train_start_time)
            acc1, acc5 = accuracy(preds, target, topk=(1, 5))
            meters["losses"].update(loss.cpu().detach().numpy().mean(), BATCH)
            meters["top1"].update(acc1[0], BATCH)
            meters["top5"].update(acc5[0], BATCH)
            msg = "Epoch:{}| Time(data):{:.3f}| Time(train):{:.3f}| Loss:{:.4f}| Top-1:{:.3f}| Top-5:{:.3f}".format(
                1,
                meters["data_time"].avg,
                meters["training_time"].avg,
                meters["losses"].avg,
                meters["top1"].avg,
                meters["top5"].avg,
            )
            del msg
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return {"wall": wall[warmup:], "cpu": cpu[warmup:]}

    return run


def worker_main(args: argparse.Namespace) -> None:
    """A worker: JSON requests on stdin, JSON answers on the original stdout (everything else goes to stderr)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.ERROR)  # no "teacher is randomly initialised" warning per run
    import torch

    from kdlab.allocator import loaded_tcmalloc

    torch.set_num_threads(args.threads)
    if args.worker == "kdlab":
        run = _kdlab_runner(args.threads, args.num_data)
    else:
        run = _reference_runner(args.reference_dir, args.threads, args.num_data)
    lib = loaded_tcmalloc()
    allocator = f"tcmalloc ({Path(lib).name})" if lib else "system"  # the file name only: no path of this machine
    proto.write(json.dumps({"ready": True, "allocator": allocator, "torch": torch.__version__}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            extra = {"channels_last": True} if req.get("channels_last") else {}
            out = run(req["method"], req["warmup"], req["steps"], **extra)
        except Exception as err:  # reported to the parent, which stops with the message
            logging.getLogger("kdlab").exception("worker failed")
            out = {"error": f"{type(err).__name__}: {err}"}
        proto.write(json.dumps(out) + "\n")


class Worker:
    """A worker process of one side under one allocator."""

    def __init__(self, side: str, allocator: str, lib: str | None, args: argparse.Namespace, log_dir: str) -> None:
        from kdlab.allocator import MARKER, OPT_OUT, REPORT_THRESHOLD

        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", MARKER)}
        env[OPT_OUT] = "1"
        env["OMP_NUM_THREADS"] = str(args.threads)
        if allocator == "tcmalloc":
            env["LD_PRELOAD"] = lib
            env.setdefault(REPORT_THRESHOLD, str(2**40))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--threads", str(args.threads)]
        cmd += ["--num-data", str(args.num_data)]
        if side == "reference":
            cmd += ["--reference-dir", args.reference_dir]
        self.name = f"{side}/{allocator}"
        self.log_path = Path(log_dir) / f"{side}_{allocator}.log"
        self.log = open(self.log_path, "w")  # closed in close()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=ROOT
        )
        self.info = self._read()
        if self.info["allocator"].startswith("tcmalloc") != (allocator == "tcmalloc"):
            self.close()
            raise RuntimeError(f"worker {self.name} runs with allocator {self.info['allocator']!r}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{tail}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"worker {self.name}: {out['error']} (log: {self.log_path.read_text()[-3000:]})")
        return out

    def run(self, method: str, warmup: int, steps: int, channels_last: bool = False) -> dict[str, list[float]]:
        req = {"method": method, "warmup": warmup, "steps": steps}
        if channels_last:  # kdlab's side only: train.channels_last
            req["channels_last"] = True
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


# --------------------------------------------------------------------------------------------- orchestration


def check_requirements(args: argparse.Namespace) -> tuple[list[str], list[str], str | None]:
    """Methods, allocators and the tcmalloc library to use; :class:`UsageError` naming the fix otherwise."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UsageError(f"unknown method(s) {bad or methods}; choose from {', '.join(METHODS)}")
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    bad = [a for a in allocators if a not in ALLOCATORS]
    if bad or not allocators:
        raise UsageError(f"unknown allocator(s) {bad or allocators}; choose from {', '.join(ALLOCATORS)}")
    layouts = [x.strip() for x in args.kdlab_layouts.split(",") if x.strip()]
    if "nchw" not in layouts or any(x not in LAYOUTS for x in layouts):
        raise UsageError(f"--kdlab-layouts {args.kdlab_layouts!r}: nchw and optionally channels_last")
    args.layouts = layouts
    if min(args.rounds, args.steps, args.threads) < 1 or args.warmup < 0:
        raise UsageError("--rounds, --steps and --threads must be >= 1 and --warmup >= 0")
    if args.num_data < 16500:
        raise UsageError("--num-data must be >= 16500 (CRD draws 16384 negatives from the other classes)")
    ref = Path(args.reference_dir) if args.reference_dir else None
    if ref is None or not (ref / "mdistiller" / "distillers" / "__init__.py").is_file():
        raise UsageError(
            f"--reference-dir {args.reference_dir!r} is not a copy of mdistiller (no mdistiller/distillers there); "
            "make one outside this repository, e.g. "
            "git clone https://github.com/megvii-research/mdistiller ../mdistiller"
        )
    if importlib.util.find_spec("yacs") is None:
        raise UsageError("mdistiller's configs need yacs, which is not installed: pip install yacs")
    lib = None
    if "tcmalloc" in allocators:
        from kdlab.allocator import find_tcmalloc

        lib = args.tcmalloc or find_tcmalloc()
        if lib is None or not Path(lib).is_file():
            if args.allocators_given:
                raise UsageError(
                    "--allocators names tcmalloc but no tcmalloc library was found: install it (Debian/Ubuntu: "
                    "apt-get install libtcmalloc-minimal4) or pass --tcmalloc PATH"
                )
            logging.getLogger("kdlab").warning("no tcmalloc library found: measuring the system allocator only")
            allocators, lib = [a for a in allocators if a != "tcmalloc"], None
    return methods, allocators, lib


def measure(args: argparse.Namespace) -> dict:
    """Run the interleaved rounds; returns the result record (see the module docstring)."""
    methods, allocators, lib = check_requirements(args)
    t_start = time.perf_counter()
    load_before = list(os.getloadavg())
    sides = ["kdlab", *(["kdlab_cl"] if "channels_last" in args.layouts else []), "reference"]
    times: dict = {a: {m: {s: [] for s in sides} for m in methods} for a in allocators}
    with tempfile.TemporaryDirectory() as log_dir:
        workers: dict[tuple[str, str], Worker] = {}
        try:
            for a in allocators:
                for side in ("kdlab", "reference"):
                    workers[side, a] = Worker(side, a, lib, args, log_dir)
            for w in workers.values():
                w.run("kd", 0, 1)  # untimed: first-call costs of the process
            for r in range(args.rounds):
                order = sides if r % 2 == 0 else sides[::-1]
                for m in methods:
                    for a in allocators:
                        for side in order:
                            worker = workers["reference" if side == "reference" else "kdlab", a]
                            t = worker.run(m, args.warmup, args.steps, channels_last=side == "kdlab_cl")
                            times[a][m][side].append(t)
                        k, ref = (statistics.median(times[a][m][s][-1]["wall"]) for s in ("kdlab", "reference"))
                        kc, rc = (statistics.median(times[a][m][s][-1]["cpu"]) for s in ("kdlab", "reference"))
                        logging.getLogger("kdlab").info(
                            "round %d %s %s: kdlab %.3f s (cpu %.3f), mdistiller %.3f s (cpu %.3f), "
                            "ratio %.2f (cpu %.2f)",
                            r + 1,
                            m,
                            a,
                            k,
                            kc,
                            ref,
                            rc,
                            ref / k,
                            rc / kc,
                        )
                        if "kdlab_cl" in times[a][m]:
                            cl = times[a][m]["kdlab_cl"][-1]
                            logging.getLogger("kdlab").info(
                                "round %d %s %s: kdlab channels_last %.3f s (cpu %.3f), ratio %.2f (cpu %.2f)",
                                r + 1,
                                m,
                                a,
                                statistics.median(cl["wall"]),
                                statistics.median(cl["cpu"]),
                                ref / statistics.median(cl["wall"]),
                                rc / statistics.median(cl["cpu"]),
                            )
                if args.out:  # a partial record after every round (a long run stopped early keeps its rounds)
                    partial = _summary(args, methods, allocators, lib, times, r + 1, t_start, load_before, workers)
                    Path(args.out + ".partial.json").write_text(json.dumps(partial, indent=2) + "\n")
            result = _summary(args, methods, allocators, lib, times, args.rounds, t_start, load_before, workers)
        finally:
            for w in workers.values():
                w.close()
    return result


def _summary(args, methods, allocators, lib, times, rounds_done, t_start, load_before, workers) -> dict:
    """The result record of the rounds measured so far."""
    rows = []
    for m in methods:
        row: dict = {"method": m}
        for a in allocators:
            k_runs, r_runs = times[a][m]["kdlab"][:rounds_done], times[a][m]["reference"][:rounds_done]
            cell = _ratio_cell(k_runs, r_runs)
            for clock, suffix in (("wall", ""), ("cpu", "_cpu")):
                r_t = [t for run in r_runs for t in run[clock]]
                cell["reference_images_per_s" + suffix] = BATCH / statistics.median(r_t)
            cell["reference_steps"] = r_runs
            if "kdlab_cl" in times[a][m]:
                cell["channels_last"] = _ratio_cell(times[a][m]["kdlab_cl"][:rounds_done], r_runs)
            row[a] = cell
        rows.append(row)
    return {
        "table": "vs_reference",
        "reference": "megvii-research/mdistiller",
        "reference_commit": args.reference_commit,
        "teacher": "resnet32x4",
        "student": "resnet8x4",
        "batch_size": BATCH,
        "threads": args.threads,
        "rounds": rounds_done,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "num_data": args.num_data,
        "kdlab_layouts": args.layouts,
        "allocators": {a: (Path(lib).name if a == "tcmalloc" else "glibc malloc") for a in allocators},
        "workers": {f"{s}/{a}": w.info for (s, a), w in workers.items()},
        "command": args.command,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "wall_s": time.perf_counter() - t_start,
        "rows": rows,
    }


def _ratio_cell(k_runs: list[dict], r_runs: list[dict]) -> dict:
    """kdlab's images/s and the per-round paired ratios (wall and cpu) of one kdlab variant against the reference."""
    cell: dict = {"kdlab_steps": k_runs}
    for clock, suffix in (("wall", ""), ("cpu", "_cpu")):
        k_t, r_t = [run[clock] for run in k_runs], [run[clock] for run in r_runs]
        ratios = [statistics.median(rr) / statistics.median(kk) for kk, rr in zip(k_t, r_t)]
        cell["kdlab_images_per_s" + suffix] = BATCH / statistics.median([t for run in k_t for t in run])
        cell["ratio" + suffix] = statistics.median(ratios)
        cell["ratio_rounds" + suffix] = ratios
    return cell


def format_markdown(result: dict) -> str:
    """The table of a :func:`measure` result as Markdown."""
    allocs = list(result["allocators"])
    lines = [
        "# kdlab ÷ mdistiller: training-step speed per method",
        "",
        f"Generated by `benchmarks/vs_reference.py` ({result['date_utc']} UTC, {result['wall_s'] / 60:.1f} min):",
        "",
        f"    {result['command']}",
        "",
        *([result["note"], ""] if result.get("note") else []),
        f"{result['teacher']} -> {result['student']}, batch {result['batch_size']}, {result['threads']} thread(s) "
        f"per side, CPU ({result['cpu_count']} cores, {result['platform']}); mdistiller "
        f"{result['reference_commit'] or '(commit not given)'}. {result['rounds']} interleaved rounds of "
        f"{result['warmup_steps']} untimed + {result['timed_steps']} timed steps per run; load average "
        f"{'/'.join(f'{x:.1f}' for x in result['load_average_before'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in result['load_average_after'])} after.",
        "",
        "Ratio = kdlab images/s ÷ mdistiller images/s (> 1: kdlab faster), the median over rounds of the paired "
        "per-round ratios of median step times. **wall**: wall-clock step time, the figure on a quiet machine; "
        "**cpu**: the process's CPU time per step, which a loaded machine disturbs much less (another process's "
        "work delays a step's wall clock, not its CPU time). Images/s: wall clock, medians over all timed steps. What "
        "each side's step contains: see the benchmark's docstring (kdlab's includes producing the batch; "
        "mdistiller's batch is already in memory).",
        "",
    ]
    head = "| method |"
    rule = "|---|"
    for a in allocs:
        head += f" kdlab img/s ({a}) | mdistiller img/s ({a}) | ratio wall ({a}) | ratio cpu ({a}) |"
        rule += "---:|---:|---:|---:|"
    lines += [head, rule]
    for row in result["rows"]:
        line = f"| {row['method']} |"
        for a in allocs:
            c = row[a]
            line += (
                f" {c['kdlab_images_per_s']:.1f} | {c['reference_images_per_s']:.1f} | **{c['ratio']:.2f}** |"
                f" {c['ratio_cpu']:.2f} |"
            )
        lines.append(line)
    if any("channels_last" in row[a] for row in result["rows"] for a in allocs):
        lines += [
            "",
            "kdlab's fp32 fast path on this CPU, `train.channels_last: true` (the same models, precision and method; "
            "oneDNN convolves channels-last tensors without reordering them; mdistiller has no such switch), "
            "against the same mdistiller runs as above (paired by round):",
            "",
            "| method |"
            + "".join(f" kdlab channels_last img/s ({a}) | ratio wall ({a}) | ratio cpu ({a}) |" for a in allocs),
            "|---|" + "---:|---:|---:|" * len(allocs),
        ]
        for row in result["rows"]:
            line = f"| {row['method']} |"
            for a in allocs:
                c = row[a].get("channels_last")
                line += (
                    " - | - | - |"
                    if c is None
                    else (f" {c['kdlab_images_per_s']:.1f} | **{c['ratio']:.2f}** | {c['ratio_cpu']:.2f} |")
                )
            lines.append(line)
    lines += ["", "Allocators: " + "; ".join(f"{a}: {lib}" for a, lib in result["allocators"].items()) + "."]
    lines.append("")
    lines.append("Per-round ratios (wall / cpu):")
    lines.append("")
    for row in result["rows"]:
        parts = [
            f"{a} " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(row[a]["ratio_rounds"], row[a]["ratio_rounds_cpu"]))
            for a in allocs
        ]
        for a in allocs:
            c = row[a].get("channels_last")
            if c is not None:
                parts.append(
                    f"{a} channels_last "
                    + ", ".join(f"{w:.2f}/{x:.2f}" for w, x in zip(c["ratio_rounds"], c["ratio_rounds_cpu"]))
                )
        lines.append(f"- {row['method']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def merge(results: list[dict]) -> dict:
    """One result from runs of the same methods under different allocators (``--allocators`` one each, e.g. run
    side by side): the rows' cells, allocators, commands and load averages side by side."""
    first = results[0]
    methods = [r["method"] for r in first["rows"]]
    for res in results[1:]:
        if [r["method"] for r in res["rows"]] != methods:
            raise UsageError("--merge: the results do not have the same methods in the same order")
        if set(res["allocators"]) & set(first["allocators"]):
            raise UsageError("--merge: two results measure the same allocator")
    merged = {**first, "allocators": {}, "workers": {}, "rows": [{"method": m} for m in methods]}
    merged["command"] = "; ".join(r["command"] for r in results)
    merged["wall_s"] = max(r["wall_s"] for r in results)
    merged["load_average_before"] = [max(x) for x in zip(*(r["load_average_before"] for r in results))]
    merged["load_average_after"] = [max(x) for x in zip(*(r["load_average_after"] for r in results))]
    for res in results:
        merged["allocators"].update(res["allocators"])
        merged["workers"].update(res["workers"])
        for row, src in zip(merged["rows"], res["rows"]):
            row.update({k: v for k, v in src.items() if k != "method"})
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-dir", help="a copy of megvii-research/mdistiller (outside this repository)")
    p.add_argument("--reference-commit", default="", help="the mdistiller commit of that copy (for the record)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    p.add_argument("--allocators", default=None, help="system,tcmalloc (default: both, tcmalloc when found)")
    p.add_argument("--tcmalloc", help="path of libtcmalloc(_minimal).so.4 (default: kdlab.allocator's search)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    p.add_argument("--num-data", type=int, default=50000, help="CRD memory bank rows (both sides)")
    p.add_argument(
        "--kdlab-layouts",
        default="nchw,channels_last",
        help="kdlab's memory formats: nchw (the reference's) and channels_last (train.channels_last; default both)",
    )
    p.add_argument("--out", help="write <out>.json and <out>.md")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine the JSON results of runs (no measuring)")
    p.add_argument("--note", help="a sentence printed under the table's title (e.g. the machine's state)")
    p.add_argument("--worker", choices=["kdlab", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.merge:
        try:
            result = merge([json.loads(Path(f).read_text()) for f in args.merge])
        except (OSError, ValueError, KeyError, UsageError) as err:
            print(f"vs_reference --merge: {err}", file=sys.stderr)
            return 2
        if args.note:
            result["note"] = args.note
        return _write(result, args.out)
    args.allocators_given = args.allocators is not None
    args.allocators = args.allocators or ",".join(ALLOCATORS)
    cmd_args = list(sys.argv[1:] if argv is None else argv)
    for i in range(1, len(cmd_args)):  # the record names no path of this machine
        if cmd_args[i - 1] in ("--reference-dir", "--tcmalloc", "--out"):
            cmd_args[i] = "<" + cmd_args[i - 1].lstrip("-").upper().replace("-", "_") + ">"
    args.command = "python benchmarks/vs_reference.py " + " ".join(shlex.quote(a) for a in cmd_args)
    try:
        result = measure(args)
    except UsageError as err:
        print(f"vs_reference: {err}", file=sys.stderr)
        return 2
    if args.note:
        result["note"] = args.note
    return _write(result, args.out)


def _write(result: dict, out: str | None) -> int:
    text = format_markdown(result)
    if out:
        Path(out + ".json").write_text(json.dumps(result, indent=2) + "\n")
        Path(out + ".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
