"""Tables as field tokens: one token per field plus ``[CLS]``, per-field id ranges, fitted on the training split.

Layout of a row: ``[CLS] f_1 ... f_F`` (``L = F + 1``). Global ids 0 and 1 are ``[PAD]`` and ``[CLS]``; field ``f``
owns ids ``offset_f .. offset_f + size_f - 1``, and inside that range local id 0 is "missing" (an empty cell), 1 is
"out of vocabulary" (a categorical value rarer than ``min_count`` in the training split, or one never seen there:
an unseen category at test time is never a crash), and 2.. are values:

- numeric columns: quantile buckets, ``numeric_bins`` edges fitted on the training split's values
  (``np.searchsorted(edges, v, side="right")``); a value outside the training range falls in the first or last
  bucket.
- categorical columns: the training values seen at least ``min_count`` times, most frequent first (ties by value).

Bad input is a :class:`~kdlab.data.base.DataError` naming the file, the column (and row) and the fix: a missing label
column, text in a numeric column, a label outside the class set, an empty file.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import DataError
from kdlab.data.tokens import TokenSet
from kdlab.paths import why_unusable

log = logging.getLogger("kdlab")

PAD_ID = 0
CLS_ID = 1
FIRST_FIELD_ID = 2
MISSING = 0
OOV = 1
FIRST_VALUE = 2


def parse_float(text: str) -> float | None:
    """``text`` as a float, None for an empty cell (or NaN); raises ValueError for other text."""
    t = text.strip()
    if t == "" or t.lower() in ("nan", "na", "null"):
        return None
    value = float(t)
    return None if math.isnan(value) else value


@dataclass
class FieldCodec:
    """How one column becomes a local id (see the module docstring).

    Attributes:
        name: column name.
        kind: ``"numeric"`` or ``"categorical"``.
        edges: numeric bucket edges (``[E]`` float64, ascending).
        vocab: categorical value -> local id (``>= FIRST_VALUE``).
    """

    name: str
    kind: str
    edges: np.ndarray | None = None
    vocab: dict[str, int] = field(default_factory=dict)
    _lookup: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Local ids of the field (missing, OOV and the values)."""
        if self.kind == "numeric":
            return FIRST_VALUE + len(self.edges) + 1
        return FIRST_VALUE + len(self.vocab)

    @classmethod
    def fit_numeric(cls, name: str, values: np.ndarray, bins: int) -> FieldCodec:
        """Quantile edges of ``values`` (``[N]`` float64, NaN = missing)."""
        seen = values[~np.isnan(values)]
        if seen.size == 0:
            return cls(name, "numeric", np.zeros(0))
        edges = np.unique(np.quantile(seen, np.linspace(0, 1, bins + 1)[1:-1])) if bins > 1 else np.zeros(0)
        return cls(name, "numeric", edges)

    @classmethod
    def fit_categorical(cls, name: str, counts: Counter, min_count: int) -> FieldCodec:
        """A vocabulary of the values counted at least ``min_count`` times (``""`` = missing is never a value)."""
        kept = sorted(((-n, v) for v, n in counts.items() if v != "" and n >= min_count))
        return cls(name, "categorical", vocab={v: FIRST_VALUE + i for i, (_, v) in enumerate(kept)})

    def encode_numeric(self, values: np.ndarray) -> np.ndarray:
        """``[N]`` float64 (NaN = missing) -> ``[N]`` local ids."""
        out = FIRST_VALUE + np.searchsorted(self.edges, np.nan_to_num(values), side="right")
        return np.where(np.isnan(values), MISSING, out).astype(np.int64)

    def encode_categorical(self, values: Sequence[str]) -> tuple[np.ndarray, int]:
        """``[N]`` strings -> (``[N]`` local ids, number of out-of-vocabulary values)."""
        if self._lookup is None:
            self._lookup = {**self.vocab, "": MISSING}
        get = self._lookup.get
        out = np.array([get(v, OOV) for v in values], dtype=np.int64)
        return out, int((out == OOV).sum())


@dataclass
class TableCodec:
    """All fields of a table: ``encode`` turns columns into ``[N, F + 1]`` global ids.

    Attributes:
        fields: one codec per column, in token order.
        offsets: ``[F]`` first global id of each field.
        vocab_size: ids are in ``0..vocab_size - 1``.
    """

    fields: list[FieldCodec]
    offsets: np.ndarray = field(init=False)
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        sizes = np.array([f.size for f in self.fields], dtype=np.int64)
        self.offsets = FIRST_FIELD_ID + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.vocab_size = int(FIRST_FIELD_ID + sizes.sum())

    def encode(self, columns: dict[str, np.ndarray | list[str]], where: str = "") -> np.ndarray:
        """Columns (numeric: float64 arrays with NaN; categorical: lists of strings) -> ``[N, F + 1]`` int32 ids.
        Out-of-vocabulary values are counted and logged (they are not errors)."""
        n = len(next(iter(columns.values())))
        out = np.empty((n, len(self.fields) + 1), dtype=np.int32)
        out[:, 0] = CLS_ID
        unseen = 0
        for j, (codec, offset) in enumerate(zip(self.fields, self.offsets), start=1):
            if codec.kind == "numeric":
                local = codec.encode_numeric(np.asarray(columns[codec.name], dtype=np.float64))
            else:
                local, oov = codec.encode_categorical(columns[codec.name])
                unseen += oov
            out[:, j] = offset + local
        if unseen:
            log.debug("%s: %d categorical value(s) out of the training vocabulary -> the field's OOV id", where, unseen)
        return out


