import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Runs `python -m ablate ...` in a fresh process, like a user would."""
    return subprocess.run([sys.executable, "-m", "ablate", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def interrupted_run(*args: str) -> tuple[dict, Path]:
    """Runs `python -m ablate *args --json` to the end, then puts its record back to `running`, as if it was killed
    after its last checkpoint; returns the record it printed and its run folder."""
    first = run_cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    printed = json.loads(first.stdout)
    run_dir = Path(printed["run_dir"])
    record = json.loads((run_dir / "record.json").read_text())
    (run_dir / "record.json").write_text(json.dumps({**record, "status": "running"}))
    return printed, run_dir


def files(folder: Path) -> dict[str, bytes]:
    """Every file of `folder` with its bytes: what a refused command must leave as it was."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """Real Fashion-MNIST from the Debian package; .ci/run installs it, so its absence is a failure."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST not found in {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    return FASHION_DIR


def wait_for(predicate, timeout: float, what: str, diagnose=lambda: ""):
    """predicate()'s first truthy value, polled until `timeout` seconds; else a failure naming `what` and
    whatever diagnose() tells about the state (e.g. a cluster's jobs and logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}{diagnose()}")


def wait_for_first_epoch(out: Path, timeout: float = 300) -> Path:
    """The record.json of the run under `out`, as soon as its first epoch's checkpoint is on disk."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = list(out.glob("*/record.json"))
        if records and json.loads(records[0].read_text() or "{}").get("history"):
            return records[0]
        time.sleep(0.05)
    pytest.fail(f"no run under {out} finished an epoch within {timeout} s")


def assert_refused(argv: list[str], message: str, capsys) -> str:
    """Runs `python -m ablate *argv` in this process: exit 2, `message` (a regex) on stderr, no traceback."""
    from ablate.commands import main
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(message, err), err
    assert "Traceback" not in err
    return err
