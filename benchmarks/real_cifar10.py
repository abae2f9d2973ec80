"""Real-data evidence: every seed method and the fusion baselines against the student alone on real CIFAR-10 images,
paired by seed, with the paired t-test; one command, its numbers written to a generated report (issue 22).

Data: the project's shared CIFAR-10 JPEG copy (``<data>/cifar10_jpg``, read by the ``npz`` dataset), a
class-balanced training subset (``--train-per-class``, the same images for every run: ``data.split_seed`` 0) and a
fixed stratified subset of the test split (``--test-limit``). Teacher: the public pretrained ``resnet20_a``
(``<data>/cifar10_resnets_akamaster``), trained with ImageNet's mean and std, so its inputs are re-normalised
(``input_mean``/``input_std``); its accuracy on the evaluated test subset is measured and written to the report.
``<data>`` defaults to ``<repo>/../shared/data``.

Student ``resnet8`` (78k parameters). Recipe: SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, cosine decay to
0 over ``--epochs`` (20), random crop (padding 4) and flip; every method at its registered defaults (schedule-bound
defaults follow the library's rule, :mod:`kdlab.schedule`; the benchmark sets no per-method value). Runs of the same
seed share the student's initialisation and the data order, so the per-seed difference to ``ce`` is paired.

Methods (``--methods``, labels of :data:`VARIANTS`): ``ce``, ``kd``, ``tekap(kd)``, ``dist``, ``dkd``, ``mlkd``,
``crd``, ``simkd``, ``tgeo_kd``, ``anl_kd``, ``ada_kd``, ``wls_kd``, ``rw_kd``, and the controls of the held-out split
(``--controls``): ``kd[holdout]`` (kd trained on the same 90 % of the training subset as tgeo_kd, the other 10 %
unused), ``tgeo_kd[pool]`` (tgeo_kd whose held-out split comes from extra images of a separate pool, so it trains on
as many images as kd), ``kd[holdout,drop_last]`` (kd[holdout] without the epoch's last partial batch) and
``tgeo_kd[init=inner]`` (tgeo_kd whose ratio starts at the inner kd's own 0.9 instead of 0.5); and the controls of
CRD's memory, paired with ``crd``: ``crd[k=64]`` (64 negatives instead of the clamped 16384), ``crd[m=0]`` and
``crd[m=0.9]`` (memory momentum 0 or 0.9 instead of 0.5); and two controls of the logit methods, paired with their
method: ``dkd[beta=2]`` (the authors' NCKD weight for thin-ResNet pairs) and ``mlkd[T=4]`` (one temperature); and
the controls of the split's last partial batch: ``tgeo_kd[drop_last]`` (paired with ``tgeo_kd``), ``ce[holdout]``
(the student alone on the same 90 % as tgeo_kd, paired with ``ce``) and ``ce[holdout,drop_last]`` (paired with
``ce[holdout]``). :data:`CONTROL_NOTES` describes each in the report, :data:`PROTOCOL_PAIRS` the held-out
section's paired differences.

Runs go seed by seed (every label's seed 0, in :data:`RUN_ORDER`, before any seed 1), ``--jobs`` at a time, each
in its own process with ``train.threads`` = ``--threads``; finished runs are reused and interrupted ones resumed when
their recorded config, read by the current code, is the same (more ``--seeds`` or ``--methods`` later make only the
missing runs; each ``--train-per-class``/``--epochs`` has its own folder); the commit that trained a run is written
to its ``bench.json`` and listed in the report. After every finished run the report is rewritten (marked partial
until every run has finished; each row gives the seeds that finished): ``--report`` (default
``benchmarks/results/real_cifar10.md`` at the default 200 images per class, ``real_cifar10_<n>pc.md`` at ``n``: the
500-image table is ``real_cifar10_50pc.md``) and the same numbers as JSON beside it. A run holds a lock while it
trains, so a second driver reaching it waits and then reuses it. The report holds
the protocol, the teacher's accuracy, per method the mean ± std of the last-epoch test top-1, the mean ± std of the
paired difference to ``ce`` with the paired t-test (``scipy.stats.ttest_rel``), the per-seed values and run times,
the controls (held-out split, CRD's memory), and the learned ratio of the fusion methods (first and last epoch,
teacher-right against teacher-wrong samples) read from each run's ``metrics.jsonl``. The stored runs accumulate
over commits (a run is reused while its config is unchanged); ``--rerun DIR`` names the ``--out`` of the same command
run again elsewhere (``--seeds 1`` at one commit), and the report lists, run by run, whether it gives the stored top-1.

Usage: ``python benchmarks/real_cifar10.py [--data DIR] [--epochs 20] [--seeds 3] [--train-per-class 200]
[--test-limit 2000] [--methods LABELS] [--controls LABELS] [--jobs 2] [--threads 1] [--out runs/real_cifar10]
[--report benchmarks/results/real_cifar10.md] [--before FILE.json] [--rerun DIR] [--report-only]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import re
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data"
TEACHER, TEACHER_FILE = "resnet20_a", "resnet20-12fca82f.th"
# The akamaster ResNets were trained on inputs normalised with ImageNet's statistics (their README).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TRAIN_FILES = [f"train_{i}.npz" for i in range(5)]
HOLDOUT = 0.1  # the learned policies' registered holdout_fraction
DEFAULT_PER_CLASS = 200  # 2,000 training images: the "few thousand"

#: label -> (method section, data-section changes as a function of train_per_class)
VARIANTS: dict[str, tuple[dict, object]] = {
    "ce": ({"name": "ce"}, None),
    "kd": ({"name": "kd"}, None),
    "tekap(kd)": ({"name": "tekap", "inner": {"name": "kd"}}, None),
    "dist": ({"name": "dist"}, None),
    "dkd": ({"name": "dkd"}, None),
    "mlkd": ({"name": "mlkd"}, None),
    "crd": ({"name": "crd"}, None),
    "simkd": ({"name": "simkd"}, None),
    "tgeo_kd": ({"name": "tgeo_kd"}, None),
    "anl_kd": ({"name": "anl_kd"}, None),
    "ada_kd": ({"name": "ada_kd"}, None),
    "wls_kd": ({"name": "wls_kd"}, None),
    "rw_kd": ({"name": "rw_kd"}, None),
    # controls of the held-out split
    "kd[holdout]": ({"name": "kd"}, lambda n: {"val_fraction": HOLDOUT}),
    "tgeo_kd[pool]": ({"name": "tgeo_kd"}, lambda n: {"train_per_class": round(n / (1 - HOLDOUT))}),
    "tgeo_kd[init=inner]": ({"name": "tgeo_kd", "init_ratio": 0.9}, None),
    # kd[holdout] without the last partial batch: 90 % of 500 images is 7 batches of 64 and one of 2
    "kd[holdout,drop_last]": ({"name": "kd"}, lambda n: {"val_fraction": HOLDOUT, "drop_last": True}),
    # the student alone on the same 90 %, with and without that split's last partial batch
    "ce[holdout]": ({"name": "ce"}, lambda n: {"val_fraction": HOLDOUT}),
    "ce[holdout,drop_last]": ({"name": "ce"}, lambda n: {"val_fraction": HOLDOUT, "drop_last": True}),
    # tgeo_kd without the last partial batch (1,800 = 28 x 64 + 8 at 200 images per class)
    "tgeo_kd[drop_last]": ({"name": "tgeo_kd"}, lambda n: {"drop_last": True}),
    # controls of CRD's memory on a small training set: fewer negatives, a fresher or a slower memory
    "crd[k=64]": ({"name": "crd", "num_negatives": 64}, None),
    "crd[m=0]": ({"name": "crd", "momentum": 0.0}, None),
    "crd[m=0.9]": ({"name": "crd", "momentum": 0.9}, None),
    # controls of the logit methods that lose to the student: DKD's NCKD weight, MLKD's temperature sum
    "dkd[beta=2]": ({"name": "dkd", "beta": 2.0}, None),
    "mlkd[T=4]": ({"name": "mlkd", "extra_temperatures": []}, None),
}
DEFAULT_METHODS = "ce,kd,tekap(kd),dist,dkd,mlkd,crd,simkd,tgeo_kd,anl_kd,ada_kd,wls_kd,rw_kd"
#: The controls of the published 2,000-image table, so that the command without flags remakes it
DEFAULT_CONTROLS = (
    "kd[holdout],tgeo_kd[pool],dkd[beta=2],mlkd[T=4],tgeo_kd[drop_last],ce[holdout],ce[holdout,drop_last]"
)


def split_labels(text: str) -> list[str]:
    """Comma-separated labels; a comma inside brackets belongs to the label (``kd[holdout,drop_last]``)."""
    return [part.strip() for part in re.split(r",(?![^\[]*\])", text) if part.strip()]


#: Order of the labels within a seed (the runs are seed-major: every label's seed 0 first, :func:`run_tasks`): the
#: baseline and kd, the methods the issue found below the student (simkd, crd, dkd, mlkd) and the other one-pass
#: methods, then the two learned policies (tgeo_kd, rw_kd: about three kd runs each) and the controls, so that a
#: partial table has as many methods as possible.
RUN_ORDER = split_labels(
    "ce,kd,simkd,crd,dkd,mlkd,dist,tekap(kd),anl_kd,ada_kd,wls_kd,tgeo_kd,rw_kd,kd[holdout],tgeo_kd[pool],"
    "crd[k=64],crd[m=0],crd[m=0.9],kd[holdout,drop_last],tgeo_kd[init=inner],dkd[beta=2],mlkd[T=4],"
    "tgeo_kd[drop_last],ce[holdout],ce[holdout,drop_last]"
)
#: control -> (what it is compared with, paired by seed)
CONTROL_PAIRS = {
    "kd[holdout]": "kd",
    "kd[holdout,drop_last]": "kd",
    "tgeo_kd[pool]": "kd",
    "tgeo_kd[init=inner]": "tgeo_kd",
    "tgeo_kd[drop_last]": "tgeo_kd",
    "ce[holdout]": "ce",
    "ce[holdout,drop_last]": "ce[holdout]",
    "crd[k=64]": "crd",
    "crd[m=0]": "crd",
    "crd[m=0.9]": "crd",
    "dkd[beta=2]": "dkd",
    "mlkd[T=4]": "mlkd",
}
#: control -> what it is (the report's note under the controls' table)
CONTROL_NOTES = {
    "kd[holdout]": "kd on the same 90 % of the training subset that tgeo_kd trains on (the other 10 % unused)",
    "tgeo_kd[pool]": "tgeo_kd with its held-out split taken from extra images, training on as many images as kd",
    "kd[holdout,drop_last]": "kd[holdout] without each epoch's last partial batch",
    "tgeo_kd[init=inner]": "tgeo_kd whose ratio starts at the inner kd's own ratio 0.9 instead of 0.5",
    "ce[holdout]": "the student alone on the same 90 % of the training subset as tgeo_kd (the other 10 % unused)",
    "ce[holdout,drop_last]": "ce[holdout] without each epoch's last partial batch",
    "tgeo_kd[drop_last]": "tgeo_kd without each epoch's last partial batch (a batch of 8 of the 1,800 training images "
    "at 200 per class)",
    "crd[k=64]": "crd with 64 negatives per sample instead of the clamped default (16384 clamped to the training "
    "images of the other classes)",
    "crd[m=0]": "crd whose memory rows are replaced by the latest embedding (momentum 0 instead of 0.5)",
    "crd[m=0.9]": "crd whose memory rows move slowly (momentum 0.9)",
    "dkd[beta=2]": "dkd with NCKD weight beta 2, the authors' value for their thin-ResNet pairs (resnet56 -> resnet20, "
    "resnet110 -> resnet32 in mdistiller's configs) instead of the registered 8 (their resnet32x4 -> resnet8x4 value)",
    "mlkd[T=4]": "mlkd at the single temperature 4 (no extra temperatures 3, 5, 2, 6: each level's sum over five "
    "temperatures becomes one term), both views kept",
}
FUSION = (
    "tgeo_kd",
    "rw_kd",
    "anl_kd",
    "ada_kd",
    "wls_kd",
    "tgeo_kd[pool]",
    "tgeo_kd[init=inner]",
    "tgeo_kd[drop_last]",
)

log = logging.getLogger("real_cifar10")


def check_data(data: Path) -> tuple[Path, Path]:
    """The JPEG CIFAR-10 folder and the teacher checkpoint under ``data``; exits with a clear message if absent."""
    jpg, ckpt = data / "cifar10_jpg", data / "cifar10_resnets_akamaster" / TEACHER_FILE
    missing = [str(p) for p in [*(jpg / f for f in [*TRAIN_FILES, "test.npz"]), ckpt] if not p.is_file()]
    if missing:
        sys.exit(
            f"real_cifar10: the shared data is missing under {data}:\n  " + "\n  ".join(missing) + "\n"
            "This benchmark needs the project's shared data (cifar10_jpg/ and cifar10_resnets_akamaster/); "
            "pass its folder with --data DIR."
        )
    return jpg, ckpt


def runs_dir(args: argparse.Namespace) -> Path:
    """Where the runs of one protocol live: one folder per training-subset size and schedule, so that a larger
    ``--train-per-class`` or ``--epochs`` keeps the smaller one's runs."""
    return args.out / f"runs_{args.train_per_class}pc_{args.epochs}ep"