# ------------------------------------------------------------------------------------------------- CSV tables
@dataclass
class Table:
    """A CSV file read as strings: ``header`` and ``columns[name] -> [N] str``."""

    path: Path
    header: list[str]
    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def read_csv(path: Path) -> Table:
    """Read a CSV file with a header row (delimiter sniffed among ``,`` ``;`` tab); every row must have the header's
    column count."""
    if not path.is_file():
        raise DataError(f"tabular data: {path} {why_unusable(path)}")
    with open(path, newline="", encoding="utf-8") as f:
        sample = f.read(65536)
        f.seek(0)
        if not sample.strip():
            raise DataError(f"tabular data: {path} is empty; it needs a header row and at least one data row")
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.reader(f, dialect)
        header = [h.strip() for h in next(reader)]
        rows = [r for r in reader if r]
    if not rows:
        raise DataError(f"tabular data: {path} has a header but no data rows")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"tabular data: {path} repeats column name(s) {dup} in its header")
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise DataError(
                f"tabular data: {path} line {i + 2} has {len(r)} fields but the header has {len(header)}; fix the "
                "line (quote values that contain the delimiter)"
            )
    return Table(path, header, {h: [r[j] for r in rows] for j, h in enumerate(header)})


def numeric_column(table: Table, name: str) -> np.ndarray:
    """Column ``name`` as ``[N]`` float64 (NaN = empty); text in it is a DataError naming the row and value."""
    out = np.empty(len(table), dtype=np.float64)
    for i, text in enumerate(table.columns[name]):
        try:
            v = parse_float(text)
        except ValueError:
            raise DataError(
                f"tabular data: {table.path} column {name!r} is numeric but line {i + 2} holds {text!r}; fix the "
                f"value, or list {name!r} in data.tabular.categorical_columns"
            ) from None
        out[i] = math.nan if v is None else v
    return out


def column_roles(table: Table, label: str, numeric: list[str], categorical: list[str], ignore: list[str]):
    """``(numeric, categorical)`` column names: as configured (checked against the header), or inferred from the
    training file (numeric when every non-empty value parses as a number) and logged."""
    where = f"tabular data: {table.path}"
    if label not in table.header:
        raise DataError(
            f"{where} has no label column {label!r} (columns: {', '.join(table.header)}); set data.tabular.label_column"
        )
    for what, names in (("numeric", numeric), ("categorical", categorical), ("ignore", ignore)):
        missing = [n for n in names if n not in table.header]
        if missing:
            raise DataError(
                f"{where}: data.tabular.{what}_columns names {missing}, not in the header ({', '.join(table.header)})"
            )
    both = sorted(set(numeric) & set(categorical))
    if both:
        raise DataError(f"{where}: column(s) {both} are listed as both numeric and categorical")
    if numeric or categorical:
        return list(numeric), list(categorical)
    num, cat = [], []
    for name in table.header:
        if name == label or name in ignore:
            continue
        try:
            for text in table.columns[name]:
                parse_float(text)
            num.append(name)
        except ValueError:
            cat.append(name)
    log.info("%s: inferred numeric columns %s and categorical columns %s", table.path, num, cat)
    return num, cat


def label_ids(values: Sequence[str], classes: Sequence[str], where: str) -> torch.Tensor:
    """``[N]`` int64 class ids of label strings; a label outside ``classes`` is a DataError."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        key = v.strip()
        if key not in index:
            raise DataError(
                f"{where}: label {key!r} (row {i + 1}) is not in the class set {list(classes)}; fix the label or "
                "declare every class in data.tabular.classes"
            )
        out[i] = index[key]
    return torch.from_numpy(out)


def sorted_classes(values: Sequence[str]) -> tuple[str, ...]:
    """The distinct labels, numerically sorted when they are all numbers, else lexicographically."""
    distinct = {v.strip() for v in values}
    try:
        return tuple(sorted(distinct, key=float))
    except ValueError:
        return tuple(sorted(distinct))


def fit_codec(columns: dict, numeric: list[str], categorical: list[str], bins: int, min_count: int) -> TableCodec:
    """A :class:`TableCodec` fitted on training columns (numeric: float64 arrays, categorical: strings)."""
    fields = [FieldCodec.fit_numeric(n, np.asarray(columns[n], dtype=np.float64), bins) for n in numeric]
    fields += [FieldCodec.fit_categorical(n, Counter(columns[n]), min_count) for n in categorical]
    return TableCodec(fields)


def token_set(codec: TableCodec, columns: dict, y: torch.Tensor, where: str) -> TokenSet:
    """Encode columns into a :class:`TokenSet` (``[N, F + 1]`` ids)."""
    return TokenSet(codec.encode(columns, where), y)


__all__ = [
    "CLS_ID",
    "PAD_ID",
    "FieldCodec",
    "Table",
    "TableCodec",
    "column_roles",
    "fit_codec",
    "label_ids",
    "numeric_column",
    "read_csv",
    "sorted_classes",
    "token_set",
]
