"""tcmalloc for CPU training: the ``kdlab`` command re-executes itself with ``LD_PRELOAD`` of libtcmalloc.

glibc's malloc returns the large, short-lived activation buffers of a training step to the kernel and faults them
back in on the next step (measured on CPU: about a fifth of a step in page faults); tcmalloc keeps them. The library
must be loaded before the process starts, hence a re-exec: :func:`maybe_reexec` is called by the CLI for the
commands that train (``train``, ``bench``, ``demo``, ``sweep``), finds ``libtcmalloc_minimal.so.4`` or
``libtcmalloc.so.4`` (Debian/Ubuntu: ``apt-get install libgoogle-perftools4``) through ``ldconfig -p`` and the usual
library directories, and replaces the process (same pid, same arguments) with one that preloads it.

Never twice: the child carries ``KDLAB_TCMALLOC_REEXEC=1``, and a process whose ``LD_PRELOAD`` already names a
tcmalloc is left alone. Opt out with ``KDLAB_NO_TCMALLOC=1`` or ``kdlab --no-tcmalloc ...``; ``KDLAB_TCMALLOC=<path>``
names the library explicitly. Only the standard library is imported here (it runs before torch).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("kdlab")

#: Library file names, preferred first (the minimal build has no heap profiler).
NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
#: Directories searched when ``ldconfig`` is unavailable.
SEARCH_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
#: Set in the re-executed process (never re-exec twice).
MARKER = "KDLAB_TCMALLOC_REEXEC"
#: Set to 1 to disable the re-exec.
OPT_OUT = "KDLAB_NO_TCMALLOC"
#: An explicit library path.
OVERRIDE = "KDLAB_TCMALLOC"
#: tcmalloc reports allocations above this many bytes on stderr; kdlab raises the threshold (1 TiB) unless set.
REPORT_THRESHOLD = "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"


def _ldconfig_paths() -> list[str]:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = {}
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        name = name.split(" ", 1)[0]
        if name in NAMES and path:
            found.setdefault(name, path.strip())
    return [found[n] for n in NAMES if n in found]


def find_tcmalloc(env: Mapping[str, str] | None = None, search_dirs: Sequence[str] = SEARCH_DIRS) -> str | None:
    """Path of a tcmalloc shared library, or None.

    ``KDLAB_TCMALLOC`` in ``env`` wins (it must exist); then ``ldconfig -p``; then ``search_dirs``.
    """
    env = os.environ if env is None else env
    explicit = env.get(OVERRIDE)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for path in _ldconfig_paths():
        if Path(path).is_file():
            return path
    for d in search_dirs:
        for name in NAMES:
            p = Path(d) / name
            if p.is_file():
                return str(p)
    return None


def preloaded(env: Mapping[str, str] | None = None) -> str | None:
    """The tcmalloc entry of ``LD_PRELOAD`` in ``env``, if any."""
    env = os.environ if env is None else env
    for item in env.get("LD_PRELOAD", "").replace(":", " ").split():
        if "tcmalloc" in Path(item).name:
            return item
    return None


def loaded_tcmalloc(maps: str = "/proc/self/maps") -> str | None:
    """Path of the tcmalloc library mapped into this process (Linux ``/proc/self/maps``), or None."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split()[-1] if line.split() else ""
        if path.startswith("/") and "tcmalloc" in Path(path).name:
            return path
    return None


def allocator_name() -> str:
    """``"tcmalloc (<path>)"`` when tcmalloc is loaded in this process, else ``"system"`` (for the run record)."""
    lib = loaded_tcmalloc()
    return f"tcmalloc ({lib})" if lib else "system"


def reexec_plan(
    env: Mapping[str, str], opt_out: bool = False, platform: str = sys.platform, library: str | None = None
) -> tuple[dict[str, str] | None, str]:
    """Decide whether to re-execute with tcmalloc preloaded.

    Args:
        env: the current environment.
        opt_out: ``--no-tcmalloc`` was given.
        platform: ``sys.platform`` (only Linux uses ``LD_PRELOAD`` this way).
        library: the library to preload (default: :func:`find_tcmalloc`).

    Returns:
        ``(new_env, reason)``: the environment of the re-executed process, or None to go on as is; and why.
    """
    if opt_out or env.get(OPT_OUT, "") not in ("", "0"):
        return None, "tcmalloc disabled (--no-tcmalloc or KDLAB_NO_TCMALLOC)"
    if env.get(MARKER):
        return None, "already re-executed"
    if preloaded(env):
        return None, f"tcmalloc already preloaded ({preloaded(env)})"
    if not platform.startswith("linux"):
        return None, f"LD_PRELOAD is not used on {platform}"
    lib = library if library is not None else find_tcmalloc(env)
    if lib is None:
        return None, "no tcmalloc library found (Debian/Ubuntu: apt-get install libgoogle-perftools4)"
    new = dict(env)
    new["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else lib
    new[MARKER] = "1"
    new.setdefault(REPORT_THRESHOLD, str(2**40))
    return new, f"preloading {lib}"


def maybe_reexec(opt_out: bool = False, argv: Sequence[str] | None = None) -> None:
    """Replace this process by the same command with tcmalloc preloaded, when :func:`reexec_plan` says so.

    Returns only when there is nothing to do (logged at debug level); otherwise it never returns.
    """
    new_env, reason = reexec_plan(os.environ, opt_out)
    if new_env is None:
        if os.environ.get(MARKER):
            lib = loaded_tcmalloc()
            if lib:
                log.info("allocator: tcmalloc preloaded (%s); opt out: --no-tcmalloc or KDLAB_NO_TCMALLOC=1", lib)
            else:
                log.warning("allocator: LD_PRELOAD names %s but it is not loaded; system allocator in use", preloaded())
        else:
            log.debug("allocator: %s", reason)
        return
    args = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    log.debug("allocator: %s; re-executing %s", reason, " ".join(args))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, args, new_env)
    except OSError as err:  # the process goes on with the system allocator
        log.warning("allocator: could not re-execute with tcmalloc (%s); using the system allocator", err)
