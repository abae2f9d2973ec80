"""Teacher-assistant chains (TAKD): Mirzadeh, Farajtabar, Li, Levine, Matsukawa, Ghasemzadeh, "Improved Knowledge
Distillation via Teacher Assistant", AAAI 2020, arXiv 1902.03393.

A chain config is an ordinary run config plus a ``chain:`` section (:class:`kdlab.config.ChainConfig`)::

    model: {student: resnet8x4, teachers: [{name: resnet32x4, checkpoint: runs/ce__resnet32x4__s0/checkpoint.pt}]}
    method: {name: kd}
    chain: {assistants: [{model: wrn_40_2}]}

``kdlab chain CONFIG`` trains the links in order: ``teacher -> assistants[0]``, ``assistants[0] -> assistants[1]``,
..., ``assistants[-1] -> student``, each an ordinary run of the config's method (plain ``kd`` for TAKD; ``tekap`` for
TeKAP on every link) with the same data, optimiser and training sections, plus the link's own ``overrides``. Each
link's ``checkpoint.pt`` is the next link's teacher.

Directory layout under ``train.run_dir``::

    <chain name>/chain.json          one record of the whole chain (rewritten after every link)
    <chain name>/1-<assistant>/      the first link's run directory (config.yaml, summary.json, checkpoint.pt, ...)
    <chain name>/<n+1>-<student>/    the last link

Re-running the command reuses every link whose run directory holds a finished run (``summary.json`` with
``finished: true``, or as many steps as ``train.max_steps``) of the same config, resumes a link that was
interrupted, and retrains every link after one that was (re)trained, because its teacher changed. A link whose
directory holds a run of a different config is an error naming the differing keys; ``--force`` retrains it. The same
config means equal ``model``, ``data``, ``method``, ``optim`` and ``train`` sections, except where runs are written
and how many threads they use (``train.run_dir``, ``train.name``, ``train.threads``, ``train.device``,
``train.eval_every``, ``train.checkpoint_every``) and, from the second link on, the path of the teacher's checkpoint
(it is the previous link's, wherever the chain directory lives).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdlab.config import ConfigError, RunConfig, build_config, to_dict

log = logging.getLogger("kdlab")

CHAIN_FORMAT = "kdlab.chain/1"

#: ``train`` keys that say where and how fast a run goes, not what it computes: ignored when deciding reuse.
_RUN_PLACEMENT = ("run_dir", "name", "threads", "device", "eval_every", "checkpoint_every")


@dataclass
class Link:
    """One link of a chain.

    Attributes:
        index: 1-based position in the chain.
        model: the model trained in this link.
        teacher: the model it distils from (the chain's teacher, or the previous link's model).
        cfg: the link's run config (no ``chain`` section).
        run_dir: the link's run directory.
    """

    index: int
    model: str
    teacher: str
    cfg: RunConfig
    run_dir: Path


def chain_name(cfg: RunConfig) -> str:
    """``cfg.chain.name`` or ``chain-<method>__<teacher>__<assistants>__<student>__s<seed>``."""
    if cfg.chain is None:
        raise ConfigError("this config has no 'chain:' section; a chain lists its assistants, e.g. chain.assistants")
    if cfg.chain.name:
        return cfg.chain.name
    parts = [cfg.model.teachers[0].name, *(a.model for a in cfg.chain.assistants), cfg.model.student]
    name = "__".join([f"chain-{cfg.method.name}", *parts, f"s{cfg.train.seed}"])
    return name.replace(":", "-").replace("/", "-")


def chain_links(cfg: RunConfig) -> list[Link]:
    """The links of the chain ``cfg`` describes, each with its run config and directory (nothing is trained).

    Raises:
        ConfigError: no ``chain`` section, no assistant, not exactly one teacher, or a bad link override.
    """
    if cfg.chain is None:
        raise ConfigError("this config has no 'chain:' section; add chain.assistants (or use 'kdlab train')")
    if not cfg.chain.assistants:
        raise ConfigError("chain.assistants is empty; list at least one assistant model, or use 'kdlab train'")
    if len(cfg.model.teachers) != 1:
        raise ConfigError(
            f"a chain starts from exactly one teacher, but model.teachers has {len(cfg.model.teachers)}; the "
            "assistants go in chain.assistants"
        )
    root = Path(cfg.train.run_dir) / chain_name(cfg)
    base = to_dict(cfg)
    base["chain"] = None
    models = [a.model for a in cfg.chain.assistants] + [cfg.model.student]
    overrides = [list(a.overrides) for a in cfg.chain.assistants] + [[]]
    teacher = base["model"]["teachers"][0]
    links = []
    for i, (model, extra) in enumerate(zip(models, overrides), start=1):
        data = copy.deepcopy(base)
        data["model"]["student"] = model
        data["model"]["teachers"] = [teacher]
        data["train"]["name"] = None
        last = i == len(models)
        if not last:
            data["target"] = {}
            data["description"] = f"link {i} of chain {chain_name(cfg)}: {teacher['name']} -> {model}"
        try:
            link_cfg = build_config(data, extra)
        except ConfigError as err:
            raise ConfigError(f"chain.assistants.{i - 1}.overrides: {err}") from None
        run_dir = root / f"{i}-{model.replace(':', '-').replace('/', '-')}"
        links.append(Link(i, model, teacher["name"], link_cfg, run_dir))
        teacher = {"name": model, "checkpoint": str(run_dir / "checkpoint.pt")}
    return links


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: tree}


def _comparable(cfg: dict, internal_teacher: bool) -> dict[str, Any]:
    """The part of a config dict that decides what a link computes, flattened to dotted keys."""
    cfg = copy.deepcopy(cfg)
    for key in ("log", "description", "target", "chain"):
        cfg.pop(key, None)
    for key in _RUN_PLACEMENT:
        cfg.get("train", {}).pop(key, None)
    if internal_teacher:
        for t in cfg.get("model", {}).get("teachers", []):
            t["checkpoint"] = None
    return _flatten(cfg)


def config_differences(saved: dict, current: RunConfig, internal_teacher: bool) -> list[str]:
    """Dotted keys on which a saved run config (a ``config.yaml`` as a dict) and ``current`` differ in what they
    compute (see the module docstring)."""
    a, b = _comparable(saved, internal_teacher), _comparable(to_dict(current), internal_teacher)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _link_state(link: Link) -> tuple[str, list[str]]:
    """``("empty" | "finished" | "partial", differing keys)`` of a link's run directory."""
    ckpt, summary, saved = (link.run_dir / n for n in ("checkpoint.pt", "summary.json", "config.yaml"))
    if not ckpt.is_file():
        return "empty", []
    if not saved.is_file():
        return "partial", ["config.yaml (missing)"]
    diff = config_differences(yaml.safe_load(saved.read_text()) or {}, link.cfg, internal_teacher=link.index > 1)
    if summary.is_file():
        done = json.loads(summary.read_text())
        max_steps = link.cfg.train.max_steps  # a smoke chain (train.max_steps) is complete once it took them
        if done.get("finished") or (max_steps is not None and done.get("steps", 0) >= max_steps):
            return "finished", diff
    return "partial", diff


