"""Statistics of a study's results: means with t-intervals over seeds, and Pareto dominance (comparisons between
arms: compare.py; the power law of accuracy against data size: scaling.py)."""
import math

import numpy as np
from scipy import stats


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


def dominated(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """True where another point has at least the accuracy at no more cost, and is strictly better in one."""
    better_eq = (acc[None, :] >= acc[:, None]) & (cost[None, :] <= cost[:, None])
    strictly = (acc[None, :] > acc[:, None]) | (cost[None, :] < cost[:, None])
    return (better_eq & strictly).any(axis=1)
