"""``kdlab bench``: training throughput of speed variants, or a per-method speed table (:mod:`kdlab.bench`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="images/s of the training step under speed settings, or batches/s per method",
        description=(
            "variants: images/s of one method and pair through the real trainer under fp32, bf16, channels_last, "
            "bf16+channels_last, compile and teacher-output reuse. methods: batches/s of each method on one pair. "
            "Synthetic CIFAR-shaped data through the real on-device loader; random weights."
        ),
    )
    p.add_argument("table", nargs="?", choices=["variants", "methods"], default="variants")
    p.add_argument("--method", default="kd", help="variants: the method (e.g. kd, dkd, tekap(kd))")
    p.add_argument("--variants", default=None, help="variants: comma-separated (default: the six of the issue)")
    p.add_argument("--methods", default=None, help="methods: comma-separated specs (default: a DIST-like table)")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32, help="synthetic images' height and width")
    p.add_argument("--num-classes", type=int, default=100, help="synthetic classes")
    p.add_argument("--steps", type=int, default=None, help="variants: steps per epoch (8); methods: timed steps (10)")
    p.add_argument("--epochs", type=int, default=4, help="variants: epochs per run, the first is warm-up")
    p.add_argument("--warmup", type=int, default=2, help="methods: untimed steps per run")
    p.add_argument("--rounds", type=int, default=2, help="runs per variant/method, interleaved; medians reported")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=10, help="variants: calls of each component timed alone")
    p.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="methods: train.precision of every run"
    )
    p.add_argument("--channels-last", action="store_true", help="methods: train.channels_last of every run")
    p.add_argument(
        "--compare-allocators",
        action="store_true",
        help="run the table in child processes with the system allocator and with tcmalloc, alternating",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    p.set_defaults(func=cmd_bench)


def _child_argv(args: argparse.Namespace) -> list[str]:
    out = [args.table, "--method", args.method, "--teacher", args.teacher, "--student", args.student]
    out += ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--warmup", str(args.warmup)]
    out += ["--threads", str(args.threads), "--precision", args.precision, "--repeats", str(args.repeats)]
    out += ["--image-size", str(args.image_size), "--num-classes", str(args.num_classes)]
    for flag, value in (("--variants", args.variants), ("--methods", args.methods), ("--steps", args.steps)):
        if value is not None:
            out += [flag, str(value)]
    if args.channels_last:
        out.append("--channels-last")
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from kdlab import bench

    threads = args.threads or None
    if args.compare_allocators:
        result = bench.compare_allocators(_child_argv(args), rounds=args.rounds)
    elif args.table == "variants":
        result = bench.run_variants(
            bench.parse_variants(args.variants) if args.variants else bench.DEFAULT_VARIANTS,
            method=args.method,
            teacher=args.teacher,
            student=args.student,
            batch_size=args.batch_size,
            steps=args.steps or 8,
            epochs=args.epochs,
            rounds=args.rounds,
            threads=threads,
            repeats=args.repeats,
            image_size=args.image_size,
            num_classes=args.num_classes,
        )
    else:
        train = {"precision": args.precision, "channels_last": args.channels_last}
        result = bench.run_methods(
            args.methods or bench.DEFAULT_METHODS,
            teacher=args.teacher,
            student=args.student,
            batch_size=args.batch_size,
            steps=args.steps or 10,
            warmup=args.warmup,
            rounds=args.rounds,
            threads=threads,
            train=train,
            image_size=args.image_size,
            num_classes=args.num_classes,
        )
    print(bench.format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return 0
