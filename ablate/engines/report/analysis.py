"""A study's results analysed: the frames the figures draw from and the summary the report prints."""
import math
import warnings
from dataclasses import dataclass, field

import optuna
import pandas as pd

from ...foundations.errors import UsageError
from ...foundations.storage import first_line, masked
from .frame import (arm_keys, data_axis, final_trials, hashable, in_final, label, natural, objective_names, reference,
                    trials_frame, unique, value_names)
from .compare import anova, pairwise
from .scaling import scaling_fits
from .tables import arm_table, budget, convergence_table, shuffle_table


@dataclass
class Analysis:
    study: optuna.Study
    frame: pd.DataFrame            # every trial (trials_frame)
    final: pd.DataFrame            # the complete final trials, one per cell
    keys: list[str]                # the axes that vary among them
    data_keys: list[str]           # train_size and the axes linked to it
    summary: dict                  # the numbers of report.md and summary.json
    scaling_series: pd.Series | None = None   # per final trial, the curve it belongs to (data-scaling studies)
    shuffle_frame: pd.DataFrame | None = None  # the final trials compared across shuffles (largest train size)
    shuffle_series: pd.Series | None = None
    tune: pd.DataFrame | None = None           # tuning trials that finished (complete or pruned)
    tune_spaces: dict = field(default_factory=dict)  # tuned parameter -> its search space (optuna distribution)
    importances: pd.DataFrame = field(default_factory=pd.DataFrame)  # per arm and parameter

    @property
    def model_keys(self) -> list[str]:
        """The axes that are model choices: not the data budget."""
        return [k for k in self.keys if k not in self.data_keys]

    @property
    def choice_keys(self) -> list[str]:
        """The model choices without the shuffle, a data condition: what names an arm where arms are compared on
        equal terms (the Pareto figures) and a series across shuffles."""
        return [k for k in self.model_keys if k != "shuffle"]

    @property
    def maximize(self) -> bool:
        return self.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def analyse(study: optuna.Study, storage: str, control: tuple[str, str] | None = None) -> Analysis:
    frame = trials_frame(study)
    keys = arm_keys(frame, study)
    frame["arm_label"] = label(frame, keys)
    final = final_trials(frame)
    fail, diverged = frame.state == "FAIL", errored(frame)
    failed = frame[fail & in_final(frame) & diverged]  # a result
    lost = frame.lost_claim.eq(True) if "lost_claim" in frame else pd.Series(False, index=frame.index)
    interrupted = fail & ~diverged & ~lost  # a killed or crashed worker: its cell runs again
    summary = {
        "study": study.study_name, "storage": masked(storage),
        "objectives": objective_names(study), "directions": [d.name.lower() for d in study.directions],
        "n_trials": len(frame), "trials": frame.state.value_counts().sort_index().to_dict(),
        "lost_claims": int(lost.sum()), "interrupted": int(interrupted.sum()),
        "failed_runs": failed_runs(frame[fail & diverged]),
        "phases": frame.phase.dropna().value_counts().sort_index().to_dict(),
        "n_final": len(final), "axes": keys, "seeds": unique(final, "seed"), "budget": budget(frame, final),
        "arms": arm_table(final, keys, failed), "power_law": [], "shuffle": [], "tuning": [], "two_value_grids": [],
        "importance_note": None, "control": None,
        "chosen_on": chosen_on(study), "label": study.user_attrs.get("label"),
    }
    a = Analysis(study, frame, final, keys, data_axis(final, keys), summary)
    if control:
        check_control(final, a.model_keys, *control, a.data_keys)
        summary["control"] = "=".join(control)
    summary["pairwise"] = pairwise(final, keys, a.model_keys, control)
    summary["anova"] = anova(final, a.model_keys + a.data_keys[:1])
    summary["convergence"] = convergence_table(final, keys) if len(final) else []
    if "train_size" in final and final.train_size.nunique() >= 3:
        a.scaling_series = label(final, a.model_keys, whole_arm=False)
        summary["power_law"] = scaling_fits(final, a.scaling_series)
    if "shuffle" in final and final.shuffle.nunique() > 1:
        largest = final if "train_size" not in final else final[final.train_size == final.train_size.max()]
        a.shuffle_frame = largest
        a.shuffle_series = label(largest, a.choice_keys, whole_arm=False)
        summary["shuffle"] = shuffle_table(largest, a.shuffle_series)
    tuning(a)
    return a


def check_control(final: pd.DataFrame, axes: list[str], axis: str, level: str, data_keys: list[str]) -> None:
    """`--control AXIS=LEVEL` names an axis the arms vary and one of its levels, as the report prints them."""
    if axis in data_keys:
        raise UsageError(f"--control {axis}={level}: {axis} is the data budget, compared at each size by the "
                         f"scaling fits; --control takes a model axis: {', '.join(axes) or '(none)'}")
    if axis not in axes:
        raise UsageError(f"--control {axis}={level}: {axis!r} is not an axis of this study's arms; "
                         f"valid: {', '.join(axes) or '(none)'}")
    levels = [str(v) for v in unique(final, axis)]
    if level not in levels:
        raise UsageError(f"--control {axis}={level}: no arm has {axis} {level!r}; valid: {', '.join(levels)}")


def errored(frame: pd.DataFrame) -> pd.Series:
    """Trials whose run diverged or ended with a non-finite metric (a result, not run again), not those of a killed
    or crashed worker (run again)."""
    return frame.error.notna() if "error" in frame else pd.Series(False, index=frame.index)


