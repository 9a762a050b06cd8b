"""`ablate report --study NAME`: seaborn figures, report.md, trials.csv and a JSON summary, from the storage alone.

Every number comes from the run records that `study` keeps in each trial's user_attrs. The analysis
uses the complete trials of the final phase (or trials without a phase); tuning trials feed the
tuning figures; trials.csv lists every trial in every state. Figures are chosen by the study's
axes: a study that does not vary the train size gets no scaling figure, and so on.
"""
import argparse
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator, NullLocator
from optuna.storages.journal import JournalFileBackend, JournalStorage
from scipy import stats
from scipy.optimize import curve_fit
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .errors import UsageError
from .io import atomic_write, write_json
from .storage_url import journal_path, masked

FORMATS = ("png", "svg", "pdf")
AXES = ("spatial", "channel", "preset", "dataset", "train_size", "shuffle", "epochs")  # record fields arms vary
METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}  # no timestamps: reruns diff clean


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="study name in the storage")
    p.add_argument("--storage", default="sqlite:///ablate.db",
                   help="optuna RDB URL (sqlite:///ablate.db, postgresql://...) or a journal file "
                        "(journal:PATH, or a PATH ending .log/.journal)")
    p.add_argument("-o", "--out", default=None, help="folder for report.md, figures and trials.csv "
                                                     "(default reports/NAME)")
    p.add_argument("--format", default="png,svg", help=f"figure formats, comma-separated: {', '.join(FORMATS)}")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the power-law confidence intervals")
    p.add_argument("--json", action="store_true", help="print a summary as one JSON document on stdout")


# -- reading the storage ----------------------------------------------------------------------------------------
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Opens an existing storage for reading; never creates a database or a file."""
    path = journal_path(url)
    if path is not None:
        if not path.is_file():
            raise UsageError(f"--storage {url}: no such journal file; give an existing journal file or an RDB URL "
                             f"such as sqlite:///ablate.db or postgresql://user@host/db")
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise UsageError(f"--storage {url}: not a storage URL ({first_line(e)}); e.g. sqlite:///ablate.db") from None
    if parsed.drivername.startswith("sqlite") and not (parsed.database and Path(parsed.database).is_file()):
        raise UsageError(f"--storage {url}: no such file {parsed.database or '(none given)'}; run a study first "
                         f"(`python -m ablate study FILE --storage {url}`)")
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except ImportError as e:
        raise UsageError(f"cannot open storage {masked(url)}: no database driver ({first_line(e.__cause__ or e)}); "
                         f"install it, or name an installed one in the URL, e.g. postgresql+psycopg2://") from None
    except (SQLAlchemyError, ValueError, RuntimeError, optuna.exceptions.OptunaError) as e:
        raise UsageError(f"cannot open storage {masked(url)} (is it an optuna storage?): "
                         f"{first_line(e.__cause__ or e)}") from None


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_study(url: str, name: str) -> optuna.Study:
    storage = open_storage(url)
    try:
        names = optuna.get_all_study_names(storage)
    except (SQLAlchemyError, OSError) as e:
        raise UsageError(f"cannot read storage {masked(url)}: {first_line(e)}") from None
    if name not in names:
        raise UsageError(f"no study {name!r} in {masked(url)}; studies there: {', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


# -- the trials as tables -----------------------------------------------------------------------------------------
def value_names(study: optuna.Study) -> list[str]:
    """optuna's trials_dataframe column names for the objective values."""
    return ["value"] if len(study.directions) == 1 else [f"value_{i}" for i in range(len(study.directions))]


