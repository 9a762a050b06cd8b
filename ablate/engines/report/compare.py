"""Which differences between arms the seeds can support: pairwise tests on test accuracy (paired by seed where
both arms ran the same seeds, else Welch), Holm-corrected over the whole table, each with the difference, its 95%
interval and the smallest difference the seeds could detect at 80% power; and a two-way ANOVA with interactions,
which asks whether one axis's effect depends on another (is it the mixer, or the mixer in this structure?)."""
import itertools
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from .frame import label, natural

ALPHA, POWER = 0.05, 0.8


def pairwise(final: pd.DataFrame, keys: list[str], over: list[str], control: tuple[str, str] | None = None
             ) -> list[dict]:
    """Every pair of arms (named by `keys`) that differ in exactly one axis, one of `over`: that axis's effect with
    the others held fixed. With a control (axis, level), only each other level of that axis against the control
    level (a = the level, b = the control): the many-to-one family an experiment pre-registers, so that Holm
    corrects over the tests it planned and no more."""
    if not keys or final.empty:
        return []
    names = label(final, keys)
    arms = {name: g for name, g in final.groupby(names, sort=False)}
    levels = {name: {k: str(g[k].iloc[0]) for k in keys} for name, g in arms.items()}
    rows = []
    for x, y in itertools.combinations(sorted(arms, key=natural), 2):
        differing = [k for k in keys if levels[x][k] != levels[y][k]]
        if len(differing) != 1 or differing[0] not in over:
            continue
        if control:
            axis, level = control
            if differing[0] != axis or level not in (levels[x][axis], levels[y][axis]):
                continue
            x, y = (y, x) if levels[x][axis] == level else (x, y)
        rows.append({"axis": differing[0], "a": x, "b": y, **test_pair(arms[x], arms[y])})
    testable = [r for r in rows if r["p"] is not None]
    if testable:
        adjusted = multipletests([r["p"] for r in testable], alpha=ALPHA, method="holm")[1]
        for r, p in zip(testable, adjusted):
            r["p_holm"] = float(p)
    return rows


def test_pair(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Mean difference a - b of test accuracy with its 95% interval, the test's p-value, and the minimum detectable
    difference at 80% power with these seeds (for Welch's test, the pooled-variance two-sample approximation);
    `p` None where a test is not possible (fewer than 2 seeds, or no spread)."""
    by_seed_a, by_seed_b = (g.set_index("seed").test_acc.astype(float) for g in (a, b))
    paired = len(by_seed_a) >= 2 and set(by_seed_a.index) == set(by_seed_b.index)
    row = {"test": "paired t" if paired else "Welch t", "n": [len(by_seed_a), len(by_seed_b)],
           "diff": float(by_seed_a.mean() - by_seed_b.mean()), "ci95": None, "p": None, "p_holm": None, "mdd": None}
    if min(row["n"]) < 2:
        return {**row, "test": "not testable: an arm has fewer than 2 seeds"}
    if paired:
        d = (by_seed_a - by_seed_b.loc[by_seed_a.index]).to_numpy()
        sd, df, se = float(np.std(d, ddof=1)), len(d) - 1, float(np.std(d, ddof=1)) / math.sqrt(len(d))
        p = float(stats.ttest_rel(by_seed_a, by_seed_b.loc[by_seed_a.index]).pvalue) if sd > 0 else None
        effect = TTestPower().solve_power(nobs=len(d), alpha=ALPHA, power=POWER)
    else:
        va, vb, na, nb = by_seed_a.var(ddof=1), by_seed_b.var(ddof=1), len(by_seed_a), len(by_seed_b)
        se = math.sqrt(va / na + vb / nb)
        df = se ** 4 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1)) if se > 0 else None
        sd = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
        p = float(stats.ttest_ind(by_seed_a, by_seed_b, equal_var=False).pvalue) if se > 0 else None
        effect = TTestIndPower().solve_power(nobs1=na, ratio=nb / na, alpha=ALPHA, power=POWER)
    if p is None:
        return {**row, "test": row["test"] + ": no spread between seeds"}
    half = float(stats.t.ppf(0.975, df)) * se
    return {**row, "ci95": [row["diff"] - half, row["diff"] + half], "p": p, "mdd": float(effect * sd)}


def anova(final: pd.DataFrame, factors: list[str]) -> dict | None:
    """ANOVA of test accuracy on the factors (type II sums of squares): main effects and every two-way interaction
    (two factors: the two-way ANOVA); None with fewer than two factors; a reason where the design cannot support
    it."""
    factors = [f for f in factors if final[f].nunique() > 1] if not final.empty else []
    if len(factors) < 2:
        return None
    frame = pd.DataFrame({f"f{i}": final[f].astype(str) for i, f in enumerate(factors)})
    frame["y"] = final.test_acc.astype(float).to_numpy()
    cells = frame.groupby([f"f{i}" for i in range(len(factors))]).size()
    full = math.prod(frame[f"f{i}"].nunique() for i in range(len(factors)))
    if len(cells) < full or cells.min() < 2:
        return {"factors": factors, "terms": [], "note": "not computed: every combination of the factors needs at "
                f"least 2 seeds ({len(cells)} of {full} combinations present, fewest seeds {cells.min()})"}
    mains = [f"C(f{i})" for i in range(len(factors))]
    formula = "y ~ " + " + ".join(mains + [f"{a}:{b}" for a, b in itertools.combinations(mains, 2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = anova_lm(ols(formula, data=frame).fit(), typ=2)
    names = dict(zip(mains, factors))
    terms = []
    for term, r in table.iterrows():
        if term == "Residual":
            continue
        parts = [names[p] for p in term.split(":")]
        terms.append({"term": " x ".join(parts), "interaction": len(parts) > 1, "df": float(r["df"]),
                      "F": float(r["F"]), "p": float(r["PR(>F)"])})
    return {"factors": factors, "terms": terms, "residual_df": float(table.loc["Residual", "df"]), "note": None}