def failed_runs(failed: pd.DataFrame) -> list[dict]:
    """Each trial whose run diverged (or ended with a non-finite metric), with its error: a result, as the arm and
    tuning tables count it."""
    return [{"number": int(r["number"]), "arm": r["arm_label"], "phase": None if pd.isna(r["phase"]) else r["phase"],
             "seed": None if pd.isna(r["seed"]) else int(r["seed"]), "error": str(r["error"])}
            for _, r in failed.iterrows()]


def chosen_on(study: optuna.Study) -> str:
    """What the study's objective chose with (tuning values, pruning, the best arm), said plainly."""
    names, directions = objective_names(study), [d.name.lower() for d in study.directions]
    what = ", ".join(f"{n} ({d})" for n, d in zip(names, directions))
    if any(n.startswith("test_") for n in names):
        return (f"{what}: this study chose on the TEST set (it was made before ablate held out a validation "
                f"split); read its comparisons as a baseline, not as a tuned result")
    return f"{what}, on the validation split; the test set chose nothing"


def reference_arms(a: Analysis) -> pd.DataFrame:
    """One row per model choice, compared on equal terms: largest train size, no shuffle."""
    return pd.DataFrame(arm_table(reference(a.final), a.choice_keys))


def tuning(a: Analysis) -> None:
    """Each arm's tuning trials (pruned and failed ones counted), its best, and the parameter importances."""
    in_tuning = a.frame.phase == "tune"
    tune = a.frame[a.frame.state.isin(["COMPLETE", "PRUNED"]) & in_tuning]
    failed = a.frame[(a.frame.state == "FAIL") & in_tuning & errored(a.frame)]  # diverged
    value = value_names(a.study)[0]
    if (tune.empty and failed.empty) or value not in a.frame:
        return
    a.tune = tune if len(tune) else None
    trials = {t.number: t for t in a.study.get_trials(deepcopy=False)}
    order = {row["arm"]: i for i, row in enumerate(a.summary["arms"])}  # the arm table's reading order
    groups = pd.concat([tune, failed]).groupby("arm_label")
    for arm, g in sorted(groups, key=lambda kv: (order.get(kv[0], len(order)), natural(kv[0]))):
        done = g[g.state == "COMPLETE"]
        row = {"arm": arm, "trials": len(g), "pruned": int((g.state == "PRUNED").sum()),
               "failed": int((g.state == "FAIL").sum()), "best_value": None, "best_trial": None, "params": {},
               "at_edge": {}}
        if len(done):  # else the finals ran the [run] defaults (study.cells.best_params)
            best = done.loc[done[value].idxmax() if a.maximize else done[value].idxmin()]
            chosen = trials[int(best.number)]
            row |= {"best_value": float(best[value]), "best_trial": int(best.number), "params": chosen.params,
                    "at_edge": range_edges(chosen)}
        a.summary["tuning"].append(row)
    a.tune_spaces = {name: d for n in tune.number.astype(int) for name, d in trials[n].distributions.items()}
    a.summary["two_value_grids"] = sorted(name for name, d in a.tune_spaces.items() if is_two_value_grid(d))
    a.importances, a.summary["importance_note"] = param_importances(a.study, trials, tune[tune.state == "COMPLETE"])


def numbers(dist: optuna.distributions.CategoricalDistribution) -> list:
    return [c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]


def is_two_value_grid(dist: optuna.distributions.BaseDistribution) -> bool:
    """Two numbers bracket no optimum: whichever wins is an end of the range, so no end is worth flagging."""
    return (isinstance(dist, optuna.distributions.CategoricalDistribution) and len(dist.choices) == 2
            and len(numbers(dist)) == 2)


def range_edges(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """The chosen numeric values that sit on an end of their search space ("low" or "high"): the range does not
    bracket that arm's optimum, which may lie beyond it. A continuous range's end is its outer 5% (in log space
    for a log range); a grid of two values has no inside, so it is left to the report's sentence about it."""
    edges = {}
    for name, dist in trial.distributions.items():
        value = trial.params[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            choices = numbers(dist)
            if is_two_value_grid(dist) or len(choices) < len(dist.choices):
                continue
            low, high, margin = min(choices), max(choices), 0.0
        elif isinstance(dist, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)):
            scale = math.log if dist.log else (lambda v: v)
            low, high, value = scale(dist.low), scale(dist.high), scale(value)
            margin = 0.05 * (high - low)
        else:
            continue
        if value <= low + margin:
            edges[name] = "low"
        elif value >= high - margin:
            edges[name] = "high"
    return edges


def param_importances(study: optuna.Study, by_number: dict[int, optuna.trial.FrozenTrial],
                      tune: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """PED-ANOVA importances (optuna's PedAnovaImportanceEvaluator) per arm over its tuning trials (`by_number`:
    the study's trials by number); (empty frame, reason) when they cannot be computed."""
    rows, reasons = [], []
    for arm, g in tune.groupby("arm_label"):
        trials = [by_number[n] for n in g.number]
        varied = [p for p in trials[0].params if len({hashable(t.params.get(p)) for t in trials}) > 1]
        if len(trials) < 3 or len(varied) < 2:
            reasons.append(f"{arm}: {len(trials)} complete trials, {len(varied)} varied parameter(s)")
            continue
        sub = optuna.create_study(directions=study.directions)
        sub.add_trials(trials)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(
                    sub, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varied,
                    target=lambda t: t.values[0])
        except (ValueError, RuntimeError) as e:
            reasons.append(f"{arm}: {first_line(e)}")
            continue
        rows += [{"arm": arm, "param": p, "importance": v} for p, v in importances.items()
                 if not math.isnan(v)]
    reason = None if rows else ("importances need >= 3 complete tuning trials and >= 2 varied parameters per "
                                "arm ("
                                + "; ".join(reasons) + ")")
    return pd.DataFrame(rows), reason
