"""A study worker: claims free cells, runs each as a training job while a heartbeat marks its trial alive, and
tells the storage the result.

A worker claims a free cell by creating a RUNNING trial for it and then re-reading the storage: if another
live or finished trial holds the same cell, it fails its own trial as a lost claim and picks again. Of two
workers that claim the same cell at once, the later reader always sees the earlier one, so a cell never runs
twice (at worst both step back and one takes it on the next pass); a worker whose trial was failed under it
(its heartbeats did not reach the storage) stops at its next evaluation. A cell is done once it has a COMPLETE or
PRUNED trial, or a FAIL with an `error` (a diverged run, a result in itself). A killed worker's trial goes
stale (optuna's heartbeat on RDB storages, a heartbeat attribute on journal files), is failed by the next
worker that looks, and its cell runs again, continuing from the cell's checkpoint.
"""
import json
import math
import random
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState, create_trial

from ...foundations.config import RunConfig
from ...foundations.errors import Diverged
from ..training import runs
from .board import Board
from .cells import LIVE, Cell, arm_view, cell_states, done, draw_params, total_cells, tune_trials
from .experiment import EPOCH_METRICS, Experiment

HEARTBEAT_ATTR = "ablate:heartbeat"  # unix time, for storages without optuna's heartbeat (journal files)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Heartbeat:
    """Marks a trial alive every `interval` seconds from a thread while its cell runs, and sets `lost` when another
    worker has failed the trial (its beats did not reach the storage for the grace period): the run must stop,
    since the cell's retry continues from the same checkpoint."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop, self.lost = threading.Event(), threading.Event()
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
                if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
                    raise UpdateFinishedTrialError(f"trial {self.trial_id} is finished")
            except UpdateFinishedTrialError:
                self.lost.set()
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


def fail_stale(board: Board, grace: float) -> None:
    """Fails RUNNING trials whose worker stopped beating, so their cells run again."""
    if optuna_heartbeat(board.storage):
        optuna.storages.fail_stale_trials(board.study)
        return
    now = time.time()
    for t in board.study.get_trials(deepcopy=False, states=LIVE):
        beat = t.system_attrs.get(HEARTBEAT_ATTR)
        if beat is not None and now - beat > grace:
            try:
                board.storage.set_trial_state_values(board.trial_id(t.number), TrialState.FAIL)
            except UpdateFinishedTrialError:
                pass


def work(exp: Experiment, board: Board, out: Path, heartbeat: int, name: str) -> int:
    """Claims and runs free cells until every cell of the study is done; returns how many this worker ran."""
    rng, ran, total, waiting, collided = random.Random(), 0, total_cells(exp), False, False
    while True:
        fail_stale(board, 2 * heartbeat)
        trials = board.study.get_trials(deepcopy=False)
        _, cells, states = cell_states(exp, trials)
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
        collided = not run_cell(exp, board, cell, out, heartbeat, name)
        if collided:
            time.sleep(rng.uniform(0.05, 0.5))
        else:
            ran += 1


def claim(exp: Experiment, board: Board, cell: Cell) -> int:
    attrs = {"cell": cell.id, "arm": cell.arm.label, "axes": cell.arm.axes, "phase": cell.phase, "seed": cell.seed}
    if cell.best_of is not None:
        attrs["best_of"] = cell.best_of
    template = create_trial(state=TrialState.RUNNING, params=cell.params, user_attrs=attrs,
                            distributions={k: exp.search[k] for k in cell.params})
    return board.storage.create_new_trial(board.study_id, template_trial=template)


def lost_claim(board: Board, cell: Cell, number: int) -> bool:
    rivals = [t for t in board.study.get_trials(deepcopy=False) if t.user_attrs.get("cell") == cell.id
              and t.number != number and (t.state in LIVE or done(t))]
    return bool(rivals)


def run_cell(exp: Experiment, board: Board, cell: Cell, out: Path, heartbeat: int, name: str) -> bool:
    """Claims `cell` and runs it; False when another worker holds it or took the trial over."""
    storage = board.storage
    trial_id = claim(exp, board, cell)
    try:  # from the claim on: a signal or crash anywhere below frees the cell
        number = storage.get_trial_number_from_id(trial_id)
        with Heartbeat(storage, trial_id, heartbeat) as beat:
            if lost_claim(board, cell, number):
                storage.set_trial_user_attr(trial_id, "lost_claim", True)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                return False
            log(f"{name}: trial {number}: {cell.id} {cell.params or ''}")
            finish(exp, board, cell, trial_id, out, beat.lost)
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


def finish(exp: Experiment, board: Board, cell: Cell, trial_id: int, out: Path, lost: threading.Event) -> None:
    """Runs the cell's training job (continuing its checkpoint if there is one) and tells the storage; stops at the
    next evaluation once the trial is `lost`."""
    storage = board.storage
    cfg = RunConfig(**exp.run, **cell.arm.axes, **cell.params, seed=cell.seed, out=str(out / exp.name / cell.folder))
    last: dict = {}

    def on_eval(point: int, record: dict) -> None:
        if lost.is_set():
            raise UpdateFinishedTrialError(f"trial {trial_id} was failed by another worker")
        last["record"] = record
        if len(exp.metrics) > 1 or exp.metrics[0] not in EPOCH_METRICS:
            return
        value = record["history"][-1][exp.metrics[0]]
        storage.set_trial_intermediate_value(trial_id, point, value)
        last["value"] = value
        if cell.phase == "tune" and exp.pruner != "none" and should_prune(exp, board, cell, trial_id):
            raise optuna.TrialPruned(f"pruned at {point}")

    try:
        reused = finished_run(cfg, [out / name for name in exp.reuse])
        if reused:
            storage.set_trial_user_attr(trial_id, "reused_run", str(reused.folder))
            if reused.study:
                storage.set_trial_user_attr(trial_id, "reused_from", reused.study)
            record = reused.record
        else:
            resumable = unfinished_run(cfg)
            record = runs.run(cfg, resume=str(resumable) if resumable else False, quiet=True, on_eval=on_eval)
    except optuna.TrialPruned:
        storage.set_trial_user_attr(trial_id, "record", last.get("record"))
        storage.set_trial_state_values(trial_id, TrialState.PRUNED, [last["value"]])
        return
    except Diverged as e:  # a result: recorded, and not retried (a run that could not save frees its cell: run_cell)
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


class FinishedRun(NamedTuple):
    folder: Path
    record: dict
    study: str | None  # the study of [study].reuse it was taken from; None for a run of this study


def finished_run(cfg: RunConfig, studies: list[Path] = ()) -> FinishedRun | None:
    """A finished run of exactly this config (runs.identity: same seed, same values, same precision).
    First among the arm's cells: the cell's own, when its worker died before telling the storage, or the tuning run
    whose values won, which a final cell on the tuning seed would only repeat (CPU runs repeat to the last digit).
    Then in the run folders of `studies` ([study].reuse), whatever their arms are called."""
    run = runs.identity(cfg)
    paths = [(path, None) for path in sorted(Path(cfg.out).parent.glob("*/*/record.json"))]
    paths += [(path, study.name) for study in studies for path in sorted(study.glob("*/*/*/record.json"))]
    for path, study in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if runs.is_run_of(doc, run) and doc["status"] == "done":  # is_run_of first: a record may be any JSON
            log(f"reusing the finished run {path.parent}")
            return FinishedRun(path.parent, doc, study)
    return None


def unfinished_run(cfg: RunConfig) -> Path | None:
    return runs.find_resumable(Path(cfg.out), cfg) if Path(cfg.out).is_dir() else None


def should_prune(exp: Experiment, board: Board, cell: Cell, trial_id: int) -> bool:
    """Asks the pruner about this trial among its arm's tuning trials only (never against other arms)."""
    storage = board.storage
    arm_trials = tune_trials(board.study.get_trials(deepcopy=False), cell.arm)
    view = arm_view(exp, cell.arm, arm_trials, pruner=exp.make_pruner())
    number = storage.get_trial_number_from_id(trial_id)
    index = [t.number for t in sorted(arm_trials, key=lambda t: t.number)].index(number)
    prune = view.pruner.prune(view, view.trials[index])
    mine = storage.get_trial_system_attrs(trial_id)
    for key, value in view.trials[index].system_attrs.items():  # successive halving's rungs live on the trial
        if key not in mine:
            storage.set_trial_system_attr(trial_id, key, value)
    return prune
