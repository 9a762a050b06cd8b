"""`ablate study`: grids of arms x seeds, tuning then final runs, pruning, resume after SIGKILL, several workers,
and exit 2 for bad experiment files and storages. Tiny models on synthetic data, one core."""
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablate import commands as cli
from ablate.engines.study import worker
from ablate.engines.training import trainer
from ablate.foundations.config import RunConfig
from conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = """
[run]
dataset = "synthetic"
val_size = 100
train_size = {train_size}
batch_size = 50
epochs = {epochs}
{lr}warmup = 0
augment = false
model_options = {{ depths = [1], dims = [16] }}
"""


def experiment(tmp_path: Path, study: str, rest: str = "", epochs: int = 1, train_size: int = 500,
               lr: bool = True) -> Path:
    """An experiment file with a tiny [run] (lr left out where [search] tunes it)."""
    path = tmp_path / "exp.toml"
    path.write_text(study + TINY_RUN.format(epochs=epochs, train_size=train_size, lr="lr = 1e-2\n" if lr else "") + rest)
    return path


@pytest.fixture(autouse=True)
def one_core():
    """Tiny models train much faster on one thread than on two contended ones."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    yield
    os.sched_setaffinity(0, cores)


def study(capsys, *args: str) -> tuple[int, dict | None, str]:
    rc = cli.main(["study", *args, "--json"])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else None), out.err


def trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).trials


def complete_per_cell(ts) -> Counter:
    return Counter(t.user_attrs["cell"] for t in ts if t.state == TrialState.COMPLETE)


GRID = """
[study]
name = "grid"
seeds = [0, 1]
[arms]
spatial = ["conv", "mlp"]
"""


def test_grid_study_runs_every_cell_once_and_resumes(tmp_path, capsys):
    file, url, out = experiment(tmp_path, GRID), f"sqlite:///{tmp_path}/s.db", tmp_path / "runs"
    rc, doc, err = study(capsys, str(file), "--storage", url, "--out", str(out))
    assert rc == 0, err
    assert doc["cells"] == {"total": 4, "done": 4, "running": 0, "pending": 0} and doc["duplicates"] == 0
    assert [a["arm"] for a in doc["arms"]] == ["spatial=conv", "spatial=mlp"]
    assert all(a["seeds_done"] == 2 and 0 <= a["mean"]["val_acc"] <= 1 for a in doc["arms"])
    ts = trials("grid", url)
    assert len(ts) == 4 and all(t.state == TrialState.COMPLETE for t in ts)
    assert {(t.user_attrs["arm"], t.user_attrs["seed"], t.user_attrs["phase"]) for t in ts} == {
        (f"spatial={s}", seed, "final") for s in ("conv", "mlp") for seed in (0, 1)}
    for t in ts:  # the storage alone holds each run's record
        record = t.user_attrs["record"]
        assert record["spatial"] == t.user_attrs["axes"]["spatial"] and record["seed"] == t.user_attrs["seed"]
        assert t.value == record["val_acc"] and record["status"] == "done" and len(record["history"]) == 1
    run_dirs = sorted(out.glob("grid/*/*/*/record.json"))
    assert len(run_dirs) == 4

    rc, again, err = study(capsys, str(file), "--storage", url, "--out", str(out))
    assert rc == 0, err
    assert len(trials("grid", url)) == 4 and sorted(out.glob("grid/*/*/*/record.json")) == run_dirs
    assert again["arms"] == doc["arms"]

    file.write_text(file.read_text().replace("epochs = 1", "epochs = 2"))  # same name, different experiment
    rc, _, err = study(capsys, str(file), "--storage", url, "--out", str(out))
    assert rc == 2 and "different experiment" in err and "run" in err


def test_tuning_then_final_runs_with_the_best_values(tmp_path, capsys):
    file = experiment(tmp_path, """
