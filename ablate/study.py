"""`python -m ablate study FILE`: an experiment file's cells as optuna trials, run by any number of workers on
one storage.

A cell is one run the study needs: (arm, final, seed) for every arm and seed, plus (arm, tune, k) for the
tuning budget when the file has [search]. Every trial carries its cell id in user_attrs. A worker claims a
free cell by creating a RUNNING trial for it and then re-reading the storage: if another live or finished trial
holds the same cell, it fails its own trial as a lost claim and picks again. Of two workers that claim the same
cell at once, the later reader always sees the earlier one, so a cell never runs twice (at worst both step
back and one takes it on the next pass). A cell is done once it has a COMPLETE or PRUNED trial, or a FAIL
with an `error` (a diverged run, a result in itself). A killed worker's trial goes stale (optuna's heartbeat on
RDB storages, a heartbeat attribute on journal files), is failed by the next worker that looks, and its cell
runs again, continuing from the cell's checkpoint.
"""
import argparse
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import statistics
import sys
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from blocks.errors import ConfigError

from . import experiment, train
from .cli import positive_int
from .errors import RunFailed, UsageError
from .experiment import Arm, Experiment
from .storage_url import journal_path, masked

HEARTBEAT_ATTR = "ablate:heartbeat"  # unix time, for storages without optuna's heartbeat (journal files)
LIVE = (TrialState.RUNNING,)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="experiment file (TOML), e.g. experiments/token_mixers.toml")
    p.add_argument("--storage", default="sqlite:///ablate.db",
                   help="optuna storage: an RDB URL (sqlite:///FILE, postgresql://USER:PASS@HOST/DB, mysql://...) "
                        "or a journal file (journal:PATH, or a path ending .log/.journal) for shared filesystems")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (cores are split)")
    p.add_argument("--out", default="runs", help="run folders go to OUT/<study name>/<arm>/<cell>/")
    p.add_argument("--heartbeat", type=positive_int, default=30, metavar="SECONDS",
                   help="a running trial's heartbeat; after 2x this without one, its worker counts as dead and the "
                        "cell is retried")
    p.add_argument("--json", action="store_true", help="print one JSON document summarising the study on stdout")


def main(args: argparse.Namespace) -> int:
    quiet_optuna()
    exp = experiment.load(args.file)
    storage = open_storage(args.storage, args.heartbeat)
    open_study(exp, storage)
    try:
        rc = 0
        if args.workers > 1:
            rc = run_workers(exp, storage, args)
        else:
            work(exp, storage, Path(args.out), args.heartbeat, "worker")
    except KeyboardInterrupt:  # the running trials were failed on the way out, so their cells are free again
        log(f"interrupted; the same command resumes study {exp.name!r}")
        return 130
    doc = summarize(exp, storage, args.storage)
    print(json.dumps(doc) if args.json else render(doc))
    return rc


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- storage ------------------------------------------------------------------------------------------------------
def open_storage(url: str, heartbeat: int) -> BaseStorage:
    """An optuna storage for --storage; anything unusable is a UsageError naming the URL and why."""
    path = journal_path(url)
    if path is not None:
        if not path.parent.is_dir():
            raise UsageError(f"--storage {url}: folder {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except (OSError, ValueError) as e:
            raise UsageError(f"--storage {url}: cannot open the journal file: {e}") from None
    if "://" not in url:
        raise UsageError(f"--storage {url!r} is not a storage; valid: sqlite:///FILE, postgresql://USER:PASS@HOST/DB, "
                         f"mysql+pymysql://..., journal:FILE or a FILE ending .log/.journal")
    # SQLite: wait for other workers' writes instead of failing with "database is locked"; servers: fail in 10 s
    engine_kwargs = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else
                     {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
                     if url.startswith(("postgresql", "mysql")) else {})
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                              grace_period=2 * heartbeat)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            if attempt < 2 and creating_tables_at_once(e):
                time.sleep(random.uniform(0.2, 1.0))
                continue
            raise UsageError(f"cannot open storage {masked(url)}: {reason}") from None


def creating_tables_at_once(e: Exception) -> bool:
    """Workers that open a new database together race to create optuna's tables; the losers find them made."""
    return isinstance(e, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) or (
        isinstance(e, sqlalchemy.exc.OperationalError) and "already exists" in str(e))


