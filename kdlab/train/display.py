"""Progress display: a rich progress bar with ETA on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("kdlab")


class ProgressDisplay:
    """Shows training progress.

    Args:
        mode: ``auto`` (bar on a TTY, plain lines otherwise), ``bar``, ``plain`` or ``off``.
        total_steps: steps of the whole run.
        every_steps: plain mode: a line every this many steps.
    """

    def __init__(self, mode: str, total_steps: int, every_steps: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.total = total_steps
        self.every = max(every_steps, 1)
        self._bar = None
        self._task = None
        self._t0 = time.perf_counter()
        self._start_step = 0

    def start(self, step: int) -> None:
        """Begin at global step ``step`` (non-zero after a resume)."""
        self._start_step = step
        self._t0 = time.perf_counter()
        if self.mode == "bar":
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, completed=step, info="")

    def update(self, step: int, epoch: int, info: str) -> None:
        """After global step ``step`` (0-based) finished."""
        done = step + 1
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(self._task, completed=done, description=f"epoch {epoch + 1}", info=info)
        elif self.mode == "plain" and (done % self.every == 0 or done == self.total):
            elapsed = time.perf_counter() - self._t0
            rate = (done - self._start_step) / max(elapsed, 1e-9)
            eta = (self.total - done) / max(rate, 1e-9)
            log.info("step %d/%d epoch %d | %s | eta %s", done, self.total, epoch + 1, info, _fmt(eta))

    def message(self, text: str) -> None:
        """A line that stays visible (epoch summaries)."""
        if self.mode == "bar" and self._bar is not None:
            self._bar.console.print(text)
        elif self.mode != "off":
            log.info("%s", text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
