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
LEVEL = 0.95                   # of the profile intervals
LACK_OF_FIT_ALPHA = 0.05


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


class Profile:
    """The SSE over the (b, c) grid, A = a * N_min^-b at its least-squares value for each pair (closed form).
    For fixed (b, c) the SSE is R + sxx * (A - A_free)^2, so `sse` and `a` (A clipped at 0) give the profiles of b
    and c (minimum over the other axis), and a_range the exact profile interval of a."""

    def __init__(self, n: np.ndarray, err: np.ndarray):
        n0 = n.min()
        x = (n / n0)[None, :] ** -B_GRID[:, None]                  # (B, N)
        sx, sxy = x.sum(1)[:, None], (x @ err)[:, None]            # (B, 1)
        self.sxx = (x * x).sum(1)[:, None]                          # (B, 1)
        c = C_GRID[None, :]                                          # (1, C)
        self.a_free = (sxy - c * sx) / self.sxx                     # (B, C)
        self.residual = np.maximum((err ** 2).sum() - 2 * c * err.sum() + len(err) * c ** 2
                                   - self.a_free ** 2 * self.sxx, 0)  # R: the SSE at A_free
        big_a = np.clip(self.a_free, 0, None)
        self.sse = self.residual + self.sxx * (big_a - self.a_free) ** 2
        self.scale = n0 ** B_GRID[:, None]                          # a = A * N_min^b
        self.a = big_a * self.scale

    def a_range(self, threshold: float) -> tuple[float, float]:
        """The a values whose best (b, c) keeps the SSE within `threshold` (A >= 0)."""
        half = np.sqrt(np.maximum(threshold - self.residual, 0) / self.sxx)
        ok = (self.residual <= threshold) & (self.a_free + half >= 0)
        low, high = np.clip(self.a_free - half, 0, None) * self.scale, (self.a_free + half) * self.scale
        return float(low[ok].min()), float(high[ok].max())


def fit_series(n: np.ndarray, err: np.ndarray) -> dict:
    """One series' fit, its lack-of-fit test and its parameters' intervals (see the module docstring)."""
    sizes = np.unique(n)
    row = {"trials": len(n), "sizes": int(sizes.size), "status": None, "fit": None, "lack_of_fit": None,
           "asymptotic_acc": None}
    if sizes.size < MIN_SIZES:
        return {**row, "status": f"not fitted: {sizes.size} train sizes, a fit needs >= {MIN_SIZES}"}
    grid = Profile(n, err)
    sse_grid, a_grid = grid.sse, grid.a
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
        if p < LACK_OF_FIT_ALPHA:
            return {**row, "status": f"rejected: lack of fit against the seed noise, F({df_fit}, {df_pure}) = "
                                     f"{f:.2f}, p = {p:.2g}"}
        variance, df = pure / df_pure, df_pure
    else:  # no replicates, or seeds that agree exactly: the noise can only come from the residuals, untested law
        variance, df = sse / max(len(n) - 3, 1), max(len(n) - 3, 1)
    threshold = sse + variance * stats.f.ppf(LEVEL, 1, df)
    inside = sse_grid <= threshold
    intervals = {"a": (*grid.a_range(threshold), 0.0, math.inf),
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
    untested = "" if row["lack_of_fit"] else (" (no replicate seeds: lack of fit not testable)" if df_pure == 0 else
                                              " (the seeds agree exactly at every size: lack of fit not testable)")
    return {**row, "status": "fitted" + untested}


def scaling_fits(final: pd.DataFrame, series: pd.Series) -> list[dict]:
    """A fit per series of final trials (fit_series on err = 1 - test accuracy against train size)."""
    return [{"series": name, **fit_series(final[series == name].train_size.to_numpy(float),
                                          1 - final[series == name].test_acc.to_numpy(float))}
            for name in sorted(series.unique())]
