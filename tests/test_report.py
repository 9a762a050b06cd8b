"""`ablate report` on synthetic studies written straight into a temp sqlite storage with optuna.

The records follow a known law (err = a_s * N^-b_s + c_s, minus a shuffle penalty, plus seed noise),
so the figures, tables and fitted parameters can be checked against what was put in.
"""
import contextlib
import csv
import io
import json
import math
import warnings
import zlib

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from ablate import commands as cli
from ablate.engines.report import analysis, figures, scaling
from ablate.engines.report import stats as report

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAW = {"attention": (3.0, 0.45, 0.10), "mlp": (6.0, 0.55, 0.08), "conv": (2.0, 0.40, 0.09)}  # a, b, c
MACS = {"attention": 3.1e6, "mlp": 2.2e6, "conv": 2.6e6}
SPEED = {"attention": 4000.0, "mlp": 6000.0, "conv": 5000.0}
PENALTY = {"none": 0.0, "patch": 0.0, "global": 0.2}
EPOCHS = 3


def record(spatial: str, train_size: int, shuffle: str, seed: int, lr: float = 2e-3) -> dict:
    a, b, c = LAW[spatial]
    noise = np.random.default_rng(zlib.crc32(f"{spatial} {train_size} {shuffle} {seed}".encode())).normal(0, 0.004)
    acc = float(1 - (a * train_size ** -b + c) - PENALTY[shuffle] * (spatial != "mlp") + noise)
    history = [{"epoch": e, "train_loss": 2.0 / e, "test_acc": acc - 0.1 * (EPOCHS - e), "test_loss": 1.0 / e,
                "lr": lr, "time_s": 1.0} for e in range(1, EPOCHS + 1)]
    return {"spatial": spatial, "channel": "mlp", "preset": "tiny", "dataset": "fashion-mnist",
            "train_size": train_size, "test_size": 10000, "seed": seed, "epochs": EPOCHS, "shuffle": shuffle,
            "params": 200_000 + 1000 * len(spatial), "params_frozen": 0, "macs": MACS[spatial], "test_acc": acc,
            "test_loss": 0.5, "train_time_s": train_size / SPEED[spatial] * EPOCHS,
            "train_img_s": SPEED[spatial] + seed,
            "infer_img_s": 3 * SPEED[spatial], "device": "cpu", "precision": "bf16", "history": history,
            "config": {"lr": lr, "batch_size": 256, "augment": True, "model": {"dims": [64], "depths": [6]}}}


def attrs(axes: dict, phase: str, seed: int, rec: dict | None = None, cell: str | None = None) -> dict:
    """The user_attrs `ablate study` gives a trial."""
    arm = ",".join(f"{k}={v}" for k, v in axes.items())
    return {"cell": cell or f"{arm}|{phase}|seed={seed}", "arm": arm, "axes": axes, "phase": phase, "seed": seed,
            **({"record": rec} if rec else {})}


def final_trial(axes: dict, rec: dict):
    return create_trial(value=rec["test_acc"], user_attrs=attrs(axes, "final", rec["seed"], rec))


def full_study(url: str, name: str = "everything", seeds=(0, 1, 2)) -> optuna.Study:
    """Every axis the report knows (mixers x train sizes x shuffles x seeds, and a channel axis of one value),
    a tuning phase with a pruned trial, a diverged run, a lost claim, a killed worker's trial and a cell recorded
    twice."""
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["test_acc"])
    study.set_user_attr("axes", {"spatial": list(LAW), "channel": ["mlp"], "train_size": [250, 1000, 4000, 16000, 64000],
                                 "shuffle": ["none", "global"]})
    space = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "weight_decay": FloatDistribution(0.0, 0.1)}
    rng = np.random.default_rng(1)
    for spatial in LAW:  # tuning: the arms at 4000 images without shuffle
        axes = {"spatial": spatial, "channel": "mlp", "train_size": 4000, "shuffle": "none"}
        for k in range(6):
            lr, wd = float(10 ** rng.uniform(-4, -2)), float(rng.uniform(0, 0.1))
            rec = record(spatial, 4000, "none", 0, lr)
            rec["test_acc"] -= abs(math.log10(lr) + 3) * 0.05 + wd * 0.01  # best near lr = 1e-3
            study.add_trial(create_trial(value=rec["test_acc"], params={"lr": lr, "weight_decay": wd},
                                         distributions=space, user_attrs=attrs(axes, "tune", 0, rec, f"tune{k}")))
    for spatial in LAW:
        for size in (250, 1000, 4000, 16000, 64000):
            for shuffle in ("none", "global"):
                for seed in seeds:
                    axes = {"spatial": spatial, "channel": "mlp", "train_size": size, "shuffle": shuffle}
                    study.add_trial(final_trial(axes, record(spatial, size, shuffle, seed)))
    mlp = {"spatial": "mlp", "channel": "mlp", "train_size": 4000, "shuffle": "none"}
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.3, params={"lr": 0.009, "weight_decay": 0.0},
                                 distributions=space, intermediate_values={1: 0.3},
                                 user_attrs=attrs(mlp, "tune", 0, cell="tune9")))
    diverged = {"spatial": "conv", "channel": "mlp", "train_size": 250, "shuffle": "global"}
    study.add_trial(create_trial(state=TrialState.FAIL,
                                 user_attrs={**attrs(diverged, "final", 9), "error": "diverged"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={**attrs(mlp, "final", 0), "lost_claim": True}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=attrs(mlp, "final", 1)))  # a heartbeat gone stale
    twice = record("mlp", 4000, "none", 0)
    study.add_trial(create_trial(value=0.1, user_attrs=attrs(mlp, "final", 0, {**twice, "test_acc": 0.1})))
    return study


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'ablate.db'}"


