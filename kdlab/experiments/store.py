"""The results store: one SQLite file, one row per run, safe for several processes writing at once.

The file (default ``runs/results.sqlite``) runs in WAL mode with a busy timeout; every write is one short
``BEGIN IMMEDIATE`` transaction, retried while another writer holds the lock, so concurrent sweeps lose no rows.
A ``schema`` table records the layout version; opening a file written with another version is a
:class:`StoreError` that says what to do. A run is keyed by its absolute run directory: recording it again
(a re-run, a re-import) replaces its row.

Run directories are read by :func:`read_run_dir` (``summary.json``, ``config.yaml`` and, for sweep runs,
``sweep.json`` with the run's identity in its sweep); a missing or corrupt one raises :class:`RunDirError`.
Only the standard library and PyYAML are imported at module level.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 4
#: Columns each schema version added; an older store gains them when a writer opens it (readers accept it as is).
ADDED_COLUMNS = {
    2: ("teacher_top1", "teacher_top5", "teachers_test"),
    3: ("last_auc", "last_nll", "last_ece", "metrics", "select_by"),
    4: ("last_map", "best_map"),
}
DEFAULT_STORE = "runs/results.sqlite"

# (name, SQL type, description): the columns of the ``runs`` table, in display order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("run_dir", "TEXT PRIMARY KEY", "absolute run directory (the key)"),
    ("config_hash", "TEXT", "hash of the resolved config without operational keys"),
    ("sweep", "TEXT", "sweep name (NULL for a run imported outside a sweep)"),
    ("row_label", "TEXT", "row label of the sweep spec"),
    ("pair", "TEXT", "report column: teacher(s)→student"),
    ("grid", "TEXT", "grid point as JSON {dotted key: value}"),
    ("seed", "INTEGER", "train.seed"),
    ("method", "TEXT", "method registry name"),
    ("teachers", "TEXT", "teacher model names, comma-separated"),
    ("student", "TEXT", "student model name"),
    ("dataset", "TEXT", "dataset name"),
    ("target_top1", "REAL", "published top-1 of the row (box mAP for a detection run)"),
    ("teacher_top1", "REAL", "test top-1 of the (first) teacher, measured at the run's start (%)"),
    ("teacher_top5", "REAL", "test top-5 of the (first) teacher (%)"),
    ("teachers_test", "TEXT", "every teacher's measured test accuracy as JSON [{name, top1, top5}]"),
    ("last_top1", "REAL", "test top-1 after the last epoch (%)"),
    ("last_top5", "REAL", "test top-5 after the last epoch (%)"),
    ("last_epoch", "INTEGER", "epoch of the last evaluation"),
    ("best_top1", "REAL", "best test top-1 over evaluated epochs (%)"),
    ("best_top5", "REAL", "test top-5 at the best top-1 epoch (%)"),
    ("best_epoch", "INTEGER", "epoch of the best top-1"),
    ("epochs", "INTEGER", "epochs trained"),
    ("steps", "INTEGER", "optimiser steps"),
    ("train_time_s", "REAL", "training time (s)"),
    ("wall_time_s", "REAL", "wall time of the sweep's run, start to summary (s)"),
    ("images_per_s", "REAL", "training throughput"),
    ("kdlab_version", "TEXT", "kdlab version"),
    ("torch_version", "TEXT", "torch version"),
    ("versions", "TEXT", "versions as JSON"),
    ("git_commit", "TEXT", "git commit of the kdlab source"),
    ("finished", "INTEGER", "1 when the run reached train.epochs"),
    ("last_auc", "REAL", "test ROC AUC after the last epoch (0..1), when evaluated"),
    ("last_nll", "REAL", "test NLL after the last epoch, when evaluated"),
    ("last_ece", "REAL", "test ECE after the last epoch (0..1), when evaluated"),
    ("metrics", "TEXT", "every evaluated test metric as JSON {last: {name: value}, best: {name: value}}"),
    ("select_by", "TEXT", "train.select_by: the metric that chose the best epoch"),
    ("last_map", "REAL", "detection: test box mAP (COCO AP@[.5:.95], %) after the last epoch; NULL otherwise"),
    ("best_map", "REAL", "detection: test box mAP at the best epoch (train.select_by, %)"),
    ("recorded_at", "TEXT", "UTC time of recording"),
)
COLUMN_NAMES = tuple(c[0] for c in COLUMNS)
NUMERIC = {c[0] for c in COLUMNS if c[1] in ("REAL", "INTEGER")}


class StoreError(ValueError):
    """The results store cannot be used as asked (schema version, unknown column, unreadable file)."""


class RunDirError(ValueError):
    """A run directory is missing or does not hold a readable finished-or-not kdlab run."""


@dataclass
class RunFiles:
    """What a run directory holds: ``summary`` (summary.json), ``config`` (resolved config mapping),
    ``identity`` (sweep.json, empty outside sweeps) and the config hash."""

    run_dir: Path
    summary: dict
    config: dict
    identity: dict
    config_hash: str


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(
            f"{str(path)!r} is not readable JSON ({err}); the run is corrupt: delete it to re-run"
        ) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{str(path)!r} does not hold a JSON object; the run is corrupt: delete it to re-run")
    return data


def read_config_hash(run_dir: Path) -> tuple[dict, str]:
    """The resolved config of a run directory's ``config.yaml`` (re-loaded strictly, defaults filled in) and its
    :func:`~kdlab.experiments.spec.config_hash`. Raises :class:`RunDirError` when it is missing or does not load."""
    import yaml

    from kdlab.config import ConfigError, build_config, to_dict
    from kdlab.experiments.spec import config_hash

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{str(run_dir)!r} has no config.yaml: not a kdlab run directory")
    try:
        config = to_dict(build_config(yaml.safe_load(path.read_text()) or {}))
    except (yaml.YAMLError, ConfigError, OSError) as err:
        raise RunDirError(f"{str(path)!r} does not load ({str(err).splitlines()[0]}); the run is corrupt") from None
    return config, config_hash(config)


def written_config_hash(run_dir: Path) -> str | None:
    """The :func:`~kdlab.experiments.spec.config_hash` of ``config.yaml`` exactly as written (not re-resolved), or
    ``None`` when it does not parse.

    The trainer records the hash of the config it dumped. A run trained before a config field was added has no such
    key in its ``config.yaml``, so re-resolving it (the new field at its default) gives another hash although neither
    file changed; this hash still matches, so such a run imports, while a ``summary.json`` left beside the config of
    another run matches neither."""
    import yaml

    from kdlab.experiments.spec import config_hash

    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (yaml.YAMLError, OSError):
        return None
    return config_hash(raw) if isinstance(raw, dict) else None


def read_run_dir(run_dir: str | Path) -> RunFiles:
    """Read a finished (or stopped) run directory; :class:`RunDirError` names what is missing or corrupt."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"run directory {str(d)!r} does not exist")
    if not (d / "summary.json").is_file():
        raise RunDirError(f"{str(d)!r} has no summary.json: the run never finished (resume it or re-run it)")
    summary = _read_json(d / "summary.json")
    for key in ("last", "best", "method", "student"):
        if key not in summary:
            raise RunDirError(f"{str(d / 'summary.json')!r} lacks {key!r}; the run is corrupt: delete it to re-run")
    config, digest = read_config_hash(d)
    recorded = summary.get("config_hash")  # written by the trainer since run records carry it
    if recorded is not None and recorded not in (digest, written_config_hash(d)):
        raise RunDirError(
            f"{str(d / 'summary.json')!r} belongs to another config (hash {recorded}) than the config.yaml beside it "
            f"(hash {digest}): a stale result of an earlier run; finish or re-run the run to record it"
        )
    identity = _read_json(d / "sweep.json") if (d / "sweep.json").is_file() else {}
    return RunFiles(d, summary, config, identity, digest)