def objective_names(study: optuna.Study) -> list[str]:
    """The metrics the objective values are: optuna's metric names, else the experiment's `metric` that `study`
    stores, else value / value_0, value_1, ..."""
    metric = (study.user_attrs.get("experiment") or {}).get("metric")
    metric = [metric] if isinstance(metric, str) else metric
    if study.metric_names:
        return study.metric_names
    if isinstance(metric, list) and len(metric) == len(study.directions):
        return [str(m) for m in metric]
    return value_names(study)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, every state: number, state, values, params_*, the trial's user attributes
    (arm, axes, phase, seed, cell, error, ...) and its run record flattened (config.model.dims, ...)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = t.user_attrs.get("record") or {}
        row = {"number": t.number, "state": t.state.name,
               "duration_s": t.duration.total_seconds() if t.duration else None,
               **dict(zip(value_names(study), t.values or [])),
               **{f"params_{k}": v for k, v in t.params.items()},
               **{k: v for k, v in t.user_attrs.items() if k != "record"},
               **dict(flatten({k: v for k, v in record.items() if k != "history"}))}
        rows.append({**row, "history": record.get("history") or []})
    frame = pd.DataFrame(rows, columns=None if rows else ["number", "state", "history"])
    for column in ("phase", "arm", "axes", "seed"):
        if column not in frame:
            frame[column] = None
    for column in frame.columns:  # whole numbers stay whole where trials without a record leave gaps
        values = [r[column] for r in rows if r.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
    return frame


def flatten(doc: dict, prefix: str = ""):
    """(dotted key, value) pairs of a nested record: config.model.dims, ..."""
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def in_final(frame: pd.DataFrame) -> pd.Series:
    return frame.phase.isna() | (frame.phase == "final")


def final_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """Complete trials of the final phase (or without a phase) that carry a test accuracy, one per cell."""
    if "test_acc" not in frame:
        return frame.iloc[0:0]
    final = frame[(frame.state == "COMPLETE") & in_final(frame) & frame.test_acc.notna()]
    if "cell" in final:  # `study` runs each cell once; should a race ever finish one twice, count it once
        final = final[final.cell.isna() | ~final.cell.duplicated()]
    final = final.copy()
    for column in final.columns:
        if isinstance(final[column].dtype, pd.Int64Dtype) and final[column].notna().all():
            final[column] = final[column].astype("int64")
    return final.infer_objects()


def hashable(value):
    if isinstance(value, (list, tuple)):
        return "/".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def arm_keys(frame: pd.DataFrame, study: optuna.Study) -> list[str]:
    """The study's axes that vary among its final results, in the experiment file's order.

    Named by each trial's `axes` attribute (what `study` writes), else the study's `axes` attribute, else
    the record fields that arms usually vary. Each becomes a column of `frame`: the run record's value
    (what ran), or the trial's axes value where a failed trial has no record.
    """
    keys: list[str] = []
    for axes in [*frame["axes"], study.user_attrs.get("axes")]:
        if isinstance(axes, dict):
            keys += [k for k in axes if k not in keys]
    keys = keys or [k for k in AXES if k in frame]
    for key in keys:
        from_axes = frame["axes"].map(lambda a: a.get(key) if isinstance(a, dict) else None)
        column = frame[key].astype(object) if key in frame else pd.Series(None, index=frame.index, dtype=object)
        frame[key] = column.where(column.notna(), from_axes).map(hashable)
    final = final_trials(frame)
    return [k for k in keys if final[k].nunique() > 1] if len(final) else []


def data_axis(final: pd.DataFrame, keys: list[str]) -> list[str]:
    """`train_size` and the axes set together with it (a linked `data` axis: epochs, eval_every per size).

    An axis whose value is fixed by the train size is part of the data budget, not a separate series.
    """
    if "train_size" not in keys:
        return []
    linked = [k for k in keys if k != "train_size" and final.groupby("train_size")[k].nunique().max() == 1]
    return ["train_size", *linked]


def label(frame: pd.DataFrame, keys: list[str], whole_arm: bool = True) -> pd.Series:
    """A readable name per row: the value alone for one key, key=value pairs for several.

    With no keys left, an arm is named as in the storage, and a series of arms (a curve over train sizes)
    by its spatial mixer.
    """
    if not keys:
        if not whole_arm:
            return frame.spatial.astype(str) if "spatial" in frame else pd.Series("all", index=frame.index)
        arm = frame.arm if "arm" in frame else pd.Series(None, index=frame.index, dtype=object)
        return arm.map(lambda a: a if isinstance(a, str) else "all")
    if len(keys) == 1:
        return frame[keys[0]].astype(str)
    return frame[keys].apply(lambda r: ", ".join(f"{k}={r[k]}" for k in keys), axis=1)


def mean_ci(values) -> dict:
    """Mean, sd and the 95% t-interval over seeds (NaN where one seed gives no spread)."""
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(np.mean(x))
    sd = float(np.std(x, ddof=1)) if n > 1 else math.nan
    if n < 2:
        low = high = math.nan
    elif sd == 0:
        low = high = mean
    else:
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"mean": mean, "sd": sd, "ci95": [float(low), float(high)]}


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


