"""Start-up cost of the command line (issue 21): ``kdlab --help``, ``kdlab list methods``, ``kdlab show CONFIG`` and
the time to the first line of ``kdlab train CONFIG``.

Each command runs in a fresh interpreter, ``--rounds`` times, interleaved over the commands; reported per command:
the median wall time, whether torch was imported (``-X importtime`` lists every module imported), the number of
modules imported, and the ``-X importtime`` total (the sum of every module's own import time: less sensitive to the
load of a shared machine than the wall time). ``kdlab list`` reads its cache, written by an untimed run right before
each timed one in a temporary ``KDLAB_CACHE_DIR`` (an edit of any file under ``kdlab/`` makes the cache stale). For
``kdlab train`` the wall time is the time until its first log line arrives on stderr, and the importtime total is
that of the modules imported before that line; the run itself is refused right after the registries load (a bad
``method.temperature``), so nothing trains. ``--no-tcmalloc``: the allocator re-exec is left out of the measurement.

Usage: ``python benchmarks/startup.py [--rounds 5] [--config configs/debug/digits_kd.yaml] [--out FILE]``; prints
a Markdown table (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _importtime(lines: list[str]) -> tuple[float, int, bool]:
    """``(sum of self import times in s, modules imported, torch imported)`` from ``-X importtime`` lines."""
    total, count, torch = 0.0, 0, False
    for line in lines:
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = (part.strip() for part in line[len("import time:") :].split("|"))
        total += int(own) / 1e6
        count += 1
        torch = torch or name == "torch"
    return total, count, torch


def run_command(args: list[str], env: dict[str, str]) -> dict:
    """One fresh ``python -X importtime -m kdlab ARGS`` to its end."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kdlab", *args], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - start
    total, count, torch = _importtime(proc.stderr.splitlines())
    return {"wall_s": wall, "import_s": total, "modules": count, "torch": torch, "code": proc.returncode}


def first_line(args: list[str], env: dict[str, str]) -> dict:
    """A fresh ``python -X importtime -m kdlab ARGS``: the time until its first log line (not an importtime line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "kdlab", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    before: list[str] = []
    wall = float("nan")
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("import time:"):
            before.append(line)
            continue
        wall = time.perf_counter() - start
        break
    rest = proc.stderr.read()
    proc.wait()
    total, count, torch = _importtime(before)
    _, _, torch_later = _importtime(rest.splitlines())
    return {
        "wall_s": wall,
        "import_s": total,
        "modules": count,
        "torch": torch,
        "torch_after": torch_later,
        "code": proc.returncode,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--config", default=str(REPO / "configs" / "debug" / "digits_kd.yaml"))
    p.add_argument("--out", default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "KDLAB_CACHE_DIR": cache, "KDLAB_NO_TCMALLOC": "1"}
        commands = {
            "kdlab --help": ["--help"],
            "kdlab list methods": ["list", "methods"],
            "kdlab show CONFIG": ["show", a.config],
        }
        train = ["--no-tcmalloc", "train", a.config, "method.temperature=-1"]
        results: dict[str, list[dict]] = {name: [] for name in [*commands, "kdlab train CONFIG (first line)"]}
        for _ in range(a.rounds):
            for name, args in commands.items():
                if name == "kdlab list methods":  # another process editing kdlab/ makes the cache stale: rewrite it
                    run_command(args, env)
                results[name].append(run_command(args, env))
            results["kdlab train CONFIG (first line)"].append(first_line(train, env))
    rows = [
        "| command | median wall s | median importtime total s | modules imported | runs importing torch | exit |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        torch = f"{sum(r['torch'] for r in rs)} of {len(rs)}"
        if name.startswith("kdlab train"):
            torch += f" before the first line, {sum(r['torch_after'] for r in rs)} of {len(rs)} after it"
        rows.append(
            f"| `{name}` | {statistics.median(r['wall_s'] for r in rs):.3f} | "
            f"{statistics.median(r['import_s'] for r in rs):.3f} | {statistics.median(r['modules'] for r in rs):.0f} | "
            f"{torch} | {sorted({r['code'] for r in rs})} |"
        )
    table = "\n".join(rows)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