def record_from_run(files: RunFiles) -> dict[str, Any]:
    """The store row of a run directory (identity from ``sweep.json`` when the run belongs to a sweep)."""
    from kdlab.experiments.spec import pair_name

    s, ident, cfg = files.summary, files.identity, files.config
    versions = s.get("versions") or {}
    published = cfg.get("target") or {}
    target = ident.get("target", published.get("top1", published.get("map")))  # box mAP: a detection run
    return {
        "run_dir": str(files.run_dir.resolve()),
        "config_hash": files.config_hash,
        "sweep": ident.get("sweep"),
        "row_label": ident.get("label") or run_label(cfg),
        "pair": ident.get("pair", pair_name(cfg)),
        "grid": json.dumps(ident.get("grid", {}), sort_keys=True),
        "seed": s.get("seed"),
        "method": s.get("method"),
        "teachers": ",".join(s.get("teachers") or []),
        "student": s.get("student"),
        "dataset": s.get("dataset"),
        "target_top1": target,
        **_teacher_columns(s),
        "last_top1": s["last"].get("top1"),
        "last_top5": s["last"].get("top5"),
        "last_epoch": s["last"].get("epoch"),
        "best_top1": s["best"].get("top1"),
        "best_top5": s["best"].get("top5"),
        "best_epoch": s["best"].get("epoch"),
        "epochs": s.get("epochs"),
        "steps": s.get("steps"),
        "train_time_s": s.get("train_time_s"),
        "wall_time_s": ident.get("wall_time_s"),
        "images_per_s": s.get("images_per_s"),
        "kdlab_version": versions.get("kdlab"),
        "torch_version": versions.get("torch"),
        "versions": json.dumps(versions, sort_keys=True),
        "git_commit": s.get("git_commit"),
        "finished": int(bool(s.get("finished"))),
        **_metric_columns(s),
    }


