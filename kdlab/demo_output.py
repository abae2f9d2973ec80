"""What ``kdlab demo`` prints: one line per run on the console, everything in full in ``<out>/demo.log``.

A training run logs a header of several lines (:func:`kdlab.train.header.format_header`: data, student, teachers,
system) and, when it trains in this process, its epoch lines. In the demo, dozens of runs would bury the phases'
progress lines under them, so :class:`DemoLog` (a filter on the ``kdlab`` logger while the demo runs) writes every
record in full to ``demo.log`` and lets the console see

- a run header as one line (:func:`header_line`: method, data, student, teachers' test top-1);
- nothing else of a student run that trains in this process (``--workers 1``): its line is the demo's own progress
  line, printed after it ends.

The full header also stays in each run's ``summary.json`` (``"header"``).
"""

from __future__ import annotations

import logging
from pathlib import Path

HEADER_PREFIX = "run header:"
"""The first words of the message :func:`kdlab.train.header.log_header` logs."""

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%H:%M:%S"


def header_line(text: str) -> str:
    """The run header ``text`` (several lines, as :func:`kdlab.train.header.format_header` writes it) as one line:
    its first line, the data's split sizes, the student's size and each teacher's size and measured accuracy."""
    lines = text.splitlines()
    parts = [lines[0]]
    for line in lines[1:]:
        label, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if label == "data":
            parts.append(rest.split(",")[0])
        elif label == "student":
            parts.append(f"student {rest.split(',')[0]}")
        elif label.startswith("teacher"):
            size = rest.split(",")[0]
            accuracy = rest.rpartition("; ")[2].split(",")[0]
            parts.append(f"{label} {size}, {accuracy}")
    return "; ".join(parts) + " (full header: demo.log, summary.json)"


class DemoLog(logging.Filter):
    """A filter for the ``kdlab`` logger during the demo: writes every record in full to ``path``, shortens run
    headers to :func:`header_line` and, while :attr:`quiet_runs` is set, keeps the training loop's own INFO
    records (``kdlab/train/*``) off the console. Use as a context manager: it attaches to and detaches from the
    logger and closes the file."""

    def __init__(self, path: str | Path, logger: logging.Logger | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.logger = logger or logging.getLogger("kdlab")
        self.quiet_runs = False
        """Set while student runs may train in this process: their records go to the file only."""
        self.formatter = logging.Formatter(FORMAT, DATEFMT)
        self._file = None

    def __enter__(self) -> DemoLog:
        self._file = self.path.open("a", encoding="utf-8")
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeFilter(self)
        if self._file is not None:
            self._file.close()
            self._file = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._file is not None:
            self._file.write(self.formatter.format(record) + "\n")
            self._file.flush()
        text = record.getMessage()
        if text.startswith(HEADER_PREFIX):
            if self.quiet_runs:
                return False
            record.msg, record.args = header_line(text), ()
            return True
        return not (self.quiet_runs and record.levelno < logging.WARNING and _from_training(record))


def _from_training(record: logging.LogRecord) -> bool:
    """Logged by the training loop of a run (kdlab/train/...)."""
    return Path(record.pathname).parent.name == "train" and Path(record.pathname).parent.parent.name == "kdlab"
