"""Helpers of the bad-input catalogues: run the real ``kdlab`` entry point and fingerprint directories.

``run_case(argv)`` calls :func:`kdlab.cli.main.main` in-process (the function the console script calls) with
stdout, stderr and logging captured; an exception that escapes ``main`` is formatted as the interpreter would print
it (a ``Traceback`` on stderr, exit code 1), so a catalogue case sees what a user would see.
``run_subprocess(argv)`` runs ``python -m kdlab`` in a child process for the cases that must prove it end to end.
``snapshot(path)`` maps every file under ``path`` to its SHA-256 digest, mode and mtime, to prove that a refused
command wrote nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_case(argv: Sequence[str], cwd: str | os.PathLike | None = None) -> tuple[int, str, str]:
    """Run ``kdlab ARGV`` in-process; returns ``(exit_code, stdout, stderr)`` (stderr includes log records)."""
    from kdlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    old_cwd = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # what the interpreter would print for an uncaught exception
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.chdir(old_cwd)
        root.removeHandler(handler)
        root.setLevel(old_level)
    return int(code), out.getvalue(), err.getvalue()


def run_subprocess(
    argv: Sequence[str], cwd: str | os.PathLike | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """Run ``python -m kdlab ARGV`` in a child process (the console script's code path, tcmalloc off)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(path: str | os.PathLike, ignore: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """``{relative path: "sha256 mode mtime_ns"}`` of every file under ``path`` (or of ``path`` itself if a file).

    Directories appear with their mode only, so a created or removed sub-directory also changes the snapshot.
    A missing ``path`` gives ``{}``. Files whose name is in ``ignore`` (e.g. ``{".lock"}``) are left out.
    """
    root = Path(path)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": _fingerprint(root)}
    result: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.name in ignore:
            continue
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            result[rel + "/"] = f"dir {p.stat().st_mode:o}"
        else:
            result[rel] = _fingerprint(p)
    return result


def _fingerprint(p: Path) -> str:
    st = p.stat()
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return f"{digest} {st.st_mode:o} {st.st_mtime_ns}"


def assert_clean_error(code: int, out: str, err: str, expected_code: int, *needles: str) -> None:
    """The exit code is ``expected_code``, no traceback anywhere, and each needle appears in the output."""
    text = out + err
    assert code == expected_code, f"exit code {code}, expected {expected_code}:\n{text}"
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in the output:\n{text}"
