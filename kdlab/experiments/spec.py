"""Sweep specs: a YAML file that names a table's rows, seeds and grid, expanded into one :class:`PlannedRun` each.

A spec (``configs/sweeps/*.yaml``)::

    name: tekap_cifar100          # results-store tag; run directories go under <run_dir>/<name>/
    description: "..."            # what the sweep reproduces
    run_dir: runs/sweeps          # optional (default runs/sweeps)
    seeds: [0, 1, 2]              # every row runs once per seed (sets train.seed)
    overrides: {train.epochs: 240}  # optional dotted overrides applied to every run
    grid: {optim.lr: [0.01, 0.05]}  # optional: cartesian product of dotted keys, crossed with every row
    rows:
      - label: "KD"               # row label in the report
        config: ../cifar100/kd/resnet32x4__resnet8x4.yaml   # relative to the spec file (or an inline mapping)
        overrides: {method.temperature: 2}                    # optional
        target: 73.33             # optional published top-1 (else the config's target.top1), or a mapping of the
                                  # published metrics, e.g. {top1: 72.89, top5: 91.80}
        pair: "resnet32x4→resnet8x4"  # optional report column (default: teacher(s)→student of the config)
    analysis:                     # optional: analyses of the trained runs (``kdlab analyze``), the seed's numbers
      - name: robustness          # one of kdlab.analysis.ANALYSES
        args: [--attacks, pgd]    # optional extra ``kdlab analyze`` arguments (the assumptions, written down)
        targets: {KD: {top1: 21.12, top5: 44.04}}  # optional: published numbers by row label

A run's identity is (row label, pair, grid point, seed); the report groups by (row label, pair, grid point) and
gives mean +- std over seeds. Run directories are ``<run_dir>/<name>/<label>__<pair>[__<grid>]__s<seed>``.
This module imports only the standard library and PyYAML; resolving configs (``resolve``) imports the registries.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_KEYS = ("name", "description", "run_dir", "seeds", "overrides", "grid", "rows", "analysis")
ANALYSIS_KEYS = ("name", "args", "targets", "description")
ROW_KEYS = ("label", "config", "overrides", "target", "pair")
# Config keys that do not change what a run computes: left out of the config hash.
HASH_EXCLUDED = (
    ("description",),
    ("target",),
    ("log",),
    ("train", "threads"),
    ("train", "run_dir"),
    ("train", "name"),
    ("train", "device"),
    ("train", "checkpoint_every"),
    ("train", "compile"),
    ("train", "channels_last"),
)


def _config_error(message: str) -> Exception:
    from kdlab.config import ConfigError

    return ConfigError(message)


@dataclass
class RowSpec:
    """One row of a table: a config plus overrides, and its published number."""

    label: str
    config: Path | dict
    """A config file, or an inline raw config mapping."""
    overrides: dict[str, Any] = field(default_factory=dict)
    target: float | None = None
    pair: str | None = None
    targets: dict[str, float] = field(default_factory=dict)
    """Every published metric of the row (``top1``, ``top5``, ...); ``target`` is its ``top1`` (``map`` for a
    detection row)."""


@dataclass
class AnalysisSpec:
    """An analysis (``kdlab analyze NAME RUN ARGS``) of a sweep's trained runs, with the seed's numbers.

    ``targets`` maps a row label to its published metrics (e.g. ``{"KD": {"top1": 21.12, "top5": 44.04}}``); the
    analysis applies to the rows it names, or to every row when it names none.
    """

    name: str
    args: list[str] = field(default_factory=list)
    targets: dict[str, dict[str, float]] = field(default_factory=dict)
    description: str = ""


@dataclass
class SweepSpec:
    """A parsed sweep spec (see the module docstring)."""

    name: str
    path: Path | None
    rows: list[RowSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    description: str = ""
    run_dir: str = "runs/sweeps"
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    analysis: list[AnalysisSpec] = field(default_factory=list)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point as ``{dotted key: value}`` (one empty point without a grid)."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class PlannedRun:
    """One run of a sweep: its identity, its resolved config (a plain mapping) and where it goes.

    ``config`` is ``to_dict`` of the resolved :class:`kdlab.config.RunConfig`; ``config_hash`` identifies it
    (see :func:`config_hash`).
    """

    sweep: str
    label: str
    pair: str
    grid: dict[str, Any]
    seed: int
    target: float | None
    run_dir: Path
    config: dict
    config_hash: str
    targets: dict[str, float] = field(default_factory=dict)
    """Every published metric of the run's row (``top1``, ``top5``, ...)."""

    @property
    def key(self) -> str:
        """A readable identity: ``label | pair | grid | s<seed>``."""
        grid = ", ".join(f"{k}={v}" for k, v in self.grid.items())
        return " | ".join(p for p in (self.label, self.pair, grid, f"s{self.seed}") if p)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (``→`` becomes ``-``; other unsafe characters ``_``)."""
    text = text.replace("→", "-").replace("+", "p").replace("=", "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _config_error(f"{where} must be a mapping of dotted keys to values, e.g. {{train.epochs: 240}}")
    return {str(k): v for k, v in value.items()}


def _check_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    from kdlab.registry import closest

    for key in data:
        if key not in allowed:
            hint = closest(str(key), list(allowed))
            did = f" Did you mean {hint!r}?" if hint else ""
            raise _config_error(f"{where}: unknown key {key!r}.{did} Valid keys: {', '.join(allowed)}")


def _metrics(value: Any, where: str) -> dict[str, float]:
    """A published-numbers mapping ``{metric: number}`` (a bare number is the top-1)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"top1": float(value)}
    if not isinstance(value, dict) or not value:
        raise _config_error(
            f"{where} must be a number (the published top-1) or a mapping such as {{top1: 72.9, top5: "
            f"91.1}}; got {value!r}"
        )
    out = {}
    for metric, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _config_error(f"{where}.{metric} must be a number, got {number!r}")
        out[str(metric)] = float(number)
    return out


