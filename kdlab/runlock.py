"""One trainer per run directory: an OS lock on ``<run dir>/.lock``.

:class:`RunLock` takes an exclusive ``fcntl.flock`` on the lock file and writes its pid into it. The lock belongs
to the open file, so the operating system releases it when the process ends, however it ends (SIGKILL included):
no stale lock survives a kill, and nothing ever has to be deleted by hand. A second process asking for the lock of a
run that is being trained gets :class:`RunLockedError` ("run X is being trained by pid N", exit code 2).

The lock is re-entrant within a process (a sweep takes it before it prepares a run directory, the trainer it then
starts takes it again): a counter per directory, released when the outermost holder releases it.
On a platform without ``fcntl`` (Windows) the lock is a no-op.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from kdlab.config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"

_held: dict[str, tuple[int, int]] = {}  # resolved run dir -> (fd, count)


class RunLockedError(ConfigError):
    """Another process trains this run (exit code 2: choose another run, or wait)."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        self.run_dir = run_dir
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"run {str(run_dir)!r} is being trained by {who}; wait for it to end (or stop it), or choose another "
            "train.name"
        )


def _key(run_dir: Path) -> str:
    return str(Path(run_dir).resolve())


def holder_pid(run_dir: str | Path) -> int | None:
    """The pid written in the run's lock file (the last holder; it holds the lock only if :func:`is_locked`)."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class RunLock:
    """The exclusive lock of one run directory (created if missing).

    Args:
        run_dir: the run directory.
        wait: block until the lock is free (False: raise :class:`RunLockedError` at once).
        timeout_s: with ``wait``, give up after this many seconds (None: wait forever).
    """

    def __init__(self, run_dir: str | Path, wait: bool = False, timeout_s: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.wait = wait
        self.timeout_s = timeout_s
        self._acquired = False

    def acquire(self) -> RunLock:
        """Take the lock (idempotent for this object); raises :class:`RunLockedError` if another process has it."""
        if self._acquired:
            return self
        key = _key(self.run_dir)
        if key in _held:
            fd, count = _held[key]
            _held[key] = (fd, count + 1)
            self._acquired = True
            return self
        if fcntl is None:  # pragma: no cover - Windows
            _held[key] = (-1, 1)
            self._acquired = True
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    if not self.wait or (deadline is not None and time.monotonic() >= deadline):
                        raise RunLockedError(self.run_dir, holder_pid(self.run_dir)) from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = (fd, 1)
        self._acquired = True
        return self

    def release(self) -> None:
        """Release the lock (the OS also releases it when the process ends). The lock file stays."""
        if not self._acquired:
            return
        self._acquired = False
        key = _key(self.run_dir)
        fd, count = _held.pop(key, (-1, 0))
        if count > 1:
            _held[key] = (fd, count - 1)
            return
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(run_dir: str | Path) -> bool:
    """Whether some process (this one included) holds the run's lock."""
    if _key(Path(run_dir)) in _held:
        return True
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def first_missing_ancestor(path: str | Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet; None if ``path`` exists."""
    path = Path(path).absolute()
    if path.exists():
        return None
    top = path
    while not top.parent.exists():
        top = top.parent
    return top


def remove_unused_run_dir(run_dir: str | Path, top: str | Path) -> None:
    """Undo a lock's folder creation for a run whose build failed: while this process still holds the lock, remove
    the lock file and every folder from ``run_dir`` up to ``top`` that holds nothing else. A folder where anything
    else appeared (another process's files) is kept."""
    run_dir, top = Path(run_dir).absolute(), Path(top).absolute()
    if not run_dir.is_dir() or set(os.listdir(run_dir)) - {LOCK_NAME}:
        return
    try:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        folder = run_dir
        while True:
            folder.rmdir()  # fails (and stops) on a folder that is not empty
            if folder == top or folder.parent == folder:
                break
            folder = folder.parent
    except OSError:
        pass
