"""``kdlab report SPEC-or-SWEEP [--out DIR] [--store FILE]``: paper-style table (Markdown, LaTeX) and plots."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from kdlab.experiments.report import report

    rep = report(args.target, out_dir=args.out, store_path=args.store)
    print(rep.markdown.read_text(), end="")
    written = [rep.markdown, rep.latex, *(p for p in (rep.curves, rep.bars) if p is not None)]
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``kdlab report``."""
    p = sub.add_parser(
        "report",
        help="paper-style table (mean ± std over seeds vs the published numbers) and plots of a sweep",
        description="Report a sweep: a spec file is read from its run directories, a sweep name from the store.",
    )
    p.add_argument(
        "target",
        help="a sweep spec (configs/sweeps/*.yaml), a sweep name in the results store, or 'imported' (the runs "
        "recorded with kdlab results --import outside a sweep)",
    )
    p.add_argument("--out", default=None, help="output directory (default runs/reports/<sweep name>)")
    p.add_argument("--store", default=None, help="results store for a sweep name (default runs/results.sqlite)")
    p.set_defaults(func=cmd_report)
