"""Criteo Display Advertising Challenge (click-through rate) as field tokens, preprocessed once into a memory-mapped
cache.

Source: ``data.root/train.txt``, tab-separated, one impression per line: the click label (0/1), 13 integer fields
``I1..I13`` and 26 hashed categorical fields ``C1..C26`` (40 fields; an empty field is missing). The full file has
about 45 M lines (11 GB).

Preprocessing (the common CTR recipe, e.g. the DeepCTR/PNN/AutoInt pipelines):

- integer field value ``v``: ``floor(log(v)^2)`` for ``v > 2``, else ``v`` itself (so 0, 1, 2 and negative values
  keep their own bucket); the bucket is then a categorical value of its field;
- categorical values (and integer buckets) seen fewer than ``data.tabular.min_count`` times in the training split map
  to one out-of-vocabulary id per field; a missing value has its own id; a value never seen in training (validation,
  test) is out of vocabulary, never an error;
- a seeded 8:1:1 train/validation/test split: line ``i`` (counting well-formed lines) goes to train, validation or
  test by a uniform draw of ``numpy.random.RandomState(data.split_seed)`` (< 0.8, < 0.9, else), so the split does not
  depend on chunk boundaries;
- a line without exactly 40 fields, or with a label other than 0/1 or text in an integer field, is malformed:
  ``data.tabular.bad_lines=skip`` (default) skips it and the count (and the first line number) is logged and written
  to the cache's ``meta.json``; ``fail`` stops with an error naming the line.

Both passes (counting, then encoding) read the file in chunks of :data:`CHUNK_LINES` lines, so memory holds one
chunk plus the per-field value counts (for the full file these counts are the largest part: a few GB). The result
is cached as ``.npy`` files opened memory-mapped: ``{train,val,test}_ids.npy`` (``[N, 40]`` int32: ``[CLS]`` and 39
field tokens, as :mod:`kdlab.data.tabular`) and ``*_y.npy``, in ``<data.cache_dir or data.root/.kdlab_cache>/
criteo-<key>``, where the key hashes the source file's path, size and modification time and every preprocessing
setting: editing the file or a setting rebuilds the cache (older caches of the same file are removed).
``data.tabular.train_limit`` keeps the first N training rows of the cache (no rebuild).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import operator
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import DataError, register_dataset
from kdlab.data.tabular import FieldCodec, TableCodec
from kdlab.data.tokens import TokenSet, TokenSplits
from kdlab.paths import why_unusable

log = logging.getLogger("kdlab")

INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
FIELDS = INT_FIELDS + CAT_FIELDS
NUM_COLUMNS = 1 + len(FIELDS)
CHUNK_LINES = 200_000
CACHE_VERSION = 1
SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=1 << 16)
def bucket(value: str) -> str:
    """An integer field's token: ``floor(log(v)^2)`` for ``v > 2``, else ``v``; ``""`` stays missing. Raises
    ValueError for text that is not an integer."""
    if value == "":
        return ""
    v = int(value)
    return str(math.floor(math.log(v) ** 2)) if v > 2 else str(v)


class _Reader:
    """Reads ``train.txt`` in chunks of parsed lines, counting (or refusing) malformed ones."""

    def __init__(self, path: Path, bad_lines: str, quiet: bool = False) -> None:
        self.path = path
        self.quiet = quiet
        self.bad_lines = bad_lines
        self.bad = 0
        self.first_bad: int | None = None
        self.lines = 0

    def _bad(self, number: int, why: str) -> None:
        if self.bad_lines == "fail":
            raise DataError(
                f"criteo: {self.path} line {number}: {why}; fix or remove the line, or set "
                "data.tabular.bad_lines=skip to skip malformed lines (they are counted)"
            )
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = number
            if not self.quiet:
                log.warning("criteo: %s line %d: %s (skipped; malformed lines are counted)", self.path, number, why)

    def chunks(self, chunk_lines: int = CHUNK_LINES):
        """Yield ``(labels [n] int8, columns: list of 39 lists of str)`` per chunk of well-formed lines."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            number = 0
            while True:
                block = list(itertools.islice(f, chunk_lines))
                if not block:
                    return
                labels: list[int] = []
                rows: list[list[str]] = []
                for line in block:
                    number += 1
                    parts = line.rstrip("\r\n").split("\t")
                    if len(parts) != NUM_COLUMNS:
                        self._bad(number, f"{len(parts)} tab-separated fields, expected {NUM_COLUMNS}")
                        continue
                    if parts[0] not in ("0", "1"):
                        self._bad(number, f"label {parts[0]!r} is not 0 or 1")
                        continue
                    try:
                        row = [bucket(v) for v in parts[1:14]] + parts[14:]
                    except ValueError:
                        self._bad(number, "an integer field I1..I13 holds text")
                        continue
                    labels.append(int(parts[0]))
                    rows.append(row)
                self.lines = number
                if rows:
                    yield np.array(labels, dtype=np.int8), [list(c) for c in zip(*rows)]


