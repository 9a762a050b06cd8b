"""Checkpoints and run records are untrusted files: a checkpoint whose pickle would run code is refused without
running it (plain `--resume`, `--resume RUN_DIR`, a study worker continuing a cell), and a damaged record or
checkpoint is exit 2 with one message naming the file, leaving the run folder as it was."""
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

import blocks
from ablate import commands as cli
from conftest import files, interrupted_run, run_cli

ARGS = ["--dataset", "synthetic", "--epochs", "2", "--batch-size", "100", "--train-size", "200"]


class Payload:
    """Pickles as a call of os.system: what a planted checkpoint runs when loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """An unfinished run folder (record "running", checkpoint beside it), trained once for the whole module."""
    _, run_dir = interrupted_run(*ARGS, "--out", str(tmp_path_factory.mktemp("saved")))
    return run_dir


@pytest.fixture
def run_dir(saved_run, tmp_path) -> Path:
    """A copy of saved_run under tmp_path/out, for this test to damage."""
    return Path(shutil.copytree(saved_run, tmp_path / "out" / saved_run.name))


def plant(checkpoint: Path, marker: Path) -> None:
    """Puts a payload into a real checkpoint and proves that an unsafe load runs it."""
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "history": Payload(marker)}, checkpoint)
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()  # the payload works: the checks below could fail
    marker.unlink()


@pytest.mark.parametrize("resume", ["plain", "folder"])
def test_a_checkpoint_that_would_run_code_is_refused_unrun(run_dir, tmp_path, resume):
    marker = tmp_path / "payload-ran"
    plant(run_dir / "checkpoint.pt", marker)
    before = files(run_dir)
    out = run_cli(*ARGS, "--out", str(run_dir.parent), "--resume", *([str(run_dir)] if resume == "folder" else []))
    assert out.returncode == 2, out.stderr
    assert f"{run_dir / 'checkpoint.pt'}: it cannot be loaded safely" in out.stderr
    assert "GLOBAL posix.system" in out.stderr and "older ablate or not by ablate" in out.stderr
    assert "Traceback" not in out.stderr and not marker.exists()
    assert files(run_dir) == before and [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]


STUDY = """
[study]
name = "planted"
seeds = [0]
[run]
dataset = "synthetic"
val_size = 100
train_size = 200
batch_size = 100
epochs = 1
model_options = { depths = [1], dims = [16] }
"""


def test_a_study_worker_does_not_run_a_planted_checkpoint(tmp_path, capsys):
    """The cell's run folder holds an unfinished run with a planted checkpoint (a fresh storage, so the cell is free):
    the worker that continues it refuses the file, fails the trial and the study exits 2, the payload unrun."""
    file, out, marker = tmp_path / "exp.toml", tmp_path / "runs", tmp_path / "payload-ran"
    file.write_text(STUDY)
    assert cli.main(["study", str(file), "--storage", f"sqlite:///{tmp_path}/first.db", "--out", str(out)]) == 0
    (record,) = out.glob("planted/*/*/*/record.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "status": "running"}))
    plant(record.parent / "checkpoint.pt", marker)
    before = files(record.parent)
    capsys.readouterr()

    url = f"sqlite:///{tmp_path}/second.db"
    again = run_cli("study", str(file), "--storage", url, "--out", str(out))
    assert again.returncode == 2, again.stderr
    assert f"{record.parent / 'checkpoint.pt'}: it cannot be loaded safely" in again.stderr
    assert "Traceback" not in again.stderr and not marker.exists()
    assert files(record.parent) == before
    import optuna
    (trial,) = optuna.load_study(study_name="planted", storage=url).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["crash"].startswith("UsageError")


def resume(run_dir: Path, capsys) -> tuple[int, str]:
    code = cli.main([*ARGS, "--out", str(run_dir.parent), "--resume", str(run_dir)])
    return code, capsys.readouterr().err


def refused(run_dir: Path, capsys, file: str, problem: str) -> None:
    """`--resume RUN_DIR` exits 2 with one message that names `file` and `problem`; nothing changed or started."""
    before = files(run_dir)
    code, err = resume(run_dir, capsys)
    assert code == 2, err
    assert err.count("error:") == 1 and str(run_dir) in err and file in err and problem in err, err
    assert files(run_dir) == before and [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]


@pytest.mark.parametrize("damage, problem", [
    (lambda doc: [doc], "it holds a JSON array, not an object"),
    (lambda doc: "running", "it holds a JSON string, not an object"),
    (lambda doc: {k: v for k, v in doc.items() if k != "config_key"}, "it has no 'config_key'"),
    (lambda doc: {**doc, "config_key": 7}, "its 'config_key' is a JSON number, not a string"),
    (lambda doc: {**doc, "status": ["running"]}, "its 'status' is a JSON array, not a string"),
], ids=["list", "string", "no-config-key", "numeric-config-key", "list-status"])
def test_a_record_of_the_wrong_shape_is_refused(run_dir, capsys, damage, problem):
    record = run_dir / "record.json"
    record.write_text(json.dumps(damage(json.loads(record.read_text()))))
    refused(run_dir, capsys, "record.json is not a run record", problem)


def test_plain_resume_passes_over_a_record_that_is_no_run_record(run_dir, capsys):
    """It is not refused: one stray folder must not block every --resume under --out; a new run starts."""
    (run_dir / "record.json").write_text("[1, 2]")
    before = files(run_dir)
    assert cli.main([*ARGS, "--out", str(run_dir.parent), "--resume"]) == 0, capsys.readouterr().err
    assert "no unfinished run of this config" in capsys.readouterr().err
    assert files(run_dir) == before and len(list(run_dir.parent.iterdir())) == 2


def other_width(state: dict, run_dir: Path) -> dict:
    model = json.loads((run_dir / "record.json").read_text())["config"]["model"]
    wider = blocks.create("tiny", img_size=model["img_size"], in_chans=model["in_chans"],
                          num_classes=model["num_classes"], dims=(2 * model["dims"][0],))
    return {**state, "model": wider.state_dict()}


def moments_of_another_shape(state: dict, run_dir: Path) -> dict:
    optimizer = state["optimizer"]
    moments = {i: {k: (v[..., :1] if torch.is_tensor(v) and v.dim() else v) for k, v in s.items()}
               for i, s in optimizer["state"].items()}
    return {**state, "optimizer": {**optimizer, "state": moments}}


CHECKPOINT_DAMAGE = {
    "no-optimizer": (lambda s, d: {k: v for k, v in s.items() if k != "optimizer"}, "no 'optimizer'"),
    "no-scheduler-history": (lambda s, d: {k: v for k, v in s.items() if k not in ("scheduler", "history")},
                             "no 'scheduler', 'history'"),
    "no-steps": (lambda s, d: {k: v for k, v in s.items() if k != "steps"}, "no 'steps'"),
    "string-steps": (lambda s, d: {**s, "steps": "4"}, "its 'steps' is a str"),
    "history-of-strings": (lambda s, d: {**s, "history": ["epoch 1"]}, "'history' holds entries that are not dicts"),
    "not-a-dict": (lambda s, d: [s], "it holds a list, not a dict"),
    "other-width": (other_width, "does not fit this run (RuntimeError: size mismatch for "),
    "other-moments": (moments_of_another_shape, "optimizer state 'exp_avg' of shape"),
    "other-schedule": (lambda s, d: {**s, "scheduler": {**s["scheduler"], "t_initial": "4"}},
                       "its 'scheduler' is not the state of this run's learning-rate schedule"),
    "beyond-the-end": (lambda s, d: {**s, "steps": 10**6}, "it stopped at step 1000000, and this run has 4 steps"),
    "short-torch-rng": (lambda s, d: {**s, "torch_rng": s["torch_rng"][:10]}, "does not fit this run (RuntimeError"),
    "older-numpy-rng": (lambda s, d: {**s, "numpy_rng": np.random.get_state()},
                        "cannot be loaded safely: it holds objects other than tensors and plain values (GLOBAL numpy"),
}


@pytest.mark.parametrize("name", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_is_refused_naming_it(run_dir, capsys, name):
    damage, problem = CHECKPOINT_DAMAGE[name]
    checkpoint = run_dir / "checkpoint.pt"
    torch.save(damage(torch.load(checkpoint, weights_only=True), run_dir), checkpoint)
    refused(run_dir, capsys, f"{checkpoint}: ", problem)


def test_the_undamaged_copy_resumes(run_dir, capsys):
    """The control of the tests above: the same folder, untouched, is continued (here: it had reached its end)."""
    code, err = resume(run_dir, capsys)
    assert code == 0, err
    assert json.loads((run_dir / "record.json").read_text())["status"] == "done"