def _analyses(raw: Any, where: str, labels: set[str]) -> list[AnalysisSpec]:
    """The ``analysis`` entries of a spec (one mapping or a list of them), checked against ``kdlab analyze``'s names
    and the spec's row labels."""
    if raw is None:
        return []
    from kdlab.analysis import ANALYSES  # only for specs that name an analysis (it imports torch)

    entries = raw if isinstance(raw, list) else [raw]
    out = []
    for i, entry in enumerate(entries):
        aw = f"{where}: analysis.{i}"
        if not isinstance(entry, dict):
            raise _config_error(f"{aw} must be a mapping with name (one of {', '.join(ANALYSES)}), args and targets")
        _check_keys(entry, ANALYSIS_KEYS, aw)
        name = entry.get("name")
        if name not in ANALYSES:
            raise _config_error(f"{aw}: name must be one of {', '.join(ANALYSES)} (kdlab analyze), got {name!r}")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
            raise _config_error(f"{aw}: args must be a list of kdlab analyze arguments, e.g. [--attacks, pgd]")
        targets_raw = entry.get("targets") or {}
        if not isinstance(targets_raw, dict):
            raise _config_error(f"{aw}: targets must map row labels to published numbers")
        unknown = sorted(set(map(str, targets_raw)) - labels)
        if unknown:
            raise _config_error(f"{aw}: targets name row label(s) {unknown} that no row has; rows: {sorted(labels)}")
        out.append(
            AnalysisSpec(
                name=name,
                args=[str(a) for a in args],
                targets={str(k): _metrics(v, f"{aw}.targets.{k}") for k, v in targets_raw.items()},
                description=str(entry.get("description", "")),
            )
        )
    return out


