"""The report's figures. Each entry of FIGURES says when it applies to a study and how it draws: adding a figure
is one function and one entry."""
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator, NullLocator
from optuna.distributions import BaseDistribution, CategoricalDistribution

from ...foundations.io import atomic_write
from .analysis import Analysis, reference_arms
from .frame import curve_axis, curve_metric, label, natural, sort_key, value_names
from .scaling import power_law
from .stats import dominated

METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}  # no timestamps: reruns diff clean


@dataclass
class Figures:
    out: Path
    formats: list[str]
    made: list[dict] = field(default_factory=list)  # {name, title, files}

    def save(self, fig: Figure, name: str, title: str) -> None:
        files = []
        for fmt in self.formats:
            path = self.out / f"{name}.{fmt}"
            with matplotlib.rc_context({"svg.hashsalt": "ablate"}):  # fixed SVG ids, not random ones
                atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=150, metadata=METADATA[fmt]))
            files.append(path.name)
        self.made.append({"name": name, "title": title, "files": files})


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.2):
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def palette(names) -> dict:
    names = sorted(set(names), key=natural)
    return dict(zip(names, sns.color_palette("colorblind" if len(names) <= 10 else "husl", len(names))))


def plot_scaling(figs: Figures, final: pd.DataFrame, series: pd.Series, fits: list[dict]) -> None:
    fig, axes = new_figure()
    ax = axes[0, 0]
    colors = palette(series)
    data = final.assign(series=series)
    sns.lineplot(data=data, x="train_size", y="test_acc", hue="series", palette=colors, errorbar="sd",
                 err_style="bars", marker="o", linestyle=":", lw=0.8, ax=ax, err_kws={"capsize": 3})
    grid = np.geomspace(final.train_size.min(), final.train_size.max(), 200)
    for row in fits:
        if row["fit"]:
            a, b, c = (row["fit"][k]["value"] for k in "abc")
            ax.plot(grid, 1 - power_law(grid, a, b, c), color=colors[row["series"]], lw=1.2, alpha=0.8)
    sizes = sorted(final.train_size.unique())
    ax.set(xscale="log", xlabel="training images (log scale)", ylabel="test accuracy",
           title="Mean ± sd over seeds; solid: err = a·N^−b + c where not rejected")
    ax.set_xticks(sizes, [f"{n / 1000:g}k" if n >= 1000 else str(n) for n in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.legend(title=None, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    figs.save(fig, "scaling", "Accuracy vs training-set size")


def plot_pareto(figs: Figures, arms: pd.DataFrame, keys: list[str], cost: str, higher_better: bool, name: str,
                xlabel: str) -> None:
    """One point per arm: colour = spatial mixer (as in the curves), marker = the other axes' values, so a
    two-axis study reads as mixers x structures rather than as one colour per arm."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    acc, c = arms.test_acc_mean.to_numpy(), arms[cost].to_numpy(float)
    front = ~dominated(acc, -c if higher_better else c)
    hue, style, styles = panels(arms, keys)
    coloured = hue_keys(keys)
    hue_name = ", ".join(coloured) or "arm"
    style_name = ", ".join(k for k in keys if k not in coloured) if len(styles) > 1 else None
    data = pd.DataFrame({cost: c, "acc": acc, hue_name: hue.to_numpy(), style_name or "style": style.to_numpy()})
    colors = palette(hue)
    for x, y, sd, h in zip(c, acc, arms.test_acc_sd, hue):
        ax.errorbar(x, y, yerr=0 if np.isnan(sd) else sd, fmt="none", capsize=3, color=colors[h])
    sns.scatterplot(data=data, x=cost, y="acc", hue=hue_name, hue_order=list(colors), palette=colors, style=style_name,
                    style_order=styles if style_name else None, s=60, zorder=3, ax=ax)
    ax.scatter(c[front], acc[front], s=220, facecolors="none", edgecolors="k", lw=1.2, zorder=4, label="non-dominated")
    order = np.argsort(c[front])
    # the best accuracy reachable at a cost: from each front point on (cheaper is better) or up to it (faster)
    steps = "steps-pre" if higher_better else "steps-post"
    ax.plot(c[front][order], acc[front][order], color="0.4", lw=1, ls="--", drawstyle=steps, label="Pareto front")
    if c.max() / max(c.min(), 1e-12) > 10:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter())  # 8 M, not 0.8 with a 1e7 offset
    ax.set(xlabel=xlabel, ylabel="test accuracy (mean ± sd)", title=f"Accuracy vs {xlabel.split(' (')[0]}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    figs.save(fig, name, f"Accuracy vs {xlabel}")


@contextmanager
def fixed_jitter():
    """seaborn jitters strip plots with numpy's global generator: seed it for the plot, so a rerun draws the same
    dots, and give the caller's state back."""
    state = np.random.get_state()
    np.random.seed(0)
    try:
        yield
    finally:
        np.random.set_state(state)


def plot_shuffle(figs: Figures, final: pd.DataFrame, series: pd.Series) -> None:
    """Per mixer, accuracy across shuffle modes: a line that stays flat is a mixer the shuffle cannot hurt."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    data = final.assign(series=series)
    modes = sorted(set(data.shuffle), key=lambda m: sort_key("shuffle", m))
    order = sorted(series.unique(), key=natural)
    colors = palette(order)
    with fixed_jitter():
        sns.stripplot(data=data, x="shuffle", y="test_acc", hue="series", order=modes, hue_order=order,
                      palette=colors, dodge=False, jitter=0.08, size=4, alpha=0.45, legend=False, ax=ax)
    sns.pointplot(data=data, x="shuffle", y="test_acc", hue="series", order=modes, hue_order=order, palette=colors,
                  errorbar="sd", capsize=0.08, markersize=7, ax=ax)
    ax.set(xlabel="pixel shuffle (the same for train and test)", ylabel="test accuracy",
           title="Shuffle robustness: mean ± sd over seeds (dots: seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    figs.save(fig, "shuffle", "Accuracy per mixer and pixel shuffle")


def hue_keys(keys: list[str]) -> list[str]:
    """What colours a line or point: the spatial mixer where it varies, else every axis."""
    return ["spatial"] if "spatial" in keys else keys


def panels(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.Series, pd.Series, list[str]]:
    """Lines per spatial mixer (or per arm), one panel per value of the other axes: (hue, panel, panel order)."""
    coloured = hue_keys(keys)
    col_keys = [k for k in keys if k not in coloured]
    hue = label(frame, coloured)
    col = label(frame, col_keys) if col_keys else pd.Series("", index=frame.index)
    return hue, col, sorted(col.unique(), key=natural)


def panel_figure(names: list[str], blocks: int = 1):
    """One panel per name, 3 to a row, in `blocks` stacked blocks (one per tuned value): the figure and, per block,
    its (axis, name) pairs; the panels a block does not fill are hidden."""
    ncols = min(3, len(names))
    rows = -(-len(names) // ncols)
    fig, axes = new_figure(blocks * rows, ncols, width=5.0, height=3.6)
    grids = []
    for b in range(blocks):
        block = list(axes[b * rows:(b + 1) * rows].flat)
        for ax in block[len(names):]:
            ax.set_visible(False)
        grids.append(list(zip(block, names)))
    return fig, grids


def plot_curves(figs: Figures, final: pd.DataFrame, keys: list[str]) -> None:
    hue, col, names = panels(final, keys)
    metric, x = curve_metric(final), curve_axis(final)
    split = "validation" if metric == "val_acc" else "test"
    long = pd.DataFrame([{"hue": h, "col": c, x: e[x], metric: e[metric]}
                         for h, c, hist in zip(hue, col, final.history) for e in hist])
    colors = palette(long.hue)
    fig, (grid,) = panel_figure(names)
    for ax, name in grid:
        sns.lineplot(data=long[long.col == name], x=x, y=metric, hue="hue", palette=colors,
                     errorbar="sd", marker="o", ax=ax)
        ax.set(title=name or None, ylabel=f"{split} accuracy")
        ax.legend(title=None, fontsize="small")
    fig.suptitle("Learning curves: mean over seeds, band = sd")
    figs.save(fig, "curves", f"{split.capitalize()} accuracy per {x}")


def plot_tuning_history(figs: Figures, tune: pd.DataFrame, keys: list[str], value: str, name: str,
                        maximize: bool) -> None:
    """Per arm, its tuning trials in the order they ran: values (x = pruned) and the best so far."""
    tune = tune.sort_values("number")
    hue, col, names = panels(tune, keys)
    colors = palette(hue)
    fig, (grid,) = panel_figure(names)
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


def tuned_numbers(a: Analysis) -> dict[str, BaseDistribution]:
    """The tuning frame's columns of the tuned parameters that are numbers and took more than one value, with their
    search space (the record's `params` and `params_frozen` columns are counts, not tuned)."""
    spaces = {f"params_{name}": dist for name, dist in sorted(a.tune_spaces.items())}
    return {c: d for c, d in spaces.items() if c in a.tune and pd.api.types.is_numeric_dtype(a.tune[c])
            and a.tune[c].nunique() > 1}


def log_axis(space: BaseDistribution, values: pd.Series) -> bool:
    """A log space's own flag; a grid has none, so its values decide: positive and spanning 10x or more."""
    if isinstance(space, CategoricalDistribution):
        return bool(values.min() > 0 and values.max() >= 10 * values.min())
    return bool(getattr(space, "log", False))


def plot_tuning_slice(figs: Figures, tune: pd.DataFrame, spaces: dict[str, BaseDistribution], keys: list[str],
                      value: str, name: str, maximize: bool) -> None:
    """A slice plot (as optuna's plot_slice) per arm: each tuning trial's value against each tuned number (x =
    pruned). On a grid (a categorical space) a line joins an arm's best per value, so a best on an end of the grid
    shows as a line still climbing there."""
    hue, col, names = panels(tune, keys)
    colors = palette(hue)
    fig, grids = panel_figure(names, blocks=len(spaces))
    for (column, space), block in zip(spaces.items(), grids):
        grid = isinstance(space, CategoricalDistribution)
        for ax, panel in block:
            for arm, g in tune[col == panel].groupby(hue[col == panel]):
                done, pruned = g[g.state == "COMPLETE"], g[g.state == "PRUNED"]
                ax.scatter(pruned[column], pruned[value], color=colors[arm], s=24, marker="x")
                best = done.groupby(column)[value].max() if maximize else done.groupby(column)[value].min()
                ax.plot(best.index, best.to_numpy(), color=colors[arm], label=arm, marker="o", ms=4,
                        lw=1.2 if grid else 0)
            if log_axis(space, tune[column]):
                ax.set_xscale("log")
            ax.set(title=panel or None, xlabel=column.removeprefix("params_"), ylabel=name)
            ax.legend(title=None, fontsize="small")
    fig.suptitle("Tuning: each arm's trials against each tuned value (x = pruned, its last reported value)")
    figs.save(fig, "tuning_slice", "Tuning trials against the tuned values")


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


# -- the registry: when each figure applies, and how it draws from the analysis ---------------------------------------
@dataclass(frozen=True)
class FigureSpec:
    name: str
    applies: Callable[[Analysis], bool]
    draw: Callable[[Analysis, Figures], None]


def draw_pareto(cost: str, higher_better: bool, name: str, xlabel: str) -> Callable[[Analysis, Figures], None]:
    return lambda a, figs: plot_pareto(figs, reference_arms(a), a.choice_keys, cost, higher_better, name, xlabel)


def pareto_applies(cost: str) -> Callable[[Analysis], bool]:
    def applies(a: Analysis) -> bool:
        arms = reference_arms(a)
        if len(arms) < 2 or cost not in arms:
            return False
        return arms[cost].nunique() > 1 if cost == "macs" else bool(arms[cost].notna().all())
    return applies


FIGURES: list[FigureSpec] = [
    FigureSpec("scaling", lambda a: a.scaling_series is not None,
               lambda a, figs: plot_scaling(figs, a.final, a.scaling_series, a.summary["power_law"])),
    FigureSpec("pareto_macs", pareto_applies("macs"), draw_pareto("macs", False, "pareto_macs", "MACs per image")),
    FigureSpec("pareto_throughput", pareto_applies("train_img_s"),
               draw_pareto("train_img_s", True, "pareto_throughput", "training throughput (images/s)")),
    FigureSpec("shuffle", lambda a: a.shuffle_frame is not None,
               lambda a, figs: plot_shuffle(figs, a.shuffle_frame, a.shuffle_series)),
    FigureSpec("curves", lambda a: len(a.final) > 0 and a.final.history.map(len).max() > 1,
               lambda a, figs: plot_curves(figs, a.final, [k for k in a.keys if k not in a.data_keys[1:]])),
    FigureSpec("tuning_history", lambda a: a.tune is not None,
               lambda a, figs: plot_tuning_history(figs, a.tune, a.keys, value_names(a.study)[0],
                                                   a.summary["objectives"][0], a.maximize)),
    FigureSpec("tuning_slice", lambda a: a.tune is not None and bool(tuned_numbers(a)),
               lambda a, figs: plot_tuning_slice(figs, a.tune, tuned_numbers(a), a.keys, value_names(a.study)[0],
                                                 a.summary["objectives"][0], a.maximize)),
    FigureSpec("importances", lambda a: len(a.importances) > 0, lambda a, figs: plot_importances(figs, a.importances)),
]