def run_tasks(order: list[str], seeds: int) -> list[tuple[str, int]]:
    """The runs in the order they are made: seed-major (every label's seed 0, in ``order``, then every label's seed
    1, ...), so that a partial table has a row for every method, each with the seeds that finished (n per row)."""
    return [(label, seed) for seed in range(seeds) for label in order]


def report_path(train_per_class: int) -> Path:
    """The default report of a subset size: ``results/real_cifar10.md`` at the default
    :data:`DEFAULT_PER_CLASS`, ``results/real_cifar10_<n>pc.md`` for any other (the 50-image-per-class table is
    kept as ``real_cifar10_50pc.md``)."""
    name = "real_cifar10" if train_per_class == DEFAULT_PER_CLASS else f"real_cifar10_{train_per_class}pc"
    return REPO / "benchmarks" / "results" / f"{name}.md"


def run_name(label: str, seed: int) -> str:
    return re.sub(r"\W+", "_", label).strip("_") + f"__s{seed}"


def run_config(label: str, seed: int, args: argparse.Namespace, jpg: Path, ckpt: Path) -> dict:
    """The raw config of one run (method ``label`` of :data:`VARIANTS`, training seed ``seed``)."""
    method, data_change = VARIANTS[label]
    data = {
        "name": "npz",
        "root": str(jpg),
        "train_files": TRAIN_FILES,
        "test_file": "test.npz",
        "train_per_class": args.train_per_class,
        "test_limit": args.test_limit,
        "split_seed": 0,
        "batch_size": 64,
        "augment": "crop_flip",
        "crop_padding": 4,
    }
    if data_change is not None:
        data.update(data_change(args.train_per_class))
    raw = {
        "description": f"real-data evidence: {label} on {args.train_per_class}/class of the CIFAR-10 JPEG copy",
        "model": {"student": args.student},
        "data": data,
        "method": json.loads(json.dumps(method)),
        "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"},
        "train": {
            "epochs": args.epochs,
            "seed": seed,
            "device": "cpu",
            "threads": args.threads,
            "run_dir": str(runs_dir(args)),
            "name": run_name(label, seed),
            "eval_every": args.epochs,
            "checkpoint_every": 1,
        },
        "log": {"progress": "off"},
    }
    if method["name"] != "ce":
        raw["model"]["teachers"] = [
            {"name": TEACHER, "checkpoint": str(ckpt), "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD}
        ]
    return raw


def same_config(config_path: Path, cfg: object) -> bool:
    """Whether the run recorded in ``config_path`` is the run ``cfg`` asks for: its config, read by the current code
    (fields added since then take their defaults), resolves to the same config."""
    import yaml

    from kdlab.config import build_config, dump_config

    if not config_path.is_file():
        return False
    try:
        recorded = build_config(yaml.safe_load(config_path.read_text()))
    except Exception:  # a field since removed or renamed: a different run
        return False
    if Path(recorded.train.run_dir).resolve() == Path(cfg.train.run_dir).resolve():
        # the same folder, named absolutely or relatively (``--out`` given either way): not a different run
        recorded = dataclasses.replace(recorded, train=dataclasses.replace(recorded.train, run_dir=cfg.train.run_dir))
    return dump_config(recorded) == dump_config(cfg)


def code_version() -> str:
    """The commit of the code that runs (``git rev-parse``; a copy made with ``git archive`` holds it in
    ``.commit``), with ``+dirty`` for uncommitted changes; ``unknown`` without either."""
    marker = REPO / ".commit"
    if marker.is_file():
        return marker.read_text().strip()
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "kdlab"], capture_output=True)
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def finished_run(raw: dict) -> dict | None:
    """The summary of the finished run of config ``raw`` (same config, read by the current code), else None."""
    from kdlab.config import build_config

    cfg = build_config(raw)
    run_dir = Path(cfg.train.run_dir) / cfg.train.name
    summary = finished_summary(run_dir)
    return summary if summary is not None and same_config(run_dir / "config.yaml", cfg) else None