def analysis_commands(spec: SweepSpec, runs: list[PlannedRun]) -> list[list[str]]:
    """The ``kdlab analyze`` command lines of ``spec``'s analyses over its planned ``runs``: one per analysis and run
    of a row the analysis names (every run when it names no row), in spec order."""
    commands = []
    for analysis in spec.analysis:
        for run in runs:
            if not analysis.targets or run.label in analysis.targets:
                commands.append(["kdlab", "analyze", analysis.name, str(run.run_dir), *analysis.args])
    return commands


def parse_spec(data: dict, path: Path | None = None) -> SweepSpec:
    """A :class:`SweepSpec` from a raw mapping, strictly checked; row configs are relative to ``path``'s folder."""
    where = f"sweep spec {str(path)!r}" if path else "sweep spec"
    if not isinstance(data, dict):
        raise _config_error(f"{where} must hold a mapping at the top level")
    _check_keys(data, SPEC_KEYS, where)
    for key in ("name", "rows"):
        if key not in data:
            raise _config_error(f"{where}: missing required key {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not name or slug(name) != name:
        raise _config_error(f"{where}: name must be a non-empty string of letters, digits, '.', '_', '-'; got {name!r}")
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise _config_error(f"{where}: seeds must be a non-empty list of integers, e.g. [0, 1, 2]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _config_error(f"{where}: seeds {seeds} repeat a seed")
    grid = _mapping(data.get("grid"), f"{where}: grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _config_error(f"{where}: grid.{key} must be a non-empty list of values, e.g. [0.01, 0.05]")
    base = path.parent if path is not None else Path.cwd()
    rows_raw = data["rows"]
    if not isinstance(rows_raw, list) or not rows_raw:
        raise _config_error(f"{where}: rows must be a non-empty list of {{label, config, ...}} mappings")
    rows = []
    for i, raw in enumerate(rows_raw):
        rw = f"{where}: rows.{i}"
        if not isinstance(raw, dict):
            raise _config_error(f"{rw} must be a mapping with label and config")
        _check_keys(raw, ROW_KEYS, rw)
        if not isinstance(raw.get("label"), str) or not raw["label"]:
            raise _config_error(f"{rw}: missing 'label' (a non-empty string)")
        config = raw.get("config")
        if not (isinstance(config, str) and config) and not isinstance(config, dict):
            raise _config_error(f"{rw}: 'config' must be a config file (relative to the spec) or an inline mapping")
        target = raw.get("target")
        targets = {} if target is None else _metrics(target, f"{rw}: target")
        pair = raw.get("pair")
        if pair is not None and not isinstance(pair, str):
            raise _config_error(f"{rw}: pair must be a string, got {pair!r}")
        rows.append(
            RowSpec(
                label=raw["label"],
                config=base / config if isinstance(config, str) else config,
                overrides=_mapping(raw.get("overrides"), f"{rw}.overrides"),
                target=targets.get("top1", targets.get("map")),  # the headline number (box mAP: detection)
                pair=pair,
                targets=targets,
            )
        )
    description = data.get("description", "")
    run_dir = data.get("run_dir", "runs/sweeps")
    if not isinstance(description, str) or not isinstance(run_dir, str):
        raise _config_error(f"{where}: description and run_dir must be strings")
    return SweepSpec(
        name=name,
        path=path,
        rows=rows,
        seeds=list(seeds),
        description=description,
        run_dir=run_dir,
        overrides=_mapping(data.get("overrides"), f"{where}: overrides"),
        grid=grid,
        analysis=_analyses(data.get("analysis"), where, {r.label for r in rows}),
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec file (a missing file or bad YAML is a ``ConfigError``)."""
    from kdlab.config import load_yaml

    p = Path(path)
    return parse_spec(load_yaml(p), p)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` (list elements by index, ``model.teachers.0.checkpoint``) in a raw config mapping."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt_is_index = parts[i + 1].isdigit()
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise _config_error(f"override {key}: {part!r} is not an index of a list of {len(node)}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise _config_error(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        if node.get(part) is None:
            node[part] = [] if nxt_is_index else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) > len(node):
            raise _config_error(f"override {key}: {last!r} is not an index of a list of {len(node)}")
        if int(last) == len(node):
            node.append(value)
        else:
            node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = copy.deepcopy(value)
    else:
        raise _config_error(f"override {key}: {'.'.join(parts[:-1])} is not a section")


def config_hash(config: dict) -> str:
    """A short stable hash of a resolved config mapping (``to_dict`` of a ``RunConfig``), without the keys that do
    not change what a run computes (``HASH_EXCLUDED``: run directory, threads, device, logging, description...)."""
    data = copy.deepcopy(config)
    for path in HASH_EXCLUDED:
        node = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pair_name(config: dict) -> str:
    """``teacher→student`` (teachers joined by ``+``), or the student alone without a teacher."""
    student = config["model"]["student"]
    teachers = [t["name"] for t in config["model"].get("teachers") or []]
    return f"{'+'.join(teachers)}→{student}" if teachers else student


def resolve_config(raw: dict, overrides: dict[str, Any]) -> dict:
    """Apply dotted ``overrides`` to a raw config mapping and check it strictly; returns ``to_dict`` of the
    resolved ``RunConfig`` (so defaults are filled in and the hash does not depend on how a value was written)."""
    from kdlab.config import build_config, to_dict

    data = copy.deepcopy(raw)
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return to_dict(build_config(data))


def expand(spec: SweepSpec, threads: int | None = None) -> list[PlannedRun]:
    """Every run of ``spec`` (rows x grid points x seeds, in that nesting order), configs resolved and checked.

    ``threads`` sets ``train.threads`` unless the spec sets it (it is not part of the config hash).
    A config that does not load raises ``ConfigError`` naming the row.
    """
    from kdlab.config import ConfigError, load_yaml

    runs: list[PlannedRun] = []
    seen: dict[tuple, str] = {}
    for row in spec.rows:
        try:
            raw = row.config if isinstance(row.config, dict) else load_yaml(row.config)
        except ConfigError as err:
            raise ConfigError(f"sweep {spec.name!r}, row {row.label!r}: {err}") from None
        for point in spec.grid_points():
            for seed in spec.seeds:
                # sweep runs log no progress bar (the sweep reports each run); a spec may turn it back on
                overrides = {"log.progress": "off", **spec.overrides, **row.overrides, **point, "train.seed": seed}
                if threads is not None and "train.threads" not in overrides:
                    overrides["train.threads"] = threads
                try:
                    config = resolve_config(raw, overrides)
                except ConfigError as err:
                    raise ConfigError(f"sweep {spec.name!r}, row {row.label!r} ({row.config}): {err}") from None
                pair = row.pair or pair_name(config)
                grid_txt = "__".join(f"{k.split('.')[-1]}{v}" for k, v in point.items())
                name = "__".join(p for p in (slug(row.label), slug(pair), slug(grid_txt) if point else "") if p)
                name = f"{name}__s{seed}"
                identity = (row.label, pair, tuple(point.items()), seed)
                if name in seen.values() or identity in seen:
                    raise ConfigError(
                        f"sweep {spec.name!r}: two runs map to {name!r} (row {row.label!r}, pair {pair!r}, seed "
                        f"{seed}); give the rows different labels or pairs"
                    )
                seen[identity] = name
                run_dir = Path(spec.run_dir) / spec.name / name
                config["train"]["run_dir"] = str(run_dir.parent)
                config["train"]["name"] = name
                targets = dict(row.targets) if row.targets else dict(config.get("target", {}))  # one source
                published = config.get("target", {})
                target = row.target if row.target is not None else published.get("top1", published.get("map"))
                runs.append(
                    PlannedRun(
                        sweep=spec.name,
                        label=row.label,
                        pair=pair,
                        grid=dict(point),
                        seed=seed,
                        target=target,
                        run_dir=run_dir,
                        config=config,
                        config_hash=config_hash(config),
                        targets=targets,
                    )
                )
    return runs