[study]
name = "tuned"
sampler = "random"
trials_per_arm = 2
seeds = [0, 1]
[arms]
spatial = ["conv", "pool"]
""", "[search]\nlr = { choices = [1e-2, 3e-3] }\nweight_decay = { low = 1e-4, high = 0.1, log = true }\n", lr=False)
    url = f"sqlite:///{tmp_path}/s.db"
    rc, doc, err = study(capsys, str(file), "--storage", url, "--out", str(tmp_path / "runs"))
    assert rc == 0, err
    assert doc["cells"]["done"] == doc["cells"]["total"] == 2 * (2 + 2)
    ts = trials("tuned", url)
    assert len(ts) == 8 and all(t.state == TrialState.COMPLETE for t in ts)
    for arm in ("spatial=conv", "spatial=pool"):
        tune = [t for t in ts if t.user_attrs["arm"] == arm and t.user_attrs["phase"] == "tune"]
        final = [t for t in ts if t.user_attrs["arm"] == arm and t.user_attrs["phase"] == "final"]
        assert len(tune) == 2 and {t.user_attrs["seed"] for t in tune} == {0}
        assert all(1e-4 <= t.params["weight_decay"] <= 0.1 and t.params["lr"] in (1e-2, 3e-3) for t in tune)
        best = max(tune, key=lambda t: (t.value, -t.number))
        assert sorted(t.user_attrs["seed"] for t in final) == [0, 1]
        for t in final:  # the final runs use exactly the winning values, and the runs really had them
            assert t.params == best.params and t.user_attrs["best_of"] == best.number
            assert t.user_attrs["record"]["config"]["weight_decay"] == best.params["weight_decay"]
        reused = next(t for t in final if t.user_attrs["seed"] == 0)  # the tuning seed: the winning run itself
        assert reused.user_attrs["record"]["run_dir"] == best.user_attrs["record"]["run_dir"]
        row = next(a for a in doc["arms"] if a["arm"] == arm)
        assert row["best_params"] == best.params and row["tune"]["complete"] == 2


def test_a_cell_reuses_or_continues_only_runs_of_its_own_precision(tmp_path):
    """The config key leaves the precision out (`auto` differs between machines), so the lookups check it: a bf16
    cell neither takes an fp32 run as its result nor tries to continue an fp32 checkpoint (which would exit 2)."""
    bf16 = RunConfig(dataset="synthetic", precision="bf16", out=str(tmp_path / "exp" / "cell-b"))
    fp32 = dataclasses.replace(bf16, precision="fp32")
    done_dir, running_dir = tmp_path / "exp" / "cell-a" / "run", tmp_path / "exp" / "cell-b" / "run"
    for run_dir, status, record in [(done_dir, "done", {"precision": "fp32"}), (running_dir, "running", {})]:
        run_dir.mkdir(parents=True)
        record = {"config_key": bf16.key(), "status": status, "device": "cpu", **record}  # {}: from before the option
        (run_dir / "record.json").write_text(json.dumps(record))
        (run_dir / "checkpoint.pt").write_bytes(b"")
    assert worker.finished_run(bf16) is None and worker.unfinished_run(bf16) is None
    assert worker.finished_run(fp32) == (done_dir, json.loads((done_dir / "record.json").read_text()), None)
    assert worker.unfinished_run(fp32) == running_dir


def test_a_study_takes_identical_finished_runs_of_the_studies_it_reuses(tmp_path, capsys):
    """[study].reuse: a cell whose config and precision equal a finished run of a listed study takes that run (its
    record, and the trial says where from); every other cell trains. A study not under --out is exit 2."""
    out, url = tmp_path / "runs", f"sqlite:///{tmp_path}/s.db"
    first = experiment(tmp_path, '[study]\nname = "first"\nseeds = [0]\n[arms]\nspatial = ["conv"]\n')
    rc, _, err = study(capsys, str(first), "--storage", url, "--out", str(out))
    assert rc == 0, err
    earlier = trials("first", url)[0].user_attrs["record"]

    second = experiment(tmp_path, '[study]\nname = "second"\nseeds = [0, 1]\nreuse = ["first"]\n'
                                  '[arms]\nspatial = ["conv", "pool"]\n')
    rc, doc, err = study(capsys, str(second), "--storage", url, "--out", str(out))
    assert rc == 0, err
    assert doc["cells"]["done"] == 4 and "reusing the finished run" in err
    ts = {(t.user_attrs["arm"], t.user_attrs["seed"]): t for t in trials("second", url)}
    taken = ts["spatial=conv", 0]
    assert taken.user_attrs["record"] == earlier and taken.value == earlier["val_acc"]
    assert taken.user_attrs["reused_run"] == earlier["run_dir"] and taken.user_attrs["reused_from"] == "first"
    for key in [("spatial=conv", 1), ("spatial=pool", 0), ("spatial=pool", 1)]:  # another seed or mixer: trained
        assert "reused_run" not in ts[key].user_attrs and "reused_from" not in ts[key].user_attrs
        assert Path(ts[key].user_attrs["record"]["run_dir"]).is_relative_to(out / "second")
    assert len(list(out.glob("second/*/*/*/record.json"))) == 3

    missing = experiment(tmp_path, '[study]\nname = "third"\nreuse = ["frist"]\n')
    rc, _, err = study(capsys, str(missing), "--storage", url, "--out", str(out))
    assert rc == 2 and "[study].reuse: no run folders of study 'frist' under --out" in err, err
    assert "third" not in optuna.get_all_study_names(url)  # refused before the study is created


def pruned_lr_grid(tmp_path, capsys, study_section: str, lrs: str) -> tuple[dict, dict]:
    """A grid study of 2-epoch runs over the lr choices `lrs`: its --json summary and its trials by cell."""
    file = experiment(tmp_path, study_section, f"[search]\nlr = {{ choices = {lrs} }}\n", epochs=2, lr=False)
    url = f"sqlite:///{tmp_path}/s.db"
    rc, doc, err = study(capsys, str(file), "--storage", url, "--out", str(tmp_path / "runs"))
    assert rc == 0, err
    return doc, {t.user_attrs["cell"]: t for t in trials(doc["study"], url)}


def test_pruner_prunes_a_tuning_trial(tmp_path, capsys):
    doc, ts = pruned_lr_grid(tmp_path, capsys, """