def run_label(config: dict) -> str:
    """The row label of a run outside a sweep, from its config: the method, with the method fields that differ
    from their defaults (``kd``, ``kd (temperature=2.0)``); the pair is the report's column."""
    from kdlab.config import ConfigError, build_config
    from kdlab.train.header import method_changes

    name = (config.get("method") or {}).get("name", "?")
    try:
        changed = method_changes(build_config(config).method)
    except (ConfigError, KeyError, TypeError, ValueError):
        return name
    return f"{name} ({', '.join(f'{k}={v}' for k, v in changed.items())})" if changed else name


def _metric_columns(summary: dict) -> dict[str, Any]:
    """``last_auc``/``last_nll``/``last_ece``, ``last_map``/``best_map`` (detection) and the JSON of every evaluated
    metric (``kdlab.metrics``)."""
    skip = ("epoch", "n")
    last = {k: v for k, v in summary["last"].items() if k not in skip and isinstance(v, (int, float))}
    best = {k: v for k, v in summary["best"].items() if k not in skip and isinstance(v, (int, float))}
    return {
        "last_auc": last.get("auc"),
        "last_nll": last.get("nll"),
        "last_ece": last.get("ece"),
        "last_map": last.get("map"),
        "best_map": best.get("map"),
        "metrics": json.dumps({"last": last, "best": best}, sort_keys=True),
        "select_by": summary.get("select_by", "top1"),
    }


def _teacher_columns(summary: dict) -> dict[str, Any]:
    """``teacher_top1``/``teacher_top5`` (the first teacher) and ``teachers_test`` from the run header."""
    teachers = (summary.get("header") or {}).get("teachers") or []
    tested = [
        {"name": t.get("name"), "top1": t["test"].get("top1"), "top5": t["test"].get("top5")}
        for t in teachers
        if isinstance(t, dict) and isinstance(t.get("test"), dict)
    ]
    first = teachers[0].get("test") if teachers and isinstance(teachers[0], dict) else None
    return {
        "teacher_top1": first.get("top1") if isinstance(first, dict) else None,
        "teacher_top5": first.get("top5") if isinstance(first, dict) else None,
        "teachers_test": json.dumps(tested) if tested else None,
    }