def train_one(raw: dict) -> tuple[dict, str]:
    """Train one run; a finished run of the same config is reused, an interrupted one resumed. The commit of the code
    that trained it is written beside it (``bench.json``)."""
    from kdlab.config import build_config
    from kdlab.train.trainer import Trainer

    cfg = build_config(raw)
    run_dir = Path(cfg.train.run_dir) / cfg.train.name
    summary_path = run_dir / "summary.json"
    same = same_config(run_dir / "config.yaml", cfg)
    if same and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished"):
            return summary, "reused"
    from kdlab.models.checkpoints import CheckpointError

    summary, how = None, "trained"
    if same and (run_dir / "checkpoint.pt").is_file():
        try:
            summary, how = Trainer(cfg, resume=True).fit(), "resumed"
        except CheckpointError as err:  # written by code whose config differs (e.g. a field added since): retrain
            log.warning("%s: %s; training it again", cfg.train.name, err)
    if summary is None:
        summary = Trainer(cfg, force=True).fit()
    (run_dir / "bench.json").write_text(json.dumps({"code": code_version(), "how": how}) + "\n")
    return summary, how


def finished_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("finished") else None


def teacher_accuracy(args: argparse.Namespace, jpg: Path, ckpt: Path) -> dict:
    """Test accuracy of the (re-normalised) teacher on the evaluated test subset, through the trainer's wrapper."""
    from kdlab.config import build_config
    from kdlab.train.trainer import Trainer, evaluate

    raw = run_config("kd", 0, args, jpg, ckpt)
    raw["train"]["name"] = "teacher_check"
    trainer = Trainer(build_config(raw), force=True)
    try:
        return evaluate(trainer.run.teachers[0], trainer.run.data.eval_batches("test"))
    finally:  # the trainer holds its run directory's lock until fit() ends; this one never trains
        trainer.lock.release()


