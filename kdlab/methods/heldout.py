"""The held-out stream of an outer loop (TGeo-KD, RW-KD): mini-batches of the held-out split, pass after pass.

The outer step of a learned fusion policy takes a held-out mini-batch of the size of the training batch it follows
(:class:`kdlab.methods.fusion.HypergradientStep`). The stream is tracked in **samples**, not in mini-batches: a
training batch of another size (the last batch of an epoch, :meth:`kdlab.data.loader.BatchPlan.merges_last_batch`)
takes the next samples of the same pass instead of restarting the pass, and a resumed run skips exactly the samples
consumed before the interruption, so it sees the same held-out mini-batches as an uninterrupted one.

Mini-batches are cut from the evaluation batches of the split (``data.eval_batch_size``), never across two of them: a
mini-batch at the end of an evaluation batch may be shorter (token batches of two evaluation batches differ in
width, so they are not concatenated). A pass starts where an evaluation batch starts at dataset position 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from kdlab.types import Batch

log = logging.getLogger(__name__)


def slice_batch(batch: Batch, start: int, stop: int | None = None) -> Batch:
    """Samples ``[start, stop)`` of ``batch`` (every field, token dicts and extra views included)."""
    sl = slice(start, stop)
    x = {k: v[sl] for k, v in batch.x.items()} if isinstance(batch.x, dict) else batch.x[sl]
    views = {k: v[sl] for k, v in batch.views.items()}
    return Batch(x=x, y=batch.y[sl], index=batch.index[sl], views=views)


class HeldoutStream:
    """Mini-batches of a held-out split, taken in order, pass after pass, with its position as checkpoint state.

    Attributes:
        position: held-out samples consumed since the start of training.
        pass_size: samples in one pass over the split (0 until the first pass has ended).
    """

    def __init__(self) -> None:
        self.position = 0
        self.pass_size = 0
        self._batches: Iterator[Batch] | None = None
        self._rest: Batch | None = None  # the unread tail of the current evaluation batch
        self._in_pass = 0  # samples read in the current pass

    def _read(self) -> Batch:
        assert self._batches is not None
        batch = next(self._batches)
        if bool(batch.index[0] == 0) and self._in_pass > 0:  # a new pass starts
            self.pass_size = self.pass_size or self._in_pass
            self._in_pass = 0
        return batch

    def _open(self, batches: Callable[[], Iterator[Batch]]) -> None:
        """Start the split's batches and skip to :attr:`position` (after a resume: the same place in the pass)."""
        self._batches, self._rest, self._in_pass = batches(), None, 0
        skip = self.position % self.pass_size if self.pass_size else self.position
        while skip > 0:
            batch = self._read()
            self._in_pass += min(skip, batch.size)
            if skip < batch.size:
                self._rest = slice_batch(batch, skip)
            skip -= min(skip, batch.size)

    def take(self, batches: Callable[[], Iterator[Batch]], size: int) -> Batch:
        """The next held-out mini-batch of at most ``size`` samples.

        Args:
            batches: ``fn() -> iterator of Batch`` over the held-out split, forever (``AuxContext.heldout_batches``);
                called once, and again after :meth:`load_state_dict`.
            size: samples wanted (the training batch's size).

        Returns:
            A :class:`~kdlab.types.Batch` of ``min(size, samples left in the current evaluation batch)`` samples.
        """
        if size < 1:
            raise ValueError(f"a held-out mini-batch needs at least 1 sample, got {size}")
        if self._batches is None:
            self._open(batches)
        if self._rest is None:
            self._rest = self._read()
        rest = self._rest
        chunk = slice_batch(rest, 0, size)
        self._rest = slice_batch(rest, size) if size < rest.size else None
        self.position += chunk.size
        self._in_pass += chunk.size
        return chunk

    def state_dict(self) -> dict[str, int]:
        return {"heldout_position": self.position, "heldout_pass": self.pass_size}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; the split's batches restart on the next :meth:`take`.

        A checkpoint written before the stream counted samples (``heldout_seen``: mini-batches) restarts the held-out
        split from its first sample, with a warning.
        """
        if "heldout_position" in state:
            self.position, self.pass_size = int(state["heldout_position"]), int(state["heldout_pass"])
        else:
            log.warning("the checkpoint counts held-out mini-batches, not samples: the held-out split restarts")
            self.position, self.pass_size = 0, 0
        self._batches, self._rest, self._in_pass = None, None, 0


__all__ = ["HeldoutStream", "slice_batch"]