[study]
name = "pruned"
metric = "val_loss"
sampler = "grid"
pruner = "median"
pruner_options = { n_startup_trials = 1 }
""", "[1e-2, 1e-7]")
    good, bad, final = ts["base|tune|0"], ts["base|tune|1"], ts["base|final|seed=0"]
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [1, 2]
    # lr 1e-7 learns nothing: worse than the completed trial after epoch 1, so it stops there
    assert bad.state == TrialState.PRUNED and sorted(bad.intermediate_values) == [1]
    assert bad.user_attrs["record"]["status"] == "running" and len(bad.user_attrs["record"]["history"]) == 1
    assert final.state == TrialState.COMPLETE and final.params == {"lr": 1e-2}  # never pruned
    assert doc["arms"][0]["tune"] == {"complete": 1, "pruned": 1, "fail": 0}


def test_threshold_pruner_stops_a_tuning_run_at_chance(tmp_path, capsys):
    """The collapse check: a tuning run whose validation accuracy is still near chance is stopped, whatever the
    other trials did (in benchmarks' lr5 study, attention at lr 8e-3 fell to 0.1000 at epoch 2 and trained on)."""
    _, ts = pruned_lr_grid(tmp_path, capsys, """
[study]
name = "collapse"
sampler = "grid"
pruner = "threshold"
pruner_options = { lower = 0.15 }
""", "[1e-7, 1e-2]")
    stuck, learning = ts["base|tune|0"], ts["base|tune|1"]
    # lr 1e-7 is pruned first, with no trial to compare against: the bound alone decides
    assert stuck.state == TrialState.PRUNED and list(stuck.intermediate_values) == [1]
    assert stuck.intermediate_values[1] < 0.15
    assert learning.state == TrialState.COMPLETE and min(learning.intermediate_values.values()) >= 0.15
    assert ts["base|final|seed=0"].params == {"lr": 1e-2}


def test_multi_objective_reports_the_pareto_front(tmp_path, capsys):
    file = experiment(tmp_path, """
[study]
name = "pareto"
metric = ["val_acc", "macs"]
[arms]
spatial = ["conv", "mlp", "identity"]
""")
    url = f"sqlite:///{tmp_path}/s.db"
    rc, doc, err = study(capsys, str(file), "--storage", url, "--out", str(tmp_path / "runs"))
    assert rc == 0, err
    assert doc["direction"] == ["maximize", "minimize"]
    ts = trials("pareto", url)
    front = doc["pareto_front"]
    assert front and {f["number"] for f in front} <= {t.number for t in ts}

    def dominates(a, b):
        return a.values[0] >= b.values[0] and a.values[1] <= b.values[1] and a.values != b.values
    on_front = {f["number"] for f in front}
    for t in ts:  # the front is exactly the set of trials nothing else dominates
        assert (t.number in on_front) == (not any(dominates(o, t) for o in ts))


def running(name: str, url: str, epochs: int) -> list[optuna.trial.FrozenTrial]:
    """The study's RUNNING trials at least `epochs` evaluations in; none before the study exists."""
    try:
        ts = trials(name, url)
    except KeyError:
        return []
    return [t for t in ts if t.state == TrialState.RUNNING and len(t.intermediate_values) >= epochs]


def test_sigkilled_worker_loses_and_duplicates_nothing(tmp_path, capsys):
    file = experiment(tmp_path, '[study]\nname = "killed"\nseeds = [0, 1]\n', epochs=8, train_size=1000)
    url, out = f"sqlite:///{tmp_path}/s.db", tmp_path / "runs"
    args = [str(file), "--storage", url, "--out", str(out), "--heartbeat", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "ablate", "study", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

    try:
        victim = wait_for(lambda: next(iter(running("killed", url, epochs=2)), None), 120, "a trial two epochs in")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cell_dir = out / "killed" / "base" / f"final-seed{victim.user_attrs['seed']}"
    (run_dir,) = [p.parent for p in cell_dir.glob("*/checkpoint.pt")]

    rc, doc, err = study(capsys, *args)
    assert rc == 0, err
    assert doc["cells"] == {"total": 2, "done": 2, "running": 0, "pending": 0} and doc["duplicates"] == 0
    ts = trials("killed", url)
    assert complete_per_cell(ts) == {"base|final|seed=0": 1, "base|final|seed=1": 1}
    assert next(t for t in ts if t.number == victim.number).state == TrialState.FAIL  # failed by its heartbeat
    retry = next(t for t in ts if t.user_attrs["cell"] == victim.user_attrs["cell"] and t.state == TrialState.COMPLETE)
    record = retry.user_attrs["record"]
    assert record["run_dir"] == str(run_dir) and len(record["history"]) == 8  # continued the killed run's checkpoint
    assert [p.parent for p in cell_dir.glob("*/record.json")] == [run_dir]
    assert "resuming" in err


def test_sigterm_frees_the_claimed_cell_at_once(tmp_path):
    """A `kill`ed study fails its running trials as it exits, instead of leaving them to the heartbeat's grace."""
    file = experiment(tmp_path, '[study]\nname = "termed"\nseeds = [0, 1]\n', epochs=100, train_size=1000)
    url, out = f"sqlite:///{tmp_path}/s.db", tmp_path / "runs"
    args = [str(file), "--storage", url, "--out", str(out), "--workers", "2", "--heartbeat", "600"]
    proc = subprocess.Popen([sys.executable, "-m", "ablate", "study", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    try:
        wait_for(lambda: len(running("termed", url, epochs=1)) == 2, 120, "both workers an epoch into their cells")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # as `kill` of a shell job: the study and its spawned worker
        proc.wait(timeout=60)
    ts = trials("termed", url)
    assert [t.state for t in ts] == [TrialState.FAIL] * 2  # freed now, not after the 600 s heartbeat grace
    assert all(t.user_attrs["crash"].startswith("SystemExit") for t in ts)


def test_a_worker_whose_trial_was_failed_under_it_stops_and_the_retry_finishes(tmp_path, capsys):
    """As when its heartbeats could not reach the storage for the grace period: another worker failed its trial.
    It must stop (the retry continues the same checkpoint), not train on beside the retry, even where no
    intermediate value (whose write would be refused) tells it: two objectives report none."""
    file = experiment(tmp_path, '[study]\nname = "lost"\nseeds = [0]\nmetric = ["val_acc", "params"]\n', epochs=40)
    url, out = f"sqlite:///{tmp_path}/s.db", tmp_path / "runs"

    def fail_it_mid_run():
        def two_epochs_in():
            records = list(out.glob("lost/*/*/*/record.json"))
            return records and len(json.loads(records[0].read_text() or "{}").get("history", [])) >= 2
        wait_for(two_epochs_in, 120, "the trial two epochs in")
        storage = optuna.storages.RDBStorage(url)
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name("lost"), 0), TrialState.FAIL)
    thread = threading.Thread(target=fail_it_mid_run)
    thread.start()
    rc, doc, err = study(capsys, str(file), "--storage", url, "--out", str(out), "--heartbeat", "1")
    thread.join()
    assert rc == 0 and doc["cells"]["done"] == 1 and doc["duplicates"] == 0, err
    assert "was failed by another worker" in err and "resuming" in err  # stopped, and the retry continued it
    failed, retry = trials("lost", url)
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE and len(retry.user_attrs["record"]["history"]) == 40
    assert len(list(out.glob("lost/*/*/*/record.json"))) == 1  # the retry continued the one run folder


def test_a_diverged_cell_is_a_result_and_one_that_cannot_save_is_freed(tmp_path, capsys, monkeypatch):
    file = experiment(tmp_path, '[study]\nname = "faults"\nseeds = [0]\n[arms]\nlr = [1e12]\n', lr=False)
    url, out = f"sqlite:///{tmp_path}/s.db", str(tmp_path / "runs")
    rc, doc, err = study(capsys, str(file), "--storage", url, "--out", out)
    assert rc == 0, err
    assert doc["cells"]["done"] == 1  # diverging is what this lr does: done, not retried
    (t,) = trials("faults", url)
    assert t.state == TrialState.FAIL and t.user_attrs["error"].startswith("diverged")

    file = experiment(tmp_path, '[study]\nname = "full-disk"\nseeds = [0]\n')

    def no_space(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(trainer, "save_torch", no_space)
    rc, _, err = study(capsys, str(file), "--storage", url, "--out", out)
    assert rc == 1 and "No space left on device" in err
    (t,) = trials("full-disk", url)
    assert t.state == TrialState.FAIL and "error" not in t.user_attrs and t.user_attrs["crash"].startswith("RunFailed")
    monkeypatch.undo()  # space freed: the rerun runs the cell
    rc, doc, err = study(capsys, str(file), "--storage", url, "--out", out)
    assert rc == 0 and doc["cells"]["done"] == 1, err


def test_workers_share_a_journal_file(tmp_path, capfd):
    file = experiment(tmp_path, '[study]\nname = "pair"\nseeds = [0, 1]\n[arms]\nspatial = ["conv", "pool"]\n')
    journal, out = tmp_path / "study.log", tmp_path / "runs"
    rc = cli.main(["study", str(file), "--storage", str(journal), "--workers", "2", "--out", str(out), "--json"])
    stdout, stderr = capfd.readouterr()  # fd-level: the spawned worker's stderr too
    assert rc == 0, stderr
    doc = json.loads(stdout)
    assert doc["cells"]["done"] == 4 and doc["duplicates"] == 0
    ts = trials("pair", optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))))
    assert complete_per_cell(ts) == {f"spatial={s}|final|seed={i}": 1 for s in ("conv", "pool") for i in (0, 1)}
    assert len(list(out.glob("pair/*/*/*/record.json"))) == 4  # and every cell trained once
    started = [line.split(": ")[2].split()[0] for line in stderr.splitlines() if ": trial " in line]
    assert sorted(started) == sorted(complete_per_cell(ts))  # no worker started a cell another one ran


