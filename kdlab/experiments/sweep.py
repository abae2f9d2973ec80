"""``kdlab sweep``: run every run of a sweep spec, skipping finished ones, resuming interrupted ones.

For each planned run (:func:`kdlab.experiments.spec.expand`) the run directory decides what happens:

- ``skip``: ``summary.json`` says finished and ``config.yaml`` has the same config hash: nothing to train; the run
  is (re-)recorded in the results store.
- ``resume``: a ``checkpoint.pt`` of the same config without a finished summary: continue it (``--resume``).
- ``fresh``: no run yet; ``restart``: the directory holds a run of another config (the spec changed): start over.
- ``corrupt``: ``summary.json`` or ``config.yaml`` is unreadable: reported and left alone (delete it to re-run).

Runs execute in-process one after the other (``workers=1``) or in ``workers`` spawned worker processes, each
training runs with its own Trainer (``train.threads`` is set so the workers share the CPU cores without
oversubscribing). A failing run is reported with its error and the other runs go on. Each finished run is
recorded in the results store by the sweep's process. The run's identity in its sweep is written to
``<run dir>/sweep.json`` (the store reads it, also on ``kdlab results --import``).

Several sweeps on one spec share the work (``kdlab/runlock.py``): a run is trained only under its run directory's
lock, and its action is planned again once the lock is held. A run whose lock another process holds is deferred to
the end of this sweep's queue; when everything else is done, the sweep waits for that lock and plans the run again
(normally it is then finished: ``skipped``). No run trains twice and no two processes write one run's files.

Stopping: the first SIGINT/SIGTERM stops the sweep as a whole (``kdlab/interrupts.py``): the running trainings
checkpoint and stop (workers get the signal forwarded), no further run starts, and the command exits with 130.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdlab import interrupts
from kdlab.experiments.spec import PlannedRun, SweepSpec, expand
from kdlab.experiments.store import DEFAULT_STORE, ResultsStore, RunDirError, _read_json, read_config_hash

log = logging.getLogger("kdlab")

ACTIONS = ("skip", "resume", "fresh", "restart", "corrupt")


@dataclass
class Outcome:
    """What happened to one planned run: ``status`` is ``skipped``, ``done``, ``failed``, ``interrupted``,
    ``corrupt`` or (dry run) the planned action; ``message`` says why for failures; ``row`` is its store row."""

    run: PlannedRun
    action: str
    status: str
    message: str = ""
    wall_time_s: float | None = None
    row: dict | None = None


def plan_action(run: PlannedRun) -> tuple[str, str]:
    """What to do with ``run`` given its run directory: one of :data:`ACTIONS` and a reason."""
    return plan_action_dir(Path(run.run_dir), run.config_hash)


def plan_action_dir(d: Path, expected_hash: str) -> tuple[str, str]:
    """:func:`plan_action` for the run directory ``d`` of a run whose config hash is ``expected_hash``."""
    summary, ckpt, config = d / "summary.json", d / "checkpoint.pt", d / "config.yaml"
    if config.is_file():
        try:
            _, digest = read_config_hash(d)
        except RunDirError as err:
            return "corrupt", str(err)
        if digest != expected_hash:
            return "restart", f"its config changed (hash {digest} -> {expected_hash})"
    elif summary.is_file():
        return "corrupt", f"{str(d)!r} holds summary.json but no config.yaml; delete it to re-run"
    if summary.is_file():
        try:
            finished = bool(_read_json(summary).get("finished"))
        except RunDirError as err:
            return "corrupt", str(err)
        if finished:
            return "skip", "finished"
    if ckpt.is_file():
        return "resume", "checkpoint present"
    return "fresh", ""


def default_threads(workers: int) -> int:
    """CPU threads per run so ``workers`` concurrent runs fill the cores without oversubscribing."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _identity(run: PlannedRun, spec_path: str | None) -> dict:
    return {
        "sweep": run.sweep,
        "label": run.label,
        "pair": run.pair,
        "grid": run.grid,
        "seed": run.seed,
        "target": run.target,
        "config_hash": run.config_hash,
        "spec": spec_path,
    }


