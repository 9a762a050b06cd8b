"""Time to accuracy of the long recipe: for attention, token-MLP and conv on full Fashion-MNIST, the epochs and wall
time to reach 0.90 and 0.92 test accuracy (mean of 3 seeds), the accuracy after 20 epochs, and training MFU, with
the machine's measured matmul peak beside every time (absolute times compare only on one machine).

    python benchmarks/time_to_accuracy.py --workers 2 --out benchmarks/results/time_to_accuracy.md
    python benchmarks/time_to_accuracy.py --experiment benchmarks/time_to_accuracy_tiny_hier.toml --workers 2 \
        --out benchmarks/results/time_to_accuracy_tiny_hier.md

The runs are the study in the experiment file (resumable from its storage); this script runs what is missing, then
reads the records: every run's history has the test accuracy and the wall time of each epoch, and its record the
matmul peak its process measured (in the precision it trained in). A study with a [search] tunes each arm's lr on
seed 0's validation accuracy first; the file then lists those tuning runs, and its table describes the final runs.
"""
import argparse
import statistics
import sys
import tomllib
from pathlib import Path

import optuna

from ablate.commands import main as ablate
from ablate.engines.report.analysis import is_two_value_grid, range_edges
from ablate.foundations.io import atomic_write
from ablate.foundations.timing import mfu

HERE = Path(__file__).parent
THRESHOLDS = (0.90, 0.92, 0.93)


def reached(history: list[dict], threshold: float) -> tuple[float, float] | None:
    """(epochs, wall seconds incl. evaluation) when test accuracy first reaches `threshold`; None if never."""
    seconds = 0.0
    for entry in history:
        seconds += entry["time_s"]
        if entry["test_acc"] >= threshold:
            return entry["epoch"], seconds
    return None


def mean_reach(records: list[dict], threshold: float) -> str:
    hits = [reached(r["history"], threshold) for r in records]
    done = [h for h in hits if h]
    if len(done) < len(hits):
        return f"not reached by {len(hits) - len(done)} of {len(hits)} seeds"
    epochs, seconds = zip(*done)
    return f"{statistics.fmean(epochs):.1f} ep, {statistics.fmean(seconds) / 60:.1f} min"


# Records written before the peak was measured warm (no `matmul_flops_warm`) hold a peak timed cold, up to 2x low,
# so their MFU is up to 2x high. The machine they ran on is gone: the table says so instead of rewriting them.
COLD = " (cold peak)"
COLD_NOTE = ("\n\n(cold peak): the runs' processes timed their matmul peak cold (before ablate measured it warm, "
             "issue 33), which reads up to 2x low, so that MFU reads up to 2x high; the peak of the machine they ran "
             "on cannot be measured again, so it is not corrected.")


def table(records_by_mixer: dict[str, list[dict]]) -> str:
    lines = ["| spatial | lr | seeds | " + " | ".join(f"to {t:.2f} (epochs, wall)" for t in THRESHOLDS)
             + " | final test acc (mean ± sd) | train img/s | MFU | matmul peak |",
             "|---|---:|---:|" + "---|" * len(THRESHOLDS) + "---:|---:|---:|---:|"]
    for spatial, records in records_by_mixer.items():
        final = [r["test_acc"] for r in records]
        rate = statistics.fmean(r["train_img_s"] for r in records)
        peak = statistics.fmean(r["matmul_flops"] for r in records)
        utilisation = statistics.fmean(mfu(r["macs"], r["train_img_s"], r["matmul_flops"]) for r in records)
        cold = sum(not r.get("matmul_flops_warm") for r in records)
        spread = f"± {statistics.stdev(final):.4f}" if len(final) > 1 else "(one seed: no sd)"
        lrs = ", ".join(f"{lr:g}" for lr in sorted({r["config"]["lr"] for r in records}))
        lines.append(f"| {spatial} | {lrs} | {len(records)} | " + " | ".join(mean_reach(records, t) for t in THRESHOLDS)
                     + f" | {statistics.fmean(final):.4f} {spread} | {rate:,.0f} | "
                     f"{utilisation:.1%}{COLD * bool(cold)} | "
                     f"{peak / 1e9:.0f} GFLOP/s{COLD * bool(cold)} |")
    cold = any(not r.get("matmul_flops_warm") for records in records_by_mixer.values() for r in records)
    return "\n".join(lines) + (COLD_NOTE if cold else "")


SLOWED = 1.5  # an epoch over this multiple of its run's median epoch ran beside other work


def slowed_note(records_by_mixer: dict[str, list[dict]]) -> str:
    """The final runs some of whose epochs took over SLOWED x the run's median epoch: something else shared the cores
    then (a test run, a third process), so those runs' wall times to each accuracy are upper bounds."""
    slowed = []
    for spatial, records in sorted(records_by_mixer.items()):
        for r in sorted(records, key=lambda r: r["seed"]):
            median = statistics.median(e["time_s"] for e in r["history"])
            slow = [f"{e['epoch']} ({e['time_s'] / median:.1f}x)" for e in r["history"]
                    if e["time_s"] > SLOWED * median]
            if slow:
                slowed.append(f"{spatial} seed {r['seed']}: epoch {', '.join(slow)} of a median {median:.0f} s")
    return ("\n\nSlowed by other work on the machine (epochs over {:g}x their run's median), so their wall times are "
            "upper bounds: {}.".format(SLOWED, "; ".join(slowed)) if slowed else "")