@pytest.mark.parametrize("text, message", [
    ('[study]\nsedes = [0]\n', "unknown [study] key 'sedes'; valid: name, metric"),
    ('[study]\nmetric = "accuracy"\n', "[study].metric = 'accuracy' is not one of: val_acc"),
    ('[study]\nseeds = [0, "1"]\n', "[study].seeds must be a whole number, got '1'"),
    ('[study]\npruner = "median"\n', "[study].pruner = \"median\" needs a [search] section"),
    ('[study]\npruner = "threshold"\ntrials_per_arm = 2\n[search]\nlr = { low = 1e-4, high = 1e-2 }\n',
     "[study].pruner_options: Either lower or upper must be specified"),
    ('[run]\nepochs = "two"\n', "[run].epochs must be a whole number, got 'two'"),
    ('[run]\nlearning_rate = 0.1\n', "unknown run option 'learning_rate'; valid: spatial, channel"),
    ('[run]\nseed = 1\n', "unknown run option 'seed' (set by [study].seeds)"),
    ('[run]\nmodel_options = { depth = 3 }\n', "unknown backbone option 'depth'"),
    ('[arms]\nspatial = ["attention", "transformer"]\n', "[arms].spatial = 'transformer' is not one of: attention"),
    ('[arms]\nspatial = "mlp"\n[run]\nspatial = "mlp"\n', "spatial is set both in [run] and by [arms].spatial"),
    ('[search]\nlr = { low = 1e-4, hi = 1e-2 }\n', "unknown [search].lr key 'hi'; valid: low, high, log, step"),
    ('[study]\nsampler = "grid"\n[search]\nlr = { low = 1e-4, high = 1e-2 }\n', "[search].lr: sampler \"grid\" needs"),
    ('[study]\ntrials_per_arm = 2\n', "[study].trials_per_arm needs a [search] section"),
    ('[study]\nname = "a"\nreuse = ["b", "a"]\n', "[study].reuse must list other studies, each once"),
    ('[study]\nreuse = [1]\n', "[study].reuse must be "),
    ('[arms]\ndata = [{ train_size = 100 }, { epochs = 2 }]\n', "[arms].data: every table of a linked axis must set"),
    ('[arms]\ndata = [1, 2]\n', "[arms].data: unknown run option 'data'"),
    ('[arms]\nepochs = [1, 2]\ndata = [{ epochs = 3 }]\n', "epochs is set both in [arms].epochs and by [arms].data"),
    ('[extra]\nx = 1\n', "unknown section 'extra'; valid: study, run, arms, search"),
    ('[study\n', "is not valid TOML"),
])
def test_bad_experiment_file_exits_2_naming_the_key(tmp_path, capsys, text, message):
    file = tmp_path / "bad.toml"
    file.write_text(text)
    rc, _, err = study(capsys, str(file), "--storage", f"sqlite:///{tmp_path}/s.db")
    assert rc == 2 and message in err, err
    assert "Traceback" not in err


