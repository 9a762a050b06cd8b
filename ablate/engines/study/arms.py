"""The arms of an experiment file, checked as a whole before anything is built: a bounded number of them, each a
run config that `run` would accept, and no two the same run."""
import dataclasses
import json
import math

from ...foundations.config import RunConfig, resolve
from ...foundations.errors import UsageError
from .. import data
from ..training.plan import check

# Each arm's model is built on the meta device when the file loads (30-200 ms an arm, in every worker process), and
# the report tests every two arms that differ in one axis: 1,000 arms keep that to a minute. Every worker plans
# all cells before each claim: 10,000 cells keep that cheap, and are a day of even the smallest CPU runs; the
# largest shipped experiment has 18 arms and 90 cells.
MAX_ARMS = 1_000
MAX_CELLS = 10_000


def check_size(axes: dict, trials_per_arm: int, seeds: int) -> None:
    """The grid is counted from the axes' lengths, not listed, so a file of a million arms stops at once."""
    sizes = [len(values) for values in axes.values()]
    arms = math.prod(sizes)
    cells = arms * (trials_per_arm + seeds)
    shape = " x ".join(map(str, sizes)) or "1"
    if arms > MAX_ARMS:
        raise UsageError(f"[arms] makes {arms:,} arms ({shape} values), more than the limit of {MAX_ARMS:,}: every "
                         f"arm's model is checked when the file loads; split the question into several studies")
    if cells > MAX_CELLS:
        raise UsageError(f"the study has {cells:,} cells ({arms:,} arms x ({trials_per_arm:,} [study].trials_per_arm "
                         f"+ {seeds:,} [study].seeds)), more than the limit of {MAX_CELLS:,}; use fewer tuning "
                         f"trials, seeds or arms, or split the question into several studies")


def check_arms(run: dict, arms: list, validation_metric: str | None) -> None:
    """Each arm's run config checked as `run` checks it, and no two arms the same run once their recipes resolve."""
    seen: dict[str, str] = {}
    for arm in arms:
        cfg = RunConfig(**{**run, **arm.axes})
        check_arm(cfg, validation_metric)
        same = seen.setdefault(run_identity(cfg), arm.label)
        if same != arm.label:
            raise UsageError(f"[arms]: arms {same!r} and {arm.label!r} are the same run (same options once the "
                             f"recipe fills in what [run] leaves unset); keep one, or make them differ")


def run_identity(cfg: RunConfig) -> str:
    """Every option the run trains with, the recipe resolved into its values (its name then says nothing more)."""
    fields = dataclasses.asdict(resolve(cfg))
    fields.pop("recipe")
    return json.dumps(fields, sort_keys=True, default=str)


def check_arm(cfg: RunConfig, validation_metric: str | None) -> None:
    """One arm's run config, checked as `run` checks it (training.plan.check) before any cell runs; a metric measured
    on the validation split needs one."""
    check(cfg)
    if validation_metric and not data.val_size(cfg.dataset, cfg.val_size):
        raise UsageError(f"[study].metric {validation_metric} needs a validation split, and {cfg.dataset} runs have "
                         f"none by default: set [run].val_size")
