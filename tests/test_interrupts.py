"""Ctrl-C of `run` and `study` is exit 130 with one line on how to resume, no traceback; a run stopped by any
exception says so in its record ("interrupted" or "failed", and why), and --resume continues it."""
import json
import signal
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

from ablate import commands as cli
from ablate.engines.training import trainer
from ablate.foundations.errors import UsageError
from conftest import ROOT, run_cli, wait_for_first_epoch

TINY = ["--model-opt", "depths=[1]", "--model-opt", "dims=[16]"]  # epochs of a fraction of a second
ARGS = ["--dataset", "synthetic", "--epochs", "40", "--batch-size", "50", "--train-size", "300", *TINY]


def interrupt_after_first_epoch(command: list[str], out) -> tuple[subprocess.CompletedProcess, dict]:
    """Starts `python -m ablate *command`, sends SIGINT once its first epoch is saved under `out` (a folder of run
    folders); returns the finished process and the run's record."""
    proc = subprocess.Popen([sys.executable, "-m", "ablate", *command], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        record = wait_for_first_epoch(out)
    finally:
        proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), json.loads(record.read_text())


def default_sigint() -> None:
    """A shell's background job ignores SIGINT, and so would the child: it gets Python's Ctrl-C handling back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stderr_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr[-3000:]


def assert_ended_as_interrupted(record: dict) -> None:
    assert record["status"] == "interrupted" and record["error"] == "interrupted (Ctrl-C)"
    assert 1 <= len(record["history"]) < 40  # stopped mid-run, with its last checkpoint's history
    saved = torch.load(f"{record['run_dir']}/checkpoint.pt", weights_only=True)
    assert saved["history"] == record["history"]


def test_ctrl_c_of_run_exits_130_and_resume_finishes_it_as_if_uninterrupted(tmp_path):
    reference = run_cli(*ARGS, "--out", str(tmp_path / "ref"), "--json")
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "runs"
    stopped, _ = interrupt_after_first_epoch([*ARGS, "--out", str(out)], out)
    assert stopped.returncode == 130, stderr_of(stopped)
    assert "Traceback" not in stopped.stderr
    (line,) = [line for line in stopped.stderr.splitlines() if "--resume" in line]
    assert line == "ablate run: interrupted; the same command with --resume continues the run from its last checkpoint"
    (record,) = out.glob("*/record.json")
    assert_ended_as_interrupted(json.loads(record.read_text()))

    resumed = run_cli(*ARGS, "--out", str(out), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    got, expected = json.loads(resumed.stdout), json.loads(reference.stdout)
    assert got["run_dir"] == str(record.parent) and got["status"] == "done"
    assert [h["train_loss"] for h in got["history"]] == [h["train_loss"] for h in expected["history"]]
    assert (got["test_acc"], got["test_loss"]) == (expected["test_acc"], expected["test_loss"])


STUDY = """
[study]
name = "ctrl-c"
seeds = [0]
[run]
dataset = "synthetic"
val_size = 100
train_size = 300
batch_size = 50
epochs = 40
model_options = { depths = [1], dims = [16] }
"""


def test_ctrl_c_of_study_exits_130_and_the_same_command_resumes_it(tmp_path, capsys):
    file, out, url = tmp_path / "exp.toml", tmp_path / "runs", f"sqlite:///{tmp_path}/s.db"
    file.write_text(STUDY)
    command = ["study", str(file), "--storage", url, "--out", str(out)]
    stopped, _ = interrupt_after_first_epoch(command, out / "ctrl-c" / "base" / "final-seed0")
    assert stopped.returncode == 130, stderr_of(stopped)
    assert "Traceback" not in stopped.stderr
    (line,) = [line for line in stopped.stderr.splitlines() if "interrupted" in line]
    assert line == f"ablate study: interrupted; the same command resumes the study of {file}"
    (record,) = out.glob("ctrl-c/*/*/*/record.json")
    assert_ended_as_interrupted(json.loads(record.read_text()))
    (trial,) = optuna.load_study(study_name="ctrl-c", storage=url).trials
    assert trial.state == TrialState.FAIL  # the cell is free at once

    assert cli.main([*command, "--json"]) == 0, capsys.readouterr().err
    assert "resuming" in capsys.readouterr().err
    done = [t for t in optuna.load_study(study_name="ctrl-c", storage=url).trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["record"]["run_dir"] == str(record.parent)
    assert len(done[0].user_attrs["record"]["history"]) == 40


@pytest.mark.parametrize("error, code, status, reason", [
    (UsageError("--data-dir: the files went away"), 2, "failed", "--data-dir: the files went away"),
    (RuntimeError("CUDA error: an illegal memory access"), None, "failed",
     "RuntimeError: CUDA error: an illegal memory access"),
    (KeyboardInterrupt(), 130, "interrupted", "interrupted (Ctrl-C)"),
], ids=["usage-error", "crash", "ctrl-c"])
def test_a_run_stopped_mid_run_says_so_in_its_record_and_resumes(tmp_path, capsys, monkeypatch, error, code, status,
                                                                 reason):
    """Raised in the second epoch, after the first one's checkpoint: the record ends with that checkpoint's history
    (not "running"), and --resume goes on from it."""
    args = [*ARGS[:3], "3", *ARGS[4:], "--out", str(tmp_path)]
    real_train, calls = trainer.Trainer.train_until, []

    def train_once_then_fail(self, stop_step):
        calls.append(stop_step)
        if len(calls) == 2:
            raise error
        return real_train(self, stop_step)
    monkeypatch.setattr(trainer.Trainer, "train_until", train_once_then_fail)
    if code is None:  # not an error of the input: it stays an exception (a bug to report), after the record
        with pytest.raises(type(error)):
            cli.main(args)
    else:
        assert cli.main(args) == code
        assert f"ablate run: {'error: ' + reason if code == 2 else 'interrupted'}" in capsys.readouterr().err
    (path,) = tmp_path.glob("*/record.json")
    record = json.loads(path.read_text())
    assert (record["status"], record["error"], len(record["history"])) == (status, reason, 1)

    monkeypatch.undo()
    assert cli.main([*args, "--resume", "--json"]) == 0, capsys.readouterr().err
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["run_dir"] == str(path.parent) and len(resumed["history"]) == 3 and resumed["status"] == "done"
