"""The saturating power law of error against training-set size, err(N) = a * N^-b + c, fitted only where the data
can support it: from >= 5 sizes, tested for lack of fit against the seed-to-seed noise at each size, with 95%
profile-likelihood intervals, and a parameter whose interval reaches its bound reported as not identified."""
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import curve_fit

MIN_SIZES = 5                  # three parameters and a lack-of-fit test need at least two sizes to spare
B_MAX = 5.0                    # the exponent's range is [0, B_MAX]; c's is [0, 1]; a's is [0, inf)
B_GRID = np.linspace(0, B_MAX, 1001)
C_GRID = np.linspace(0, 1, 1001)
LEVEL = 0.95


def power_law(n, a, b, c):
    return a * np.power(n, -b) + c


def fit_power_law(n: np.ndarray, err: np.ndarray, p0=None) -> np.ndarray | None:
    """(a, b, c) of err(N) = a * N^-b + c by least squares, with a, b >= 0 and 0 <= c <= 1; None when the fit
    does not converge. Fitted as A * (N / N_min)^-b + c, so A is on the scale of the errors, then a = A * N_min^b."""
    n0 = n.min()
    start = (max(err.max() - err.min(), 1e-3), 0.5, max(err.min() / 2, 0.0)) if p0 is None else \
        (p0[0] * n0 ** -p0[1], p0[1], p0[2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning on exact fits
            (big_a, b, c), _ = curve_fit(power_law, n / n0, err, p0=start, bounds=([0, 0, 0], [np.inf, B_MAX, 1]),
                                         maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return np.array([big_a * n0 ** b, b, c])


def profile(n: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSE over the (b, c) grid with a at its least-squares value for each pair (closed form, clipped at 0):
    (sse[b, c], a[b, c]). The minimum over one axis is the profile of the other parameter."""
    n0 = n.min()
    x = (n / n0)[None, :] ** -B_GRID[:, None]                      # (B, N)
    sx, sxx, sxy = x.sum(1), (x * x).sum(1), x @ err                # (B,)
    c = C_GRID[None, :]                                              # (1, C)
    big_a = np.clip((sxy[:, None] - c * sx[:, None]) / sxx[:, None], 0, None)  # (B, C)
    syy, sy, m = (err ** 2).sum(), err.sum(), len(err)
    sse = (syy - 2 * c * sy + m * c ** 2) - 2 * big_a * (sxy[:, None] - c * sx[:, None]) + big_a ** 2 * sxx[:, None]
    return np.maximum(sse, 0), big_a * n0 ** B_GRID[:, None]


def fit_series(n: np.ndarray, err: np.ndarray) -> dict:
    """One series' fit, its lack-of-fit test and its parameters' intervals (see the module docstring)."""
    sizes = np.unique(n)
    row = {"trials": len(n), "sizes": int(sizes.size), "status": None, "fit": None, "lack_of_fit": None,
           "asymptotic_acc": None}
    if sizes.size < MIN_SIZES:
        return {**row, "status": f"not fitted: {sizes.size} train sizes, a fit needs >= {MIN_SIZES}"}
    sse_grid, a_grid = profile(n, err)
    i, j = np.unravel_index(np.argmin(sse_grid), sse_grid.shape)
    refined = fit_power_law(n, err, p0=(a_grid[i, j], B_GRID[i], C_GRID[j]))
    best = np.array([a_grid[i, j], B_GRID[i], C_GRID[j]])
    sse = float(sse_grid[i, j])
    if refined is not None and (s := float(((err - power_law(n, *refined)) ** 2).sum())) < sse:
        best, sse = refined, s
    pure = sum(float(((err[n == v] - err[n == v].mean()) ** 2).sum()) for v in sizes)
    df_pure, df_fit = len(n) - sizes.size, sizes.size - 3
    if df_pure > 0 and pure > 0:
        f = ((sse - pure) / df_fit) / (pure / df_pure)
        p = float(stats.f.sf(f, df_fit, df_pure))
        row["lack_of_fit"] = {"F": float(f), "df": [df_fit, df_pure], "p": p}
        if p < 1 - LEVEL:
            return {**row, "status": f"rejected: lack of fit against the seed noise, F({df_fit}, {df_pure}) = "
                                     f"{f:.2f}, p = {p:.2g}"}
        variance, df = pure / df_pure, df_pure
    else:  # no replicates: the noise can only come from the residuals, and the law cannot be tested
        variance, df = sse / max(len(n) - 3, 1), max(len(n) - 3, 1)
    inside = sse_grid <= sse + variance * stats.f.ppf(LEVEL, 1, df)
    intervals = {"a": (a_grid[inside].min(), a_grid[inside].max(), 0.0, math.inf),
                 "b": (B_GRID[inside.any(1)].min(), B_GRID[inside.any(1)].max(), 0.0, B_MAX),
                 "c": (C_GRID[inside.any(0)].min(), C_GRID[inside.any(0)].max(), 0.0, 1.0)}
    fit = {}
    for (name, (low, high, lower, upper)), value in zip(intervals.items(), best):
        at_bound = [bound for bound, touched in ((lower, low <= lower + 1e-9), (upper, high >= upper - 1e-9))
                    if touched]
        fit[name] = {"value": float(value), "ci95": [float(low), float(high)], "identified": not at_bound,
                     "bound": at_bound[0] if at_bound else None}
    row["fit"] = fit
    row["asymptotic_acc"] = 1 - fit["c"]["value"] if fit["c"]["identified"] else None
    untested = "" if row["lack_of_fit"] else " (no replicate seeds: lack of fit not testable)"
    return {**row, "status": "fitted" + untested}


def scaling_fits(final: pd.DataFrame, series: pd.Series) -> list[dict]:
    """A fit per series of final trials (fit_series on err = 1 - test accuracy against train size)."""
    return [{"series": name, **fit_series(final[series == name].train_size.to_numpy(float),
                                          1 - final[series == name].test_acc.to_numpy(float))}
            for name in sorted(series.unique())]