def _assign(rs: np.random.RandomState, n: int) -> np.ndarray:
    """``[n]`` split ids (0 train, 1 validation, 2 test) of the next ``n`` well-formed lines (8:1:1)."""
    u = rs.random_sample(n)
    return np.where(u < 0.8, 0, np.where(u < 0.9, 1, 2))


def cache_key(source: Path, cfg) -> str:
    """Hash of the source file's identity and every preprocessing setting."""
    st = source.stat()
    ident = {
        "source": str(source.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "min_count": cfg.tabular.min_count,
        "split_seed": cfg.split_seed,
        "bad_lines": cfg.tabular.bad_lines,
        "version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def preprocess(source: Path, out_dir: Path, cfg, chunk_lines: int = CHUNK_LINES) -> dict:
    """Two chunked passes over ``source`` into memory-mapped token arrays in ``out_dir`` (see the module docstring).
    Returns the metadata written to ``out_dir/meta.json``."""
    tc = cfg.tabular
    counts = [Counter() for _ in FIELDS]
    sizes = [0, 0, 0]
    reader = _Reader(source, tc.bad_lines)
    rs = np.random.RandomState(cfg.split_seed)
    for labels, columns in reader.chunks(chunk_lines):
        split = _assign(rs, len(labels))
        train = np.flatnonzero(split == 0)
        if len(train):
            pick = operator.itemgetter(*train.tolist())
            for c, col in zip(counts, columns):
                c.update(pick(col) if len(train) > 1 else [col[int(train[0])]])
        for s in range(3):
            sizes[s] += int((split == s).sum())
    if sum(sizes) == 0:
        raise DataError(f"criteo: {source} has no well-formed line ({reader.bad} malformed); see the format above")
    codec = TableCodec([FieldCodec.fit_categorical(n, c, tc.min_count) for n, c in zip(FIELDS, counts)])
    del counts
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [
        np.lib.format.open_memmap(out_dir / f"{s}_ids.npy", "w+", np.int32, (n, NUM_COLUMNS))
        for s, n in zip(SPLITS, sizes)
    ]
    ys = [np.lib.format.open_memmap(out_dir / f"{s}_y.npy", "w+", np.int8, (n,)) for s, n in zip(SPLITS, sizes)]
    filled = [0, 0, 0]
    rs = np.random.RandomState(cfg.split_seed)
    second = _Reader(source, "skip", quiet=True)
    for labels, columns in second.chunks(chunk_lines):
        split = _assign(rs, len(labels))
        tokens = codec.encode(dict(zip(FIELDS, columns)), "criteo")
        for s in range(3):
            rows = np.flatnonzero(split == s)
            ids[s][filled[s] : filled[s] + len(rows)] = tokens[rows]
            ys[s][filled[s] : filled[s] + len(rows)] = labels[rows]
            filled[s] += len(rows)
    for a in (*ids, *ys):
        a.flush()
    meta = {
        "version": CACHE_VERSION,
        "source": str(source),
        "lines": reader.lines,
        "bad_lines": reader.bad,
        "first_bad_line": reader.first_bad,
        "rows": dict(zip(SPLITS, sizes)),
        "vocab_size": codec.vocab_size,
        "field_sizes": [f.size for f in codec.fields],
        "min_count": tc.min_count,
        "split_seed": cfg.split_seed,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def cached(cfg) -> tuple[Path, dict]:
    """The cache directory of ``cfg``'s Criteo file and its metadata, building it when missing or stale."""
    source = Path(cfg.root).expanduser() / "train.txt"
    if not source.is_file():
        raise DataError(
            f"criteo: {source} {why_unusable(source)}; put the Criteo Display Advertising Challenge train.txt "
            "(tab-separated: label, I1..I13, C1..C26) in data.root"
        )
    if source.stat().st_size == 0:
        raise DataError(f"criteo: {source} is empty")
    base = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else source.parent / ".kdlab_cache"
    key = cache_key(source, cfg)
    final = base / f"criteo-{key}"
    meta_path = final / "meta.json"
    if meta_path.is_file():
        return final, json.loads(meta_path.read_text())
    base.mkdir(parents=True, exist_ok=True)
    log.info("criteo: preprocessing %s into %s (once; cached)", source, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".criteo-{key}-", dir=base))
    try:
        meta = preprocess(source, tmp, cfg)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: use its cache
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = json.loads(meta_path.read_text())
    for old in base.glob("criteo-*"):
        if old != final and old.is_dir():
            old_meta = old / "meta.json"
            if old_meta.is_file() and json.loads(old_meta.read_text()).get("source") == str(source):
                shutil.rmtree(old, ignore_errors=True)
    if meta["bad_lines"]:
        log.warning("criteo: %d malformed line(s) skipped (first: line %s)", meta["bad_lines"], meta["first_bad_line"])
    return final, meta


@register_dataset("criteo", description="Criteo CTR train.txt -> 39 field tokens, 8:1:1 split, memory-mapped cache")
def criteo(cfg) -> TokenSplits:
    """Criteo as ``[N, 40]`` field tokens (memory-mapped), with its own validation split (see the module docstring)."""
    folder, meta = cached(cfg)

    def load(split: str, limit: int | None = None) -> TokenSet:
        ids = np.load(folder / f"{split}_ids.npy", mmap_mode="r")
        y = np.load(folder / f"{split}_y.npy")
        if limit is not None and limit < len(y):
            ids, y = ids[:limit], y[:limit]
        return TokenSet(ids, torch.from_numpy(y.astype(np.int64)))

    rows = meta["rows"]
    empty = [s for s in SPLITS if rows[s] == 0]
    if empty:
        raise DataError(f"criteo: the {'/'.join(empty)} split(s) of {meta['source']} are empty; the file is too short")
    return TokenSplits(
        name="criteo",
        train=load("train", cfg.tabular.train_limit),
        val=load("val"),
        test=load("test"),
        num_classes=2,
        vocab_size=int(meta["vocab_size"]),
        seq_len=NUM_COLUMNS,
        classes=("no click", "click"),
        fields=FIELDS,
    )


def write_criteo_format(path: str | Path, rows: int, seed: int = 0, malformed: int = 0) -> Path:
    """Write a generated file in Criteo's ``train.txt`` format (tests, benchmarks; no real data).

    Integer fields are Poisson/geometric counts (about 10 % missing), categorical fields 8-hex-digit hashes drawn
    Zipf-like from a few hundred values per field (about 5 % missing); the label depends on ``I1`` and ``C1`` so a
    model can learn it (ROC AUC well above 0.5). ``malformed`` lines with a missing field are inserted at seeded
    positions.

    Returns:
        ``path``.
    """
    rs = np.random.RandomState(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ints = rs.geometric(0.2, size=(rows, 13)) - 1
    ints_missing = rs.random_sample((rows, 13)) < 0.1
    cat_ids = np.minimum(rs.zipf(1.5, size=(rows, 26)), 300)
    cat_missing = rs.random_sample((rows, 26)) < 0.05
    logit = 0.4 * (np.minimum(ints[:, 0], 8) - 3) + np.where(cat_ids[:, 0] % 3 == 0, 1.0, -0.7)
    labels = (rs.random_sample(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    bad_at = set(rs.choice(rows, size=min(malformed, rows), replace=False).tolist()) if malformed else set()
    with open(path, "w") as f:
        for i in range(rows):
            fields = [str(labels[i])]
            fields += ["" if ints_missing[i, j] else str(ints[i, j]) for j in range(13)]
            fields += [
                "" if cat_missing[i, j] else f"{(cat_ids[i, j] * 2654435761 + j) % 2**32:08x}" for j in range(26)
            ]
            if i in bad_at:
                fields = fields[:-1]
            f.write("\t".join(fields) + "\n")
    return path
