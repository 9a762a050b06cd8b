"""report.md, trials.csv and summary.json: the summary written out."""
import io
import json
import math
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.ticker import EngFormatter

from ...foundations.io import atomic_write
from .compare import ALPHA, POWER
from .figures import Figures
from .scaling import B_MAX, LACK_OF_FIT_ALPHA, LEVEL, MIN_SIZES


def fmt(x, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec)


def si(x) -> str:
    """222.73 k, 11.96 M: matplotlib's engineering notation."""
    if x is None or math.isnan(x):
        return "—"
    return EngFormatter(places=2, sep=" ")(x) if abs(x) >= 1000 else f"{x:.0f}"


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


TRAINING_TIME = ("train_time_s_total", "train_time_s_taken", "taken_from")


def training_time(budget: dict) -> str:
    """The training time of every run the study's trials hold, and how much of it other studies spent."""
    text = f"{budget['train_time_s_total'] / 3600:.2f} h"
    if budget["taken_from"]:
        studies = ", ".join(f"`{name}`" for name in budget["taken_from"])
        text += f", of which {budget['train_time_s_taken'] / 3600:.2f} h by runs taken from {studies} ([study].reuse)"
    return text


def write_markdown(path: Path, summary: dict, figs: Figures, study: optuna.Study) -> None:
    embed = next((f for f in figs.formats if f in ("png", "svg")), None)
    s, b = summary, summary["budget"]
    states = ", ".join(f"{n} {state.lower()}" for state, n in s["trials"].items())
    not_results = [f"{n} {text}" for n, text in (
        (s["lost_claims"], "lost claim(s): cells another worker ran"),
        (s["interrupted"], "interrupted run(s): their worker was killed or crashed, and `study` runs their cells "
                           "again"),
    ) if n]
    if not_results:
        states += f"; failed includes {' and '.join(not_results)}, not results"
    if s["failed_runs"]:
        states += f"; failed includes {len(s['failed_runs'])} diverged run(s), results: see Failed runs"
    phases = ", ".join(f"{n} {phase}" for phase, n in s["phases"].items())
    parts = [
        f"# Study `{s['study']}`" + (f"\n\n> {s['label']}" if s.get("label") else ""),
        f"- storage: `{s['storage']}`\n- trials: {s['n_trials']} ({states}; phases: {phases or 'none'})\n"
        f"- objective (what chose tuned values, pruned trials and the best arm): {s['chosen_on']}\n"
        f"- analysed: {s['n_final']} complete final trials in {len(s['arms'])} arm(s) over seeds "
        f"{', '.join(map(str, s['seeds'])) or '—'}; axes: {', '.join(s['axes']) or 'none'}",
        "## Budget\n" + markdown_table(["", ""], [[k.replace("config.", ""), listing(v)]
                                                  for k, v in b.items() if k not in TRAINING_TIME]
                                         + [["training time, all trials", training_time(b)]]),
    ]
    if s["arms"]:
        failed = any(a["failed"] for a in s["arms"])
        parts.append("## Arms\nTest accuracy as a fraction: mean ± sd over seeds and the 95% t-interval of the mean. "
                     "Costs as recorded: parameters, MACs of one forward pass of one image, throughput in "
                     "images/s on the run's device." + (" `failed`: final runs that diverged, not in the mean."
                                                        if failed else "") + "\n\n" + markdown_table(
                         ["arm", "n", "test acc", "95% CI", "params", "MACs", "train img/s", "infer img/s"]
                         + ["failed"] * failed,
                         [[a["arm"], a["n"], f"{fmt(a['test_acc_mean'])} ± {fmt(a['test_acc_sd'])}",
                           f"[{fmt(a['test_acc_ci95'][0])}, {fmt(a['test_acc_ci95'][1])}]", si(a.get("params")),
                           si(a.get("macs")), si(a.get("train_img_s")), si(a.get("infer_img_s"))]
                          + [a["failed"]] * failed for a in s["arms"]]))
    else:
        parts.append("## Arms\nNo complete final trials yet.")
    if s["failed_runs"]:
        parts.append(failed_section(s["failed_runs"]))
    if s["convergence"]:
        parts.append(convergence_section(s["convergence"]))
    if s["pairwise"]:
        parts.append(pairwise_section(s["pairwise"], s["control"]))
    if s["anova"]:
        parts.append(anova_section(s["anova"]))
    if s["power_law"]:
        parts.append(scaling_section(s["power_law"]))
    if s["shuffle"]:
        parts.append("## Shuffle robustness\nRelative change of mean test accuracy against `none` "
                     "(MLP-Mixer Fig. 4 reports this number).\n\n" + markdown_table(
                         ["series", "shuffle", "test acc", "relative change"],
                         [[r["series"], r["shuffle"], f"{fmt(r['test_acc_mean'])} ± {fmt(r['test_acc_sd'])}",
                           "—" if r["relative_change"] is None else percent_change(r["relative_change"])]
                          for r in s["shuffle"]]))
    if s["tuning"]:
        parts.append(tuning_section(s))
    if figs.made:
        parts.append("## Figures\n" + "\n\n".join(
            f"### {f['title']}\n" + (f"![{f['title']}]({f['name']}.{embed})" if embed else
                                     ", ".join(f"[{x}]({x})" for x in f["files"])) for f in figs.made))
    parts.append("## Files\n- `trials.csv`: every trial in every state, with its flattened run record, "
                 "params and objective values.\n- `summary.json`: the numbers of this page.\n"
                 f"- Regenerate: `python -m ablate report --study {s['study']} --storage {s['storage']}"
                 + (f" --control {shlex.quote(s['control'])}`" if s["control"] else "`"))
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


