"""``kdlab analyze ANALYSIS RUN``: the papers' analyses of a trained run, each a table (Markdown, CSV, JSON) and a PNG.

``RUN`` is a run directory (its ``checkpoint.pt``, else ``student.pt``) or one of those files. Outputs go to
``--out`` (default ``RUN/analysis``); the table is printed.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

_HELP = {
    "robustness": "top-1/top-5 under FGSM and PGD (L_inf, pixel-unit budgets)",
    "calibration": "ECE, reliability diagram, NLL; agreement with the teacher",
    "discrepancy": "student-teacher discrepancy by teacher correctness, and per-sample alpha (TGeo-KD)",
    "transfer": "linear probe of the frozen student's features on another dataset",
    "per_class": "per-class accuracy by many/medium/few-shot training frequency",
    "fusion": "the fusion ratio over training (mean, spread, teacher right/wrong, per class, ratio-net inputs)",
}


def _number(text: str) -> float:
    """A float or a fraction such as ``8/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 8/255") from None


def _number_list(text: str) -> list[float]:
    return [_number(part) for part in text.split(",") if part.strip()]


def _common(p: argparse.ArgumentParser, split: str = "test") -> None:
    p.add_argument("run", help="a run directory, or its checkpoint.pt / student.pt")
    p.add_argument("--out", default=None, help="output directory (default RUN/analysis)")
    p.add_argument("--split", default=split, choices=["test", "train", "val"], help=f"data split (default {split})")
    p.add_argument(
        "--limit", type=int, default=None, help="a stratified subset of about N samples of the split (fixed seed)"
    )
    p.add_argument(
        "--data", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the run's data section, e.g. root=..."
    )
    p.add_argument("--teacher", default=None, help="weights of the run's teacher, if its config path is not valid here")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``kdlab analyze`` and its analyses."""
    a = sub.add_parser(
        "analyze",
        help="analyses of a trained run: robustness, calibration, discrepancy, transfer, per_class, fusion",
        description=__doc__,
    )
    inner = a.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")

    r = inner.add_parser("robustness", help=_HELP["robustness"], description=_HELP["robustness"])
    _common(r)
    r.add_argument(
        "--epsilons",
        type=_number_list,
        default=[0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255],
        help="comma-separated L_inf budgets in pixel units (images in [0, 1]), e.g. 0,2/255,8/255",
    )
    r.add_argument("--attacks", default="fgsm,pgd", help="comma-separated subset of fgsm,pgd")
    r.add_argument("--pgd-steps", type=int, default=10)
    r.add_argument("--pgd-step-size", type=_number, default=None, help="pixel units (default 2.5 * eps / steps)")
    r.add_argument("--seed", type=int, default=0, help="seed of PGD's random start")

    c = inner.add_parser("calibration", help=_HELP["calibration"], description=_HELP["calibration"])
    _common(c)
    c.add_argument("--bins", type=int, default=15, help="equal-width confidence bins")

    d = inner.add_parser("discrepancy", help=_HELP["discrepancy"], description=_HELP["discrepancy"])
    _common(d, split="train")
    d.add_argument("--parts", type=int, default=5, help="equal-size groups by discrepancy within each group")

    t = inner.add_parser("transfer", help=_HELP["transfer"], description=_HELP["transfer"])
    _common(t)
    t.add_argument("--dataset", required=True, help="target dataset (kdlab list datasets), e.g. stl10, tiny_imagenet")
    t.add_argument("--root", default=None, help="the target dataset's directory")
    t.add_argument(
        "--target-data",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the target's data section, e.g. train_per_class=100 test_limit=2000",
    )
    t.add_argument("--l2", type=float, default=1e-3, help="L2 weight of the logistic regression")
    t.add_argument("--max-iter", type=int, default=200, help="L-BFGS iterations")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-baseline", action="store_true", help="skip the random-init student reference row")

    pc = inner.add_parser("per_class", help=_HELP["per_class"], description=_HELP["per_class"])
    _common(pc)
    pc.add_argument("--many", type=int, default=100, help="many-shot: more than this many training images")
    pc.add_argument("--few", type=int, default=20, help="few-shot: fewer than this many training images")

    f = inner.add_parser("fusion", help=_HELP["fusion"], description=_HELP["fusion"])
    f.add_argument("run", help="a run directory of a fusion run (its metrics.jsonl is read; no model is rebuilt)")
    f.add_argument("--out", default=None, help="output directory (default RUN/analysis)")

    a.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run one analysis, write its files, print its table."""
    from pathlib import Path

    import torch

    from kdlab.analysis import AnalysisError, open_run, write_result

    if args.analysis == "fusion":  # reads the run's logged metrics only
        return _fusion(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        raise AnalysisError(f"--limit must be >= 1, got {args.limit}")
    need_teacher = args.analysis == "discrepancy"
    opened = open_run(args.run, args.data, args.device, args.teacher, need_teacher=need_teacher)
    common = {"split": args.split, "limit": args.limit}
    if args.analysis == "robustness":
        from kdlab.analysis.robustness import robustness

        attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
        result = robustness(
            opened, args.epsilons, attacks, args.pgd_steps, args.pgd_step_size, seed=args.seed, **common
        )
    elif args.analysis == "calibration":
        from kdlab.analysis.calibration import calibration

        result = calibration(opened, args.bins, **common)
    elif args.analysis == "discrepancy":
        from kdlab.analysis.discrepancy import discrepancy

        result = discrepancy(opened, parts=args.parts, **common)
    elif args.analysis == "transfer":
        from kdlab.analysis.transfer import transfer

        if args.split != "test" or args.limit is not None:
            raise AnalysisError(
                "transfer uses the target dataset's own train and test splits; limit them with "
                "--target-data train_per_class=N test_limit=M instead of --split/--limit"
            )
        result = transfer(
            opened,
            args.dataset,
            args.root,
            tuple(args.target_data),
            l2=args.l2,
            max_iter=args.max_iter,
            seed=args.seed,
            baseline=not args.no_baseline,
        )
    else:
        from kdlab.analysis.per_class import per_class

        result = per_class(opened, args.many, args.few, **common)
    out = Path(args.out) if args.out else opened.run_dir / "analysis"
    paths = write_result(result, out)
    print(result.markdown(), end="")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _fusion(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kdlab.analysis import write_result
    from kdlab.analysis.fusion import fusion

    result = fusion(args.run)
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    paths = write_result(result, Path(args.out) if args.out else run_dir / "analysis")
    print(result.markdown(), end="")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0
