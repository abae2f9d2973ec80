"""``kdlab chain CONFIG [key=value ...]``: train a teacher-assistant chain (TAKD) link by link (:mod:`kdlab.chain`)."""

from __future__ import annotations

import argparse


def cmd_chain(args: argparse.Namespace) -> int:
    """Train (or reuse) every link, print one line per link and the chain record's path."""
    from kdlab.chain import chain_links, run_chain
    from kdlab.config import load_config

    cfg = load_config(args.config, args.overrides)
    links = chain_links(cfg)  # checks the chain section before anything is trained

    def show(entry: dict) -> None:
        print(
            f"link {entry['index']}/{len(links)} {entry['teacher']['name']} -> {entry['model']}: {entry['status']}; "
            f"test top1 last {entry['top1_last']:.2f}, best {entry['top1_best']:.2f} ({entry['run_dir']})"
        )

    record = run_chain(cfg, force=args.force, on_link=show)
    root = links[0].run_dir.parent
    print(
        f"{record['name']}: {' -> '.join([record['teacher']['name'], *record['models']])}; student test top1 last "
        f"{record['student']['top1_last']:.2f}; train time {record['train_time_s']:.1f} s; record {root / 'chain.json'}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``chain`` subcommand."""
    p = sub.add_parser(
        "chain",
        help="train a teacher-assistant chain (a config with a chain: section), reusing finished links",
        description="Train teacher -> assistants -> student link by link, reusing finished links of the same config.",
    )
    p.add_argument("config", help="YAML config with a chain: section (see configs/cifar100/takd/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=1")
    p.add_argument("--force", action="store_true", help="retrain links whose directory holds a run of another config")
    p.set_defaults(func=cmd_chain)