def open_study(exp: Experiment, storage: BaseStorage) -> int:
    """Creates the study (or loads it) and checks it was made from the same experiment; returns its id."""
    try:
        study = optuna.create_study(study_name=exp.name, storage=storage, directions=exp.directions,
                                    load_if_exists=True)
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise UsageError(f"storage error: {str(getattr(e, 'orig', e)).strip().splitlines()[0]}") from None
    mine = json.loads(json.dumps(exp.fingerprint()))
    theirs = study.user_attrs.get("experiment")
    if theirs is None:
        study.set_user_attr("experiment", mine)
    elif theirs != mine:
        diff = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        raise UsageError(f"study {exp.name!r} in this storage was made from a different experiment "
                         f"({', '.join(diff)} differ: {', '.join(f'{k}={theirs.get(k)!r}' for k in diff)} there); "
                         f"name the study differently in [study].name or restore the file")
    # what may grow between invocations: the report reads the axes from here
    study.set_user_attr("axes", exp.fields)
    study.set_user_attr("seeds", exp.seeds)
    return study._study_id


# -- cells --------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    id: str
    arm: Arm
    phase: str                 # "tune" or "final"
    seed: int
    params: dict | None        # [search] values; None: drawn by the sampler when claimed
    best_of: int | None = None  # final cells of a tuned arm: the tune trial whose values they use

    @property
    def folder(self) -> str:
        kind = f"tune-{self.id.rsplit('|', 1)[1]}" if self.phase == "tune" else f"final-seed{self.seed}"
        return re.sub(r"[^\w.,=+-]", "_", self.arm.label) + "/" + kind


def cell_state(trials: list[FrozenTrial]) -> str:
    if any(done(t) for t in trials):
        return "done"
    return "running" if any(t.state in LIVE for t in trials) else "free"


def done(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs)