def final_records(trials: list[optuna.trial.FrozenTrial]) -> dict[str, list[dict]]:
    """The run records of the final runs by spatial mixer: a study with a [search] also holds tuning runs (on seed 0,
    one per candidate lr), which describe the candidates, not the recipe's time to accuracy."""
    records: dict[str, list[dict]] = {}
    for t in trials:
        if t.user_attrs.get("phase") == "final":
            record = t.user_attrs["record"]
            records.setdefault(record["spatial"], []).append(record)
    return records


def tuning_table(trials: list[optuna.trial.FrozenTrial], records: dict[str, list[dict]]) -> str:
    """The tuning runs behind each arm's lr (seed 0 at every candidate): validation accuracy chose, the test accuracy
    is reported, not used. A chosen lr at an end of the candidates is flagged: the grid does not bracket that arm's
    optimum, which may lie beyond it."""
    tried: dict[str, dict[float, optuna.trial.FrozenTrial]] = {}
    for t in trials:
        if t.user_attrs.get("phase") == "tune":
            tried.setdefault(t.user_attrs["record"]["spatial"], {})[t.params["lr"]] = t
    if not tried:
        return ""
    lines = ["| spatial | lr | val acc | test acc (not used) | chosen |", "|---|---:|---:|---:|---|"]
    for spatial, by_lr in sorted(tried.items()):
        chosen = {r["config"]["lr"] for r in records.get(spatial, [])}
        for lr, t in sorted(by_lr.items()):
            r = t.user_attrs["record"]
            mark = "yes" + END_OF_RANGE.get(lr_edge(t), "") if lr in chosen else ""
            lines.append(f"| {spatial} | {lr:g} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | {mark} |")
    return "\n".join(lines)


END_OF_RANGE = {"low": " (the lowest candidate: not bracketed)", "high": " (the highest candidate: not bracketed)"}


def lr_edge(trial: optuna.trial.FrozenTrial) -> str | None:
    """"low"/"high" where the trial's lr sits on an end of its search space, as `ablate report` judges it
    (range_edges). A grid of two values has no inside, so its choice is always an end (range_edges leaves that case to
    the report's sentence about it)."""
    dist = trial.distributions["lr"]
    if is_two_value_grid(dist):
        return "low" if trial.params["lr"] == min(dist.choices) else "high"
    return range_edges(trial).get("lr")


def setup(record: dict, workers: int) -> str:
    """What the runs were, from their records (the resolved config): model, recipe, precision, data, workers."""
    c, precision = record["config"], record.get("precision", "fp32")  # records before --precision: fp32 on CPU
    augment = "crop + flip" if c["augment"] else "no augmentation"
    return (f"Preset `{c['preset']}` ({record['params']:,} parameters with `{c['spatial']}`), "
            f"channel `{c['channel']}`, "
            f"recipe `{c['recipe']}` ({c['epochs']} epochs, EMA {c['ema']}, {augment}, AdamW at the lr of each row, "
            f"wd {c['weight_decay']:g}, batch {c['batch_size']}), {precision}, "
            f"{record['train_size']:,} training images, test accuracy of the "
            f"{'EMA ' if c['ema'] else ''}weights on the {record['test_size']:,} test images after every epoch. "
            f"{workers} study workers shared the 2 cores ({record['threads']} thread(s) each), so the wall times are "
            f"those of a run beside another; each run's process measured the matmul peak ({precision}, its "
            f"threads) that its MFU (6 x MACs x train img/s / peak) divides by. Wall time includes the evaluations.")


def reused_note(trials: list[optuna.trial.FrozenTrial]) -> str:
    """Which runs the study took from the studies in its [study].reuse rather than trained: their accuracies are what
    a new run would give (same config and precision; CPU runs repeat to the last digit), their wall times and matmul
    peaks those of the process that ran them."""
    taken: dict[str, set[str]] = {}
    for t in trials:
        if "reused_from" in t.user_attrs:
            r = t.user_attrs["record"]
            taken.setdefault(t.user_attrs["reused_from"], set()).add(f"{r['spatial']} lr {r['config']['lr']:g} "
                                                                     f"seed {r['seed']}")
    return "".join(f"\n\nTaken from study `{study}` (identical config and precision, not trained again; wall times and "
                   f"matmul peaks are those of the earlier run): {', '.join(sorted(runs))}."
                   for study, runs in sorted(taken.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=HERE / "time_to_accuracy.toml")
    parser.add_argument("--storage", default=f"sqlite:///{HERE / 'results' / 'time_to_accuracy.db'}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="runs", help="run folders (checkpoints) go here")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    code = ablate(["study", str(args.experiment), "--storage", args.storage, "--workers", str(args.workers),
                   "--out", args.runs])
    if code:
        raise SystemExit(code)
    name = tomllib.loads(args.experiment.read_text())["study"]["name"]
    study = optuna.load_study(study_name=name, storage=args.storage)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    records = final_records(trials)
    if not records:
        raise SystemExit(f"study {name!r} has no finished run to describe (see `ablate report` for its failures)")
    command = "python " + " ".join(sys.argv)
    first = next(iter(records.values()))[0]
    tuning = tuning_table(trials, records)
    chosen = ("\n\nEach arm's lr was chosen on seed 0's validation accuracy by the study's tuning runs (the final "
              "seed-0 run is that tuning run):\n\n" + tuning if tuning else "")
    text = (f"# Time to accuracy on Fashion-MNIST: {name}\n\nCommand: `{command}`\n\n{setup(first, args.workers)}"
            f"{reused_note(trials)}{chosen}\n\n" + table(dict(sorted(records.items()))) + slowed_note(records) + "\n")
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
