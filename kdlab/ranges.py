"""Valid ranges of numeric config fields, declared once in the schema as dataclass field metadata.

Every ``int``/``float`` field of a config dataclass (the run sections in :mod:`kdlab.config` and every method's
``Config``) declares its range where it is defined::

    lr: float = field(default=0.05, metadata=rng(gt=0))
    val_fraction: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210], metadata=rng(ge=1))

A list or mapping field's range applies to each element; ``None`` (for optional fields) is always allowed.
``rng()`` without bounds declares "any finite number". :func:`kdlab.config.from_dict` checks the ranges when a
config is loaded and names the key, the value, the range and the fix; the tests walk every dataclass and the
method registry to prove that each numeric field declares a range and that a value outside it is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

#: The metadata key holding a field's :class:`Range`.
RANGE_KEY = "range"


@dataclass(frozen=True)
class Range:
    """An interval of valid values: ``gt``/``ge`` lower bounds, ``lt``/``le`` upper bounds (None: unbounded)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    note: str = ""
    """What the bounds mean, added to the error message (e.g. "0 turns the term off")."""

    def __post_init__(self) -> None:
        if self.gt is not None and self.ge is not None:
            raise ValueError("a range has at most one lower bound (gt or ge)")
        if self.lt is not None and self.le is not None:
            raise ValueError("a range has at most one upper bound (lt or le)")

    def contains(self, value: float) -> bool:
        """Whether ``value`` is finite and inside the range."""
        if not math.isfinite(value):
            return False
        if self.gt is not None and not value > self.gt:
            return False
        if self.ge is not None and not value >= self.ge:
            return False
        if self.lt is not None and not value < self.lt:
            return False
        return not (self.le is not None and not value <= self.le)

    def describe(self) -> str:
        """The range in words: ``> 0``, ``>= 1``, ``in [0, 1)``, ``a finite number``."""
        lo = (self.gt, "(") if self.gt is not None else (self.ge, "[") if self.ge is not None else None
        hi = (self.lt, ")") if self.lt is not None else (self.le, "]") if self.le is not None else None
        if lo and hi:
            return f"in {lo[1]}{_num(lo[0])}, {_num(hi[0])}{hi[1]}"
        if lo:
            return f"{'>' if lo[1] == '(' else '>='} {_num(lo[0])}"
        if hi:
            return f"{'<' if hi[1] == ')' else '<='} {_num(hi[0])}"
        return "a finite number"

    def outside(self) -> list[float]:
        """Values just outside the range (for generated tests): one per declared bound, or ``[inf]``."""
        values: list[float] = []
        if self.gt is not None:
            values.append(self.gt)
        if self.ge is not None:
            values.append(self.ge - 1)
        if self.lt is not None:
            values.append(self.lt)
        if self.le is not None:
            values.append(self.le + 1)
        return values or [math.inf]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def rng(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    note: str = "",
) -> dict[str, Range]:
    """Field metadata declaring a numeric field's valid range: ``field(default=4.0, metadata=rng(gt=0))``."""
    return {RANGE_KEY: Range(gt=gt, ge=ge, lt=lt, le=le, note=note)}


def field_range(f: dataclasses.Field) -> Range | None:
    """The declared range of a dataclass field, or None."""
    return f.metadata.get(RANGE_KEY)


def violations(value: Any, r: Range, path: str) -> list[tuple[str, Any]]:
    """``(key, value)`` of each number in ``value`` (a number, list or mapping of numbers) outside ``r``."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        return [v for i, item in enumerate(value) for v in violations(item, r, f"{path}.{i}")]
    if isinstance(value, dict):
        return [v for k, item in value.items() for v in violations(item, r, f"{path}.{k}")]
    if isinstance(value, (int, float)) and not r.contains(float(value)):
        return [(path, value)]
    return []


def out_of_range_message(path: str, value: Any, r: Range, default: Any = None) -> str:
    """The error of a value outside its range: key, value, range, what the range means and the fix."""
    if isinstance(value, float) and not math.isfinite(value):
        finite = "a finite number" + ("" if r.describe() == "a finite number" else f" {r.describe()}")
        what = f"{path} must be {finite}, got {value!r}"
    else:
        what = f"{path} must be {r.describe()}, got {value!r}"
    if r.note:
        what += f" ({r.note})"
    example = ""
    if isinstance(default, (int, float)) and not isinstance(default, bool) and r.contains(float(default)):
        example = f", e.g. {path}={default!r}"
    target = "a finite number" if r.describe() == "a finite number" else f"a value {r.describe()}"
    return f"{what}. Fix: set {path} to {target}{example}"