def execute_run(run_dir: str, config: dict, action: str, identity: dict, wait: bool = False) -> dict:
    """Train one run in this process (the body of a sweep worker); never raises for a failing run.

    The run directory's lock is taken first (``wait``: block until it is free, else return ``"locked"`` at once),
    then the action is planned again (another sweep may have finished or advanced the run meanwhile).
    Returns ``{"status": ..., "message": str, "wall_time_s": float | None}`` with status ``done``, ``failed``,
    ``interrupted``, ``locked``, ``skipped``, ``corrupt`` or ``not run``; a failure's traceback is written to
    ``<run dir>/sweep_error.txt``.
    """
    from kdlab.runlock import RunLock, RunLockedError

    if interrupts.requested() is not None:  # a worker's queued run after the stop request: never started
        return {"status": "not run", "message": "the sweep stopped before it", "wall_time_s": None}
    d = Path(run_dir)
    try:
        lock = RunLock(d, wait=wait).acquire()
    except RunLockedError as err:
        return {"status": "locked", "message": str(err), "wall_time_s": None}
    except interrupts.Interrupted as err:
        return {"status": "interrupted", "message": str(err), "wall_time_s": None}
    try:
        if identity.get("config_hash"):
            action, reason = plan_action_dir(d, identity["config_hash"])
            if action == "skip":
                return {"status": "skipped", "message": "finished by another process", "wall_time_s": None}
            if action == "corrupt":
                return {"status": "corrupt", "message": reason, "wall_time_s": None}
        return _execute_locked(d, config, action, identity)
    finally:
        lock.release()


def _execute_locked(d: Path, config: dict, action: str, identity: dict) -> dict:
    from kdlab.config import build_config
    from kdlab.train.trainer import Trainer, TrainingInterrupted

    d.mkdir(parents=True, exist_ok=True)
    previous = 0.0
    if action == "resume" and (d / "sweep.json").is_file():
        try:
            previous = float(json.loads((d / "sweep.json").read_text()).get("wall_time_s") or 0.0)
        except (OSError, ValueError):
            previous = 0.0
    if action != "resume":  # a stale summary must never make a half-done new run look finished
        (d / "summary.json").unlink(missing_ok=True)
    (d / "sweep_error.txt").unlink(missing_ok=True)
    (d / "sweep.json").write_text(json.dumps({**identity, "wall_time_s": previous}, indent=2) + "\n")
    t0 = time.perf_counter()
    try:
        trainer = Trainer(build_config(config), run_dir=d, resume=action == "resume", force=action != "resume")
        trainer.fit()
    except (TrainingInterrupted, interrupts.Interrupted) as err:
        return {"status": "interrupted", "message": str(err), "wall_time_s": None}
    except Exception as err:  # report and go on with the other runs
        (d / "sweep_error.txt").write_text(traceback.format_exc())
        first = str(err).splitlines()[0] if str(err) else ""
        return {"status": "failed", "message": f"{type(err).__name__}: {first}", "wall_time_s": None}
    wall = previous + time.perf_counter() - t0
    (d / "sweep.json").write_text(json.dumps({**identity, "wall_time_s": wall}, indent=2) + "\n")
    return {"status": "done", "message": "", "wall_time_s": wall}


def _worker_init() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    interrupts.install(raising=False)  # SIGTERM/SIGINT: the worker's training checkpoints and stops