def test_linked_axis_sets_several_options_per_arm(tmp_path):
    from ablate.engines.study import experiment as experiment_file
    file = tmp_path / "scaling.toml"
    file.write_text('[run]\ndataset = "synthetic"\nval_size = 100\nbatch_size = 100\n[arms]\nspatial = ["conv", "mlp"]\n'
                    'data = [{ train_size = 200, epochs = 4 }, { train_size = 400, epochs = 2 }]\n')
    exp = experiment_file.load(file)
    assert [a.axes for a in exp.arms] == [{"spatial": s, "train_size": n, "epochs": e} for s in ("conv", "mlp")
                                          for n, e in ((200, 4), (400, 2))]
    assert exp.arms[0].label == "spatial=conv,train_size=200,epochs=4" and exp.name == "scaling"
    assert exp.fields == {"spatial": ["conv", "mlp"], "train_size": [200, 400], "epochs": [4, 2]}
    assert exp.linked == {"data": ["train_size", "epochs"]}  # for the report: the data budget, one factor


def test_the_study_tells_the_report_which_options_are_linked(tmp_path):
    from ablate.engines.study import experiment as experiment_file
    from ablate.engines.study.board import open_study
    from ablate.foundations.storage import open_storage
    file = tmp_path / "exp.toml"
    file.write_text('[run]\ndataset = "synthetic"\nval_size = 100\n[arms]\nspatial = ["conv", "mlp"]\nstructure = [\n'
                    '  { channel = "mlp", model_options = {} },\n  { channel = "identity", model_options = {} },\n'
                    '  { channel = "mlp", model_options = { norm = "none" } },\n]\n')
    exp = experiment_file.load(file)
    board = open_study(exp, open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert board.study.user_attrs["linked"] == {"structure": ["channel", "model_options"]}
    assert len(exp.arms) == 6


def test_missing_experiment_file_exits_2(tmp_path, capsys):
    rc, _, err = study(capsys, str(tmp_path / "nope.toml"))
    assert rc == 2 and "nope.toml does not exist" in err


@pytest.mark.parametrize("url, message", [
    ("nosuchdb://host/db", "cannot open storage nosuchdb://host/db"),
    ("ablate.db", "is not a storage; valid: sqlite:///FILE"),
    ("postgresql://nobody:secret@127.0.0.1:1/db", "cannot open storage postgresql://nobody:***@127.0.0.1:1/db: "
                                                  "connection failed"),
    ("journal:/no/such/folder/study.log", "folder /no/such/folder does not exist"),
    ("sqlite://", "an in-memory SQLite database is gone when the process exits"),
    ("sqlite:///:memory:", "an in-memory SQLite database is gone when the process exits"),
])
def test_bad_storage_exits_2(tmp_path, capsys, url, message):
    file = experiment(tmp_path, '[study]\nname = "x"\n')
    rc, _, err = study(capsys, str(file), "--storage", url, "--out", str(tmp_path / "runs"))
    assert rc == 2 and message in err, err
    assert "secret" not in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_racing_workers_never_run_a_cell_twice(tmp_path, monkeypatch, kind):
    """Six workers start at once on twelve cells (training replaced by a short sleep): each cell runs once."""
    from ablate.engines.study import experiment as experiment_file
    from ablate.engines.study import worker as study_module
    from ablate.engines.study.board import load_board, open_study
    from ablate.foundations.storage import open_storage
    exp = experiment_file.load(experiment(tmp_path, '[study]\nname = "race"\nseeds = [0, 1, 2]\n'
                                                    '[arms]\nspatial = ["conv", "pool", "mlp", "identity"]\n'))
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:{tmp_path}/s.log"
    ran, lock = [], threading.Lock()

    def fake_run(cfg, resume=False, quiet=False, on_eval=None):
        with lock:
            ran.append((cfg.spatial, cfg.seed))
        time.sleep(0.05)
        return {"val_acc": 0.5, "spatial": cfg.spatial, "seed": cfg.seed}
    monkeypatch.setattr(study_module.runs, "run", fake_run)
    open_study(exp, open_storage(url, heartbeat=1))
    barrier = threading.Barrier(6)

    def worker(i):
        board = load_board(exp, open_storage(url, heartbeat=1))
        barrier.wait()
        study_module.work(exp, board, tmp_path / "runs", 1, f"worker {i}")
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert Counter(ran) == {(s, seed): 1 for s in ("conv", "pool", "mlp", "identity") for seed in (0, 1, 2)}
    ts = trials("race", open_storage(url, heartbeat=1))
    assert complete_per_cell(ts) == {f"spatial={s}|final|seed={seed}": 1 for s, seed in ran}
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("lost_claim") for t in ts)