class ResultsStore:
    """A SQLite results store (see the module docstring).

    Args:
        path: the SQLite file (created with its folder on first use when ``create``).
        timeout: seconds a writer waits for another one's lock before retrying.
        create: create a missing store; False (read-only commands) makes a missing store a :class:`StoreError`.

    Whatever ``path`` is, it is checked before anything is written (:func:`check_store_path`): a folder, a file that
    is not SQLite or an SQLite database without kdlab's ``schema`` table is refused without touching it.
    """

    def __init__(self, path: str | Path = DEFAULT_STORE, timeout: float = 30.0, create: bool = True) -> None:
        self.path = Path(path)
        self.timeout = timeout
        exists = check_store_path(self.path, create)
        if not exists:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(
                    f"cannot create the results store {str(self.path)!r}: {describe_os_error(err)}"
                ) from None
        try:
            with self._connect() as con:
                if create:
                    self._init_schema(con)
                else:
                    self._check_version(con)
        except sqlite3.OperationalError as err:
            raise StoreError(write_failure(self.path, err)) from None

    def _connect(self) -> _Connection:
        return _Connection(self.path, self.timeout)

    def _init_schema(self, con: sqlite3.Connection) -> None:
        try:
            self._retry(lambda: con.execute("PRAGMA journal_mode=WAL"))
            self._retry(lambda: self._create(con))
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as err:
            raise StoreError(f"results store {str(self.path)!r} is not a usable SQLite file ({err})") from None
        self._check_version(con, upgrade=True)

    def _check_version(self, con: sqlite3.Connection, upgrade: bool = False) -> None:
        try:
            row = con.execute("SELECT version FROM schema").fetchone()
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as err:
            raise StoreError(f"results store {str(self.path)!r} is not a usable SQLite file ({err})") from None
        if row is not None and isinstance(row[0], int) and 1 <= row[0] < SCHEMA_VERSION:
            if upgrade:  # an older kdlab's store: add the newer columns (old rows have them NULL)
                self._retry(lambda: self._upgrade(con, row[0]))
            return
        if row is None or row[0] != SCHEMA_VERSION:
            found = None if row is None else row[0]
            raise StoreError(
                f"results store {str(self.path)!r} has schema version {found}, this kdlab uses version "
                f"{SCHEMA_VERSION}; point --store at a new file (and re-record runs with `kdlab results --import`)"
            )

    def _upgrade(self, con: sqlite3.Connection, found: int) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            kinds = {name: kind for name, kind, _ in COLUMNS}
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for name in ADDED_COLUMNS.get(version, ()):
                    if name not in have:
                        con.execute(f"ALTER TABLE runs ADD COLUMN {name} {kinds[name]}")
            con.execute("UPDATE schema SET version = ?", (SCHEMA_VERSION,))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _create(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("CREATE TABLE IF NOT EXISTS schema (version INTEGER NOT NULL)")
            if con.execute("SELECT COUNT(*) FROM schema").fetchone()[0] == 0:
                con.execute("INSERT INTO schema (version) VALUES (?)", (SCHEMA_VERSION,))
            cols = ", ".join(f"{name} {kind}" for name, kind, _ in COLUMNS)
            con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
            con.execute("CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep, row_label, pair)")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _retry(self, fn, attempts: int = 20):
        """Run a write, retrying while the database is locked by another writer (beyond the busy timeout)."""
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as err:
                if ("locked" not in str(err) and "busy" not in str(err)) or i == attempts - 1:
                    raise
                time.sleep(0.05 * (i + 1))
        return None

    def record(self, rows: dict[str, Any] | Iterable[dict[str, Any]]) -> int:
        """Insert or replace rows (mappings of column -> value; missing columns are NULL) in one transaction;
        returns how many were written."""
        rows = [rows] if isinstance(rows, dict) else list(rows)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for r in rows:
            unknown = set(r) - set(COLUMN_NAMES)
            if unknown:
                raise StoreError(f"unknown store column(s) {sorted(unknown)}; columns: {', '.join(COLUMN_NAMES)}")
        values = [tuple({**r, "recorded_at": r.get("recorded_at") or now}.get(c) for c in COLUMN_NAMES) for r in rows]
        marks = ", ".join("?" for _ in COLUMN_NAMES)
        sql = f"INSERT OR REPLACE INTO runs ({', '.join(COLUMN_NAMES)}) VALUES ({marks})"

        def write() -> None:
            with self._connect() as con:
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.executemany(sql, values)
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:  # SQLite already rolled back after some errors (disk full)
                        con.execute("ROLLBACK")
                    raise

        try:
            self._retry(write)
        except sqlite3.OperationalError as err:
            raise StoreError(write_failure(self.path, err)) from None
        return len(values)

    def record_run_dir(self, run_dir: str | Path) -> dict[str, Any]:
        """Read a run directory and record it; returns its row. Raises :class:`RunDirError` when it is corrupt."""
        row = record_from_run(read_run_dir(run_dir))
        self.record(row)
        return row

    def query(self, sweep: str | None = None, where: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Rows (as dicts, in recording order) of ``sweep`` matching every ``key=value`` of ``where``.

        A key is a column (``method=kd``, ``seed=0``) or a grid key (``optim.lr=0.01``, matched in the grid JSON).
        """
        clauses, params = [], []
        if sweep is not None:
            clauses.append("sweep = ?")
            params.append(sweep)
        for text in where:
            if "=" not in text:
                raise StoreError(f"--where {text!r} must look like key=value, e.g. method=kd")
            key, value = (s.strip() for s in text.split("=", 1))
            if key in COLUMN_NAMES:
                clauses.append(f"{key} = ?")
                params.append(_typed(value) if key in NUMERIC else value)
            elif "." in key:
                clauses.append("json_extract(grid, ?) = ?")
                params += [f'$."{key}"', _typed(value)]
            else:
                from kdlab.registry import closest

                hint = closest(key, list(COLUMN_NAMES))
                did = f" Did you mean {hint!r}?" if hint else ""
                raise StoreError(
                    f"--where: unknown column {key!r}.{did} Columns: {', '.join(COLUMN_NAMES)} "
                    "(or a dotted grid key such as optim.lr)"
                )
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY rowid"
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, params).fetchall()]

    def count(self) -> int:
        """Number of rows."""
        with self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def describe_os_error(err: OSError) -> str:
    """An OS error in true words (what is wrong with which path), for messages about files kdlab was given."""
    where = f" ({err.filename})" if err.filename else ""
    words = {
        errno.ENOENT: "a folder on the path does not exist",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder, not a file",
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
        errno.EDQUOT: "disk quota exceeded",
    }
    if err.errno == errno.ENOTDIR and err.filename:
        blocker = next((p for p in Path(err.filename).parents if p.is_file()), None)
        if blocker is not None:
            return f"{str(blocker)!r} is a file, not a folder"
    return f"{words.get(err.errno, err.strerror or str(err))}{where}"


def write_failure(path: Path, err: sqlite3.OperationalError) -> str:
    """The message of a failed write to the store ``path`` (disk full, read-only file or folder, ...)."""
    text = str(err)
    if "full" in text:
        why = "no space left on the device (SQLite: database or disk is full); free space and run the command again"
    elif "readonly" in text or "read-only" in text:
        why = "the file or its folder is read-only; make it writable or point --store at another file"
    elif "unable to open" in text:
        why = "SQLite cannot open it for writing (check the folder's permissions)"
    else:
        why = f"SQLite: {text}"
    return f"cannot write the results store {str(path)!r}: {why}; the store is unchanged (the write was rolled back)"


def check_store_path(path: Path, create: bool) -> bool:
    """Check what ``path`` is before the store opens it; returns whether it exists.

    Raises :class:`StoreError` (nothing written) when ``path`` is a folder, cannot be read, is not an SQLite file,
    is an SQLite database of something else (no ``schema`` table), or is missing and ``create`` is False.
    """
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if not create:
            raise StoreError(
                f"results store {name!r} does not exist; check the path (a store is created by `kdlab sweep` or "
                "`kdlab results --import RUN_DIR`)"
            ) from None
        _check_creatable(path)
        return False
    except OSError as err:
        raise StoreError(f"cannot open the results store {name!r}: {describe_os_error(err)}") from None
    if path.is_dir():
        raise StoreError(
            f"results store {name!r} is a folder; --store takes a file, e.g. {str(path / 'results.sqlite')!r}"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise StoreError(f"cannot read the results store {name!r}: {describe_os_error(err)}") from None
    if st.st_size == 0:
        if create:
            return True  # a store another process is creating right now (SQLite writes its header later)
        raise StoreError(f"results store {name!r} is an empty file, not a kdlab results store")
    if head != SQLITE_HEADER:
        raise StoreError(
            f"results store {name!r} is not a usable SQLite file (it does not start with the SQLite header); it is "
            "not a kdlab results store: point --store at one or at a new file name"
        )
    try:
        tables = _tables(path)
    except StoreError:
        if not create:
            raise
        return True  # possibly another process creating the store right now: the locked initialisation decides
    if "schema" not in tables and (tables or not create):  # no tables at all: a store being created elsewhere
        raise StoreError(
            f"results store {name!r} is an SQLite database but not a kdlab results store (tables: "
            f"{', '.join(sorted(tables)) or 'none'}; no 'schema' table); it was left untouched: point --store at a "
            "kdlab results store or at a new file name"
        )
    return True


def _check_creatable(path: Path) -> None:
    """A missing store can be created: its nearest existing ancestor is a folder kdlab may write in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(f"cannot create the results store {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot create the results store {str(path)!r}: no permission to write in the folder {str(parent)!r}"
        )


def _tables(path: Path) -> set[str]:
    """Table names of an existing SQLite file, read without writing anything (immutable unless a WAL is pending)."""
    from urllib.parse import quote

    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "immutable=1"
    try:
        con = sqlite3.connect(f"file:{quote(str(path.absolute()))}?{mode}", uri=True)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise StoreError(f"results store {str(path)!r} is not a usable SQLite file ({err})") from None


def _typed(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class _Connection:
    """A short-lived connection with the busy timeout, closed on exit (``sqlite3``'s own context manager only
    ends a transaction). Transactions are explicit (``isolation_level=None``)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.con = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        self.con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc: object) -> None:
        self.con.close()
