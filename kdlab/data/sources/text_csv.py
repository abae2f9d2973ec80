"""Text classification from CSV or JSONL: ``text``, optional ``text_pair`` and ``label`` columns, tokenised by a
Hugging Face tokenizer loaded from a local folder (never downloaded).

``data.train_files`` (CSV with a header, or ``.jsonl``/``.json`` with one object per line) are concatenated;
``data.test_file`` is the test split (without one, a stratified ``data.tabular.test_fraction`` is split off, seeded by
``data.split_seed``). ``data.tabular.tokenizer`` names the folder (``tokenizer.json``, or ``vocab.txt`` and friends:
anything ``transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)`` reads). Texts are truncated to
``data.tabular.max_length`` tokens (special tokens included) and each batch is padded to its longest text
(:class:`~kdlab.data.tokens.TokenLoader`). Column names come from ``data.tabular.text_column``,
``text_pair_column`` and ``label_column``; the class set from ``data.tabular.classes`` or the sorted training labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import DataError, register_dataset
from kdlab.data.sources._common import resolve
from kdlab.data.split import stratified_split
from kdlab.data.tabular import label_ids, read_csv, sorted_classes
from kdlab.data.tokens import TokenSet, TokenSplits
from kdlab.paths import why_unusable


def read_records(path: Path, columns: list[str]) -> dict[str, list[str]]:
    """The named columns of a CSV (header row) or JSONL file, as strings; a missing column or an empty file is a
    DataError naming the file."""
    if not path.is_file():
        raise DataError(f"text_csv: {path} {why_unusable(path)}")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"text_csv: {path} line {i} is not a JSON object ({err.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"text_csv: {path} line {i} is not a JSON object")
                rows.append(obj)
        if not rows:
            raise DataError(f"text_csv: {path} is empty; it needs one JSON object per line")
        for name in columns:
            missing = next((i for i, r in enumerate(rows, start=1) if name not in r), None)
            if missing is not None:
                raise DataError(f"text_csv: {path} record {missing} has no {name!r} field (set data.tabular.*_column)")
        return {name: ["" if r[name] is None else str(r[name]) for r in rows] for name in columns}
    table = read_csv(path)
    for name in columns:
        if name not in table.header:
            raise DataError(
                f"text_csv: {path} has no column {name!r} (columns: {', '.join(table.header)}); set "
                "data.tabular.text_column / text_pair_column / label_column"
            )
    return {name: table.columns[name] for name in columns}


def load_tokenizer(folder: str | None):
    """``AutoTokenizer.from_pretrained(folder, local_files_only=True)``; a missing folder is a DataError."""
    if not folder:
        raise DataError("text_csv: set data.tabular.tokenizer to a local Hugging Face tokenizer folder")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(
            f"text_csv: tokenizer folder {str(path)!r} {why_unusable(path, 'folder')} (nothing is downloaded)"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"text_csv: cannot load a tokenizer from {str(path)!r} ({str(err).splitlines()[0]})") from None


def _encode(tokenizer, records: dict, cfg, y: torch.Tensor) -> TokenSet:
    tc = cfg.tabular
    pair = records.get(tc.text_pair_column) if tc.text_pair_column else None
    enc = tokenizer(
        records[tc.text_column],
        pair,
        truncation=True,
        max_length=tc.max_length,
        padding="max_length",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    types = np.asarray(enc["token_type_ids"], dtype=np.int8) if pair is not None else None
    return TokenSet(ids, y, lengths=mask.sum(1), type_ids=types)


@register_dataset("text_csv", description="text classification from CSV/JSONL with a local Hugging Face tokenizer")
def text_csv(cfg) -> TokenSplits:
    """Word-piece token splits of CSV/JSONL text files (see the module docstring)."""
    tc = cfg.tabular
    if not cfg.train_files:
        raise DataError("text_csv: set data.train_files to one or more CSV/JSONL files (relative to data.root)")
    columns = [tc.text_column, *([tc.text_pair_column] if tc.text_pair_column else []), tc.label_column]
    parts = [read_records(resolve(cfg.root, f), columns) for f in cfg.train_files]
    train = {c: [v for p in parts for v in p[c]] for c in columns}
    classes = tuple(tc.classes) or sorted_classes(train[tc.label_column])
    if len(classes) < 2:
        raise DataError(f"text_csv: the training labels hold a single class {classes}; a classifier needs two or more")
    y = label_ids(train[tc.label_column], classes, "text_csv: training file(s)")
    if cfg.test_file:
        test = read_records(resolve(cfg.root, cfg.test_file), columns)
        ty = label_ids(test[tc.label_column], classes, f"text_csv: {cfg.test_file}")
    else:
        tr, te = stratified_split(y, tc.test_fraction, cfg.split_seed)
        test = {c: [v[i] for i in te.tolist()] for c, v in train.items()}
        train = {c: [v[i] for i in tr.tolist()] for c, v in train.items()}
        ty, y = y[te], y[tr]
    if tc.train_limit is not None:
        train = {c: v[: tc.train_limit] for c, v in train.items()}
        y = y[: tc.train_limit]
    tokenizer = load_tokenizer(tc.tokenizer)
    return TokenSplits(
        name="text_csv",
        train=_encode(tokenizer, train, cfg, y),
        test=_encode(tokenizer, test, cfg, ty),
        num_classes=len(classes),
        vocab_size=len(tokenizer),
        seq_len=tc.max_length,
        pad_token_id=int(tokenizer.pad_token_id or 0),
        classes=classes,
    )
