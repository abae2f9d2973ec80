"""Tables as field tokens: ``tabular_csv`` (any CSV with a label column) and scikit-learn's bundled tables
(``breast_cancer``, ``wine``: real data, no download) through the same machinery (:mod:`kdlab.data.tabular`).

``tabular_csv`` reads ``data.train_files`` (one or more CSV files with one header, concatenated) and
``data.test_file`` under ``data.root``; without a test file a stratified ``data.tabular.test_fraction`` of the rows
(seeded by ``data.split_seed``) is the test split. Column roles come from ``data.tabular`` (or are inferred and
logged); buckets and vocabularies are fitted on the training split only. The HIL recipes (``configs/hil/``) read the
HAI security dataset this way (their header documents the assumed columns).
"""

from __future__ import annotations

import numpy as np
import torch

from kdlab.data.base import DataError, register_dataset
from kdlab.data.sources._common import resolve
from kdlab.data.split import stratified_split
from kdlab.data.tabular import (
    Table,
    column_roles,
    fit_codec,
    label_ids,
    numeric_column,
    read_csv,
    sorted_classes,
    token_set,
)
from kdlab.data.tokens import TokenSplits


def _select(columns: dict, index: np.ndarray) -> dict:
    return {k: (v[index] if isinstance(v, np.ndarray) else [v[i] for i in index]) for k, v in columns.items()}


def table_splits(
    name: str,
    columns: dict,
    y: torch.Tensor,
    classes: tuple[str, ...],
    numeric: list[str],
    categorical: list[str],
    cfg,
    test: tuple[dict, torch.Tensor] | None = None,
) -> TokenSplits:
    """Token splits of a table given as columns (numeric: float64 arrays with NaN; categorical: lists of strings).

    Args:
        name: dataset name.
        columns, y: the training table (all rows when ``test`` is None) and its ``[N]`` labels.
        classes: class names in id order.
        numeric, categorical: column roles (token order: numeric first).
        cfg: the data config (``tabular`` section, ``split_seed``).
        test: the test table and labels, or None to split ``tabular.test_fraction`` off (stratified, seeded).
    """
    tc = cfg.tabular
    if test is None:
        train_idx, test_idx = stratified_split(y, tc.test_fraction, cfg.split_seed)
        test = (_select(columns, test_idx.numpy()), y[test_idx])
        columns, y = _select(columns, train_idx.numpy()), y[train_idx]
    if tc.train_limit is not None and tc.train_limit < len(y):
        keep = np.arange(tc.train_limit)
        columns, y = _select(columns, keep), y[: tc.train_limit]
    codec = fit_codec(columns, numeric, categorical, tc.numeric_bins, tc.min_count)
    return TokenSplits(
        name=name,
        train=token_set(codec, columns, y, f"{name} train"),
        test=token_set(codec, test[0], test[1], f"{name} test"),
        num_classes=max(len(classes), 2),
        vocab_size=codec.vocab_size,
        seq_len=len(codec.fields) + 1,
        classes=classes,
        fields=tuple(f.name for f in codec.fields),
    )


def _columns(table: Table, numeric: list[str], categorical: list[str]) -> dict:
    out: dict = {n: numeric_column(table, n) for n in numeric}
    out.update({n: [v.strip() for v in table.columns[n]] for n in categorical})
    return out


def _concat(tables: list[Table]) -> Table:
    first = tables[0]
    for t in tables[1:]:
        if t.header != first.header:
            raise DataError(f"tabular data: {t.path} has another header than {first.path}; every file needs the same")
    columns = {h: [v for t in tables for v in t.columns[h]] for h in first.header}
    return Table(first.path, first.header, columns)


@register_dataset("tabular_csv", description="your own CSV table: label + numeric/categorical columns -> field tokens")
def tabular_csv(cfg) -> TokenSplits:
    """A CSV table (see the module docstring): ``[N, F + 1]`` field tokens per split."""
    tc = cfg.tabular
    if not cfg.train_files:
        raise DataError("tabular_csv: set data.train_files to one or more CSV files (relative paths under data.root)")
    train = _concat([read_csv(resolve(cfg.root, f)) for f in cfg.train_files])
    numeric, categorical = column_roles(
        train, tc.label_column, tc.numeric_columns, tc.categorical_columns, tc.ignore_columns
    )
    classes = tuple(tc.classes) or sorted_classes(train.columns[tc.label_column])
    if len(classes) < 2:
        raise DataError(
            f"tabular_csv: {train.path} has a single label {classes[0]!r} in column {tc.label_column!r}; a classifier "
            "needs at least 2 classes"
        )
    y = label_ids(train.columns[tc.label_column], classes, f"tabular_csv: {train.path}")
    test = None
    if cfg.test_file:
        t = read_csv(resolve(cfg.root, cfg.test_file))
        missing = [c for c in [tc.label_column, *numeric, *categorical] if c not in t.header]
        if missing:
            raise DataError(f"tabular_csv: test file {t.path} lacks column(s) {missing} of the training file")
        test = (
            _columns(t, numeric, categorical),
            label_ids(t.columns[tc.label_column], classes, f"tabular_csv: {t.path}"),
        )
    return table_splits(
        "tabular_csv", _columns(train, numeric, categorical), y, classes, numeric, categorical, cfg, test
    )


def _sklearn_table(name: str, loader, cfg) -> TokenSplits:
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float64)
    names = [str(n) for n in bunch.feature_names]
    columns = {n: x[:, j] for j, n in enumerate(names)}
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    classes = tuple(str(c) for c in bunch.target_names)
    return table_splits(name, columns, y, classes, names, [], cfg)


@register_dataset("breast_cancer", description="scikit-learn breast cancer (569 rows, 30 numeric fields, 2 classes)")
def breast_cancer(cfg) -> TokenSplits:
    """scikit-learn's Wisconsin breast cancer table as 30 numeric field tokens (bundled, no download); the test split
    is a stratified ``data.tabular.test_fraction`` chosen by ``data.split_seed``."""
    from sklearn.datasets import load_breast_cancer

    return _sklearn_table("breast_cancer", load_breast_cancer, cfg)


@register_dataset("wine", description="scikit-learn wine (178 rows, 13 numeric fields, 3 classes)")
def wine(cfg) -> TokenSplits:
    """scikit-learn's wine table as 13 numeric field tokens (bundled, no download)."""
    from sklearn.datasets import load_wine

    return _sklearn_table("wine", load_wine, cfg)
