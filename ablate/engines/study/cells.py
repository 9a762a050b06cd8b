"""The cells of a study: one run each, (arm, final, seed) for every arm and seed plus (arm, tune, k) for the
tuning budget. Pure functions of the experiment and the trials read from the storage; no writes."""
import hashlib
import re
import zlib
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from .experiment import Arm, Experiment

LIVE = (TrialState.RUNNING,)
MAX_FOLDER_BYTES = 120  # an arm's folder name; file systems allow 255, and long model_options make long labels


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
        return arm_folder(self.arm.label) + "/" + kind


def arm_folder(label: str) -> str:
    """An arm's folder name: its label with anything but word characters and `.,=+-` made `_` (one name, never `.`
    or `..`: a label is `base` or holds `=`); a long one cut short and told apart by a hash of the whole label."""
    name = re.sub(r"[^\w.,=+-]", "_", label)
    if len(name.encode()) <= MAX_FOLDER_BYTES:
        return name
    digest = hashlib.sha1(label.encode()).hexdigest()[:12]
    return name.encode()[:MAX_FOLDER_BYTES - 13].decode(errors="ignore") + "-" + digest


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
    return exp.arm_count * (exp.trials_per_arm + len(exp.seeds))


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


def cell_states(exp: Experiment, trials: list[FrozenTrial]) -> tuple[dict, list[Cell], list[str]]:
    """The trials by cell, the cells known now (plan) and each one's state (free, running or done)."""
    groups = by_cell(trials)
    cells = plan(exp, groups)
    return groups, cells, [cell_state(groups.get(c.id, [])) for c in cells]


def best_params(exp: Experiment, trials: list[FrozenTrial]) -> tuple[dict, int | None]:
    """The tuned values of an arm: its best complete tuning trial on the first metric (ties: the earlier)."""
    if not trials:
        return {}, None  # every tuning trial failed or was pruned: the finals run the [run] defaults
    sign = -1 if exp.directions[0] == "maximize" else 1
    best = min(trials, key=lambda t: (sign * t.values[0], t.number))
    return dict(best.params), best.number


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
