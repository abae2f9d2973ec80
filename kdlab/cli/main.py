"""``kdlab`` command line: train, eval, list, show, demo, plus every ``kdlab/cli/cmd_*.py`` module.

Heavy imports (torch, the registries) happen inside the subcommands so ``kdlab --help`` is instant.
A further subcommand lives in its own module ``kdlab/cli/cmd_<name>.py`` that defines
``register(sub: argparse._SubParsersAction) -> None`` (add a parser, ``set_defaults(func=...)``); it is found by name,
so adding a command never edits this file. Such modules import only the standard library at module level.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

log = logging.getLogger("kdlab")

# Exit codes (README, Exit codes): 0 done, 1 failure during training (non-finite loss, corrupt checkpoint, a run
# file that cannot be written), 2 bad input (config, names, paths, data, a run locked by another process),
# 130 interrupted (SIGINT/SIGTERM).
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
#: Commands that train and therefore re-execute with tcmalloc preloaded when it is available (kdlab/allocator.py).
TCMALLOC_COMMANDS = frozenset({"train", "bench", "demo", "sweep"})


def _is_main_process() -> bool:
    """False in the processes of rank > 0 of a ``torchrun`` launch (they stay silent; rank 0 reports)."""
    return os.environ.get("RANK", "0") in ("", "0")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if _is_main_process() else logging.ERROR,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def cmd_train(args: argparse.Namespace) -> int:
    # the first line, before the heavy imports (torch, the registries: seconds on a cold start)
    log.info("kdlab train %s: loading torch and the registries", " ".join([args.config, *args.overrides]))
    from kdlab.config import load_config
    from kdlab.train.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, run_dir=args.run_dir, resume=args.resume, force=args.force)
    summary = trainer.fit()
    if not trainer.world.main:
        return 0
    top1 = (  # a detection run has no top-1: its line names its select_by metric (map) alone
        f"test top1 last {summary['last']['top1']:.2f} (epoch {summary['last']['epoch']}), "
        f"best {summary['best']['top1']:.2f} (epoch {summary['best']['epoch']}); "
        if "top1" in summary["last"]
        else f"test (epoch {summary['last']['epoch']}, best epoch {summary['best']['epoch']}) "
    )
    print(
        f"{summary['run']}: {top1}"
        + _selected_metric(summary)
        + (
            f"EMA top1 last {summary['last']['ema_top1']:.2f}"
            + (" (exported to student.pt); " if summary["ema"]["exported"] else "; ")
            if "ema_top1" in summary["last"]
            else ""
        )
        + f"{summary['images_per_s']:.0f} img/s; run directory {trainer.run_dir}"
    )
    return 0


def _selected_metric(summary: dict) -> str:
    """``"miou last 61.20, best 63.05; "`` when ``train.select_by`` is another metric than top-1 (e.g. segmentation's
    mIoU, Criteo's AUC), else ``""``."""
    name = summary.get("select_by", "top1")
    last, best = summary["last"].get(name), summary["best"].get(name)
    if name == "top1" or not isinstance(last, float) or not isinstance(best, float):
        return ""
    return f"{name} last {last:.4g}, best {best:.4g}; "


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from kdlab.evaluate import evaluate_file

    result = evaluate_file(
        args.checkpoint,
        data_overrides=args.data,
        device=args.device,
        model=args.model,
        input_mean=args.input_mean,
        input_std=args.input_std,
        split=args.split,
    )
    if "top1" not in result:  # a detector: its box metrics
        from kdlab.metrics import format_metrics

        log.info(
            "%s (%s, %s) on %s %s: %s (%d images)",
            *(result[k] for k in ("file", "model", "kind", "dataset", "split")),
            format_metrics(result),
            result["n"],
        )
        print(json.dumps(result, indent=2))
        return 0
    log.info(
        "%s (%s, %s) on %s %s: top-1 %.2f %%, top-5 %.2f %%, NLL %.4f, ECE %.4f (%d images)",
        result["file"],
        result["model"],
        result["kind"],
        result["dataset"],
        result["split"],
        result["top1"],
        result["top5"],
        result["nll"],
        result["ece"],
        result["n"],
    )
    print(json.dumps(result, indent=2))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from kdlab.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from kdlab.listing import list_registry

    print(list_registry(args.what, verbose=args.verbose))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdlab.demo import run_demo

    log.info("kdlab demo: loading torch and the registries")
    report = run_demo(
        out_dir=args.out,
        seeds=args.seeds,
        quick=args.quick,
        workers=args.workers,
        all_methods=args.all,
        weight_scaling=args.weight_scaling,
    )
    print(report.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="kdlab", description="Knowledge distillation on PyTorch.", allow_abbrev=False)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--no-tcmalloc",
        action="store_true",
        help="do not re-execute with tcmalloc preloaded (also KDLAB_NO_TCMALLOC=1; see kdlab/allocator.py)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a run from a YAML config", description="Train a run.")
    t.add_argument("config", help="YAML config (see configs/)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=1")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint.pt")
    t.add_argument("--force", action="store_true", help="start over even if the run directory holds a run")
    t.add_argument("--run-dir", default=None, help="run directory (default runs/<train.name>)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="top-1, top-5, NLL and ECE of a run, its student.pt / checkpoint.pt, or a raw checkpoint of a zoo model",
        description="Score a model on a data split. FILE is a run directory, its student.pt or checkpoint.pt, or a "
        "raw checkpoint of a zoo model (a state dict, possibly inside 'state_dict'/'model'/'net', 'module.' "
        "prefixes allowed), which needs --model and --data name=DATASET.",
    )
    e.add_argument("checkpoint", metavar="FILE", help="run directory, student.pt, checkpoint.pt or raw checkpoint")
    e.add_argument(
        "--data",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="data overrides, e.g. root=/data/cifar test_limit=1000 (a raw checkpoint: name=cifar10 ...)",
    )
    e.add_argument("--model", default=None, help="raw checkpoint: its architecture (kdlab list models)")
    e.add_argument(
        "--input-mean", type=float, nargs="+", default=None, metavar="M", help="raw checkpoint: its per-channel mean"
    )
    e.add_argument(
        "--input-std", type=float, nargs="+", default=None, metavar="S", help="raw checkpoint: its per-channel std"
    )
    e.add_argument("--split", default="test", choices=["test", "train"], help="data split to score (default test)")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    ls = sub.add_parser("list", help="list registered models, methods or datasets")
    ls.add_argument("what", choices=["models", "methods", "datasets", "metrics"])
    ls.add_argument("--verbose", action="store_true", help="models: parameters, FLOPs and taps (slower)")
    ls.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="print the resolved config")
    s.add_argument("config", nargs="?", default=None, help="YAML config (default: the built-in defaults)")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    s.set_defaults(func=cmd_show)

    d = sub.add_parser("demo", help="a teacher + representative KD methods on the bundled digits data, 3 seeds")
    d.add_argument("--out", default="runs/demo", help="output directory")
    d.add_argument("--seeds", type=int, default=3)
    d.add_argument("--quick", action="store_true", help="a much shorter schedule (smoke test)")
    d.add_argument("--all", action="store_true", help="every registered method, longer schedule (minutes)")
    d.add_argument("--workers", type=int, default=None, help="student runs at once (default: CPU cores, at most 2)")
    d.add_argument(
        "--weight-scaling",
        choices=["gradient", "none"],
        default="gradient",
        help="the students' train.weight_scaling: gradient (default; the published weights' CIFAR balance to the "
        "cross-entropy) or none (the published weights as they are)",
    )
    d.set_defaults(func=cmd_demo)

    import kdlab.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"kdlab.cli.{info.name}").register(sub)
    for parser in sub.choices.values():  # `--resum` must not silently mean `--resume`
        parser.allow_abbrev = False
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may also follow the flags (``kdlab train CFG --resume train.epochs=9``).

    argparse stops filling a ``nargs="*"`` positional at the first flag, so overrides written after a flag come back
    unrecognised; they are appended to the command's overrides. Anything else unrecognised is a usage error (exit 2).
    """
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    rest = [a for a in extra if a not in overrides]
    if rest or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kdlab`` and ``python -m kdlab``; returns the exit code (see :data:`EXIT_FAILED` ...).

    SIGINT/SIGTERM are stop requests for the whole command (:mod:`kdlab.interrupts`): a training finishes its step
    and checkpoints; anywhere else the command stops at once. Either way: a one-line message, exit code 130.
    """
    from kdlab import interrupts

    restore = interrupts.install()
    try:
        return _main(argv)
    except KeyboardInterrupt as err:  # a stop request outside a training loop, or a second signal
        if _is_main_process():
            msg = str(err) if isinstance(err, interrupts.Interrupted) else "stopped by SIGINT"
            print(f"kdlab: {msg}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `kdlab list methods | head`: the reader left; say nothing
        _silence_stdout()
        return 0
    finally:
        restore()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush into the closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    _setup_logging(args.verbose)
    if argv is None and args.command in TCMALLOC_COMMANDS:  # a real process entry: maybe re-exec with tcmalloc
        from kdlab.allocator import maybe_reexec

        maybe_reexec(opt_out=args.no_tcmalloc)
    try:
        return args.func(args)
    except Exception as err:
        # imported on failure only: the error classes live in modules that import torch, which `--help`, `list`
        # and `show` never load (an error of such a class means its module is loaded already)
        from kdlab.errors import USER_ERRORS, describe

        if isinstance(err, USER_ERRORS):
            print(f"kdlab: error: {describe(err)}", file=sys.stderr)
            return EXIT_USAGE
        from kdlab.train.checkpoint import CheckpointError
        from kdlab.train.trainer import NonFiniteLossError, TrainingInterrupted

        if isinstance(err, TrainingInterrupted):
            if _is_main_process():
                print(f"kdlab: {err}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(err, (NonFiniteLossError, CheckpointError)):
            print(f"kdlab: error: {err}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
