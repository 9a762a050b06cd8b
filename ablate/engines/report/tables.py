"""The report's tables as lists of dicts: one row per arm, the shuffle comparison, the budget."""
import math

import pandas as pd

from .frame import curve_axis, curve_metric, label, natural, sort_key, unique
from .stats import mean_ci


def arm_table(final: pd.DataFrame, keys: list[str], failed: pd.DataFrame | None = None) -> list[dict]:
    """Per arm: seeds, test accuracy mean, sd and 95% CI, mean costs, and the final runs that failed."""
    rows = {}
    for name, g in final.groupby(label(final, keys), sort=False):
        acc = mean_ci(g.test_acc)
        rows[name] = {"arm": name, **{k: g[k].iloc[0] for k in keys}, "n": len(g),
                      "seeds": sorted(int(s) for s in g.seed.dropna()),
                      "test_acc_mean": acc["mean"], "test_acc_sd": acc["sd"], "test_acc_ci95": acc["ci95"],
                      **{k: float(g[k].mean()) for k in ("params", "params_frozen", "macs", "train_img_s",
                                                         "infer_img_s", "train_time_s") if k in g}, "failed": 0}
    if failed is not None and len(failed):  # an arm whose every seed diverged still gets its row
        for name, g in failed.groupby(label(failed, keys), sort=False):
            rows.setdefault(name, {"arm": name, **{k: g[k].iloc[0] for k in keys}, "n": 0, "seeds": [],
                                   "test_acc_mean": math.nan, "test_acc_sd": math.nan,
                                   "test_acc_ci95": [math.nan, math.nan]})["failed"] = len(g)
    return sorted(rows.values(), key=lambda r: [sort_key(k, r[k]) for k in keys] + [r["arm"]])


def convergence_table(final: pd.DataFrame, keys: list[str]) -> list[dict]:
    """Per arm (in the arm table's order): the curve metric's change over the last evaluation interval (mean, sd over
    the seeds with >= 2 evaluations, `n`) and the epoch (or step, see curve_axis) at which each seed peaked; [] where
    no run has 2."""
    metric, x, rows = curve_metric(final), curve_axis(final), []
    groups = sorted(final.groupby(label(final, keys)), key=lambda kv: [sort_key(k, kv[1][k].iloc[0]) for k in keys])
    for name, g in groups:
        runs = [[e for e in hist if e.get(metric) is not None] for hist in g.history]
        runs = [evals for evals in runs if len(evals) >= 2]
        peaks = [max(evals, key=lambda e: e[metric]) for evals in runs]
        gain = mean_ci([evals[-1][metric] - evals[-2][metric] for evals in runs]) if runs else {}
        rows.append({"arm": name, "metric": metric, "axis": x, "n": len(runs), "last_gain_mean": gain.get("mean"),
                     "last_gain_sd": gain.get("sd"),
                     "interval": sorted({(evals[-2][x], evals[-1][x]) for evals in runs}),
                     "peaks": [peak[x] for peak in peaks],
                     "peaked_last": sum(peak is evals[-1] for peak, evals in zip(peaks, runs))})
    return rows if any(r["n"] for r in rows) else []


def shuffle_table(final: pd.DataFrame, series: pd.Series) -> list[dict]:
    rows = []
    for name in sorted(series.unique(), key=natural):
        g = final[series == name]
        base = g[g.shuffle == "none"].test_acc.mean() if (g.shuffle == "none").any() else math.nan
        for mode, h in sorted(g.groupby("shuffle"), key=lambda kv: sort_key("shuffle", kv[0])):
            acc = mean_ci(h.test_acc)
            change = acc["mean"] / base - 1 if base == base and mode != "none" else None
            rows.append({"series": name, "shuffle": mode, "n": len(h), "test_acc_mean": acc["mean"],
                         "test_acc_sd": acc["sd"], "test_acc_ci95": acc["ci95"], "relative_change": change})
    return rows


def budget(frame: pd.DataFrame, final: pd.DataFrame) -> dict:
    """What the analysed runs were given, and the training time of every trial that has a record."""
    doc = {k: unique(final, k) for k in ("dataset", "preset", "epochs", "steps", "train_size", "test_size", "shuffle",
                                         "device", "precision", "config.recipe", "config.batch_size", "config.lr",
                                         "config.weight_decay", "config.augment", "config.ema")}
    # a final seed-0 trial that reuses its tuning run carries the same record: count each run once
    runs = frame[~(frame.run_id.notna() & frame.run_id.duplicated())] if "run_id" in frame else frame
    timed = "train_time_s" in frame
    doc["train_time_s_total"] = float(runs.train_time_s.sum()) if timed else 0.0
    # runs taken from the studies in [study].reuse: their time was spent by those studies, not this one
    taken = runs[runs.reused_from.notna()] if "reused_from" in runs else runs.iloc[:0]
    doc["train_time_s_taken"] = float(taken.train_time_s.sum()) if timed else 0.0
    doc["taken_from"] = sorted(taken.reused_from.unique()) if len(taken) else []
    return doc
