"""The ``data.tabular`` section: options of the token data sources (``tabular_csv``, ``criteo``, ``text_csv`` and the
bundled scikit-learn tables). A separate module so that :mod:`kdlab.config` imports it without the data layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.ranges import rng


@dataclass(kw_only=True)
class TabularConfig:
    """How a table or a text file becomes tokens (image datasets ignore this section)."""

    label_column: str = "label"
    """Column holding the class label (``tabular_csv``, ``text_csv``)."""
    numeric_columns: list[str] = field(default_factory=list)
    """Numeric columns (quantile-bucketised); with ``categorical_columns`` also empty, every column but the label and
    ``ignore_columns`` is inferred (numeric when every non-empty training value parses as a number) and logged."""
    categorical_columns: list[str] = field(default_factory=list)
    """Categorical columns (a vocabulary of the training values, rare ones to one out-of-vocabulary id)."""
    ignore_columns: list[str] = field(default_factory=list)
    """Columns that are read but not used (e.g. a timestamp, per-stage attack labels)."""
    classes: list[str] = field(default_factory=list)
    """The class set, in id order (empty: the sorted labels of the training file); a label outside it is an error."""
    numeric_bins: int = field(default=32, metadata=rng(ge=1))
    """Quantile buckets of a numeric column (edges from the training split)."""
    min_count: int = field(default=1, metadata=rng(ge=1))
    """A categorical value seen fewer times in the training split maps to the field's out-of-vocabulary id."""
    test_fraction: float = field(default=0.2, metadata=rng(gt=0, lt=1))
    """``tabular_csv`` without ``data.test_file`` (and the bundled tables): stratified test share (``split_seed``)."""
    train_limit: int | None = field(default=None, metadata=rng(ge=1))
    """Keep at most this many training rows (the first ones of the seeded split; small runs on a large file)."""
    bad_lines: Literal["skip", "fail"] = "skip"
    """``criteo``: a line with the wrong field count is skipped and counted (``skip``), or stops the run (``fail``)."""
    text_column: str = "text"
    """``text_csv``: the text column."""
    text_pair_column: str | None = None
    """``text_csv``: an optional second text (sentence pairs get token type ids 0 and 1)."""
    tokenizer: str | None = None
    """``text_csv``: a local Hugging Face tokenizer folder (``tokenizer.json`` or vocab files); never downloaded."""
    max_length: int = field(default=128, metadata=rng(ge=2))
    """``text_csv``: tokens per text (longer ones are truncated); batches are padded to their longest text."""