def run_report(storage: str, name: str, out, *extra: str, capsys=None) -> tuple[int, dict | None]:
    code = cli.main(["report", "--study", name, "--storage", storage, "-o", str(out), "--json", *extra])
    doc = json.loads(capsys.readouterr().out) if capsys is not None and code == 0 else None
    return code, doc


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    """The full study and its report, made once: (study, output folder, the --json document)."""
    folder = tmp_path_factory.mktemp("everything")
    url = f"sqlite:///{folder / 'ablate.db'}"
    study = full_study(url)
    out = folder / "report"
    args = ["report", "--study", "everything", "--storage", url, "-o", str(out), "--json"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(args) == 0
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 1, "--json prints exactly one document"
    return study, out, json.loads(lines[0])


def test_full_study_gives_every_figure_table_and_csv(everything):
    study, out, doc = everything
    names = {f["name"] for f in doc["figures"]}
    assert names == {"scaling", "pareto_macs", "pareto_throughput", "shuffle", "curves", "tuning_history",
                     "tuning_slice", "importances"}
    for name in names:
        for fmt in ("png", "svg"):
            assert (out / f"{name}.{fmt}").stat().st_size > 5000, f"{name}.{fmt}"
    md = (out / "report.md").read_text()
    for name in names:
        assert f"]({name}.png)" in md
    for heading in ("## Budget", "## Arms", "## Pairwise comparisons", "## Does one axis's effect depend on another?",
                    "## Data scaling", "## Shuffle robustness", "## Tuning"):
        assert heading in md
    # every trial in every state is in the CSV, with its record flattened
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == len(study.trials)
    assert {r["state"] for r in rows} == {"COMPLETE", "PRUNED", "FAIL"}
    assert {"params_lr", "config.batch_size", "test_acc", "macs", "value", "cell", "error"} <= set(rows[0])
    assert json.loads(rows[0]["axes"])["channel"] == "mlp"
    assert doc["trials"] == {"COMPLETE": len(study.trials) - 4, "FAIL": 3, "PRUNED": 1}
    assert doc["lost_claims"] == 1 and doc["interrupted"] == 1  # the diverged run is a result: neither
    assert ("3 fail, 1 pruned; failed includes 1 lost claim(s): cells another worker ran and 1 interrupted run(s): "
            "their worker was killed or crashed, and `study` runs their cells again, not results") in md
    assert doc["n_final"] == 3 * 5 * 2 * 3, "the cell recorded twice counts once"
    assert doc["axes"] == ["spatial", "train_size", "shuffle"], "channel has one value: not an axis"
    assert doc["budget"]["train_size"] == [250, 1000, 4000, 16000, 64000]
    assert doc["budget"]["precision"] == ["bf16"] and doc["budget"]["device"] == ["cpu"]
    assert json.loads((out / "summary.json").read_text()) == doc


def test_a_rerun_writes_the_same_bytes(everything, tmp_path):
    """Figures carry no timestamps and fixed SVG ids, so a regenerated report diffs clean in git."""
    _, out, _ = everything
    again = tmp_path / "again"
    assert cli.main(["report", "--study", "everything", "--storage", f"sqlite:///{out.parent / 'ablate.db'}",
                     "-o", str(again)]) == 0
    written = sorted(f.name for f in out.iterdir() if f.name != "summary.json")  # it names its folder
    assert written == sorted(f.name for f in again.iterdir() if f.name != "summary.json")
    for name in written:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_arm_table_matches_the_records(everything):
    _, out, doc = everything
    arm = next(a for a in doc["arms"] if a["spatial"] == "conv" and a["train_size"] == 1000 and a["shuffle"] == "none")
    accs = [record("conv", 1000, "none", s)["test_acc"] for s in (0, 1, 2)]
    assert arm["n"] == 3 and arm["seeds"] == [0, 1, 2]
    assert arm["test_acc_mean"] == pytest.approx(np.mean(accs))
    assert arm["test_acc_sd"] == pytest.approx(np.std(accs, ddof=1))
    half = stats.t.ppf(0.975, 2) * np.std(accs, ddof=1) / math.sqrt(3)
    assert arm["test_acc_ci95"] == pytest.approx([np.mean(accs) - half, np.mean(accs) + half])
    assert arm["macs"] == MACS["conv"]
    assert f"{np.mean(accs):.4f} ± {np.std(accs, ddof=1):.4f}" in (out / "report.md").read_text()
    assert arm["failed"] == 0
    diverged = next(a for a in doc["arms"] if a["arm"] == "spatial=conv, train_size=250, shuffle=global")
    assert diverged["failed"] == 1 and diverged["n"] == 3
    assert [a["arm"] for a in doc["arms"][:3]] == ["spatial=attention, train_size=250, shuffle=none",
                                                   "spatial=attention, train_size=250, shuffle=global",
                                                   "spatial=attention, train_size=1000, shuffle=none"]


def test_power_law_fit_recovers_the_law_it_was_given(everything):
    doc = everything[2]
    fits = {r["series"]: r for r in doc["power_law"]}
    assert set(fits) == {f"spatial={s}, shuffle={m}" for s in LAW for m in ("none", "global")}
    for spatial, (a, b, c) in LAW.items():
        row = fits[f"spatial={spatial}, shuffle=none"]
        assert row["status"] == "fitted" and row["lack_of_fit"]["p"] > 0.05  # the law is the truth: not rejected
        fit = row["fit"]
        assert fit["b"]["value"] == pytest.approx(b, abs=0.15)
        assert fit["c"]["value"] == pytest.approx(c, abs=0.02)
        for k, true in zip("abc", (a, b, c)):
            low, high = fit[k]["ci95"]
            assert low <= fit[k]["value"] <= high and low <= true <= high, (spatial, k)
        assert row["asymptotic_acc"] == pytest.approx(1 - fit["c"]["value"])


def test_fit_power_law_on_exact_data():
    n = np.array([100, 300, 1000, 3000, 10000, 60000], dtype=float)
    a, b, c = scaling.fit_power_law(n, 5.0 * n ** -0.5 + 0.07)
    assert (a, b, c) == pytest.approx((5.0, 0.5, 0.07), rel=1e-3)


def test_report_says_which_arms_were_still_learning(everything, storage, tmp_path, capsys):
    """The fixture's curves rise to the last epoch in every run; a study whose curves peak earlier is not flagged."""
    _, out, doc = everything
    assert len(doc["convergence"]) == len(doc["arms"])
    for row in doc["convergence"]:
        assert row["metric"] == "test_acc" and row["interval"] == [[EPOCHS - 1, EPOCHS]]
        assert row["last_gain_mean"] == pytest.approx(0.1) and row["peaked_last"] == row["n"]
        assert row["axis"] == "epoch" and row["peaks"] == [EPOCHS] * row["n"]
    assert f"**{len(doc['arms'])} of {len(doc['arms'])} arms were still rising at the last evaluation" in (
        out / "report.md").read_text()
    study = optuna.create_study(study_name="peaked", storage=storage, direction="maximize")
    curves = {"mlp": [((2, 0.80), (4, 0.90), (6, 0.89))] * 2, "conv": [((2, 0.80), (4, 0.90), (6, 0.89))] * 2,
              "attention": [((2, 0.80), (4, 0.85), (6, 0.89))],  # rising, but one seed says nothing
              "pool": [((6, 0.88),)] * 2}  # one evaluation: no last interval
    for spatial, runs in curves.items():
        for seed, curve in enumerate(runs):
            rec = {**record("mlp", 4000, "none", seed), "spatial": spatial}
            rec["history"] = [{"epoch": e, "val_acc": v, "test_acc": None} for e, v in curve]
            study.add_trial(final_trial({"spatial": spatial}, rec))
    code, peaked = run_report(storage, "peaked", tmp_path / "r", capsys=capsys)
    rows = {r["arm"]: r for r in peaked["convergence"]}
    assert code == 0 and set(rows) == set(curves) and rows["pool"]["n"] == 0
    assert all(rows[a]["peaked_last"] == 0 and rows[a]["last_gain_mean"] == pytest.approx(-0.01)
               and rows[a]["peaks"] == [4, 4] for a in ("mlp", "conv"))
    assert rows["attention"]["peaked_last"] == rows["attention"]["n"] == 1
    md = (tmp_path / "r" / "report.md").read_text()
    assert "still rising at the last evaluation" not in md
    assert "Left out, fewer than 2 evaluations of val_acc in every run: pool." in md


def test_curves_of_a_step_budget_run_along_steps(storage, tmp_path, capsys):
    """At equal steps the epochs differ with the train size, so the curves and the last interval are in steps."""
    study = optuna.create_study(study_name="stepped", storage=storage, direction="maximize")
    for train_size in (1000, 8000):
        for seed in (0, 1):
            rec = {**record("mlp", train_size, "none", seed), "budget": "steps", "steps": 800}
            rec["history"] = [{"epoch": step * 256 / train_size, "step": step, "val_acc": 0.7 + step / 1e4,
                               "test_acc": None} for step in (400, 600, 800)]
            study.add_trial(final_trial({"train_size": train_size}, rec))
    code, doc = run_report(storage, "stepped", tmp_path / "r", capsys=capsys)
    assert code == 0 and len(doc["convergence"]) == 2
    for row in doc["convergence"]:
        assert row["axis"] == "step" and row["interval"] == [[600, 800]] and row["peaks"] == [800, 800]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "over the last evaluation interval (step 600 to 800)" in md and "| peak steps |" in md
    assert "Validation accuracy per step" in md


def test_shuffle_table_gives_relative_change(everything):
    doc = everything[2]
    rows = {(r["series"], r["shuffle"]): r for r in doc["shuffle"]}
    conv = rows[("conv", "global")]
    base = np.mean([record("conv", 64000, "none", s)["test_acc"] for s in (0, 1, 2)])
    shuffled = np.mean([record("conv", 64000, "global", s)["test_acc"] for s in (0, 1, 2)])
    assert conv["relative_change"] == pytest.approx(shuffled / base - 1)
    assert rows[("mlp", "global")]["relative_change"] == pytest.approx(0, abs=0.02)
    assert rows[("mlp", "none")]["relative_change"] is None
    assert len(rows) == 6, "compared at the largest train size only"


def test_tuning_summary_names_each_arms_best_trial(everything):
    study, _, doc = everything
    assert [r["arm"] for r in doc["tuning"]] == [f"spatial={s}, train_size=4000, shuffle=none" for s in sorted(LAW)]
    for row in doc["tuning"]:
        tune = [t for t in study.trials if t.user_attrs.get("phase") == "tune" and t.state == TrialState.COMPLETE
                and row["arm"].startswith(f"spatial={t.user_attrs['axes']['spatial']},")]
        best = max(tune, key=lambda t: t.value)
        pruned = 1 if row["arm"].startswith("spatial=mlp,") else 0  # the fixture's one pruned tuning trial
        assert row["trials"] == 6 + pruned and row["pruned"] == pruned and row["best_trial"] == best.number
        assert row["params"] == pytest.approx(best.params)


def test_tuning_table_lists_the_arms_in_the_arm_tables_order(storage, tmp_path, capsys):
    """Numbers by value (2000 before 10000), not as text."""
    study = optuna.create_study(study_name="sizes", storage=storage, direction="maximize")
    space = {"lr": CategoricalDistribution([1e-3, 3e-3])}
    for train_size in (10000, 2000):
        axes = {"train_size": train_size}
        rec = {**record("mlp", train_size, "none", 0), "val_acc": 0.9}
        study.add_trial(create_trial(value=0.9, params={"lr": 1e-3}, distributions=space,
                                     user_attrs=attrs(axes, "tune", 0, rec, f"tune-{train_size}")))
        study.add_trial(final_trial(axes, rec))
    code, doc = run_report(storage, "sizes", tmp_path / "r", capsys=capsys)
    assert code == 0 and [r["arm"] for r in doc["arms"]] == ["2000", "10000"]
    assert [r["arm"] for r in doc["tuning"]] == [r["arm"] for r in doc["arms"]]


@pytest.mark.parametrize("dist, value, edge", [
    (CategoricalDistribution([1e-3, 3e-3]), 3e-3, None),  # two values: both are ends, said once, not per arm
    (CategoricalDistribution([1e-3, 3e-3, 1e-2]), 1e-3, "low"),
    (CategoricalDistribution([1e-3, 3e-3, 1e-2]), 3e-3, None),
    (CategoricalDistribution(["adamw", "sgd"]), "sgd", None),  # no order, no ends
    (FloatDistribution(1e-4, 1e-2, log=True), 1.2e-4, "low"),  # inside the outer 5% of the log range
    (FloatDistribution(1e-4, 1e-2, log=True), 1e-3, None),
    (FloatDistribution(1e-4, 1e-2), 1.2e-4, "low"),
    (FloatDistribution(1e-4, 1e-2), 9.8e-3, "high"),
    (IntDistribution(1, 21), 2, "low"),
])
def test_a_chosen_value_on_an_end_of_its_range_is_flagged(dist, value, edge):
    trial = create_trial(value=0.9, params={"p": value}, distributions={"p": dist})
    assert analysis.range_edges(trial) == ({"p": edge} if edge else {})


def tuning_study(storage: str, name: str, space: dict, tried: dict, best: dict, failed: dict | None = None):
    """Per arm (a spatial mixer), a tuning trial per tried lr (val_acc 0.9 at the arm's best, 0.8 elsewhere; a
    best of None prunes every trial), failed (diverged) trials at the lrs in `failed`, and one final run."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for frozen, spatial in enumerate(tried):
        axes = {"spatial": spatial}
        for lr in tried[spatial]:
            rec = {**record(spatial, 4000, "none", 0, lr), "val_acc": 0.9 if lr == best[spatial] else 0.8,
                   "params_frozen": frozen}
            state = TrialState.COMPLETE if best[spatial] is not None else TrialState.PRUNED
            study.add_trial(create_trial(state=state, value=rec["val_acc"] if state == TrialState.COMPLETE else None,
                                         params={"lr": lr}, distributions=space, intermediate_values={4: 0.5},
                                         user_attrs=attrs(axes, "tune", 0, rec, f"tune-{lr}")))
        for lr in (failed or {}).get(spatial, []):
            study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": lr}, distributions=space,
                                         user_attrs={**attrs(axes, "tune", 0, cell=f"tune-{lr}"), "error": "diverged"}))
        study.add_trial(final_trial(axes, record(spatial, 4000, "none", 0, best[spatial] or 2e-3)))


def test_report_says_when_the_range_does_not_bracket_the_optimum(storage, tmp_path, capsys, monkeypatch):
    """...and draws each arm's tuning trials against lr, the one tuned value (a record's `params_frozen` is not)."""
    drawn = {}
    monkeypatch.setattr(figures.Figures, "save", lambda self, fig, name, title: drawn.setdefault(name, fig))
    grid = (1e-3, 3e-3, 1e-2)
    tuning_study(storage, "edge", {"lr": CategoricalDistribution(grid)}, dict.fromkeys(LAW, grid),
                 {"mlp": 1e-3, "conv": 1e-2, "attention": 3e-3})
    code, doc = run_report(storage, "edge", tmp_path / "r", capsys=capsys)
    assert code == 0 and [r["at_edge"] for r in doc["tuning"]] == [{}, {"lr": "high"}, {"lr": "low"}]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "lr at its high end for 1 of 3 arms, lr at its low end for 1 of 3 arms" in md
    assert "at an end of the searched range |" in md and "took two values" not in md
    assert [ax.get_xlabel() for ax in drawn["tuning_slice"].axes] == ["lr"]
    assert drawn["tuning_slice"].axes[0].get_xscale() == "log"  # a grid from 1e-3 to 1e-2
    lines = {line.get_label(): line.get_xydata().tolist() for line in drawn["tuning_slice"].axes[0].lines}
    assert lines["mlp"] == [[1e-3, 0.9], [3e-3, 0.8], [1e-2, 0.8]] and lines["conv"][-1] == [1e-2, 0.9]


def test_a_two_value_grid_an_all_pruned_arm_and_a_diverged_trial(storage, tmp_path, capsys):
    """Two values flag no end (both are ends) but say so once; an arm with no complete tuning trial keeps its row;
    a diverged tuning trial is counted."""
    two = (1e-3, 3e-3)
    tuning_study(storage, "two", {"lr": CategoricalDistribution(two)}, {"mlp": two, "conv": two, "attention": (3e-3,)},
                 {"mlp": 1e-3, "conv": None, "attention": 3e-3}, failed={"attention": [1e-3]})
    code, doc = run_report(storage, "two", tmp_path / "r", capsys=capsys)
    rows = {r["arm"]: r for r in doc["tuning"]}
    assert code == 0 and all(r["at_edge"] == {} for r in rows.values()) and doc["two_value_grids"] == ["lr"]
    assert rows["conv"]["pruned"] == 2 and rows["conv"]["params"] == {} and rows["conv"]["best_trial"] is None
    assert rows["attention"]["trials"] == 2 and rows["attention"]["failed"] == 1
    md = (tmp_path / "r" / "report.md").read_text()
    assert "`lr` took two values, which bracket no optimum" in md and "at an end of the searched range" not in md
    assert not analysis.is_two_value_grid(CategoricalDistribution(["adamw", "sgd"]))  # two names: no range at all
    assert "| conv | 2 (2 pruned) | — | none complete: the finals ran the [run] values |" in md
    assert "| attention | 2 (1 failed) | 0.9000 | lr=0.003 |" in md


def test_a_diverged_trial_with_the_record_of_its_last_evaluation_is_a_failed_result(storage, tmp_path, capsys):
    """`study` keeps a diverged run's last record (its `error` None, the run then still going) beside the trial's own
    error: the trial's error wins, so the run is a failed result in its arm's row, not an interrupted one."""
    study = optuna.create_study(study_name="div", storage=storage, direction="maximize")
    for seed in (0, 1):
        study.add_trial(final_trial({"spatial": "conv"}, record("conv", 1000, "none", seed)))
    for seed, rec in ((0, record("mlp", 1000, "none", 0)), (1, None)):  # seed 1 diverged before its first evaluation
        last = rec and {**rec, "status": "running", "error": None, "test_acc": None}
        error = f"diverged: loss is nan at step {3 + seed}"
        study.add_trial(create_trial(state=TrialState.FAIL,
                                     user_attrs={**attrs({"spatial": "mlp"}, "final", seed, last), "error": error}))
    code, doc = run_report(storage, "div", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["interrupted"] == 0 and doc["lost_claims"] == 0
    assert [(r["number"], r["arm"], r["phase"], r["seed"], r["error"]) for r in doc["failed_runs"]] == [
        (2, "spatial=mlp", "final", 0, "diverged: loss is nan at step 3"),
        (3, "spatial=mlp", "final", 1, "diverged: loss is nan at step 4")]  # no complete mlp run: spatial no axis
    rows = {r["arm"]: (r["n"], r["failed"]) for r in doc["arms"]}
    assert rows == {"spatial=conv": (2, 0), "spatial=mlp": (0, 2)}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "interrupted" not in md and "failed includes 2 diverged run(s), results: see Failed runs" in md
    assert "| 2 | spatial=mlp | final | 0 | diverged: loss is nan at step 3 |" in md
    assert "| spatial=mlp | 0 | — ± — | [—, —] | — | — | — | — | 2 |" in md
    rows = list(csv.DictReader((tmp_path / "r" / "trials.csv").open()))
    assert [r["error"] for r in rows[2:]] == ["diverged: loss is nan at step 3", "diverged: loss is nan at step 4"]


def test_a_continuous_space_gets_points_and_no_line(everything):
    """The fixture tunes lr (log) and weight_decay (linear) with TPE-like draws: a line through them would read as a
    response curve."""
    _, out, doc = everything
    assert "tuning_slice" in {f["name"] for f in doc["figures"]}
    space = {"params_lr": FloatDistribution(1e-4, 1e-2, log=True), "params_weight_decay": FloatDistribution(0, 0.1)}
    drawn = []
    figs = figures.Figures(out, ["png"])
    figs.save = lambda fig, name, title: drawn.append(fig)
    tune = pd.DataFrame({"spatial": ["mlp"] * 3, "state": ["COMPLETE"] * 3, "value": [0.8, 0.9, 0.85],
                         "params_lr": [1e-4, 1e-3, 1e-2], "params_weight_decay": [0.0, 0.05, 0.1]})
    figures.plot_tuning_slice(figs, tune, space, ["spatial"], "value", "val_acc", True)
    lr_ax, wd_ax = drawn[0].axes
    assert lr_ax.get_xscale() == "log" and wd_ax.get_xscale() == "linear"
    assert all(line.get_linewidth() == 0 for ax in (lr_ax, wd_ax) for line in ax.lines)


def test_a_study_without_an_axis_gets_no_figure_for_it(storage, tmp_path, capsys):
    """Token-mixer style: one train size, no shuffle, no tuning, one epoch -> only the Pareto views."""
    study = optuna.create_study(study_name="mixers", storage=storage, direction="maximize")
    for spatial in LAW:
        for seed in (0, 1):
            rec = record(spatial, 60000, "none", seed)
            rec["history"], rec["epochs"] = rec["history"][-1:], 1
            study.add_trial(final_trial({"spatial": spatial}, rec))
    _, doc = run_report(storage, "mixers", tmp_path / "r", "--format", "pdf", capsys=capsys)
    assert {f["name"] for f in doc["figures"]} == {"pareto_macs", "pareto_throughput"}
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "pareto_macs.pdf", "pareto_throughput.pdf", "report.md", "summary.json", "trials.csv"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Data scaling" not in md and "## Shuffle" not in md and "[pareto_macs.pdf](pareto_macs.pdf)" in md
    assert [a["arm"] for a in doc["arms"]] == sorted(LAW)


def test_multi_objective_and_no_phase_trials(storage, tmp_path, capsys):
    study = optuna.create_study(study_name="mo", storage=storage, directions=["maximize", "minimize"])
    for spatial in LAW:
        rec = record(spatial, 1000, "none", 0)
        study.add_trial(create_trial(values=[rec["test_acc"], rec["macs"]], user_attrs={"record": rec}))
    _, doc = run_report(storage, "mo", tmp_path / "r", capsys=capsys)
    assert doc["objectives"] == ["value_0", "value_1"] and doc["directions"] == ["maximize", "minimize"]
    assert doc["axes"] == ["spatial"] and doc["n_final"] == 3  # no arm attribute: the varying record field


def test_empty_study_still_reports(storage, tmp_path, capsys):
    optuna.create_study(study_name="empty", storage=storage)
    code, doc = run_report(storage, "empty", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["n_trials"] == 0 and doc["figures"] == []
    assert "No complete final trials yet" in (tmp_path / "r" / "report.md").read_text()


def test_dominated_points():
    acc = np.array([0.90, 0.85, 0.80, 0.91])
    cost = np.array([2.0, 1.0, 1.5, 3.0])
    assert report.dominated(acc, cost).tolist() == [False, False, True, False]


def test_pareto_of_two_axes_colours_mixers_and_marks_structures(tmp_path):
    """Twelve arms of stem x mixer: the legend names 6 mixers and 2 stems, not 12 arms, and rings the front."""
    mixers, stems = ["attention", "conv", "identity", "mlp", "pool", "random"], ["stem=conv", "stem=patch"]
    arms = pd.DataFrame([{"arm": f"{s}, {m}", "model_options": s, "spatial": m, "macs": 1e7 + 1e5 * i + 5e4 * j,
                          "test_acc_mean": 0.85 + 0.01 * i - 0.02 * j, "test_acc_sd": 0.002}
                         for j, s in enumerate(stems) for i, m in enumerate(mixers)])
    drawn = []
    figs = figures.Figures(tmp_path, ["png"])
    figs.save = lambda fig, name, title: drawn.append(fig)
    figures.plot_pareto(figs, arms, ["model_options", "spatial"], "macs", False, "pareto_macs", "MACs per image")
    ax = drawn[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["spatial", *mixers, "model_options", *stems, "non-dominated", "Pareto front"]
    ring = next(c for c in ax.collections if c.get_label() == "non-dominated")
    assert len(ring.get_offsets()) == 6  # the conv-stem arms: each costs more and is more accurate than the last
    assert ax.get_title() == "Accuracy vs MACs per image"


def test_unknown_study_lists_the_studies(storage, tmp_path, capsys):
    optuna.create_study(study_name="alpha", storage=storage)
    code = cli.main(["report", "--study", "beta", "--storage", storage, "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "'beta'" in err and "alpha" in err
    assert not (tmp_path / "r").exists()


def test_missing_sqlite_file_is_not_created(tmp_path, capsys):
    path = tmp_path / "nope.db"
    code = cli.main(["report", "--study", "x", "--storage", f"sqlite:///{path}"])
    assert code == 2 and "no such file" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.parametrize("url", ["postgresql+psycopg2://nobody@127.0.0.1:1/ablate",  # no server there
                                 "postgresql://nobody@127.0.0.1:1/ablate",  # SQLAlchemy 2.1 wants psycopg 3 here
                                 "nosuchdriver://x/y"])
def test_unreachable_storage_exits_2(url, tmp_path, capsys):
    code = cli.main(["report", "--study", "x", "--storage", url, "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "storage" in err


def test_bad_format_exits_2(storage, capsys):
    code = cli.main(["report", "--study", "x", "--storage", storage, "--format", "png,gif"])
    assert code == 2 and "valid: png, svg, pdf" in capsys.readouterr().err


def test_password_is_hidden():
    from ablate.foundations.storage import masked
    assert "secret" not in masked("postgresql://me:secret@db.example/ablate")
    assert masked("postgresql://me:secret@db.example/ablate").startswith("postgresql://me:")


def scaling_study(storage: str, name: str, sizes, law, seeds=(0, 1, 2), noise: float = 0.004) -> None:
    """Final trials of one mixer whose error follows `law(N)` plus seed noise."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    rng = np.random.default_rng(7)
    for size in sizes:
        for seed in seeds:
            rec = record("mlp", size, "none", seed) | {"test_acc": float(1 - law(size) + rng.normal(0, noise))}
            study.add_trial(final_trial({"spatial": "mlp", "train_size": size}, rec))


