"""Fault tolerance of a run: SIGKILL and resume, divergence, unwritable output, a disk that fills."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ablate.engines.training import runs, trainer
from ablate.foundations.config import RunConfig
from ablate.foundations.errors import RunFailed
from ablate.foundations.io import UMASK, write_json
from conftest import ROOT, files, interrupted_run, run_cli, wait_for_first_epoch

ARGS = ["--dataset", "synthetic", "--epochs", "3", "--batch-size", "50", "--train-size", "500", "--seed", "7"]


LONG = ["--recipe", "long", "--augment", "--random-erasing", "0.25", "--mixup", "0.2", "--cutmix", "1.0",
        "--model-opt", "drop_path=0.1"]  # EMA, crop/flip, erasing, Mixup/CutMix, drop path: every random state


@pytest.mark.parametrize("recipe", [[], LONG], ids=["short", "long"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, recipe):
    args = [*ARGS, *recipe]
    reference = run_cli(*args, "--out", str(tmp_path / "ref"), "--json")
    assert reference.returncode == 0, reference.stderr
    expected = json.loads(reference.stdout)

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ablate", *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = wait_for_first_epoch(out)  # then kill at once
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = json.loads(record.read_text())
    assert killed["status"] == "running" and 1 <= len(killed["history"]) < 3

    resumed = run_cli(*args, "--out", str(out), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads(resumed.stdout)
    assert got["run_id"] == killed["run_id"]
    assert [h["test_acc"] for h in got["history"]] == [h["test_acc"] for h in expected["history"]]
    assert got["test_acc"] == expected["test_acc"] and got["test_loss"] == expected["test_loss"]


def test_divergence_exits_1_with_where_it_happened(tmp_path):
    out = run_cli("--dataset", "synthetic", "--epochs", "1", "--lr", "1e12", "--warmup", "0",
                  "--out", str(tmp_path))
    assert out.returncode == 1, out.stderr
    assert "diverged: loss is" in out.stderr and "epoch 1, step" in out.stderr and "last finite loss" in out.stderr
    record = json.loads(next(tmp_path.glob("*/record.json")).read_text())
    assert record["status"] == "failed" and "diverged" in record["error"]


def test_unwritable_output_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run_cli("--dataset", "synthetic", "--epochs", "1", "--out", str(blocker / "runs"))
    assert out.returncode == 2
    assert f"cannot write to output folder {blocker / 'runs'}" in out.stderr


def test_full_disk_keeps_the_previous_epoch(tmp_path, monkeypatch):
    calls = []

    def save_until_full(path, obj):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, obj)

    real_save = trainer.save_torch
    monkeypatch.setattr(trainer, "save_torch", save_until_full)
    cfg = RunConfig(dataset="synthetic", train_size=300, epochs=3, batch_size=100, out=str(tmp_path))
    with pytest.raises(RunFailed, match="cannot save epoch 2 .*No space left on device.*--resume"):
        runs.run(cfg, quiet=True)
    run_dir = next(tmp_path.glob("*/record.json")).parent
    assert json.loads((run_dir / "record.json").read_text())["status"] == "failed"
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert len(checkpoint["history"]) == 1  # epoch 1 survives intact, ready for --resume


STUDY = """
[study]
name = "twice-killed"
seeds = [0, 1]
[run]
dataset = "synthetic"
val_size = 100
train_size = 600
batch_size = 50
epochs = 3
model_options = { depths = [1], dims = [16] }
[arms]
spatial = ["conv", "pool", "mlp"]
"""


@pytest.mark.slow  # 47 s; tests/test_study.py kills a single worker in the default run
def test_study_with_two_workers_killed_twice_ends_with_every_cell_once(tmp_path):
    """SIGKILL a whole `study --workers 2` invocation (the process group) twice at random points, then rerun."""
    import random

    import optuna
    from optuna.trial import TrialState

    file = tmp_path / "exp.toml"
    file.write_text(STUDY)
    args = [sys.executable, "-m", "ablate", "study", str(file), "--storage", f"sqlite:///{tmp_path}/s.db",
            "--out", str(tmp_path / "runs"), "--workers", "2", "--heartbeat", "1"]
    rng = random.Random(0)
    for _ in range(2):
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(8, 20))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    final = subprocess.run([*args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    doc = json.loads(final.stdout)
    assert doc["cells"]["done"] == doc["cells"]["total"] == 6 and doc["duplicates"] == 0
    study = optuna.load_study(study_name="twice-killed", storage=f"sqlite:///{tmp_path}/s.db")
    done = [t.user_attrs["cell"] for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(done) == sorted(set(done)) and len(done) == 6


@pytest.mark.parametrize("damage", ["checkpoint", "record"])
def test_damaged_run_folder_under_resume_exits_2_and_is_left_as_it_was(tmp_path, damage):
    args = ["--dataset", "synthetic", "--epochs", "2", "--batch-size", "100", "--train-size", "200",
            "--out", str(tmp_path)]
    _, run_dir = interrupted_run(*args)
    target = run_dir / ("checkpoint.pt" if damage == "checkpoint" else "record.json")
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 3])  # a torn write from another tool
    before = files(run_dir)
    again = run_cli(*args, "--resume", str(run_dir))
    assert again.returncode == 2, again.stderr
    assert "--resume" in again.stderr and target.name in again.stderr and "Traceback" not in again.stderr
    assert files(run_dir) == before  # nothing touched
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]  # and no new run started


def test_resume_of_a_finished_run_exits_2_and_names_its_record(tmp_path):
    args = ["--dataset", "synthetic", "--epochs", "1", "--batch-size", "100", "--train-size", "200",
            "--out", str(tmp_path)]
    first = run_cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / json.loads(first.stdout)["run_id"]
    again = run_cli(*args, "--resume", str(run_dir))
    assert again.returncode == 2 and f"that run has finished; its result is {run_dir / 'record.json'}" in again.stderr


def test_results_files_get_the_usual_permissions(tmp_path):
    """Written through a 0600 temp file, a record still ends up readable by the group and others, as umask says."""
    write_json(tmp_path / "record.json", {"a": 1})
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == 0o666 & ~UMASK
    assert json.loads((tmp_path / "record.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left behind