def by_cell(trials: list[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    groups: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        if "cell" in t.user_attrs:
            groups.setdefault(t.user_attrs["cell"], []).append(t)
    return groups


def total_cells(exp: Experiment) -> int:
    return len(exp.arms) * (exp.trials_per_arm + len(exp.seeds))


def plan(exp: Experiment, cells: dict[str, list[FrozenTrial]]) -> list[Cell]:
    """The cells that can be known now: a tuned arm's final cells appear once its tuning cells are done."""
    out = []  # (order, cell): tuning before finals, then round-robin over arms, so partial results cover every arm
    grid = exp.grid if exp.search and exp.sampler == "grid" else None
    for a, arm in enumerate(exp.arms):
        tune = [Cell(f"{arm.label}|tune|{k}", arm, "tune", exp.seeds[0], grid[k] if grid else None)
                for k in range(exp.trials_per_arm)]
        out += [((0, k, a), c) for k, c in enumerate(tune)]
        best = {}, None
        if tune:
            if any(cell_state(cells.get(c.id, [])) != "done" for c in tune):
                continue
            best = best_params(exp, [t for c in tune for t in cells[c.id] if t.state == TrialState.COMPLETE])
        out += [((1, i, a), Cell(f"{arm.label}|final|seed={s}", arm, "final", s, *best))
                for i, s in enumerate(exp.seeds)]
    return [c for _, c in sorted(out, key=lambda pair: pair[0])]


def best_params(exp: Experiment, trials: list[FrozenTrial]) -> tuple[dict, int | None]:
    """The tuned values of an arm: its best complete tuning trial on the first metric (ties: the earlier)."""
    if not trials:
        return {}, None  # every tuning trial failed or was pruned: the finals run the [run] defaults
    sign = -1 if exp.directions[0] == "maximize" else 1
    best = min(trials, key=lambda t: (sign * t.values[0], t.number))
    return dict(best.params), best.number


# -- per-arm views for the sampler and the pruner --------------------------------------------------------------------
def arm_view(exp: Experiment, arm: Arm, trials: list[FrozenTrial], **kw) -> optuna.Study:
    """An in-memory study of one arm's tuning trials, so samplers and pruners compare an arm only with itself."""
    view = optuna.create_study(directions=exp.directions, study_name=f"{exp.name}/{arm.label}", **kw)
    for t in sorted(trials, key=lambda t: t.number):
        view.add_trial(create_trial(
            state=t.state, values=t.values if t.state == TrialState.COMPLETE else None, params=t.params,
            distributions=t.distributions, intermediate_values=t.intermediate_values,
            system_attrs={k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung")}))
    return view


def tune_trials(trials: list[FrozenTrial], arm: Arm) -> list[FrozenTrial]:
    return [t for t in trials if t.user_attrs.get("arm") == arm.label and t.user_attrs.get("phase") == "tune"
            and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]


def draw_params(exp: Experiment, cell: Cell, trials: list[FrozenTrial]) -> dict:
    """A tuning cell's values: the ones an earlier (lost or dead) trial of the cell drew, else the sampler's."""
    earlier = [t for t in trials if t.user_attrs.get("cell") == cell.id and t.params]
    if earlier:  # keeps a retried cell on the run (and checkpoint) it started
        return dict(min(earlier, key=lambda t: t.number).params)
    history = [t for t in tune_trials(trials, cell.arm) if t.state != TrialState.RUNNING]
    view = arm_view(exp, cell.arm, history, sampler=exp.make_sampler(zlib.crc32(cell.id.encode())))
    return view.ask(exp.search).params


# -- the worker ---------------------------------------------------------------------------------------------------
class Heartbeat:
    """Marks a trial alive every `interval` seconds from a thread while its cell runs."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def beat(self) -> None:
        if optuna_heartbeat(self.storage):
            self.storage.record_heartbeat(self.trial_id)
        else:
            self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())

    def loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.beat()
            except UpdateFinishedTrialError:
                return
            except Exception as e:  # a storage hiccup: keep beating, the grace period is 2 beats
                log(f"heartbeat of trial {self.trial_id} failed: {e}")

    def __enter__(self):
        self.beat()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def optuna_heartbeat(storage: BaseStorage) -> bool:
    """RDB storages (also behind optuna's cache) beat through optuna; journal files have no heartbeat there."""
    return callable(getattr(storage, "record_heartbeat", None)) and storage.get_heartbeat_interval() is not None


def fail_stale(study: optuna.Study, grace: float) -> None:
    """Fails RUNNING trials whose worker stopped beating, so their cells run again."""
    storage = study._storage
    if optuna_heartbeat(storage):
        optuna.storages.fail_stale_trials(study)
        return
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=LIVE):
        beat = t.system_attrs.get(HEARTBEAT_ATTR)
        if beat is not None and now - beat > grace:
            try:
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                pass


def work(exp: Experiment, storage: BaseStorage, out: Path, heartbeat: int, name: str) -> int:
    """Claims and runs free cells until every cell of the study is done; returns how many this worker ran."""
    study = optuna.load_study(study_name=exp.name, storage=storage)
    rng, ran, total, waiting, collided = random.Random(), 0, total_cells(exp), False, False
    while True:
        fail_stale(study, 2 * heartbeat)
        trials = study.get_trials(deepcopy=False)
        groups = by_cell(trials)
        cells = plan(exp, groups)
        states = [cell_state(groups.get(c.id, [])) for c in cells]
        free = [c for c, s in zip(cells, states) if s == "free"]
        if not free:
            if len(cells) == total and all(s == "done" for s in states):
                return ran
            if not waiting:
                log(f"{name}: waiting for {states.count('running')} running cell(s) of other workers")
            waiting = True
            time.sleep(min(5, heartbeat) * rng.uniform(0.8, 1.2))
            continue
        waiting = False
        cell = rng.choice(free) if collided else free[0]  # in order; after a collision, step aside at random
        if cell.params is None:
            cell.params = draw_params(exp, cell, trials)
        collided = not run_cell(exp, study, cell, out, heartbeat, name)
        if collided:
            time.sleep(rng.uniform(0.05, 0.5))
        else:
            ran += 1


def claim(exp: Experiment, study: optuna.Study, cell: Cell) -> int:
    attrs = {"cell": cell.id, "arm": cell.arm.label, "axes": cell.arm.axes, "phase": cell.phase, "seed": cell.seed}
    if cell.best_of is not None:
        attrs["best_of"] = cell.best_of
    template = create_trial(state=TrialState.RUNNING, params=cell.params, user_attrs=attrs,
                            distributions={k: exp.search[k] for k in cell.params})
    return study._storage.create_new_trial(study._study_id, template_trial=template)


def lost_claim(study: optuna.Study, cell: Cell, trial_id: int) -> bool:
    rivals = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("cell") == cell.id
              and t._trial_id != trial_id and (t.state in LIVE or done(t))]
    return bool(rivals)


def run_cell(exp: Experiment, study: optuna.Study, cell: Cell, out: Path, heartbeat: int, name: str) -> bool:
    """Claims `cell` and runs it; False when another worker holds it or took the trial over."""
    storage = study._storage
    trial_id = claim(exp, study, cell)
    number = storage.get_trial_number_from_id(trial_id)
    try:
        with Heartbeat(storage, trial_id, heartbeat):
            if lost_claim(study, cell, trial_id):
                storage.set_trial_user_attr(trial_id, "lost_claim", True)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                return False
            log(f"{name}: trial {number}: {cell.id} {cell.params or ''}")
            finish(exp, study, cell, trial_id, out)
            return True
    except UpdateFinishedTrialError:
        log(f"{name}: trial {number} ({cell.id}) was failed by another worker (its heartbeat went stale); "
            f"leaving the cell to the retry")
        return False
    except BaseException as e:  # a crash, a bad config or Ctrl-C: free the cell now rather than after the grace
        try:
            storage.set_trial_user_attr(trial_id, "crash", f"{type(e).__name__}: {e}")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except Exception:
            pass
        raise


def finish(exp: Experiment, study: optuna.Study, cell: Cell, trial_id: int, out: Path) -> None:
    """Runs the cell's training job (continuing its checkpoint if there is one) and tells the storage."""
    storage = study._storage
    cfg = train.RunConfig(**exp.run, **cell.arm.axes, **cell.params, seed=cell.seed, out=str(out / exp.name / cell.folder))
    last: dict = {}

    def on_epoch(epoch: int, record: dict) -> None:
        last["record"] = record
        if len(exp.metrics) > 1 or exp.metrics[0] not in experiment.EPOCH_METRICS:
            return
        value = record["history"][-1][exp.metrics[0]]
        storage.set_trial_intermediate_value(trial_id, epoch, value)
        last["value"] = value
        if cell.phase == "tune" and exp.pruner != "none" and should_prune(exp, study, cell, trial_id):
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    try:
        record = finished_run(Path(cfg.out), cfg.key())
        if record is None:
            resumable = unfinished_run(Path(cfg.out), cfg.key())
            record = train.run(cfg, resume=str(resumable) if resumable else False, quiet=True, on_epoch=on_epoch)
    except optuna.TrialPruned:
        storage.set_trial_user_attr(trial_id, "record", last.get("record"))
        storage.set_trial_state_values(trial_id, TrialState.PRUNED, [last["value"]])
        return
    except RunFailed as e:  # a diverged run is a result: recorded, and not retried
        storage.set_trial_user_attr(trial_id, "record", last.get("record"))
        storage.set_trial_user_attr(trial_id, "error", str(e))
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        log(f"trial {storage.get_trial_number_from_id(trial_id)} failed: {e}")
        return
    values = [record.get(m) for m in exp.metrics]
    storage.set_trial_user_attr(trial_id, "record", record)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        storage.set_trial_user_attr(trial_id, "error", f"metric {exp.metrics} is {values} in the run record")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values)


def finished_run(out: Path, key: str) -> dict | None:
    """A finished run of this config in the cell's folder: its worker died before telling the storage."""
    for path in out.glob("*/record.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("config_key") == key and doc.get("status") == "done":
            log(f"reusing the finished run {path.parent}")
            return doc
    return None


def unfinished_run(out: Path, key: str) -> Path | None:
    return train.find_resumable(out, key) if out.is_dir() else None


def should_prune(exp: Experiment, study: optuna.Study, cell: Cell, trial_id: int) -> bool:
    """Asks the pruner about this trial among its arm's tuning trials only (never against other arms)."""
    storage = study._storage
    arm_trials = tune_trials(study.get_trials(deepcopy=False), cell.arm)
    view = arm_view(exp, cell.arm, arm_trials, pruner=exp.make_pruner())
    index = [t._trial_id for t in sorted(arm_trials, key=lambda t: t.number)].index(trial_id)
    prune = view.pruner.prune(view, view.trials[index])
    mine = storage.get_trial_system_attrs(trial_id)
    for key, value in view.trials[index].system_attrs.items():  # successive halving's rungs live on the trial
        if key not in mine:
            storage.set_trial_system_attr(trial_id, key, value)
    return prune


# -- several worker processes -----------------------------------------------------------------------------------------
def run_workers(exp: Experiment, storage: BaseStorage, args: argparse.Namespace) -> int:
    """Worker 0 in this process, workers 1..N-1 spawned; returns the worst exit code of the spawned ones."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker_process, args=(args.file, args.storage, args.out, args.heartbeat, i,
                                                       args.workers)) for i in range(1, args.workers)]
    for p in procs:
        p.start()
    try:
        with core_share(0, args.workers):
            work(exp, storage, Path(args.out), args.heartbeat, "worker 0")
    finally:  # on an error or Ctrl-C (which the workers get too) they fail their own trials and exit
        for p in procs:
            p.join()
    codes = [p.exitcode for p in procs]
    return 0 if all(c == 0 for c in codes) else max((c for c in codes if c > 0), default=1)


@contextlib.contextmanager
def core_share(index: int, count: int):
    """Pins this process to every count-th core from `index`; train.py sizes torch's threads from the pinning."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(cores)[index::count] or cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def worker_process(file: str, url: str, out: str, heartbeat: int, index: int, count: int) -> None:
    """One of the spawned workers: its own share of the cores, its own storage connection."""
    quiet_optuna()
    try:
        with core_share(index, count):
            work(experiment.load(file), open_storage(url, heartbeat), Path(out), heartbeat, f"worker {index}")
    except ConfigError as e:  # UsageError too
        log(f"ablate study: error: {e}")
        sys.exit(2)


# -- the summary --------------------------------------------------------------------------------------------------
def summarize(exp: Experiment, storage: BaseStorage, url: str) -> dict:
    study = optuna.load_study(study_name=exp.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    groups = by_cell(trials)
    cells = plan(exp, groups)
    states = {c.id: cell_state(groups.get(c.id, [])) for c in cells}
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    arms = []
    for arm in exp.arms:
        finals = [first_done(groups.get(c.id, [])) for c in cells if c.arm == arm and c.phase == "final"]
        finals = [t for t in finals if t is not None and t.state == TrialState.COMPLETE]
        values = {m: [t.values[i] for t in finals] for i, m in enumerate(exp.metrics)}
        row = {"arm": arm.label, "axes": arm.axes, "seeds_done": len(finals),
               "values": values, "mean": {m: statistics.fmean(v) if v else None for m, v in values.items()},
               "sd": {m: statistics.stdev(v) if len(v) > 1 else None for m, v in values.items()}}
        if exp.search:
            tuned = [first_done(groups.get(c.id, [])) for c in cells if c.arm == arm and c.phase == "tune"]
            row["tune"] = {s.name.lower(): sum(t is not None and t.state == s for t in tuned)
                           for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
            best = next((c for c in cells if c.arm == arm and c.phase == "final"), None)
            row["best_params"] = best.params if best else None
            row["best_of"] = best.best_of if best else None
        arms.append(row)
    doc = {"study": exp.name, "storage": masked(url), "file": str(exp.path), "metric": exp.metrics,
           "direction": exp.directions,
           "cells": {"total": total_cells(exp), "done": sum(s == "done" for s in states.values()),
                     "running": sum(s == "running" for s in states.values())},
           "duplicates": sum(sum(done(t) for t in g) > 1 for g in groups.values()),
           "trials": counts, "arms": arms}
    if len(exp.metrics) == 1:
        scored = [a for a in arms if a["mean"][exp.metrics[0]] is not None]
        sign = 1 if exp.directions[0] == "maximize" else -1
        doc["best_arm"] = max(scored, key=lambda a: sign * a["mean"][exp.metrics[0]])["arm"] if scored else None
    else:
        doc["pareto_front"] = [{"number": t.number, "arm": t.user_attrs.get("arm"), "phase": t.user_attrs.get("phase"),
                                "seed": t.user_attrs.get("seed"), "values": dict(zip(exp.metrics, t.values))}
                               for t in study.best_trials]
    return doc


def first_done(trials: list[FrozenTrial]) -> FrozenTrial | None:
    return min((t for t in trials if done(t)), key=lambda t: t.number, default=None)


def render(doc: dict) -> str:
    metrics = doc["metric"]
    lines = [f"study {doc['study']} ({doc['storage']}): {doc['cells']['done']}/{doc['cells']['total']} cells done"]
    width = max(len(a["arm"]) for a in doc["arms"])
    lines.append(f"  {'arm':<{width}}  " + "  ".join(f"{m + ' mean ± sd':>22}" for m in metrics) + "  seeds")
    for a in doc["arms"]:
        cols = []
        for m in metrics:
            mean, sd = a["mean"][m], a["sd"][m]
            cols.append(f"{'-' if mean is None else f'{mean:.4g}':>12} ± {'-' if sd is None else f'{sd:.2g}':<7}")
        extra = f"  tuned: {a['best_params']}" if a.get("best_params") else ""
        lines.append(f"  {a['arm']:<{width}}  " + "  ".join(cols) + f"  {a['seeds_done']}{extra}")
    if doc.get("best_arm"):
        lines.append(f"best arm on {metrics[0]}: {doc['best_arm']}")
    for t in doc.get("pareto_front", []):
        lines.append(f"pareto: trial {t['number']} {t['arm']} ({t['phase']}, seed {t['seed']}): {t['values']}")
    return "\n".join(lines)