def test_fewer_than_five_sizes_are_not_fitted(storage, tmp_path, capsys):
    scaling_study(storage, "scale", (500, 2000, 8000), lambda n: 6.0 * n ** -0.55 + 0.08)
    code, doc = run_report(storage, "scale", tmp_path / "r", capsys=capsys)
    assert code == 0 and "scaling" in [f["name"] for f in doc["figures"]]  # the points, without a law
    row = doc["power_law"][0]
    assert row["fit"] is None and row["status"].startswith("not fitted: 3 train sizes")
    assert "| mlp | 9 | 3 | not fitted: 3 train sizes" in (tmp_path / "r" / "report.md").read_text()


def test_a_floor_of_zero_is_not_identified(storage, tmp_path, capsys):
    """Data from a law with c = 0: c's interval reaches its bound, so neither c nor 1 - c is printed as a number."""
    scaling_study(storage, "floorless", (250, 1000, 4000, 16000, 64000), lambda n: 4.0 * n ** -0.5)
    code, doc = run_report(storage, "floorless", tmp_path / "r", capsys=capsys)
    fit = doc["power_law"][0]["fit"]
    assert code == 0 and fit["c"]["identified"] is False and fit["c"]["bound"] == 0
    assert fit["b"]["identified"] and fit["b"]["ci95"][0] <= 0.5 <= fit["b"]["ci95"][1]
    assert doc["power_law"][0]["asymptotic_acc"] is None
    md = (tmp_path / "r" / "report.md").read_text()
    assert "not identified: [0.0000," in md and "1.0000" not in md.split("## Data scaling")[1]