def run_sweep(
    spec: SweepSpec,
    workers: int = 1,
    dry_run: bool = False,
    store_path: str | Path = DEFAULT_STORE,
    on_outcome: Callable[[Outcome, int, int], None] | None = None,
) -> list[Outcome]:
    """Run (or with ``dry_run`` only plan) every run of ``spec``; returns one :class:`Outcome` per run in plan
    order. ``on_outcome(outcome, index, total)`` is called as each run ends (for progress output)."""
    if workers < 1:
        from kdlab.config import ConfigError

        raise ConfigError(f"--workers must be at least 1, got {workers}")
    interrupts.raise_if_requested("the sweep")
    runs = expand(spec, threads=default_threads(workers))
    spec_path = str(spec.path) if spec.path is not None else None
    plan = [(run, *plan_action(run)) for run in runs]
    if dry_run:
        return [Outcome(run, action, action, reason) for run, action, reason in plan]

    store = ResultsStore(store_path)
    outcomes: dict[int, Outcome] = {}
    done_count = 0

    deferred: list[int] = []  # runs another process was training: waited for at the end

    def finish(i: int, outcome: Outcome) -> None:
        nonlocal done_count
        if outcome.status == "locked":
            log.info("%s: %s; coming back to it at the end", outcome.run.key, outcome.message)
            deferred.append(i)
            return
        if outcome.status in ("done", "skipped"):
            try:
                outcome.row = store.record_run_dir(outcome.run.run_dir)
            except RunDirError as err:
                outcome.status, outcome.message = "corrupt", str(err)
        outcomes[i] = outcome
        done_count += 1
        if on_outcome is not None:
            on_outcome(outcome, done_count, len(plan))

    todo = []
    for i, (run, action, reason) in enumerate(plan):
        if action == "skip":
            finish(i, Outcome(run, action, "skipped", reason))
        elif action == "corrupt":
            finish(i, Outcome(run, action, "corrupt", reason))
        else:
            if action == "restart":
                log.warning("%s: %s; starting it over", run.key, reason)
            todo.append(i)

    def outcome_of(i: int, result: dict) -> Outcome:
        run, action, _ = plan[i]
        return Outcome(run, action, result["status"], result["message"], result["wall_time_s"])

    def args(i: int) -> tuple:
        run, action, _ = plan[i]
        return str(run.run_dir), run.config, action, _identity(run, spec_path)

    def run_in_process(indices: list[int], wait: bool) -> None:
        for i in indices:
            if interrupts.requested() is not None:  # the first signal stops the sweep as a whole
                break
            result = execute_run(*args(i), wait=wait)
            finish(i, outcome_of(i, result))
            if result["status"] == "interrupted":
                break

    if workers == 1 or len(todo) <= 1:
        run_in_process(todo, wait=False)
    else:
        _run_pool(todo, args, workers, lambda i, result: finish(i, outcome_of(i, result)))
    while deferred and interrupts.requested() is None:  # wait for the runs other processes were training
        again, deferred[:] = list(deferred), []
        run_in_process(again, wait=True)
    for i in range(len(plan)):  # runs never started (an interruption stopped the sweep)
        if i not in outcomes:
            run, action, _ = plan[i]
            outcomes[i] = Outcome(run, action, "not run", "the sweep stopped before it")
    return [outcomes[i] for i in range(len(plan))]


def _run_pool(todo: list[int], args: Callable[[int], tuple], workers: int, done: Callable[[int, dict], None]) -> None:
    """Run ``todo`` in ``workers`` spawned processes (a fresh interpreter each: no state shared with this one)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending = {pool.submit(execute_run, *args(i)): i for i in todo}
        stopping = False
        while pending:
            try:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:  # the first signal: stop as a whole (the workers checkpoint and return)
                if stopping:
                    raise
                stopping = True
                _stop_workers(pool, pending)
                continue
            for fut in finished:
                i = pending.pop(fut)
                if fut.cancelled():
                    continue
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    result = {"status": "failed", "message": "its worker process died", "wall_time_s": None}
                except BaseException as err:  # e.g. the KeyboardInterrupt of a second signal inside the worker
                    result = {"status": "failed", "message": f"{type(err).__name__}: {err}", "wall_time_s": None}
                done(i, result)
            if not stopping and interrupts.requested() is not None:
                stopping = True
                _stop_workers(pool, pending)


def _stop_workers(pool: object, pending: dict) -> None:
    """Cancel the runs not started and forward SIGTERM to the worker processes (their trainings checkpoint)."""
    import signal

    for fut in list(pending):
        if fut.cancel():
            pending.pop(fut)
    for proc in list(getattr(pool, "_processes", {}).values()):
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def summarize_outcomes(outcomes: list[Outcome]) -> dict[str, int]:
    """How many runs ended in each status."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts


def missing_teacher_checkpoints(runs: list[PlannedRun]) -> list[str]:
    """Teacher checkpoint files the runs name that do not exist (yet)."""
    missing = []
    for run in runs:
        for t in run.config["model"].get("teachers") or []:
            ckpt = t.get("checkpoint")
            if ckpt and not Path(ckpt).is_file() and ckpt not in missing:
                missing.append(ckpt)
    return missing