# ------------------------------------------------------------------------------------------ statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired(values: list[float], base: list[float]) -> dict:
    """Per-seed differences to the baseline, their mean and std, and the paired t-test (``ttest_rel``)."""
    from scipy import stats

    n = min(len(values), len(base))
    diffs = [a - b for a, b in zip(values[:n], base[:n])]
    out = {"n": n, "diffs": diffs, "mean": statistics.mean(diffs) if diffs else math.nan, "std": math.nan}
    out["t"], out["p"] = math.nan, math.nan
    if n >= 2:
        out["std"] = statistics.stdev(diffs)
        if out["std"] > 0:
            test = stats.ttest_rel(values[:n], base[:n])
            out["t"], out["p"] = float(test.statistic), float(test.pvalue)
    return out


def fusion_ratio(run_dir: Path) -> dict | None:
    """The logged ratio of a fusion run: epoch means of ``alpha`` (all, teacher-right, teacher-wrong) at the first
    and the last epoch, from ``metrics.jsonl`` (mass / share, see :mod:`kdlab.methods.fusion`)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage", "main") == "main" and "alpha.mean" in r.get("train", {})]
    if not rows:
        return None

    def at(r: dict) -> dict:
        t = r["train"]
        wrong = t.get("alpha.teacher_wrong", 0.0)
        right_mean = t["alpha.mass_right"] / (1 - wrong) if wrong < 1 else math.nan
        wrong_mean = t["alpha.mass_wrong"] / wrong if wrong > 0 else math.nan
        return {
            "mean": t["alpha.mean"],
            "q10": t["alpha.q10"],
            "q90": t["alpha.q90"],
            "right": right_mean,
            "wrong": wrong_mean,
        }

    return {"first": at(rows[0]), "last": at(rows[-1])}


# ------------------------------------------------------------------------------------------ report


def batch_layout(n: int, batch: int = 64, min_fraction: float = 0.125) -> str:
    """How ``n`` training images fall into batches under the loaders' last-batch rule
    (:meth:`kdlab.data.loader.BatchPlan.merges_last_batch`): ``"6 x 64 + 66"`` (a small remainder merged into the
    last full batch), ``"7 x 64 + 52"`` (a batch of its own) or ``"31 x 64"``."""
    full, rest = divmod(n, batch)
    if rest == 0:
        return f"{full} x {batch}"
    if n > batch and rest < min_fraction * batch:
        return f"{full - 1} x {batch} + {batch + rest}"
    return f"{full} x {batch} + {rest}"


def fmt(x: float | None, sign: bool = False, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def collect(labels: list[str], seeds: int, out: Path) -> dict:
    results = {}
    for label in labels:
        r = {"top1": [], "seeds": [], "train_time_s": [], "fusion": [], "code": []}
        for seed in range(seeds):
            run_dir = out / run_name(label, seed)
            summary = finished_summary(run_dir)
            if summary is None:
                break  # pairs stay aligned by seed: stop at the first missing seed
            r["top1"].append(summary["last"]["top1"])
            r["seeds"].append(seed)
            r["train_time_s"].append(summary["train_time_s"])
            r["fusion"].append(fusion_ratio(run_dir))
            bench = run_dir / "bench.json"
            r["code"].append(json.loads(bench.read_text())["code"] if bench.is_file() else "unknown")
        results[label] = r
    return results


def report(
    results: dict,
    methods: list[str],
    controls: list[str],
    args: argparse.Namespace,
    teacher: dict | None,
    complete: bool,
    rerun: dict | None = None,
) -> str:
    """The report's markdown: protocol, results, controls, the held-out pairs, the re-runs (``rerun``: the results
    of :func:`collect` over ``--rerun``'s folder), before/after and the fusion ratios."""
    base = results.get("ce", {}).get("top1", [])
    n_train = args.train_per_class * 10
    n_fit = (args.train_per_class - round(args.train_per_class * HOLDOUT)) * 10  # stratified: per class
    codes = sorted({c for r in results.values() for c in r["code"]})
    lines = [
        "# Real-data evidence: CIFAR-10 (JPEG copy)",
        "",
        "Generated by `python benchmarks/real_cifar10.py` (do not edit by hand; rerun the command)."
        + (
            ""
            if complete
            else " **PARTIAL: not every run had finished when this file was written; missing "
            "seeds are left out and the pairing uses the seeds present for both.**"
        ),
        "",
        "## Protocol",
        "",
        f"- Data: the shared CIFAR-10 JPEG copy; {n_train:,} class-balanced training images ({args.train_per_class} "
        f"per class, the same for every run), a fixed stratified subset of {args.test_limit or 10000:,} test images.",
        f"- Teacher `{TEACHER}` (pretrained, inputs re-normalised to ImageNet mean/std): "
        + (f"test top-1 {teacher['top1']:.2f} % on this subset." if teacher else "accuracy not measured."),
        f"- Student `{args.student}`, SGD lr {args.lr}, momentum 0.9, weight decay 5e-4, batch 64, cosine to 0 over "
        f"{args.epochs} epochs, crop + flip; seeds 0..{args.seeds - 1}; same seed = same initialisation and data "
        "order.",
        "- Every method at its registered defaults (schedule-bound defaults follow `kdlab.schedule`: a fraction of the "
        "run). Learned fusion policies (tgeo_kd, rw_kd) hold out 10 % of the training subset for their outer loop.",
        "- The loaders' last-batch rule (`data.last_batch_min_fraction`, 1/8): a last partial batch below 1/8 of "
        f"the batch is merged into the previous one; the {n_train:,} images train as {batch_layout(n_train)} per "
        f"epoch, the {n_fit:,} left by the held-out split as {batch_layout(n_fit)}.",
        "- Top-1 is the last epoch's on the test subset; Δ is the per-seed difference to `ce` (mean ± std over seeds); "
        "t and p are the paired t-test (`scipy.stats.ttest_rel`, two-sided).",
        f"- CPU, {args.threads} thread(s) per run, {args.jobs} runs at a time on a machine shared with other jobs "
        f"(run times are indicative only). Training time summed over the runs {train_hours(results):.1f} h. "
        f"torch {_torch_version()}, "
        f"Python {platform.python_version()}.",
        f"- Code: kdlab at commit {', '.join(codes) or 'n/a'} (the commit that trained each run is in its "
        "`bench.json`).",
        "",
        "## Results",
        "",
        "| method | seeds | top-1 mean ± std | Δ vs ce mean ± std | t | p | per seed | min/run |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(label: str, ref: list[float], ref_label: str | None) -> str:
        r = results[label]
        if not r["top1"]:
            return f"| {label} | 0 | not run yet | | | | | |"
        mean, std = mean_std(r["top1"])
        delta = t = p = ""
        if ref_label is not None and label != ref_label and ref:
            d = paired(r["top1"], ref)
            r.setdefault("paired", {})[ref_label] = d
            delta = f"{fmt(d['mean'], True)} ± {fmt(d['std'])}"
            t, p = fmt(d["t"]), fmt(d["p"], digits=3)
        seeds = ", ".join(f"{v:.2f}" for v in r["top1"])
        minutes = statistics.mean(r["train_time_s"]) / 60
        cells = [label, str(len(r["top1"])), f"{fmt(mean)} ± {fmt(std)}", delta, t, p, seeds, f"{minutes:.1f}"]
        return "| " + " | ".join(cells) + " |"

    for label in methods:
        lines.append(row(label, base, "ce"))
    if controls:
        lines += [
            "",
            "## Controls",
            "",
            "| control | compared with | seeds | top-1 mean ± std | Δ mean ± std | t | p | per seed | min/run "
            "| Δ vs ce mean ± std (p) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label in controls:
            ref_label = CONTROL_PAIRS[label]
            ref = results.get(ref_label, {}).get("top1", [])
            cells = row(label, ref, ref_label).split(" | ", 1)
            vs_ce = ""
            if results[label]["top1"] and base and ref_label != "ce":
                d = paired(results[label]["top1"], base)
                results[label].setdefault("paired", {})["ce"] = d
                vs_ce = f"{fmt(d['mean'], True)} ± {fmt(d['std'])} ({fmt(d['p'], digits=3)})"
            lines.append(f"{cells[0]} | {ref_label} | {cells[1]} {vs_ce} |")
        lines += ["", "; ".join(f"`{label}`: {CONTROL_NOTES[label]}" for label in controls) + "."]
    lines += protocol_pairs(results)
    if rerun is not None:
        lines += rerun_lines(results, rerun, [*methods, *controls])
    same = {"train_per_class": args.train_per_class, "epochs": args.epochs}
    lines += before_after(results, [*methods, *controls], args.before, same)
    fusion_rows = [lbl for lbl in [*methods, *controls] if lbl in FUSION and any(results[lbl]["fusion"])]
    if fusion_rows:
        lines += [
            "",
            "## The fusion ratio (share of the distillation term), epoch means over training batches",
            "",
            "| method | seed | first epoch: mean (q10-q90) | teacher right / wrong | "
            "last epoch: mean (q10-q90) | teacher right / wrong |",
            "|---|---|---|---|---|---|",
        ]
        for label in fusion_rows:
            for seed, f in zip(results[label]["seeds"], results[label]["fusion"]):
                if f is None:
                    continue
                a, b = f["first"], f["last"]
                lines.append(
                    f"| {label} | {seed} | {a['mean']:.3f} ({a['q10']:.3f}-{a['q90']:.3f}) | "
                    f"{fmt(a['right'], digits=3)} / {fmt(a['wrong'], digits=3)} | "
                    f"{b['mean']:.3f} ({b['q10']:.3f}-{b['q90']:.3f}) | "
                    f"{fmt(b['right'], digits=3)} / {fmt(b['wrong'], digits=3)} |"
                )
        lines += [
            "",
            "anl_kd's ratio is a schedule (1 to 0); wls_kd logs its per-sample weight of the KD term; tgeo_kd and "
            "rw_kd start every sample at 0.5 (kd itself is 0.9 of the distillation term and 0.1 of the label term).",
        ]
    return "\n".join(lines) + "\n"


def before_after(results: dict, labels: list[str], before_path: Path | None, protocol: dict | None = None) -> list[str]:
    """Report lines comparing this report's numbers with an earlier generated report (``--before``, its JSON): per
    label the top-1 and the paired difference to ``ce`` (to ``kd`` for the held-out controls) then and now. Skipped
    when the earlier report used another subset size or schedule (``protocol``: this run's ``train_per_class`` and
    ``epochs``), since its numbers are not the same runs."""
    if before_path is None or not before_path.is_file():
        return []
    old = json.loads(before_path.read_text())
    if protocol is not None and any(old.get("protocol", {}).get(k) != v for k, v in protocol.items()):
        return []
    old_methods = old.get("methods", {})
    rows = []
    for label in labels:
        then, now = old_methods.get(label, {}).get("top1", []), results[label]["top1"]
        if not then and not now:
            continue
        ref = CONTROL_PAIRS.get(label, "ce")
        cells = [label, "identical" if then and then == now else ""]
        for values, pool in ((then, old_methods), (now, results)):
            base = pool.get(ref, {}).get("top1", [])
            if not values:
                cells += ["not run", ""]
                continue
            mean, std = mean_std(values)
            d = paired(values, base) if label != ref and base else None
            cells += [f"{fmt(mean)} ± {fmt(std)} ({len(values)})", f"{fmt(d['mean'], True)}" if d else ""]
        rows.append("| " + " | ".join(cells) + " |")
    return [
        "",
        f"## Before and after: against `{before_path.name}` (an earlier generated report)",
        "",
        "| method | per seed | before: top-1 (seeds) | before: Δ | now: top-1 (seeds) | now: Δ |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Δ: mean paired difference to `ce` (held-out controls: to the run they are compared with above). "
        "`identical`: every seed's top-1 equals the earlier one (the runs are deterministic).",
    ]


def train_hours(results: dict) -> float:
    """Training time of every finished run in ``results``, summed, in hours (each run's own clock, resumed parts
    included; the wall time of the invocation that writes the report says nothing about the runs it reuses)."""
    return sum(t for r in results.values() for t in r["train_time_s"]) / 3600


def same_kdlab(commits: list[str]) -> bool:
    """Whether the clean ``commits`` all hold the same ``kdlab/`` (``git diff --quiet`` between the first and each
    other); False for a ``+dirty`` or unknown one, or without git."""
    if any(c.endswith("+dirty") or c == "unknown" for c in commits):
        return False
    try:
        return all(
            subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", commits[0], c, "--", "kdlab"]).returncode == 0
            for c in commits[1:]
        )
    except OSError:
        return False


def rerun_lines(results: dict, rerun: dict, labels: list[str]) -> list[str]:
    """Report lines comparing each finished re-run (``rerun``: :func:`collect` over ``--rerun``'s runs folder) with
    the stored run of the same label and seed: top-1 and the commit that trained each. The stored runs were trained
    over a session of commits; a re-run at one commit that gives the same top-1 shows that the stored number is the
    current code's (training on the CPU is deterministic at a fixed thread count)."""
    rows, equal, total = [], 0, 0
    for label in labels:
        again, stored = rerun.get(label), results.get(label)
        if not again or not stored:
            continue
        for i, seed in enumerate(again["seeds"]):
            if seed not in stored["seeds"]:
                continue
            j = stored["seeds"].index(seed)
            a, b = stored["top1"][j], again["top1"][i]
            total += 1
            equal += a == b
            rows.append(
                f"| {label} | {seed} | {a:.2f} ({stored['code'][j]}) | {b:.2f} ({again['code'][i]}) | "
                + ("equal" if a == b else f"{b - a:+.2f}")
                + " |"
            )
    if not rows:
        return []
    commits = sorted({c for r in rerun.values() for c in r["code"]})
    where = f"commit {commits[0]}" if len(commits) == 1 else f"commits {', '.join(commits)}"
    if len(commits) > 1 and same_kdlab(commits):
        where += ", whose `kdlab/` is the same (`git diff` between them is empty)"
    return [
        "",
        "## Re-runs",
        "",
        f"{equal} of {total} re-runs give the stored top-1 exactly. The stored runs above were trained over several "
        f"commits (listed under Protocol); the re-runs were trained again from scratch at {where}, in a separate "
        "folder, by the same command with `--out <folder> --seeds 1` (the report's `--rerun <folder>`).",
        "",
        "| label | seed | stored: top-1 (commit) | re-run: top-1 (commit) | difference |",
        "|---|---|---|---|---|",
        *rows,
    ]


#: Paired comparisons of the held-out protocol: (label, reference, what it compares)
PROTOCOL_PAIRS = (
    ("tgeo_kd", "kd[holdout]", "both train on the same 90 % (the released code's protocol: the split costs both)"),
    ("tgeo_kd[pool]", "kd", "both train on all the subset's images (the split from a separate pool)"),
    ("tgeo_kd", "kd", "tgeo_kd on 90 %, kd on 100 % (unequal data)"),
    ("kd[holdout]", "kd", "the cost of the 10 % split alone"),
    ("tgeo_kd", "ce[holdout]", "tgeo_kd against the student alone on the same 90 %"),
    ("tgeo_kd[drop_last]", "ce[holdout,drop_last]", "the same, both without the split's last partial batch"),
    ("ce[holdout]", "ce", "the cost of the 10 % split to the student alone"),
)


def protocol_pairs(results: dict) -> list[str]:
    """Report lines: the paired differences of :data:`PROTOCOL_PAIRS` whose runs exist."""
    rows = []
    for label, ref, what in PROTOCOL_PAIRS:
        a, b = results.get(label, {}).get("top1", []), results.get(ref, {}).get("top1", [])
        if not a or not b:
            continue
        d = paired(a, b)
        diffs = ", ".join(f"{x:+.2f}" for x in d["diffs"])
        rows.append(
            f"| {label} − {ref} | {d['n']} | {fmt(d['mean'], True)} ± {fmt(d['std'])} | {fmt(d['t'])} | "
            f"{fmt(d['p'], digits=3)} | {diffs} | {what} |"
        )
    if not rows:
        return []
    return [
        "",
        "## The held-out protocol: paired differences",
        "",
        "| difference | seeds | mean ± std | t | p | per seed | what it compares |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _torch_version() -> str:
    import torch

    return torch.__version__


# ------------------------------------------------------------------------------------------ driver


def one(args: argparse.Namespace) -> None:
    """``--one LABEL --seed S``: train one run in this process (the driver starts one process per run). The run holds
    an exclusive lock (``<run>.lock`` beside its folder) while it trains, so a second driver that reaches the same run
    (e.g. one restarted with another ``--jobs`` while the first one's runs still finish) waits for it and then reuses
    it instead of training it twice at once."""
    import fcntl

    jpg, ckpt = check_data(args.data.expanduser().resolve())
    lock_path = runs_dir(args) / f"{run_name(args.one, args.seed)}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary, how = train_one(run_config(args.one, args.seed, args, jpg, ckpt))
    log.info(
        "%s seed %d: top-1 %.2f (%s, %.1f min)",
        args.one,
        args.seed,
        summary["last"]["top1"],
        how,
        summary["train_time_s"] / 60,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder holding cifar10_jpg/ and cifar10_resnets_akamaster/ (default: <repo>/../shared/data)",
    )
    p.add_argument("--student", default="resnet8")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated labels (default {DEFAULT_METHODS})")
    p.add_argument("--controls", default=DEFAULT_CONTROLS, help=f"controls (default {DEFAULT_CONTROLS})")
    p.add_argument(
        "--train-per-class",
        type=int,
        default=DEFAULT_PER_CLASS,
        help=f"training images per class (default {DEFAULT_PER_CLASS}; 50 is the earlier, smaller table)",
    )
    p.add_argument("--test-limit", type=int, default=2000, help="stratified test subset size (0: all 10,000)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, each in its own process")
    p.add_argument("--out", type=Path, default=Path("runs/real_cifar10"))
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="report file (default: benchmarks/results/real_cifar10.md at 200 images per class, "
        "real_cifar10_<n>pc.md at n per class); the same numbers as JSON beside it",
    )
    p.add_argument(
        "--before",
        type=Path,
        default=REPO / "benchmarks" / "results" / "real_cifar10_before.json",
        help="an earlier generated JSON to compare with (default: the report of the session before the issue 22 "
        "fixes); a missing file skips the comparison",
    )
    p.add_argument(
        "--rerun",
        type=Path,
        default=None,
        help="the --out folder of a second run of the same protocol (e.g. --seeds 1 at one commit): the report "
        "compares each of its finished runs with the stored run of the same label and seed",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the finished runs without training any (a partial report if some are missing)",
    )
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.test_limit == 0:
        args.test_limit = None
    if args.report is None:
        args.report = report_path(args.train_per_class)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    if args.epochs < 1 or args.seeds < 1 or args.jobs < 1:
        p.error("--epochs, --seeds and --jobs must be >= 1")
    methods, controls = split_labels(args.methods), split_labels(args.controls)
    unknown = [m for m in [*methods, *controls] if m not in VARIANTS]
    if unknown or any(c not in CONTROL_PAIRS for c in controls):
        p.error(f"unknown label(s) {unknown or controls}; known: {', '.join(VARIANTS)}")
    if args.rerun is not None and not runs_dir(argparse.Namespace(**{**vars(args), "out": args.rerun})).is_dir():
        p.error(
            f"--rerun {args.rerun}: no runs of this protocol there (expected {args.train_per_class} images per class, "
            f"{args.epochs} epochs); give the --out of a run of the same command"
        )
    if args.one is not None:
        if args.one not in VARIANTS:
            p.error(f"unknown label {args.one!r}")
        one(args)
        return
    jpg, ckpt = check_data(args.data.expanduser().resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    (runs_dir(args) / "logs").mkdir(parents=True, exist_ok=True)  # one log folder per protocol
    args.report.parent.mkdir(parents=True, exist_ok=True)

    teacher = teacher_accuracy(args, jpg, ckpt)
    log.info("teacher %s: test top-1 %.2f %%", TEACHER, teacher["top1"])
    labels = [*methods, *controls]
    # seed-major, labels in RUN_ORDER (then any other label) within a seed: every method's seed 0 before any seed 1
    order = [lbl for lbl in RUN_ORDER if lbl in labels] + [lbl for lbl in labels if lbl not in RUN_ORDER]
    tasks = run_tasks(order, args.seeds)
    lock = threading.Lock()

    def write(complete: bool) -> None:
        with lock:
            results = collect(labels, args.seeds, runs_dir(args))
            again = None
            if args.rerun is not None:
                again = collect(labels, args.seeds, runs_dir(argparse.Namespace(**{**vars(args), "out": args.rerun})))
            text = report(results, methods, controls, args, teacher, complete, again)
            args.report.write_text(text)
            payload = {
                "complete": complete,
                "protocol": {
                    k: (str(v) if isinstance(v, Path) else v)
                    for k, v in vars(args).items()
                    if k not in ("one", "seed", "data", "out", "report", "before", "rerun")
                },
                "teacher": TEACHER,
                "teacher_test": teacher,
                "methods": results,
            }
            args.report.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")

    def launch(task: tuple[str, int]) -> int:
        label, seed = task
        done = finished_run(run_config(label, seed, args, jpg, ckpt))  # reused without starting a process
        if done is not None:
            log.info("%s seed %d: reused (top-1 %.2f)", label, seed, done["last"]["top1"])
            return 0
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--one",
            label,
            "--seed",
            str(seed),
            "--data",
            str(args.data),
            "--student",
            args.student,
            "--epochs",
            str(args.epochs),
            "--train-per-class",
            str(args.train_per_class),
            "--test-limit",
            str(args.test_limit or 0),
            "--lr",
            str(args.lr),
            "--threads",
            str(args.threads),
            "--out",
            str(args.out),
        ]
        log_path = runs_dir(args) / "logs" / f"{run_name(label, seed)}.log"
        with open(log_path, "a") as fh:
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        log.info("%s seed %d: %s (log %s)", label, seed, "done" if code == 0 else f"FAILED ({code})", log_path)
        write(complete=False)
        return code

    write(complete=False)
    if args.report_only:
        done = collect(labels, args.seeds, runs_dir(args))
        write(complete=all(len(done[lbl]["top1"]) == args.seeds for lbl in labels))
        print(args.report.read_text())
        return
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(launch, tasks))
    write(complete=all(c == 0 for c in codes))
    print(args.report.read_text())


if __name__ == "__main__":
    main()