SHUFFLES = ("none", "patch", "global")


def sort_key(key: str, value):
    """Arms in reading order: shuffles as none, patch, global; numbers by value; names alphabetically."""
    if key == "shuffle" and value in SHUFFLES:
        return (0, SHUFFLES.index(value), "")
    if isinstance(value, (int, float, np.number)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


# -- the saturating power law ---------------------------------------------------------------------------------------
def power_law(n, a, b, c):
    return a * np.power(n, -b) + c


def fit_power_law(n: np.ndarray, err: np.ndarray, p0=None) -> np.ndarray | None:
    """(a, b, c) of err(N) = a * N^-b + c, with a, b >= 0 and 0 <= c <= 1; None when the fit does not converge.

    Fitted as A * (N / N_min)^-b + c, so A is on the scale of the errors whatever the sizes, then a = A * N_min^b.
    """
    n0 = n.min()
    start = (max(err.max() - err.min(), 1e-3), 0.5, max(err.min() / 2, 0.0)) if p0 is None else \
        (p0[0] * n0 ** -p0[1], p0[1], p0[2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning on exact fits (3 sizes, 3 parameters)
            (big_a, b, c), _ = curve_fit(power_law, n / n0, err, p0=start, bounds=([0, 0, 0], [np.inf, 5, 1]),
                                         maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return np.array([big_a * n0 ** b, b, c])


def scaling_fits(final: pd.DataFrame, series: pd.Series, n_boot: int) -> list[dict]:
    """Fit per series, with percentile 95% CIs from resampling the trials within each train size."""
    rng = np.random.default_rng(0)
    rows = []
    for name in sorted(series.unique()):
        g = final[series == name]
        n, err = g.train_size.to_numpy(float), 1 - g.test_acc.to_numpy(float)
        row = {"series": name, "trials": len(g), "sizes": int(np.unique(n).size)}
        params = fit_power_law(n, err) if row["sizes"] >= 3 else None
        if params is None:
            rows.append({**row, "fit": None})
            continue
        by_size = [np.flatnonzero(n == size) for size in np.unique(n)]
        boot = []
        for _ in range(n_boot):
            idx = np.concatenate([rng.choice(i, size=len(i)) for i in by_size])
            fitted = fit_power_law(n[idx], err[idx], p0=params)  # warm start: resamples sit near the fit
            if fitted is not None:
                boot.append(fitted)
        boot = np.array(boot).reshape(-1, 3)
        ci = np.percentile(boot, [2.5, 97.5], axis=0) if len(boot) else np.full((2, 3), np.nan)
        rows.append({**row, "fit": {name_: {"value": float(v), "ci95": [float(ci[0, i]), float(ci[1, i])]}
                                    for i, (name_, v) in enumerate(zip("abc", params))},
                     "asymptotic_acc": 1 - float(params[2]),
                     "bootstrap": {"resamples": n_boot, "converged": len(boot)}})
    return rows


# -- figures ------------------------------------------------------------------------------------------------------
def new_figure(nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.2):
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def palette(names) -> dict:
    names = sorted(set(names), key=natural)
    return dict(zip(names, sns.color_palette("colorblind" if len(names) <= 10 else "husl", len(names))))


def dominated(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """True where another point has at least the accuracy at no more cost, and is strictly better in one."""
    better_eq = (acc[None, :] >= acc[:, None]) & (cost[None, :] <= cost[:, None])
    strictly = (acc[None, :] > acc[:, None]) | (cost[None, :] < cost[:, None])
    return (better_eq & strictly).any(axis=1)


@dataclass
class Figures:
    out: Path
    formats: list[str]
    made: list[dict] = field(default_factory=list)  # {name, title, files}

    def save(self, fig: Figure, name: str, title: str) -> None:
        files = []
        for fmt in self.formats:
            path = self.out / f"{name}.{fmt}"
            atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=150, metadata=METADATA[fmt]))
            files.append(path.name)
        self.made.append({"name": name, "title": title, "files": files})


def plot_scaling(figs: Figures, final: pd.DataFrame, series: pd.Series, fits: list[dict]) -> None:
    fig, axes = new_figure()
    ax = axes[0, 0]
    colors = palette(series)
    data = final.assign(series=series)
    sns.lineplot(data=data, x="train_size", y="test_acc", hue="series", palette=colors, errorbar="sd",
                 err_style="bars", marker="o", linestyle="", ax=ax, err_kws={"capsize": 3})
    grid = np.geomspace(final.train_size.min(), final.train_size.max(), 200)
    for row in fits:
        if row["fit"]:
            a, b, c = (row["fit"][k]["value"] for k in "abc")
            ax.plot(grid, 1 - power_law(grid, a, b, c), color=colors[row["series"]], lw=1.2, alpha=0.8)
    sizes = sorted(final.train_size.unique())
    ax.set(xscale="log", xlabel="training images (log scale)", ylabel="test accuracy",
           title="Mean ± sd over seeds; lines: err = a·N^−b + c")
    ax.set_xticks(sizes, [f"{n / 1000:g}k" if n >= 1000 else str(n) for n in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.legend(title=None, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    figs.save(fig, "scaling", "Accuracy vs training-set size")


def plot_pareto(figs: Figures, arms: pd.DataFrame, cost: str, higher_better: bool, name: str, xlabel: str) -> None:
    fig, axes = new_figure()
    ax = axes[0, 0]
    acc, c = arms.test_acc_mean.to_numpy(), arms[cost].to_numpy(float)
    front = ~dominated(acc, -c if higher_better else c)
    colors = palette(arms.arm)
    for (_, row), on_front in zip(arms.iterrows(), front):
        ax.errorbar(row[cost], row.test_acc_mean, yerr=0 if np.isnan(row.test_acc_sd) else row.test_acc_sd,
                    fmt="*" if on_front else "o", ms=13 if on_front else 7, capsize=3, color=colors[row.arm],
                    label=row.arm)
    order = np.argsort(c[front])
    # the best accuracy reachable at a cost: from each front point on (cheaper is better) or up to it (faster)
    steps = "steps-pre" if higher_better else "steps-post"
    ax.plot(c[front][order], acc[front][order], color="0.4", lw=1, ls="--", drawstyle=steps, label="Pareto front")
    if c.max() / max(c.min(), 1e-12) > 10:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter())  # 8 M, not 0.8 with a 1e7 offset
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=f"Accuracy vs {xlabel.split(' (')[0]} (★ = non-dominated)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    figs.save(fig, name, f"Accuracy vs {xlabel}")


def plot_shuffle(figs: Figures, final: pd.DataFrame, series: pd.Series) -> None:
    """Per mixer, accuracy across shuffle modes: a line that stays flat is a mixer the shuffle cannot hurt."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    data = final.assign(series=series)
    modes = sorted(set(data.shuffle), key=lambda m: sort_key("shuffle", m))
    order = sorted(series.unique(), key=natural)
    colors = palette(order)
    sns.stripplot(data=data, x="shuffle", y="test_acc", hue="series", order=modes, hue_order=order, palette=colors,
                  dodge=False, jitter=0.08, size=4, alpha=0.45, legend=False, ax=ax)
    sns.pointplot(data=data, x="shuffle", y="test_acc", hue="series", order=modes, hue_order=order, palette=colors,
                  errorbar="sd", capsize=0.08, markersize=7, ax=ax)
    ax.set(xlabel="pixel shuffle (the same for train and test)", ylabel="test accuracy",
           title="Shuffle robustness: mean ± sd over seeds (dots: seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    figs.save(fig, "shuffle", "Accuracy per mixer and pixel shuffle")


def panels(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.Series, pd.Series, list[str]]:
    """Lines per spatial mixer (or per arm), one panel per value of the other axes: (hue, panel, panel order)."""
    hue_keys = ["spatial"] if "spatial" in keys else keys
    col_keys = [k for k in keys if k not in hue_keys]
    hue = label(frame, hue_keys)
    col = label(frame, col_keys) if col_keys else pd.Series("", index=frame.index)
    return hue, col, sorted(col.unique(), key=natural)


def panel_figure(names: list[str]):
    ncols = min(3, len(names))
    fig, axes = new_figure(-(-len(names) // ncols), ncols, width=5.0, height=3.6)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    return fig, list(zip(axes.flat, names))


def plot_curves(figs: Figures, final: pd.DataFrame, keys: list[str]) -> None:
    hue, col, names = panels(final, keys)
    long = pd.DataFrame([{"hue": h, "col": c, "epoch": e["epoch"], "test_acc": e["test_acc"]}
                         for h, c, hist in zip(hue, col, final.history) for e in hist])
    colors = palette(long.hue)
    fig, grid = panel_figure(names)
    for ax, name in grid:
        sns.lineplot(data=long[long.col == name], x="epoch", y="test_acc", hue="hue", palette=colors,
                     errorbar="sd", marker="o", ax=ax)
        ax.set(title=name or None, ylabel="test accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(title=None, fontsize="small")
    fig.suptitle("Learning curves: mean over seeds, band = sd")
    figs.save(fig, "curves", "Test accuracy per epoch")


def natural(text: str):
    """Sort key that orders 'train_size=1000' before 'train_size=60000'."""
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def plot_tuning_history(figs: Figures, tune: pd.DataFrame, keys: list[str], value: str, name: str,
                        maximize: bool) -> None:
    """Per arm, its tuning trials in the order they ran: values (x = pruned) and the best so far."""
    tune = tune.sort_values("number")
    hue, col, names = panels(tune, keys)
    colors = palette(hue)
    fig, grid = panel_figure(names)
    for ax, panel in grid:
        for arm, g in tune[col == panel].groupby(hue[col == panel]):
            step = np.arange(1, len(g) + 1)
            done = (g.state == "COMPLETE").to_numpy()
            ax.scatter(step[done], g[value][done], color=colors[arm], s=18, label=arm)
            ax.scatter(step[~done], g[value][~done], color=colors[arm], s=24, marker="x")
            best = g[value].where(done).cummax() if maximize else g[value].where(done).cummin()
            ax.step(step, best, where="post", color=colors[arm], lw=1.2)
        ax.set(title=panel or None, xlabel="tuning trial of the arm", ylabel=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(title=None, fontsize="small")
    fig.suptitle("Tuning: each trial (x = pruned, its last reported value) and the best so far")
    figs.save(fig, "tuning_history", "Optimization history of the tuning phase")


def param_importances(study: optuna.Study, tune: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """PED-ANOVA importances per arm over its tuning trials; (empty frame, reason) when they cannot be computed."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows, reasons = [], []
    for arm, g in tune.groupby("arm_label"):
        trials = [by_number[n] for n in g.number]
        varied = [p for p in trials[0].params if len({hashable(t.params.get(p)) for t in trials}) > 1]
        if len(trials) < 3 or len(varied) < 2:
            reasons.append(f"{arm}: {len(trials)} trials, {len(varied)} varied parameter(s)")
            continue
        sub = optuna.create_study(directions=study.directions)
        sub.add_trials(trials)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(sub, params=varied, target=lambda t: t.values[0])
        except (ValueError, RuntimeError) as e:
            reasons.append(f"{arm}: {first_line(e)}")
            continue
        rows += [{"arm": arm, "param": p, "importance": v} for p, v in importances.items()]
    reason = None if rows else ("importances need >= 3 tuning trials and >= 2 varied parameters per arm ("
                                + "; ".join(reasons) + ")")
    return pd.DataFrame(rows), reason


def plot_importances(figs: Figures, importances: pd.DataFrame) -> None:
    table = importances.pivot(index="arm", columns="param", values="importance")
    table = table.loc[sorted(table.index, key=natural)]
    label_width = 0.09 * max(map(len, table.index))  # inches for the arm names at this font size
    fig, axes = new_figure(width=label_width + 2.0 + 1.1 * table.shape[1], height=1.6 + 0.35 * len(table))
    ax = axes[0, 0]
    sns.heatmap(table, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax,
                cbar_kws={"label": "importance (PED-ANOVA, sums to 1 per arm)"})
    ax.set(xlabel=None, ylabel=None, title="Hyperparameter importance per arm")
    figs.save(fig, "importances", "Parameter importances of the tuning phase")


# -- the report ---------------------------------------------------------------------------------------------------
def fmt(x, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec)


def si(x) -> str:
    if x is None or math.isnan(x):
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def unique(frame: pd.DataFrame, column: str) -> list:
    if column not in frame:
        return []
    values = frame[column].dropna().map(hashable).unique().tolist()
    return sorted(values, key=natural)


def budget(frame: pd.DataFrame, final: pd.DataFrame) -> dict:
    """What the analysed runs were given, and the training time of every trial that has a record."""
    doc = {k: unique(final, k) for k in ("dataset", "preset", "epochs", "train_size", "test_size", "shuffle",
                                         "device", "config.batch_size", "config.lr", "config.weight_decay",
                                         "config.augment")}
    doc["train_time_s_total"] = float(frame.train_time_s.sum()) if "train_time_s" in frame else 0.0
    return doc


def percent_change(ratio: float) -> str:
    """+1.4%, -0.4%, and 0.0% for a change that rounds away (not -0.0%)."""
    text = f"{100 * ratio:+.1f}%"
    return "0.0%" if text in ("+0.0%", "-0.0%") else text


def listing(values: list) -> str:
    """A short cell for a budget table: every value, or the range when there are many (tuned per arm)."""
    if len(values) > 6 and all(isinstance(v, (int, float)) for v in values):
        return f"{min(values):.4g} … {max(values):.4g} ({len(values)} values)"
    return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values) or "—"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def write_markdown(path: Path, summary: dict, figs: Figures, study: optuna.Study) -> None:
    embed = next((f for f in figs.formats if f in ("png", "svg")), None)
    s, b = summary, summary["budget"]
    states = ", ".join(f"{n} {state.lower()}" for state, n in s["trials"].items())
    if s["lost_claims"]:
        states += f"; failed includes {s['lost_claims']} lost claim(s): cells another worker ran, not results"
    phases = ", ".join(f"{n} {phase}" for phase, n in s["phases"].items())
    parts = [
        f"# Study `{s['study']}`",
        f"- storage: `{s['storage']}`\n- trials: {s['n_trials']} ({states}; phases: {phases or 'none'})\n"
        f"- objective: {', '.join(f'{n} ({d})' for n, d in zip(s['objectives'], s['directions']))}\n"
        f"- analysed: {s['n_final']} complete final trials in {len(s['arms'])} arm(s) over seeds "
        f"{', '.join(map(str, s['seeds'])) or '—'}; axes: {', '.join(s['axes']) or 'none'}",
        "## Budget\n" + markdown_table(["", ""], [[k.replace("config.", ""), listing(v)]
                                                  for k, v in b.items() if k != "train_time_s_total"]
                                         + [["training time, all trials", f"{b['train_time_s_total'] / 3600:.2f} h"]]),
    ]
    if s["arms"]:
        failed = any(a["failed"] for a in s["arms"])
        parts.append("## Arms\nTest accuracy as a fraction: mean ± sd over seeds and the 95% t-interval of the mean. "
                     "Costs as recorded: parameters, MACs of one forward pass of one image, throughput in "
                     "images/s on the run's device." + (" `failed`: final runs that diverged or crashed, not in "
                                                        "the mean." if failed else "") + "\n\n" + markdown_table(
                         ["arm", "n", "test acc", "95% CI", "params", "MACs", "train img/s", "infer img/s"]
                         + ["failed"] * failed,
                         [[a["arm"], a["n"], f"{fmt(a['test_acc_mean'])} ± {fmt(a['test_acc_sd'])}",
                           f"[{fmt(a['test_acc_ci95'][0])}, {fmt(a['test_acc_ci95'][1])}]", si(a.get("params")),
                           si(a.get("macs")), si(a.get("train_img_s")), si(a.get("infer_img_s"))]
                          + [a["failed"]] * failed for a in s["arms"]]))
    else:
        parts.append("## Arms\nNo complete final trials yet.")
    if s["power_law"]:
        rows = []
        for r in s["power_law"]:
            if r["fit"] is None:
                rows.append([r["series"], r["trials"], r["sizes"], "fit did not converge", "", "", ""])
                continue
            specs = {"a": (".4g", ".3g"), "b": (".3f", ".3f"), "c": (".4f", ".4f")}  # a spans decades; b, c do not
            cells = [f"{fmt(r['fit'][k]['value'], v)} [{fmt(r['fit'][k]['ci95'][0], ci)}, "
                     f"{fmt(r['fit'][k]['ci95'][1], ci)}]" for k, (v, ci) in specs.items()]
            rows.append([r["series"], r["trials"], r["sizes"], *cells, fmt(r["asymptotic_acc"])])
        parts.append("## Data scaling\nFitted `err(N) = a·N^(-b) + c` (err = 1 − test accuracy, N = training "
                     "images; scipy curve_fit, a, b ≥ 0, 0 ≤ c ≤ 1). Brackets: percentile 95% bootstrap interval "
                     f"over {s['power_law'][0].get('bootstrap', {}).get('resamples', 0)} resamples of the trials "
                     "within each train size.\n\n" +
                     markdown_table(["series", "trials", "sizes", "a", "b", "c", "1 − c"], rows))
    if s["shuffle"]:
        parts.append("## Shuffle robustness\nRelative change of mean test accuracy against `none` "
                     "(MLP-Mixer Fig. 4 reports this number).\n\n" + markdown_table(
                         ["series", "shuffle", "test acc", "relative change"],
                         [[r["series"], r["shuffle"], f"{fmt(r['test_acc_mean'])} ± {fmt(r['test_acc_sd'])}",
                           "—" if r["relative_change"] is None else percent_change(r["relative_change"])]
                          for r in s["shuffle"]]))
    if s["tuning"]:
        parts.append("## Tuning\n" + markdown_table(
            ["arm", "tuning trials", f"best {s['objectives'][0]}", "best params"],
            [[r["arm"], r["trials"], fmt(r["best_value"]), ", ".join(f"{k}={v:.4g}" if isinstance(v, float)
                                                                     else f"{k}={v}" for k, v in r["params"].items())]
             for r in s["tuning"]]) + (f"\n\nNo importance figure: {s['importance_note']}." if s["importance_note"]
                                       else ""))
    if figs.made:
        parts.append("## Figures\n" + "\n\n".join(
            f"### {f['title']}\n" + (f"![{f['title']}]({f['name']}.{embed})" if embed else
                                     ", ".join(f"[{x}]({x})" for x in f["files"])) for f in figs.made))
    parts.append("## Files\n- `trials.csv`: every trial in every state, with its flattened run record, "
                 "params and objective values.\n- `summary.json`: the numbers of this page.\n"
                 f"- Regenerate: `python -m ablate report --study {s['study']} --storage {s['storage']}`")
    if study.user_attrs:
        parts.append("<details><summary>Study attributes</summary>\n\n```json\n"
                     + json.dumps(study.user_attrs, indent=2, default=str)[:4000] + "\n```\n</details>")
    text = "\n\n".join(parts) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    table = frame.drop(columns=["history"], errors="ignore").copy()
    for column in table.columns:  # lists and dicts as JSON, so the CSV reads back unambiguously
        table[column] = table[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def clean(doc):
    """NaN -> None and numpy scalars -> Python, so the summary is valid JSON."""
    if isinstance(doc, dict):
        return {str(k): clean(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [clean(v) for v in doc]
    if isinstance(doc, np.generic):
        doc = doc.item()
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    return doc


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


def reference(final: pd.DataFrame) -> pd.DataFrame:
    """The trials that compare model choices on equal terms: largest train size, no shuffle."""
    ref = final
    if "train_size" in ref and ref.train_size.nunique() > 1:
        ref = ref[ref.train_size == ref.train_size.max()]
    if "shuffle" in ref and ref.shuffle.nunique() > 1:
        ref = ref[ref.shuffle == ("none" if (ref.shuffle == "none").any() else ref.shuffle.mode()[0])]
    return ref


def build(study: optuna.Study, storage: str, out: Path, formats: list[str], n_boot: int) -> dict:
    """Writes the figures, report.md, trials.csv and summary.json into `out`; returns the summary."""
    frame = trials_frame(study)
    keys = arm_keys(frame, study)
    frame["arm_label"] = label(frame, keys)
    final = final_trials(frame)
    errored = frame.error.notna() if "error" in frame else pd.Series(False, index=frame.index)
    failed = frame[(frame.state == "FAIL") & in_final(frame) & errored]  # diverged or crashed: a result
    lost = frame.lost_claim.eq(True).sum() if "lost_claim" in frame else 0
    figs = Figures(out, formats)
    summary = {
        "study": study.study_name, "storage": masked(storage), "out": str(out),
        "objectives": objective_names(study), "directions": [d.name.lower() for d in study.directions],
        "n_trials": len(frame), "trials": frame.state.value_counts().sort_index().to_dict(), "lost_claims": int(lost),
        "phases": frame.phase.dropna().value_counts().sort_index().to_dict(),
        "n_final": len(final), "axes": keys, "seeds": unique(final, "seed"), "budget": budget(frame, final),
        "arms": arm_table(final, keys, failed), "power_law": [], "shuffle": [], "tuning": [], "importance_note": None,
    }
    data_keys = data_axis(final, keys)
    if "train_size" in final and final.train_size.nunique() >= 3:
        series = label(final, [k for k in keys if k not in data_keys], whole_arm=False)
        summary["power_law"] = scaling_fits(final, series, n_boot)
        plot_scaling(figs, final, series, summary["power_law"])
    pareto(figs, final, [k for k in keys if k not in data_keys])
    if "shuffle" in final and final.shuffle.nunique() > 1:
        largest = final if "train_size" not in final else final[final.train_size == final.train_size.max()]
        series = label(largest, [k for k in keys if k not in ("shuffle", *data_keys)], whole_arm=False)
        summary["shuffle"] = shuffle_table(largest, series)
        plot_shuffle(figs, largest, series)
    if len(final) and final.history.map(len).max() > 1:
        plot_curves(figs, final, [k for k in keys if k not in data_keys[1:]])
    tuning(figs, summary, study, frame, keys)
    summary["figures"] = figs.made
    summary = clean(summary)
    write_csv(out / "trials.csv", frame)
    write_json(out / "summary.json", summary)
    write_markdown(out / "report.md", summary, figs, study)
    return summary


def pareto(figs: Figures, final: pd.DataFrame, keys: list[str]) -> None:
    """Accuracy against MACs and against training throughput, per model choice, on equal terms."""
    model_keys = [k for k in keys if k not in ("train_size", "shuffle")]
    arms = pd.DataFrame(arm_table(reference(final), model_keys))
    if len(arms) < 2:
        return
    if "macs" in arms and arms.macs.nunique() > 1:
        plot_pareto(figs, arms, "macs", False, "pareto_macs", "MACs per image")
    if "train_img_s" in arms and arms.train_img_s.notna().all():
        plot_pareto(figs, arms, "train_img_s", True, "pareto_throughput", "training throughput (images/s)")


def tuning(figs: Figures, summary: dict, study: optuna.Study, frame: pd.DataFrame, keys: list[str]) -> None:
    """Each arm's best tuning trial, the optimization history and the parameter importances."""
    tune = frame[frame.state.isin(["COMPLETE", "PRUNED"]) & (frame.phase == "tune")]
    complete = tune[tune.state == "COMPLETE"]
    value = value_names(study)[0]
    if complete.empty or value not in tune:
        return
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for arm, g in complete.groupby("arm_label"):
        best = g.loc[g[value].idxmax() if maximize else g[value].idxmin()]
        summary["tuning"].append({"arm": arm, "trials": len(g), "best_value": float(best[value]),
                                  "best_trial": int(best.number), "params": trials[int(best.number)].params})
    plot_tuning_history(figs, tune, keys, value, summary["objectives"][0], maximize)
    importances, summary["importance_note"] = param_importances(study, complete)
    if len(importances):
        plot_importances(figs, importances)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--format {text!r}: unknown format {', '.join(bad) or '(none given)'}; "
                         f"valid: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def main(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(args.storage, args.study)
    out = Path(args.out or Path("reports") / args.study)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out}: {e.strerror or e}") from None
    summary = build(study, args.storage, out, formats, args.bootstrap)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{out / 'report.md'}: {summary['n_trials']} trials, {summary['n_final']} analysed in "
              f"{len(summary['arms'])} arm(s), {len(summary['figures'])} figure(s)")
    return 0