def test_journal_heartbeat_fails_only_stale_trials(tmp_path):
    """Journal files have no optuna heartbeat: ablate's own beat attribute tells a dead worker's trial."""
    from ablate.engines.study import worker as study_module
    from ablate.engines.study.board import Board
    from ablate.foundations.storage import open_storage
    storage = open_storage(f"journal:{tmp_path}/s.log", heartbeat=1)
    study = optuna.create_study(study_name="j", storage=storage)
    board = Board(storage, study, storage.get_study_id_from_name("j"))
    dead, alive = (storage.create_new_trial(board.study_id) for _ in range(2))
    storage.set_trial_system_attr(dead, study_module.HEARTBEAT_ATTR, time.time() - 10)
    with study_module.Heartbeat(storage, alive, interval=1):
        study_module.fail_stale(board, grace=2)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_experiment_files_parse_and_name_their_command(path):
    from ablate.engines.study import experiment as experiment_file
    exp = experiment_file.load(path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"# Command: python -m ablate study experiments/{path.name}")
    assert lines[1].startswith("# Result: ")
    assert len(exp.seeds) >= 3 and len(exp.arms) >= 3


def test_benchmark_experiment_files_parse_name_their_command_and_keep_apart():
    """They share one storage (benchmarks/results/time_to_accuracy.db): a reused study name would mix two runs' cells."""
    from ablate.engines.study import experiment as experiment_file
    paths = sorted((ROOT / "benchmarks").glob("time_to_accuracy*.toml"))
    names, reused = [], []
    for path in paths:
        exp = experiment_file.load(path)
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        command = "python benchmarks/time_to_accuracy.py" + (
            "" if path.name == "time_to_accuracy.toml" else f" --experiment benchmarks/{path.name}")
        assert header[0].startswith(f"# Command: {command}") and any(h.startswith("# Result") for h in header)
        assert exp.seeds == [0, 1, 2] and set(exp.fields["spatial"]) == {"attention", "mlp", "conv"}
        names.append(exp.name)
        reused += exp.reuse
    assert len(paths) >= 4 and len(set(names)) == len(names)
    assert set(reused) <= set(names)  # a study takes runs only from benchmark studies whose files are here


