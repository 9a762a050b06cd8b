"""Two `ablate study` processes on one PostgreSQL study: every cell runs exactly once.

Starts a throwaway PostgreSQL server on loopback (Debian's `postgresql` package; scripts/setup.sh installs it).
It skips only where the server binaries are absent, and in CI (CI=true) their absence is a failure."""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablate.foundations.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = """
[study]
name = "pg"
seeds = [0, 1]
[run]
dataset = "synthetic"
val_size = 100
train_size = 1000
batch_size = 50
epochs = 1
lr = 1e-2
warmup = 0
augment = false
model_options = { depths = [1], dims = [16] }
[arms]
spatial = ["conv", "pool", "identity", "mlp"]
"""


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: $PG_BIN, PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in [os.environ.get("PG_BIN"), on_path and str(Path(on_path).resolve().parent), *debian]:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


@pytest.fixture(scope="module")
def postgres_url():
    folder = server_bin()
    if folder is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql, or set PG_BIN"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    # PostgreSQL refuses to run as root: there, the server runs as the `postgres` user the package creates
    user = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
    data = Path(tempfile.mkdtemp(prefix="ablate-pg-"))
    if user:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(folder / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                              cwd=data, **user)

    init = pg("initdb", "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "--no-sync")
    assert init.returncode == 0, init.stderr
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    start = pg("pg_ctl", "-D", str(data / "db"), "-l", str(data / "server.log"), "-o", opts, "-w", "start")
    assert start.returncode == 0, start.stderr + (data / "server.log").read_text()
    try:
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE ablate")
        yield f"postgresql://postgres@127.0.0.1:{port}/ablate"
    finally:
        pg("pg_ctl", "-D", str(data / "db"), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


def pinned(core: int):
    cores = sorted(os.sched_getaffinity(0))
    return lambda: os.sched_setaffinity(0, {cores[core % len(cores)]})


def test_two_workers_run_every_cell_exactly_once(postgres_url, tmp_path):
    file = tmp_path / "pg.toml"
    file.write_text(EXPERIMENT)
    cmd = [sys.executable, "-m", "ablate", "study", str(file), "--storage", postgres_url, "--out",
           str(tmp_path / "runs"), "--heartbeat", "2", "--json"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=pinned(i)) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err

    cells = {f"spatial={s}|final|seed={i}" for s in ("conv", "pool", "identity", "mlp") for i in (0, 1)}
    for out, _ in outputs:  # each worker waits for the other and then summarises the whole study
        doc = json.loads(out)
        assert doc["cells"] == {"total": 8, "done": 8, "running": 0, "pending": 0} and doc["duplicates"] == 0
    trials = optuna.load_study(study_name="pg", storage=open_storage(postgres_url, heartbeat=2)).trials
    complete = Counter(t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == {cell: 1 for cell in cells}
    # a lost claim is the only other trial a worker may leave, and it never trained
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("lost_claim") for t in trials)
    started = [line.split(": ")[2].split()[0] for _, err in outputs for line in err.splitlines() if ": trial " in line]
    assert sorted(started) == sorted(cells)  # no cell started twice, across both processes
    assert len(list((tmp_path / "runs").glob("pg/*/*/*/record.json"))) == 8
