"""Statistics of a study's results: means with t-intervals over seeds, the saturating power law of accuracy
against data size with bootstrap intervals, and Pareto dominance."""
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import curve_fit


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


def dominated(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """True where another point has at least the accuracy at no more cost, and is strictly better in one."""
    better_eq = (acc[None, :] >= acc[:, None]) & (cost[None, :] <= cost[:, None])
    strictly = (acc[None, :] > acc[:, None]) | (cost[None, :] < cost[:, None])
    return (better_eq & strictly).any(axis=1)