def pvalue(p) -> str:
    return "—" if p is None else "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def pairwise_section(rows: list[dict], control: str | None) -> str:
    """Each pair of arms that differ in one axis (or each level against the control), on test accuracy,
    Holm-corrected over the table."""
    tested = [r for r in rows if r["p"] is not None]
    table = markdown_table(
        ["axis", "a", "b", "test", "a − b", "95% CI", "p", "p (Holm)", "detectable at 80% power"],
        [[r["axis"], r["a"], r["b"], r["test"], f"{r['diff']:+.4f}",
          "—" if r["ci95"] is None else f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]", pvalue(r["p"]),
          pvalue(r["p_holm"]), "—" if r["mdd"] is None else f"±{r['mdd']:.4f}"] for r in rows])
    significant = sum(r["p_holm"] < ALPHA for r in tested)
    axis, _, level = (control or "").partition("=")
    which = (f"each {axis} against the control {axis} {level} (`--control`; a = the other level, b = the control), "
             if control else "every two arms that differ in one axis, ")
    return (f"## Pairwise comparisons\nTest accuracy of {which}the others held "
            "fixed: a paired t-test where both arms ran the same seeds (a seed fixes the training subset, the data order "
            "and the augmentation draws of both), else Welch's. p-values are Holm-corrected over the "
            f"{len(tested)} tests of this table (statsmodels `multipletests`); {significant} stay below {ALPHA}. The "
            f"last column is the smallest difference these seeds would detect at α = {ALPHA} with {POWER:.0%} power "
            "(statsmodels power analysis, with the observed spread; for Welch's test the pooled-variance "
            "approximation): a difference below it that is not "
            "significant is not evidence of no difference.\n\n" + table)


def anova_section(doc: dict) -> str:
    head = (f"## Does one axis's effect depend on another?\nANOVA of test accuracy on "
            f"{', '.join(doc['factors'])} (statsmodels `ols` + `anova_lm`, type II, main effects and two-way "
            "interactions). A small p on an interaction means the effect of one factor differs between levels of the "
            "other: for spatial x a structure axis, the mixer's effect depends on the structure around it.\n\n")
    if not doc["terms"]:
        return head + doc["note"] + "."
    return head + markdown_table(["term", "df", "F", "p"], [[t["term"], f"{t['df']:.0f}", f"{t['F']:.2f}",
                                                             pvalue(t["p"])] for t in doc["terms"]]) + \
        f"\n\nResidual df {doc['residual_df']:.0f}."


def scaling_section(rows: list[dict]) -> str:
    table = []
    for r in rows:
        if r["fit"] is None:
            table.append([r["series"], r["trials"], r["sizes"], r["status"], "", "", "", ""])
            continue
        cells = []
        for name, spec in (("a", ".4g"), ("b", ".3f"), ("c", ".4f")):
            p = r["fit"][name]
            interval = f"[{format(p['ci95'][0], spec)}, {format(p['ci95'][1], spec)}]"
            cells.append(f"{format(p['value'], spec)} {interval}" if p["identified"] else
                         f"not identified: {interval} reaches its bound {name} = {p['bound']:g}")
        lof = r["lack_of_fit"]
        test = "untestable" if lof is None else f"F({lof['df'][0]}, {lof['df'][1]}) = {lof['F']:.2f}, p = {lof['p']:.2g}"
        table.append([r["series"], r["trials"], r["sizes"], test, *cells,
                      "not identified" if r["asymptotic_acc"] is None else f"{r['asymptotic_acc']:.4f}"])
    return ("## Data scaling\n`err(N) = a·N^(-b) + c` (err = 1 − test accuracy, N = training images; least squares "
            f"with a ≥ 0, 0 ≤ b ≤ {B_MAX:g}, 0 ≤ c ≤ 1), fitted only from ≥ {MIN_SIZES} train sizes. Lack of fit: "
            "F-test of the fit's residuals against the seed-to-seed noise at each size; a fit it rejects "
            f"(p < {LACK_OF_FIT_ALPHA}) is reported as rejected and not drawn. Brackets: {LEVEL:.0%} "
            "profile-likelihood intervals (the parameter's values whose best fit of the others stays within the "
            "F(1, df) threshold of the noise). A parameter whose interval reaches the bound of its range is not "
            "identified by these data; 1 − c is printed only where c is identified.\n\n" +
            markdown_table(["series", "trials", "sizes", "lack of fit", "a", "b", "c", "1 − c"], table))