def _record_entry(link: Link, status: str, summary: dict | None) -> dict:
    entry: dict[str, Any] = {
        "index": link.index,
        "model": link.model,
        "teacher": {"name": link.cfg.model.teachers[0].name, "checkpoint": link.cfg.model.teachers[0].checkpoint},
        "run_dir": link.run_dir.name,
        "status": status,
    }
    if summary is not None:
        entry.update(
            finished=bool(summary.get("finished")),
            steps=summary.get("steps"),
            top1_last=summary.get("last", {}).get("top1"),
            top1_best=summary.get("best", {}).get("top1"),
            train_time_s=summary.get("train_time_s"),
        )
    return entry


def run_chain(cfg: RunConfig, force: bool = False, on_link: Callable[[dict], None] | None = None) -> dict:
    """Train (or reuse) every link of the chain ``cfg`` describes; returns the record also written to ``chain.json``.

    Args:
        cfg: a config with a ``chain`` section.
        force: retrain links whose run directory holds a run of a different config (otherwise an error).
        on_link: called with each link's record entry when the link is done (the CLI prints it).

    Raises:
        ConfigError: a bad chain section, or a link directory holding a run of another config without ``force``.
        kdlab.train.trainer.TrainingInterrupted: a link was interrupted (re-run the command to resume it).
    """
    from kdlab.train.trainer import Trainer, TrainingInterrupted

    links = chain_links(cfg)
    root = links[0].run_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "format": CHAIN_FORMAT,
        "name": root.name,
        "method": cfg.method.name,
        "teacher": to_dict(cfg.model.teachers[0]),
        "models": [link.model for link in links],
        "config": to_dict(cfg),
        "links": [_record_entry(link, "pending", None) for link in links],
        "finished": False,
    }

    def write() -> None:
        done = [e for e in record["links"] if e.get("train_time_s") is not None]
        record["train_time_s"] = sum(e["train_time_s"] for e in done)
        record["finished"] = all(e.get("finished") for e in record["links"])
        (root / "chain.json").write_text(json.dumps(record, indent=2) + "\n")

    upstream_changed = False
    for k, link in enumerate(links):
        state, diff = _link_state(link)
        resume = retrain = False
        if state != "empty" and diff and not upstream_changed and not force:
            raise ConfigError(
                f"chain link {link.index} ({link.teacher} -> {link.model}) in {str(link.run_dir)!r} holds a run of a "
                f"different config (differs in: {', '.join(diff[:8])}); pass --force to retrain it, or set chain.name "
                "to start a new chain"
            )
        if state == "finished" and not diff and not upstream_changed:
            status = "reused"
            log.info("chain link %d (%s -> %s): reusing %s", link.index, link.teacher, link.model, link.run_dir)
        elif state == "partial" and not diff and not upstream_changed:
            status, resume = "resumed", True
        else:
            status, retrain = ("retrained" if state != "empty" else "trained"), state != "empty"
        if status != "reused":
            log.info("chain link %d (%s -> %s): %s in %s", link.index, link.teacher, link.model, status, link.run_dir)
            trainer = Trainer(link.cfg, run_dir=link.run_dir, resume=resume, force=retrain)
            try:
                trainer.fit()
            except TrainingInterrupted:
                record["links"][k] = _record_entry(link, "interrupted", None)
                write()
                raise
            upstream_changed = True
        summary = json.loads((link.run_dir / "summary.json").read_text())
        record["links"][k] = _record_entry(link, status, summary)
        write()
        if on_link is not None:
            on_link(record["links"][k])
    record["student"] = record["links"][-1]
    write()
    return record