def test_a_law_the_data_reject_is_said_to_be_rejected_and_not_drawn(storage, tmp_path, capsys, monkeypatch):
    """A step in the accuracy (no power law) with small seed noise: the lack-of-fit test rejects the fit."""
    from ablate.engines.report import figures
    drawn = []
    monkeypatch.setattr(figures, "power_law", lambda *args: drawn.append(args) or np.zeros(200))
    scaling_study(storage, "step", (250, 1000, 4000, 16000, 64000), lambda n: 0.2 if n < 4000 else 0.1, noise=0.002)
    code, doc = run_report(storage, "step", tmp_path / "r", capsys=capsys)
    row = doc["power_law"][0]
    assert code == 0 and row["fit"] is None and row["status"].startswith("rejected: lack of fit")
    assert row["lack_of_fit"]["p"] < 0.05 and drawn == []
    assert "rejected: lack of fit against the seed noise" in (tmp_path / "r" / "report.md").read_text()


def test_pairwise_comparisons_are_holm_corrected_as_statsmodels_does(everything):
    from statsmodels.stats.multitest import multipletests
    rows = [r for r in everything[2]["pairwise"] if r["p"] is not None]
    assert {r["axis"] for r in rows} == {"spatial", "shuffle"}  # one axis differs; train size is the data axis
    expected = multipletests([r["p"] for r in rows], method="holm")[1]
    assert [r["p_holm"] for r in rows] == pytest.approx(list(expected))
    paired = next(r for r in rows if r["a"] == "spatial=conv, train_size=64000, shuffle=global"
                  and r["b"] == "spatial=conv, train_size=64000, shuffle=none")
    a = [record("conv", 64000, "global", s)["test_acc"] for s in (0, 1, 2)]
    b = [record("conv", 64000, "none", s)["test_acc"] for s in (0, 1, 2)]
    assert paired["test"] == "paired t" and paired["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired["diff"] == pytest.approx(np.mean(a) - np.mean(b)) and paired["mdd"] > 0


def test_anova_asks_whether_the_mixer_effect_depends_on_the_structure(everything):
    doc = everything[2]["anova"]
    assert doc["factors"] == ["spatial", "shuffle", "train_size"]
    terms = {t["term"]: t for t in doc["terms"]}
    assert {"spatial x shuffle", "spatial x train_size"} <= set(terms)
    assert terms["spatial x shuffle"]["p"] < 0.001  # the law gives every mixer but mlp a global-shuffle penalty


def test_axes_linked_to_the_train_size_are_part_of_the_data_axis(storage, tmp_path, capsys):
    """A linked `data` axis sets epochs per train size: one curve per mixer, not one per epochs value."""
    study = optuna.create_study(study_name="linked", storage=storage, direction="maximize")
    for spatial in ("conv", "mlp"):
        for size, epochs in ((500, 8), (2000, 2), (8000, 1)):
            for seed in (0, 1):
                rec = record(spatial, size, "none", seed) | {"epochs": epochs}
                axes = {"spatial": spatial, "train_size": size, "epochs": epochs}
                study.add_trial(final_trial(axes, rec))
    code, doc = run_report(storage, "linked", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["axes"] == ["spatial", "train_size", "epochs"]
    assert [(p["series"], p["sizes"]) for p in doc["power_law"]] == [("conv", 3), ("mlp", 3)]
    assert {f["name"] for f in doc["figures"]} >= {"scaling", "pareto_macs"}


STRUCTURES = [({"channel": "mlp", "model_options": {}}, 0.0), ({"channel": "identity", "model_options": {}}, -0.04),
              ({"channel": "mlp", "model_options": {"norm": "none"}}, -0.01),
              ({"channel": "mlp", "model_options": {"residual": False}}, -0.05)]


def structure_study(storage: str, name: str = "structure", axis: str = "structure") -> optuna.Study:
    """Two mixers x a linked `structure` axis whose four tables are not a product of channel x model_options."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("linked", {axis: ["channel", "model_options"]})
    for spatial in ("attention", "mlp"):
        for i, (table, effect) in enumerate(STRUCTURES):
            for seed in (0, 1, 2):
                rec = record(spatial, 4000, "none", seed) | {"channel": table["channel"]}
                rec["test_acc"] += effect + np.random.default_rng([i, seed]).normal(0, 0.003)
                study.add_trial(final_trial({"spatial": spatial, **table}, rec))
    return study


def test_a_linked_axis_is_one_factor_of_the_anova(storage, tmp_path, capsys):
    structure_study(storage)
    code, doc = run_report(storage, "structure", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["axes"] == ["spatial", "structure"]
    assert doc["anova"]["factors"] == ["spatial", "structure"] and doc["anova"]["note"] is None
    terms = {t["term"]: t for t in doc["anova"]["terms"]}
    assert terms["structure"]["df"] == 3 and terms["structure"]["p"] < 0.001
    assert {r["axis"] for r in doc["pairwise"]} == {"spatial", "structure"}
    assert len(doc["pairwise"]) == 2 * 6 + 4  # every two structures within a mixer, and the mixers per structure


def test_a_linked_axis_named_as_a_trial_attribute_leaves_the_attribute_alone(storage, tmp_path, capsys):
    structure_study(storage, axis="arm")
    code, doc = run_report(storage, "structure", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["axes"] == ["spatial", "arm (channel / model_options)"]
    assert len(doc["arms"]) == 8 and doc["anova"]["note"] is None


def test_a_linked_axis_told_apart_by_one_option_is_named_by_it(storage, tmp_path, capsys):
    """shuffle.toml's `network` axis: each network has its own mixer, so the mixer names it (and colours it)."""
    study = optuna.create_study(study_name="networks", storage=storage, direction="maximize")
    study.set_user_attr("linked", {"network": ["spatial", "model_options"]})
    for spatial, options in (("conv", {}), ("mlp", {"stem": "patch"}), ("attention", {"stem": "patch"})):
        for shuffle in ("none", "global"):
            for seed in (0, 1):
                axes = {"spatial": spatial, "model_options": options, "shuffle": shuffle}
                study.add_trial(final_trial(axes, record(spatial, 4000, shuffle, seed)))
    code, doc = run_report(storage, "networks", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["axes"] == ["spatial", "shuffle"]
    assert doc["anova"]["factors"] == ["spatial", "shuffle"] and doc["anova"]["note"] is None


def test_control_tests_each_level_against_it_and_holm_corrects_over_those(storage, tmp_path, capsys):
    from statsmodels.stats.multitest import multipletests
    structure_study(storage)
    code, doc = run_report(storage, "structure", tmp_path / "r", "--control", "structure=mlp / {}", capsys=capsys)
    rows = doc["pairwise"]
    assert code == 0 and doc["control"] == "structure=mlp / {}" and len(rows) == 2 * 3
    assert all(r["axis"] == "structure" and r["b"].endswith("structure=mlp / {}") for r in rows)
    no_channel = next(r for r in rows if r["a"] == "spatial=mlp, structure=identity / {}")
    assert no_channel["diff"] == pytest.approx(-0.04, abs=0.01)
    assert [r["p_holm"] for r in rows] == pytest.approx(list(multipletests([r["p"] for r in rows], method="holm")[1]))
    text = (tmp_path / "r" / "report.md").read_text()
    assert "against the control structure mlp / {}" in text and "--control 'structure=mlp / {}'" in text


@pytest.mark.parametrize("control, message", [("structure=mlp", "no arm has structure 'mlp'; valid: "),
                                              ("stem=conv", "'stem' is not an axis of this study's arms"),
                                              ("structure", "expected AXIS=LEVEL")])
def test_a_bad_control_exits_2_and_names_the_valid_ones(storage, tmp_path, capsys, control, message):
    structure_study(storage)
    code, _ = run_report(storage, "structure", tmp_path / "r", "--control", control)
    err = capsys.readouterr().err
    assert code == 2 and message in err and not (tmp_path / "r" / "report.md").exists()
    assert "=" in control or not (tmp_path / "r").exists()  # a malformed value is refused before any folder is made


def test_control_is_a_model_axis_not_the_data_budget(everything, tmp_path, capsys):
    url = f"sqlite:///{everything[1].parent / 'ablate.db'}"
    code, _ = run_report(url, "everything", tmp_path / "r", "--control", "train_size=250")
    assert code == 2 and "train_size is the data budget" in capsys.readouterr().err


def test_a_label_of_numbers_keeps_whole_numbers_whole():
    from ablate.engines.report.frame import label
    frame = pd.DataFrame({"depth": [4, 8], "drop": [0.1, 0.2]})
    assert list(label(frame, ["depth", "drop"])) == ["depth=4, drop=0.1", "depth=8, drop=0.2"]


def test_a_run_shared_by_a_tuning_and_a_final_trial_is_timed_once(storage, tmp_path, capsys):
    study = optuna.create_study(study_name="reuse", storage=storage, direction="maximize")
    for spatial in ("conv", "mlp"):
        rec = record(spatial, 4000, "none", 0) | {"run_id": f"run-{spatial}", "train_time_s": 100.0}
        axes = {"spatial": spatial}
        study.add_trial(create_trial(value=rec["test_acc"], user_attrs=attrs(axes, "tune", 0, rec, f"t-{spatial}")))
        study.add_trial(final_trial(axes, rec))  # seed 0's final result is the tuning run, not a second run
    code, doc = run_report(storage, "reuse", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["budget"]["train_time_s_total"] == 200.0
    assert doc["budget"]["train_time_s_taken"] == 0.0 and doc["budget"]["taken_from"] == []
    assert "| training time, all trials | 0.06 h |" in (tmp_path / "r" / "report.md").read_text()


def test_the_budget_says_how_much_training_time_other_studies_spent(storage, tmp_path, capsys):
    """[study].reuse: a run taken from another study counts in the study's training time, and is named as taken."""
    study = optuna.create_study(study_name="widened", storage=storage, direction="maximize")
    for spatial, taken in (("conv", True), ("mlp", False)):
        rec = record(spatial, 4000, "none", 0) | {"run_id": f"run-{spatial}", "train_time_s": 900.0 * (1 + taken)}
        study.add_trial(create_trial(value=rec["test_acc"], user_attrs=attrs({"spatial": spatial}, "final", 0, rec)
                                     | ({"reused_run": "runs/narrow/x", "reused_from": "narrow"} if taken else {})))
    code, doc = run_report(storage, "widened", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["budget"]["train_time_s_total"] == 2700.0
    assert doc["budget"]["train_time_s_taken"] == 1800.0 and doc["budget"]["taken_from"] == ["narrow"]
    assert ("| training time, all trials | 0.75 h, of which 0.50 h by runs taken from `narrow` ([study].reuse) |"
            in (tmp_path / "r" / "report.md").read_text())


@pytest.mark.slow
def test_report_reads_what_ablate_study_writes(tmp_path, capsys, monkeypatch):
    """The contract with `ablate study`: its trials' arm, axes, phase and record attributes group into arms."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    file = tmp_path / "grid.toml"
    file.write_text('[study]\nname = "grid"\nseeds = [0, 1]\n'
                    '[run]\ndataset = "synthetic"\nval_size = 100\ntrain_size = 200\nbatch_size = 50\nepochs = 2\nlr = 1e-2\n'
                    'warmup = 0\naugment = false\nmodel_options = { depths = [1], dims = [16] }\n'
                    '[arms]\nspatial = ["conv", "mlp"]\nchannel = ["mlp"]\n')
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli.main(["study", str(file), "--storage", url, "--out", str(tmp_path / "runs"), "--json"]) == 0
    capsys.readouterr()
    code, doc = run_report(url, "grid", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["axes"] == ["spatial"]
    trials = optuna.load_study(study_name="grid", storage=url).trials
    for arm in doc["arms"]:
        accs = [t.user_attrs["record"]["test_acc"] for t in trials if t.user_attrs["axes"]["spatial"] == arm["arm"]]
        assert arm["n"] == 2 and arm["seeds"] == [0, 1]
        assert arm["test_acc_mean"] == pytest.approx(np.mean(accs))
    assert {f["name"] for f in doc["figures"]} == {"pareto_macs", "pareto_throughput", "curves"}


@pytest.mark.parametrize("prefix", ["", "journal:"])
def test_journal_file_storage(tmp_path, capsys, prefix):
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    path = tmp_path / "study.log"
    study = optuna.create_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(path))))
    rec = record("conv", 1000, "none", 0)
    rec["history"] = rec["history"][-1:]
    study.add_trial(final_trial({"spatial": "conv"}, rec))
    code, doc = run_report(prefix + str(path), "j", tmp_path / "r", capsys=capsys)
    assert code == 0 and doc["n_final"] == 1 and doc["arms"][0]["test_acc_mean"] == pytest.approx(rec["test_acc"])


def test_the_interval_of_a_is_its_profile(monkeypatch):
    """a's interval is every a whose best (b, c) keeps the SSE under the threshold, checked by brute force over
    (a, b, c) on a coarse grid, not the narrower range of a's best values inside the (b, c) region."""
    monkeypatch.setattr(scaling, "B_GRID", np.linspace(0, scaling.B_MAX, 61))
    monkeypatch.setattr(scaling, "C_GRID", np.linspace(0, 1, 61))
    rng = np.random.default_rng(0)
    n = np.repeat([250.0, 1000, 4000, 16000, 64000], 3)
    err = 3.0 * n ** -0.45 + 0.1 + rng.normal(0, 0.01, n.size)
    grid = scaling.Profile(n, err)
    threshold = grid.sse.min() * 1.5
    low, high = grid.a_range(threshold)
    a = np.linspace(0, 3 * high, 3001)
    x = (n / n.min())[None, :] ** -scaling.B_GRID[:, None]                                  # (B, N)
    best = np.full(a.size, np.inf)
    for bi in range(x.shape[0]):
        pred = (a[:, None] / n.min() ** scaling.B_GRID[bi]) * x[bi][None, :]                 # (A, N)
        resid = err[None, None, :] - pred[:, None, :] - scaling.C_GRID[None, :, None]        # (A, C, N)
        best = np.minimum(best, (resid ** 2).sum(-1).min(1))
    inside = a[best <= threshold]
    step = a[1] - a[0]
    assert abs(inside.min() - low) <= step and abs(inside.max() - high) <= step
    narrow = grid.a[grid.sse <= threshold]  # the range of a's conditional optima: what the interval must not be
    assert narrow.min() - low > step or high - narrow.max() > step
