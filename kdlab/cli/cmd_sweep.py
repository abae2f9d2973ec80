"""``kdlab sweep SPEC [--workers N] [--dry-run] [--store FILE]``: run a sweep spec (``configs/sweeps/``)."""

from __future__ import annotations

import argparse
import sys


def _print_analyses(spec, runs) -> None:
    """The spec's named analyses as ``kdlab analyze`` command lines over its runs (with the seed's numbers)."""
    import shlex

    from kdlab.experiments.spec import analysis_commands

    if not spec.analysis:
        return
    print(f"analyses of the trained runs (the seed's numbers in {spec.path or 'the spec'}):")
    for command in analysis_commands(spec, runs):
        print(f"  {shlex.join(command)}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from kdlab.experiments.spec import load_spec
    from kdlab.experiments.sweep import Outcome, missing_teacher_checkpoints, run_sweep, summarize_outcomes

    spec = load_spec(args.spec)

    def show(o: Outcome, i: int, total: int) -> None:
        line = f"[{i}/{total}] {o.status:<11} {o.run.key}"
        if o.row is not None:
            name = "top1" if o.row.get("last_top1") is not None else "map"  # a detection run has box mAP, no top-1
            last, best = o.row[f"last_{name}"], o.row[f"best_{name}"]
            line += f": {name} last {last:.2f}, best {best:.2f} (epoch {o.row['best_epoch']})"
            if o.wall_time_s is not None:
                line += f", {o.wall_time_s:.0f} s"
        if o.message and o.status not in ("skipped", "done"):
            line += f": {o.message}"
        print(line, flush=True)

    outcomes = run_sweep(spec, workers=args.workers, dry_run=args.dry_run, store_path=args.store, on_outcome=show)
    if args.dry_run:
        print(
            f"sweep {spec.name}: {len(outcomes)} runs ({len(spec.rows)} rows x {len(spec.grid_points())} grid "
            f"points x {len(spec.seeds)} seeds) under {spec.run_dir}/{spec.name}/"
        )
        for o in outcomes:
            reason = f" ({o.message})" if o.message else ""
            print(f"  {o.action:<8} {o.run.key} -> {o.run.run_dir}{reason}")
        missing = missing_teacher_checkpoints([o.run for o in outcomes])
        if missing:
            print(
                "teacher checkpoints not found (train them first, e.g. kdlab train configs/cifar100/ce/<model>.yaml):"
            )
            print("".join(f"  {m}\n" for m in missing), end="")
        _print_analyses(spec, [o.run for o in outcomes])
        return 0
    counts = summarize_outcomes(outcomes)
    print(
        f"sweep {spec.name}: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f"; results in {args.store}; report: kdlab report {args.spec}"
    )
    _print_analyses(spec, [o.run for o in outcomes])
    bad = [o for o in outcomes if o.status in ("failed", "corrupt", "interrupted", "not run")]
    if bad:
        print(f"{len(bad)} run(s) did not finish:", file=sys.stderr)
        for o in bad:
            print(f"  {o.status}: {o.run.key} ({o.run.run_dir}): {o.message}", file=sys.stderr)
        from kdlab import interrupts

        return 130 if any(o.status == "interrupted" for o in bad) or interrupts.requested() is not None else 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``kdlab sweep``."""
    p = sub.add_parser(
        "sweep",
        help="run a sweep spec (rows x grid x seeds), skipping finished runs and resuming interrupted ones",
        description="Run every run of a sweep spec; finished runs are skipped, interrupted ones resumed, and each "
        "finished run is recorded in the results store.",
    )
    p.add_argument("spec", help="sweep spec YAML (see configs/sweeps/)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (threads per run: cores / N)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what would happen to each")
    p.add_argument("--store", default="runs/results.sqlite", help="results store (SQLite file)")
    p.set_defaults(func=cmd_sweep)