def test_time_to_accuracy_table_describes_final_runs_with_each_arms_lr():
    """A study with a [search] holds tuning runs too: the benchmark's table takes the final runs only, and each row
    says the lr its runs trained with."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("time_to_accuracy", ROOT / "benchmarks" / "time_to_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    grid = optuna.distributions.CategoricalDistribution([1e-3, 2e-3])

    def trial(spatial: str, phase: str, seed: int, lr: float, accs: list[float],
              grid: optuna.distributions.BaseDistribution = grid) -> optuna.trial.FrozenTrial:
        history = [{"epoch": i + 1, "time_s": 60.0, "test_acc": a} for i, a in enumerate(accs)]
        record = {"spatial": spatial, "history": history, "test_acc": accs[-1], "val_acc": accs[-1] - 0.01,
                  "train_img_s": 500.0, "macs": 1e7, "matmul_flops": 1e11, "config": {"lr": lr}}
        return optuna.trial.create_trial(value=accs[-1], params={"lr": lr}, distributions={"lr": grid},
                                         user_attrs={"phase": phase, "seed": seed, "record": record})

    trials = [trial("mlp", "tune", 0, 2e-3, [0.80, 0.85]),  # the losing candidate: not in the final runs' table
              trial("mlp", "tune", 0, 1e-3, [0.91, 0.93]),  # the winner, whose seed-0 final reuses it
              *(trial("mlp", "final", s, 1e-3, [0.91, 0.93]) for s in (0, 1, 2)),
              trial("conv", "final", 0, 2e-3, [0.95, 0.96])]
    records = bench.final_records(trials)
    assert {k: len(v) for k, v in records.items()} == {"mlp": 3, "conv": 1}
    rows = {line.split(" | ")[0].strip("| "): line for line in bench.table(records).splitlines()[2:]}
    assert rows["mlp"].startswith("| mlp | 0.001 | 3 | 1.0 ep, 1.0 min | 2.0 ep, 2.0 min | 2.0 ep, 2.0 min |")
    assert "0.9300 ± 0.0000" in rows["mlp"] and "| conv | 0.002 | 1 |" in rows["conv"]
    assert "0.9600 (one seed: no sd)" in rows["conv"]  # not a made-up spread
    assert "30.0% (cold peak)" in rows["mlp"] and "(cold peak): the runs' processes timed" in bench.table(records)
    for r in records["conv"]:  # a record whose peak was measured warm: its MFU is not flagged
        r["matmul_flops_warm"] = True
    assert "(cold peak)" not in bench.table({"conv": records["conv"]})
    tuning = bench.tuning_table(trials, records).splitlines()[2:]
    assert tuning == ["| mlp | 0.001 | 0.9200 | 0.9300 | yes (the lowest candidate: not bracketed) |",
                      "| mlp | 0.002 | 0.8400 | 0.8500 |  |"]
    assert bench.tuning_table([t for t in trials if t.user_attrs["phase"] == "final"], records) == ""
    # a continuous range: the lowest lr tried is not an end of the range searched, so it is not flagged as one
    span = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    inside = [trial("mlp", "tune", 0, lr, [0.80, acc], span) for lr, acc in ((1e-3, 0.93), (2e-3, 0.85))]
    assert "| mlp | 0.001 | 0.9200 | 0.9300 | yes |" in bench.tuning_table(inside, records).splitlines()
    # runs taken from another study ([study].reuse) are named; one reused within the study is not
    taken, own = trials[1], trials[2]
    taken.user_attrs.update(reused_run="runs/earlier/spatial=mlp/tune-1/20261204-mlp-s0", reused_from="earlier")
    own.user_attrs.update(reused_run="runs/now/spatial=mlp/tune-1/20261205-mlp-s0")
    for t in trials:
        t.user_attrs["record"].update(seed=t.user_attrs["seed"])
    note = bench.reused_note(trials)
    assert note.strip() == ("Taken from study `earlier` (identical config and precision, not trained again; wall times "
                            "and matmul peaks are those of the earlier run): mlp lr 0.001 seed 0.")
    assert bench.reused_note(trials[2:]) == ""
    # a final run whose epoch took over 1.5x its median ran beside other work: named, its times upper bounds
    assert bench.slowed_note(records) == ""
    records["mlp"][1]["history"] = [{"epoch": e, "time_s": 200.0 if e == 3 else 60.0} for e in range(1, 6)]
    assert bench.slowed_note(records).strip() == ("Slowed by other work on the machine (epochs over 1.5x their run's "
                                                  "median), so their wall times are upper bounds: mlp seed 1: epoch 3 "
                                                  "(3.3x) of a median 60 s.")


def test_shipped_experiments_meet_the_minimum_sizes():
    """The pre-registered program (issue 16): the sizes and designs its experiment files promise."""
    from ablate.engines.study import experiment as experiment_file
    load = {p.stem: experiment_file.load(p) for p in (ROOT / "experiments").glob("*.toml")}
    core = load["structure_x_mixer"]
    assert len(core.seeds) >= 5 and core.run["match"] == "params" and core.run["recipe"] == "long"
    assert {a.axes["model_options"]["stem"] for a in core.arms} == {"conv", "patch"}
    assert set(core.fields["spatial"]) == {"identity", "random", "pool", "conv", "mlp", "attention"}
    scaling = load["data_scaling"]
    sizes = scaling.fields["train_size"]
    assert len(sizes) >= 5 and min(sizes) <= 1000 and max(sizes) == 60000 - 5000  # all beside the validation split
    assert scaling.run["steps"] > 0  # the same steps at every size
    assert set(scaling.fields["spatial"]) == {"attention", "mlp", "conv"}
    assert load["shuffle"].fields["shuffle"] == ["none", "patch", "global"] and len(load["shuffle"].arms) == 12
    assert "train_size" not in load["shuffle"].run  # the full training set
    ablation = load["structure_ablation"]
    assert set(ablation.fields["spatial"]) == {"attention", "identity"} and len(ablation.arms) == 8
    for exp in (core, scaling, load["shuffle"], ablation):  # every arm tuned on validation, the same budget
        assert exp.search and exp.metrics == ["val_acc"] and exp.trials_per_arm >= 2

def test_storage_retries_when_another_worker_is_creating_the_tables(tmp_path, monkeypatch):
    """Workers that open a new PostgreSQL database together race to create optuna's tables (seen in
    test_postgres as 'duplicate key value violates unique constraint'); the loser retries and finds them."""
    import sqlalchemy.exc
    from ablate.foundations.storage import open_storage
    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kw):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))
        return real(url, **kw)
    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=1)
    assert len(calls) == 2 and storage.get_all_studies() == []


def test_tuning_follows_the_validation_split_not_the_test_set(tmp_path, capsys, monkeypatch):
    """Validation and test disagree on purpose about the best learning rate: the finals take validation's."""
    from ablate.engines.study import worker
    file = experiment(tmp_path, '[study]\nname = "disagree"\nsampler = "grid"\nseeds = [0, 1]\n',
                      "[search]\nlr = { choices = [1e-2, 3e-3] }\n", lr=False)

    def fake_run(cfg, resume=False, quiet=False, on_eval=None):
        good_on_val = cfg.lr == 1e-2
        return {"val_acc": 0.9 if good_on_val else 0.8, "test_acc": 0.7 if good_on_val else 0.95,
                "spatial": cfg.spatial, "seed": cfg.seed, "lr": cfg.lr}
    monkeypatch.setattr(worker.runs, "run", fake_run)
    rc, doc, err = study(capsys, str(file), "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "r"))
    assert rc == 0, err
    assert doc["arms"][0]["best_params"] == {"lr": 1e-2}
    finals = [t for t in trials("disagree", f"sqlite:///{tmp_path}/s.db") if t.user_attrs["phase"] == "final"]
    assert len(finals) == 2 and all(t.user_attrs["record"]["lr"] == 1e-2 for t in finals)


@pytest.mark.parametrize("metric", ["test_acc", "test_loss"])
def test_a_test_set_objective_is_refused(tmp_path, capsys, metric):
    file = experiment(tmp_path, f'[study]\nname = "peek"\nmetric = "{metric}"\n')
    rc, _, err = study(capsys, str(file), "--storage", f"sqlite:///{tmp_path}/s.db")
    assert rc == 2 and "would choose on the test set" in err and metric.replace("test", "val") in err
