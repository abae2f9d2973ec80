"""``kdlab results``: query the results store (filter, group, export CSV) or ``--import`` run directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHOWN = (
    "sweep",
    "row_label",
    "pair",
    "grid",
    "seed",
    "method",
    "last_top1",
    "best_top1",
    "last_map",
    "best_map",
    "best_epoch",
    "epochs",
    "train_time_s",
    "images_per_s",
    "finished",
)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def cmd_results(args: argparse.Namespace) -> int:
    from kdlab.experiments.store import (
        ResultsStore,
        RunDirError,
        StoreError,
        check_store_path,
        read_run_dir,
        record_from_run,
    )

    if args.import_dirs:
        check_store_path(Path(args.store), create=True)  # refuse a bad --store before reading anything
        rows, failed = [], 0
        for d in args.import_dirs:
            try:
                rows.append((d, record_from_run(read_run_dir(d))))
            except RunDirError as err:
                failed += 1
                print(f"skipped {d}: {err}", file=sys.stderr)
        if rows:  # a store is only created when there is something to record
            ResultsStore(args.store).record([row for _, row in rows])
        for d, row in rows:
            name = "top1" if row.get("last_top1") is not None else "map"  # a detection run: box mAP
            last = row[f"last_{name}"]
            print(f"recorded {d}: {row['method']} {row['pair']} seed {row['seed']}: {name} last {last:.2f}")
        print(f"{len(rows)} run(s) recorded in {args.store}, {failed} skipped")
        if any(row["sweep"] is None for _, row in rows):
            print(f"report the runs recorded outside a sweep with: kdlab report imported --store {args.store}")
        return 1 if failed else 0

    # a query never creates a store: a typo in --store is an error, not a new empty store
    store = ResultsStore(args.store, create=False)
    rows = store.query(sweep=args.sweep, where=args.where)
    if args.group_by:
        import json

        from kdlab.experiments.report import mean, std
        from kdlab.experiments.store import COLUMN_NAMES

        for key in args.group_by:
            if key not in COLUMN_NAMES and "." not in key:
                raise StoreError(
                    f"--group-by: unknown column {key!r}; columns: {', '.join(COLUMN_NAMES)} "
                    "(or a dotted grid key such as optim.lr)"
                )

        def value(r: dict, key: str) -> object:
            return r[key] if key in COLUMN_NAMES else json.loads(r.get("grid") or "{}").get(key)

        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(tuple(value(r, k) for k in args.group_by), []).append(r)
        header = [*args.group_by, "n", "last_top1_mean", "last_top1_std", "best_top1_mean", "best_top1_std"]
        out = []
        for key, members in groups.items():
            # the headline number: top-1, or the box mAP of a detection run (which has no top-1)
            last = [m["last_top1"] if m["last_top1"] is not None else m.get("last_map") for m in members]
            best = [m["best_top1"] if m["best_top1"] is not None else m.get("best_map") for m in members]
            out.append([*key, len(members), mean(last), std(last), mean(best), std(best)])
    else:
        header = list(SHOWN)
        out = [[r[c] for c in SHOWN] for r in rows]
    if args.csv:
        import csv

        full_header = header if args.group_by else list(rows[0]) if rows else header
        from kdlab.experiments.store import describe_os_error

        try:
            with open(args.csv, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(full_header)
                w.writerows(out if args.group_by else [[r[c] for c in full_header] for r in rows])
        except OSError as err:
            raise StoreError(f"--csv: cannot write {args.csv!r}: {describe_os_error(err)}") from None
        print(f"wrote {len(out)} row(s) to {args.csv}")
    print(_table(header, [[_text(v) for v in r] for r in out]))
    print(f"{len(out)} row(s)" + (f" from {len(rows)} run(s)" if args.group_by else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``kdlab results``."""
    p = sub.add_parser(
        "results",
        help="query the results store (filter, group, CSV) or import run directories into it",
        description="Query the results store. Keys of --where and --group-by are store columns (sweep, row_label, "
        "pair, method, student, dataset, seed, ...) or dotted grid keys (optim.lr).",
    )
    p.add_argument("--store", default="runs/results.sqlite", help="results store (SQLite file)")
    p.add_argument("--sweep", default=None, help="only runs of this sweep")
    p.add_argument("--where", nargs="*", default=[], metavar="KEY=VALUE", help="filters, e.g. method=kd seed=0")
    p.add_argument("--group-by", nargs="*", default=[], metavar="KEY", help="mean ± std per group, e.g. row_label pair")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the rows (or groups) as CSV")
    p.add_argument(
        "--import",
        dest="import_dirs",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="record existing run directories (summary.json + config.yaml) in the store",
    )
    p.set_defaults(func=cmd_results)
