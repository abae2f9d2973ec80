"""One stop request per process: how SIGINT/SIGTERM stop a whole command, not only the training that is running.

The CLI calls :func:`install` once. From then on the first SIGINT or SIGTERM is recorded here
(:func:`requested`) and:

- while a :class:`~kdlab.train.trainer.Trainer` loop runs (it installs its own handler that calls :func:`note`),
  the current step finishes, a checkpoint is written and the trainer raises ``TrainingInterrupted``;
- at any other moment (start-up: imports, building the models, reading data; between the runs of a multi-run
  command) the handler raises :class:`Interrupted`, which the CLI reports as "stopped" with exit code 130.

Commands that run many trainings (``kdlab sweep``, ``kdlab bench``, ``kdlab demo``) call :func:`raise_if_requested`
before each training, and every :class:`~kdlab.train.trainer.Trainer` does so when it starts, so a stop request
stops the command as a whole: no further run starts after the first signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("kdlab")

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: int | None = None
_installed = 0  # how many install() calls are active: only then are stop requests process-wide


class Interrupted(KeyboardInterrupt):
    """A stop request (SIGINT/SIGTERM) outside a training loop; the CLI exits with code 130."""

    def __init__(self, signum: int | None = None, message: str | None = None) -> None:
        self.signum = signum
        super().__init__(message or f"stopped by {signal_name(signum)}")


def signal_name(signum: int | None) -> str:
    """``SIGTERM``, ``SIGINT`` ... (``a signal`` for None)."""
    if signum is None:
        return "a signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def note(signum: int) -> None:
    """Record a stop request (the trainer's own handler calls this, so multi-run commands see it afterwards).

    Only while :func:`install` is active (the CLI): a library user's trainer stopped by a signal does not stop
    the next trainer of the same process."""
    global _requested
    if _installed and _requested is None:
        _requested = signum


def requested() -> int | None:
    """The signal number of this process's stop request, or None."""
    return _requested


def clear() -> None:
    """Forget the stop request (tests, and a library user who wants to run again in the same process)."""
    global _requested
    _requested = None


def raise_if_requested(what: str = "the command") -> None:
    """Raise :class:`Interrupted` if a stop request arrived: call it before starting each of many trainings."""
    if _requested is not None:
        raise Interrupted(_requested, f"{what} stopped by {signal_name(_requested)}")


def _handler(signum: int, frame: object) -> None:
    note(signum)
    raise Interrupted(signum)


def _note_handler(signum: int, frame: object) -> None:
    note(signum)


def install(raising: bool = True) -> Callable[[], None]:
    """Make SIGINT/SIGTERM stop requests of this process (handlers only in the main thread); returns a function
    that restores the previous handlers and forgets the stop request (the CLI calls it when the command ends).

    ``raising=False`` only records the request (a sweep's worker process: the next trainer, or the running one, sees
    it and stops cleanly; the worker's own loop is never broken by an exception)."""
    global _installed
    _installed += 1
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, _handler if raising else _note_handler) for s in SIGNALS}

    def restore() -> None:
        global _installed
        for s, h in old.items():
            signal.signal(s, h)
        _installed -= 1
        if not _installed:
            clear()

    return restore
