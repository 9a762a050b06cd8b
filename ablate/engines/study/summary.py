"""What a study has so far, read from its storage: cells done, each arm's values over seeds, the best arm or
the Pareto front; and its rendering as a table."""
import statistics

from optuna.trial import FrozenTrial, TrialState

from ...foundations.storage import masked
from .board import Board
from .cells import cell_states, done, total_cells
from .experiment import Experiment


def summarize(exp: Experiment, board: Board, url: str) -> dict:
    study = board.study
    trials = study.get_trials(deepcopy=False)
    groups, cells, states = cell_states(exp, trials)
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
           "cells": tally(exp, states),
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


def progress(exp: Experiment, trials: list[FrozenTrial]) -> dict:
    """Cells done, running (a live trial holds them) and pending (the rest: free now, or known once tuning ends)."""
    return tally(exp, cell_states(exp, trials)[2])


def tally(exp: Experiment, states: list[str]) -> dict:
    total, done_, running = total_cells(exp), states.count("done"), states.count("running")
    return {"total": total, "done": done_, "running": running, "pending": total - done_ - running}


def progress_line(name: str, state: dict) -> str:
    return (f"study {name}: {state['done']}/{state['total']} cells done, {state['running']} running, "
            f"{state['pending']} pending")


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
