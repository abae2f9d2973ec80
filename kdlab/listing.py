"""``kdlab list``: registry names with a one-line description (models: parameters, MACs and taps).

The registries are filled by importing the modules that define the models, methods and datasets, and those import
torch (seconds). The rows of the plain listings are a pure function of kdlab's source files, so they are kept in a
small JSON cache (``$KDLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdlab``, else ``~/.cache/kdlab``) keyed by a fingerprint
of those files (path, size, modification time) and of the interpreter: while nothing changed, ``kdlab list``
answers without importing torch. Any edit of a file under ``kdlab/`` changes the fingerprint and the next listing
imports the registries again and rewrites the cache. ``kdlab list models --verbose`` builds every model (parameters,
MACs), so it always imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("kdlab")

KINDS = ("models", "methods", "datasets", "metrics")
_CACHE_VERSION = 1


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def cache_dir() -> Path:
    """Directory of kdlab's small caches (``KDLAB_CACHE_DIR``, ``XDG_CACHE_HOME/kdlab`` or ``~/.cache/kdlab``)."""
    if os.environ.get("KDLAB_CACHE_DIR"):
        return Path(os.environ["KDLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdlab"


def source_fingerprint() -> str:
    """Hex digest of every ``.py`` file of the kdlab package (relative path, size, mtime) and of the interpreter."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{_CACHE_VERSION}\0{sys.version}\0{sys.prefix}\0{root}".encode())
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def live_rows(what: str) -> list[list[str]]:
    """The rows of the plain listing of ``what``, read from the registries (imports torch and every module)."""
    if what == "methods":
        from kdlab.methods import METHODS

        return [
            [name, METHODS.meta(name).get("description") or _first_line(METHODS.get(name).__doc__)]
            for name in METHODS.names()
        ]
    if what == "datasets":
        from kdlab.data import DATASETS, dataset_names

        return [
            [name, DATASETS.meta(name).get("description") or _first_line(DATASETS.get(name).__doc__)]
            for name in dataset_names()
        ]
    if what == "metrics":
        from kdlab.metrics import METRICS

        return [[name, METRICS.meta(name).get("description", "")] for name in METRICS.names()]
    if what == "models":
        from kdlab.models import MODELS, model_names

        families = {"cifar": 0, "imagenet": 1}
        names = sorted(model_names(), key=lambda n: families.get(MODELS.meta(n).get("family"), 2))
        return [[name, str(MODELS.meta(name).get("family", ""))] for name in names]
    raise ValueError(f"cannot list {what!r}: choose one of {', '.join(KINDS)}")


def registry_rows(what: str) -> list[list[str]]:
    """:func:`live_rows` of ``what``, from the cache when kdlab's sources are unchanged since it was written."""
    path = cache_dir() / f"registry-{what}.json"
    fingerprint = source_fingerprint()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("fingerprint") == fingerprint and isinstance(cached.get("rows"), list):
            return [[str(c) for c in row] for row in cached["rows"]]
    except (OSError, ValueError, AttributeError):
        pass
    rows = live_rows(what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "rows": rows}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:  # a read-only home: list anyway, just slower next time
        log.debug("could not write the registry cache %s: %s", path, err)
    return rows


def list_registry(what: str, verbose: bool = False) -> str:
    """A table (plain text) of the registered ``models``, ``methods`` or ``datasets``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    if what == "models" and verbose:
        from kdlab.models import MODELS, count_parameters, create

        for col in ("model", "family", "params (100 classes; ImageNet 1000)", "MACs", "taps"):
            table.add_column(col)
        for name, family in live_rows("models"):
            model = create(name, num_classes=1000 if MODELS.meta(name).get("family") == "imagenet" else 100)
            table.add_row(name, family, f"{count_parameters(model):,}", _macs(model), " ".join(model.tap_names()))
    else:
        columns = {"models": ("model", "family"), "methods": ("method", "description")}
        for col in columns.get(what, ("dataset", "description")):
            table.add_column(col)
        for row in registry_rows(what):
            table.add_row(*row)
    console = Console(width=200, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def _macs(model) -> str:
    try:
        from kdlab.models.flops import count_flops
    except ImportError:
        return "-"
    return f"{count_flops(model, model.input_size) / 1e6:,.1f}M"