def tuning_section(s: dict) -> str:
    rows = []
    for r in s["tuning"]:
        lost = ", ".join(f"{r[k]} {k}" for k in ("pruned", "failed") if r[k])
        params = (", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
                  if r["best_trial"] is not None else "none complete: the finals ran the [run] values")
        rows.append([r["arm"], f"{r['trials']} ({lost})" if lost else r["trials"], fmt(r["best_value"]), params,
                     ", ".join(f"{k}: {side}" for k, side in r["at_edge"].items()) or "—"])
    edges = Counter(f"{k} at its {side} end" for r in s["tuning"] for k, side in r["at_edge"].items())
    header = ["arm", "tuning trials", f"best {s['objectives'][0]}", "best params", "at an end of the searched range"]
    text = (f"## Tuning\nEach arm's values were chosen on {s['chosen_on']}.\n\n"
            + markdown_table(header[:5 if edges else 4], [row[:5 if edges else 4] for row in rows]))
    if edges:
        text += ("\n\n**The searched range does not bracket every optimum**: "
                 + ", ".join(f"{what} for {n} of {len(s['tuning'])} arms" for what, n in sorted(edges.items()))
                 + ". Such an arm's best value may lie beyond the range, so its comparison with the others is at the "
                 "range's value, not at its own optimum.")
    if s["two_value_grids"]:
        names = " and ".join(f"`{n}`" for n in s["two_value_grids"])
        text += (f"\n\n{names} took two values, which bracket no optimum: every arm's choice is one of the two "
                 "ends, and where the other value's trial was pruned, the choice was made when it was pruned.")
    if s["importance_note"]:
        text += f"\n\nNo importance figure: {s['importance_note']}."
    return text


def failed_section(rows: list[dict]) -> str:
    return ("## Failed runs\nRuns that diverged or ended with a non-finite metric: results, not run again (final "
            "ones are the arm table's `failed`).\n\n" + markdown_table(
                ["trial", "arm", "phase", "seed", "error"],
                [[r["number"], r["arm"], r["phase"] or "—", "—" if r["seed"] is None else r["seed"],
                  " ".join(r["error"].split()).replace("|", "\\|")] for r in rows]))


def convergence_section(rows: list[dict]) -> str:
    metric, x = rows[0]["metric"], rows[0]["axis"]
    spans = sorted({tuple(i) for r in rows for i in r["interval"]})
    span = ", ".join(f"{x} {a:g} to {b:g}" for a, b in spans)
    rising = [r for r in rows if r["n"] >= 2 and r["peaked_last"] == r["n"]]
    short = [r["arm"] for r in rows if not r["n"]]
    text = (f"## Still learning at the end?\nPer arm, the change of {metric} over the last evaluation interval "
            f"({span}), mean ± sd over the seeds (n), and the {x} at which each seed's {metric} peaked.\n\n"
            + markdown_table(["arm", "n", f"last change of {metric}", f"peak {x}s"],
                             [[r["arm"], r["n"], f"{fmt(r['last_gain_mean'], '+.4f')} ± {fmt(r['last_gain_sd'])}",
                               ", ".join(f"{e:g}" for e in r["peaks"]) or "—"] for r in rows]))
    if rising:
        text += (f"\n\n**{len(rising)} of {len(rows)} arms were still rising at the last evaluation in every seed.** "
                 "Under a schedule that anneals the learning rate at the end this is expected and does not say that "
                 f"more {x}s would raise them; it says they had not levelled off, so their comparison is at this "
                 "budget, not at convergence.")
    if short:
        text += f"\n\nLeft out, fewer than 2 evaluations of {metric} in every run: {', '.join(short)}."
    return text
