"""The report's tables as lists of dicts: one row per arm, the shuffle comparison, the budget."""
import math

import pandas as pd

from .frame import curve_metric, label, natural, sort_key, unique
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
    """Per arm with >= 2 evaluations: the curve metric's change over the last evaluation interval (mean, sd over
    seeds) and the epoch at which each seed peaked. An arm still rising at the end is ranked at this budget, not at
    convergence."""
    metric, rows = curve_metric(final), []
    for name, g in sorted(final.groupby(label(final, keys)), key=lambda kv: natural(kv[0])):
        runs = [[e for e in hist if e.get(metric) is not None] for hist in g.history]
        runs = [evals for evals in runs if len(evals) >= 2]
        if not runs:
            continue
        gain = mean_ci([evals[-1][metric] - evals[-2][metric] for evals in runs])
        rows.append({"arm": name, "metric": metric, "n": len(runs), "last_gain_mean": gain["mean"],
                     "last_gain_sd": gain["sd"], "interval": sorted({(e[-2]["epoch"], e[-1]["epoch"]) for e in runs}),
                     "peak_epochs": [max(evals, key=lambda e: e[metric])["epoch"] for evals in runs],
                     "peaked_last": sum(max(evals, key=lambda e: e[metric]) is evals[-1] for evals in runs)})
    return rows


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
    doc["train_time_s_total"] = float(frame.train_time_s.sum()) if "train_time_s" in frame else 0.0
    return doc
