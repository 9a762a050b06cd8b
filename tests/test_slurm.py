"""`ablate study --launcher slurm` on a real single-node Slurm cluster on localhost: every cell once with two
workers, a worker cancelled mid-cell, a time limit shorter than a cell (requeue and resume), `--status`,
`--detach`, and exit 2 with Slurm's own message for bad input.

The cluster comes from Debian's packages (slurm-wlm, munge; scripts/setup.sh installs them): the module fixture
starts munged, slurmctld and slurmd as this user with their files in a temporary folder, on free ports, and stops
them afterwards. Missing packages are a failure, not a skip. Tiny runs on synthetic data."""
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablate import commands as cli
from ablate.engines.study.slurm import Requeued, SlurmWorker
from conftest import wait_for

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
EXPERIMENT = """
[study]
name = "{name}"
seeds = {seeds}
[arms]
spatial = {arms}
[run]
dataset = "synthetic"
val_size = 100
train_size = 500
batch_size = 50
epochs = {epochs}
lr = 1e-2
warmup = 0
augment = false
model_options = {{ depths = [1], dims = [16] }}
"""
# Slurm holds a requeued job for its credential lifetime (cred_expire, 120 s by default; 5 s is the least) and then
# waits for the scheduler's next pass (sched_interval, 60 s by default): both lowered so a requeue takes seconds.
SLURM_CONF = """
ClusterName=ablate-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket,cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
KillWait=2
MinJobAge=30
MessageTimeout=5
InactiveLimit=0
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


class Cluster:
    def __init__(self, folder: Path):
        self.dir, self.conf = folder, folder / "slurm.conf"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted(self.dir.glob("*.log")))

    def jobs(self) -> list[str]:
        r = sh("squeue", "-h", "-o", "%i %T")
        assert r.returncode == 0, r.stderr
        return r.stdout.split("\n")[:-1]

    def diagnose(self) -> str:
        return f"; jobs: {self.jobs()}\n{self.logs()}"

    def drain(self, timeout: float = 60) -> None:
        """Cancels every job and waits until Slurm holds none, so the next test has the cores."""
        sh("scancel", "--user", str(os.getuid()))
        deadline = time.monotonic() + timeout
        while self.jobs():
            assert time.monotonic() < deadline, f"jobs left after scancel: {self.jobs()}\n{self.logs()}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm():
    """A one-node Slurm cluster on localhost (munged, slurmctld, slurmd), SLURM_CONF pointing at it."""
    missing = [t for t in (*DAEMONS, *CLIENTS) if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} not found): apt-get install slurm-wlm munge "
                    f"(scripts/setup.sh does)")
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    folder = Path(tempfile.mkdtemp(prefix="ablate-slurm-"))
    folder.chmod(0o755)  # munged wants its socket's folder open to all
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    cluster, started = Cluster(folder), []
    mp = pytest.MonkeyPatch()
    try:
        r = sh(sbin("munged"), f"--socket={folder}/munge.socket", f"--key-file={key}",
               f"--log-file={folder}/munged.log", f"--pid-file={folder}/munged.pid",
               f"--seed-file={folder}/munged.seed")
        assert r.returncode == 0, f"munged did not start: {r.stderr}"
        started.append(folder / "munged.pid")
        r = sh(sbin("slurmd"), "-C")  # this machine's node line: name, CPUs, sockets, memory
        assert r.returncode == 0 and r.stdout.startswith("NodeName="), f"slurmd -C: {r.stdout}{r.stderr}"
        node = r.stdout.splitlines()[0]
        host = node.split()[0].split("=", 1)[1]
        cluster.conf.write_text(SLURM_CONF.format(host=host, node=node, dir=folder, ctld_port=free_port(),
                                                  slurmd_port=free_port(), user=pwd.getpwuid(os.getuid()).pw_name))
        mp.setenv("SLURM_CONF", str(cluster.conf))
        for daemon in ("slurmctld", "slurmd"):
            r = sh(sbin(daemon), "-f", str(cluster.conf))
            assert r.returncode == 0, f"{daemon} did not start: {r.stderr}\n{cluster.logs()}"
            started.append(folder / f"{daemon}.pid")
        deadline = time.monotonic() + 30
        while sh("sinfo", "-h", "-o", "%T").stdout.strip() not in ("idle", "mixed", "allocated"):
            assert time.monotonic() < deadline, f"the node did not come up: {sh('sinfo').stdout}\n{cluster.logs()}"
            time.sleep(0.2)
        yield cluster
    finally:
        try:
            if len(started) == 3:
                cluster.drain()
        finally:
            for pid_file in reversed(started):
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGTERM)
                except (OSError, ValueError):
                    pass
            mp.undo()
            time.sleep(0.5)
            shutil.rmtree(folder, ignore_errors=True)


def experiment(tmp_path: Path, name: str, epochs: int, arms=("conv", "pool"), seeds=(0, 1)) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT.format(name=name, epochs=epochs, arms=json.dumps(list(arms)),
                                      seeds=json.dumps(list(seeds))))
    return path


def seconds_per_epoch() -> float:
    """How long an epoch of the tiny run takes on one core of this machine now (with its checkpoint)."""
    from ablate.engines.training import runs
    from ablate.foundations.config import RunConfig
    stamps = []
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        with tempfile.TemporaryDirectory() as out:
            runs.run(RunConfig(dataset="synthetic", val_size=100, train_size=500, batch_size=50, epochs=12, lr=1e-2,
                               warmup=0, augment=False, model_options={"depths": [1], "dims": [16]}, out=out),
                     quiet=True, on_eval=lambda point, record: stamps.append(time.perf_counter()))
    finally:
        os.sched_setaffinity(0, cores)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def journal(url: str):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url.split(":", 1)[1]))


def trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=journal(url)).trials


def complete_per_cell(ts) -> Counter:
    return Counter(t.user_attrs["cell"] for t in ts if t.state == TrialState.COMPLETE)


def task_log(out: Path, name: str, task: str) -> str:
    return "".join(p.read_text() for p in (out / name / "slurm").glob(f"{task}_*log.err"))


def test_cancelled_worker_leaves_its_cell_to_the_other_and_status_follows(slurm, tmp_path, capsys):
    """Four cells, two workers, --detach; `scancel` of one array task mid-cell: the other worker finishes that
    cell from its checkpoint, every cell completes once, and --status shows it from the storage."""
    epochs = 30
    file, url, out = experiment(tmp_path, "cancel", epochs), f"journal:{tmp_path}/s.journal", tmp_path / "runs"
    args = [str(file), "--storage", url, "--out", str(out), "--heartbeat", "5"]  # 5 s: see the time-limit test
    try:
        rc = cli.main(["study", *args, "--launcher", "slurm", "--workers", "2", "--time", "5", "--detach", "--json"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert json.loads(captured.out)["cells"]["done"] == 0  # it returned at once
        job = re.search(r"submitted Slurm job (\d+): 2 worker", captured.err).group(1)

        def mid_cell():  # the trial that task 1 runs, two epochs in and far from its end
            started = re.findall(r"slurm task \d+_1: trial (\d+): (\S+)", task_log(out, "cancel", f"{job}_1"))
            running = {t.number: t for t in trials("cancel", url) if t.state == TrialState.RUNNING}
            now = started and running.get(int(started[-1][0]))
            return now and 2 <= len(now.intermediate_values) <= epochs // 2 and started[-1]
        victim_line = wait_for(mid_cell, 120, "worker 1 two epochs into a cell", slurm.diagnose)
        assert sh("scancel", f"{job}_1").returncode == 0

        def status():
            assert cli.main(["study", *args, "--status", "--json"]) == 0
            return json.loads(capsys.readouterr().out)
        doc = wait_for(lambda: (d := status())["cells"]["done"] == 4 and d, 180, "every cell done", slurm.diagnose)
        assert doc["cells"] == {"total": 4, "done": 4, "running": 0, "pending": 0} and doc["duplicates"] == 0
    finally:
        slurm.drain()
    ts = trials("cancel", url)
    assert complete_per_cell(ts) == {f"spatial={s}|final|seed={i}": 1 for s in ("conv", "pool") for i in (0, 1)}
    victim = next(t for t in ts if t.number == int(victim_line[0]))
    assert victim.state == TrialState.FAIL and victim.user_attrs["crash"].startswith("Stopped: SIGTERM")
    cell = victim.user_attrs["cell"]
    assert cell == victim_line[1]
    retry = next(t for t in ts if t.user_attrs["cell"] == cell and t.state == TrialState.COMPLETE)
    assert retry.number > victim.number and len(retry.user_attrs["record"]["history"]) == epochs
    cell_dir = Path(retry.user_attrs["record"]["run_dir"]).parent
    assert len(list(cell_dir.glob("*/record.json"))) == 1  # continued the cancelled run's checkpoint
    survivor = task_log(out, "cancel", f"{job}_0")
    assert f"trial {retry.number}: {cell}" in survivor and f"resuming {cell_dir}" in survivor
    started = [int(n) for n in re.findall(r"slurm task \d+_1: trial (\d+)", task_log(out, "cancel", f"{job}_1"))]
    assert max(started) == victim.number  # the cancelled task ran nothing after it

    assert cli.main(["study", *args, "--status"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("study cancel: 4/4 cells done, 0 running, 0 pending") and "spatial=pool" in text


def test_time_limit_shorter_than_a_cell_requeues_and_completes(slurm, tmp_path, capsys):
    """--time 1 and cells of over a minute: Slurm's warning signal frees each worker's cell and requeues the
    worker; the cells continue from their checkpoints and complete once; the command follows until then."""
    epochs = max(30, round(75 / seconds_per_epoch()))  # the calibration runs slower than the tasks: cells > 60 s
    file, url, out = experiment(tmp_path, "limit", epochs, arms=("conv",)), f"journal:{tmp_path}/s.journal", \
        tmp_path / "runs"
    capsys.readouterr()
    # Beats 5 s apart. With 2 s, in a CI run beside the rest of the suite, one trial ended FAIL with no `crash`: failed
    # as stale (its starved worker missed the 4 s grace, or was killed before the warning's handler ran), and its
    # cell still completed once. Such a trial is a correct outcome, so only the trials with a `crash` are checked.
    argv = ["study", str(file), "--storage", url, "--out", str(out), "--heartbeat", "5", "--launcher", "slurm",
            "--workers", "2", "--time", "1", "--json"]
    result = {}  # in a thread, so that a cluster that never finishes fails the test instead of hanging it
    follower = threading.Thread(target=lambda: result.update(rc=cli.main(argv)), daemon=True)
    follower.start()
    try:
        follower.join(600)
        if follower.is_alive():
            pytest.fail(f"the study did not finish in 600 s; jobs: {slurm.jobs()}\n{slurm.logs()}")
    finally:
        slurm.drain()  # when it hangs, the follower then sees no task left and returns
        follower.join(60)
    r = capsys.readouterr()
    assert result.get("rc") == 0, r.err + slurm.logs()
    doc = json.loads(r.out)
    assert doc["cells"] == {"total": 2, "done": 2, "running": 0, "pending": 0} and doc["duplicates"] == 0
    assert "study limit: 0/2 cells done, 2 running, 0 pending" in r.err  # it followed the progress
    ts = trials("limit", url)
    assert complete_per_cell(ts) == {"spatial=conv|final|seed=0": 1, "spatial=conv|final|seed=1": 1}
    failed = [t for t in ts if t.state == TrialState.FAIL and not t.user_attrs.get("lost_claim")]
    seen = [(t.number, t.user_attrs.get("crash"), len(t.intermediate_values)) for t in failed]
    requeued = [t for t in failed if "crash" in t.user_attrs]
    assert requeued and all(t.user_attrs["crash"].startswith("Requeued: requeued by Slurm") for t in requeued), seen
    assert any(t.intermediate_values for t in requeued), seen  # signalled mid-cell, after checkpoints
    logs = "".join(p.read_text() for p in (out / "limit" / "slurm").glob("*log.*"))
    assert "Requeued job" in logs and "resuming" in logs
    for t in ts:
        if t.state == TrialState.COMPLETE:
            record = t.user_attrs["record"]
            assert len(record["history"]) == epochs and [h["epoch"] for h in record["history"]] == \
                list(range(1, epochs + 1))
            assert len(list(Path(record["run_dir"]).parent.glob("*/record.json"))) == 1  # one run, resumed


def submitit_handler_that(outcome: BaseException):
    def handler(signum, frame):
        raise outcome
    return handler


@pytest.mark.parametrize("outcome, freed_as_requeue", [
    (SystemExit(-1), True),  # submitit requeued the task and exits
    # CI: the requeue's own SIGTERM reached `scontrol requeue` (a process of the job) before it returned
    (subprocess.CalledProcessError(-signal.SIGTERM, ["scontrol", "requeue", "3_0"]), True),
    (subprocess.CalledProcessError(1, ["scontrol", "requeue", "3_0"]), False),  # refused: not requeued
])
def test_the_warning_signal_fails_the_cell_as_requeued_only_when_the_requeue_took_effect(outcome, freed_as_requeue):
    worker = SlurmWorker("x.toml", "journal:x", "runs", 5)
    with pytest.raises(BaseException) as raised:
        worker.on_warning(submitit_handler_that(outcome), signal.SIGUSR2, None)
    assert isinstance(raised.value, Requeued) == freed_as_requeue
    if not freed_as_requeue:
        assert raised.value is outcome  # scontrol's own error, into the trial's `crash`
    assert worker.requeueing  # a SIGTERM from here on is the requeue's, not a Stopped


def test_workers_that_all_die_end_the_following_with_exit_1(slurm, tmp_path, capsys, monkeypatch):
    """Tasks whose Python cannot start (here a sitecustomize that exits) leave Slurm with no task of the job: the
    command says so and exits 1 instead of following forever."""
    site = tmp_path / "broken-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.exit('this node cannot start Python')\n")
    monkeypatch.setenv("PYTHONPATH", str(site))  # the tasks inherit the environment; this process is running
    file = experiment(tmp_path, "dead", 1)
    try:
        rc = cli.main(["study", str(file), "--storage", f"journal:{tmp_path}/s.journal", "--out",
                       str(tmp_path / "runs"), "--heartbeat", "2", "--launcher", "slurm", "--workers", "2"])
    finally:
        slurm.drain()
    err = capsys.readouterr().err
    assert rc == 1 and re.search(r"Slurm job \d+ has no task left, with 0/4 cells done; see the logs in ", err), err
    assert "this node cannot start Python" in "".join(p.read_text() for p in (tmp_path / "runs").rglob("*log.err"))


@pytest.mark.parametrize("flags, message", [
    (["--partition", "nosuch"], "sbatch refused the job array: sbatch: error: invalid partition specified: nosuch"),
    (["--slurm-opt", "nosuch=1"], "sbatch refused the job array: sbatch: unrecognized option '--nosuch=1'"),
    (["--mem", "lots"], "sbatch refused the job array: sbatch: error: Invalid --mem specification"),
])
def test_sbatch_refusal_exits_2_with_slurms_message(slurm, tmp_path, capsys, flags, message):
    file = experiment(tmp_path, "bad", 1)
    rc = cli.main(["study", str(file), "--storage", f"journal:{tmp_path}/s.journal", "--out", str(tmp_path / "runs"),
                   "--launcher", "slurm", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert "Traceback" not in err and slurm.jobs() == []


def test_controller_that_does_not_answer_exits_2(slurm, tmp_path, capsys, monkeypatch):
    conf = tmp_path / "slurm.conf"
    conf.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", slurm.conf.read_text()))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    file = experiment(tmp_path, "down", 1)
    rc = cli.main(["study", str(file), "--storage", f"journal:{tmp_path}/s.journal", "--out", str(tmp_path / "runs"),
                   "--launcher", "slurm"])
    err = capsys.readouterr().err
    assert rc == 2 and "sbatch refused the job array: sbatch: error: Batch job submission failed: Unable to " \
                      "contact slurm controller (connect failure)" in err, err


@pytest.mark.parametrize("flags, env_path, message", [
    ([], "empty", "--launcher slurm: no `sbatch` on PATH"),
    (["--gpus-per-worker", "2"], None, "--gpus-per-worker 2: more than one GPU per worker is not supported yet"),
    (["--storage", "sqlite:///x.db"], None, "a SQLite file cannot be shared between machines"),
])
def test_bad_slurm_usage_exits_2_before_the_storage(tmp_path, capsys, monkeypatch, flags, env_path, message):
    if env_path:
        monkeypatch.setenv("PATH", str(tmp_path))
    file = experiment(tmp_path, "usage", 1)
    rc = cli.main(["study", str(file), "--storage", f"journal:{tmp_path}/s.journal", "--out", str(tmp_path / "runs"),
                   "--launcher", "slurm", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("flags, message", [
    (["--launcher", "slurm", "--slurm-opt", "account"], "argument --slurm-opt: expected KEY=VALUE"),
    (["--launcher", "slurm", "--time", "0"], "argument --time: must be positive, got 0"),
])
def test_bad_slurm_flags_exit_2(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["study", str(experiment(tmp_path, "flags", 1)), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_detach_needs_a_launcher_whose_workers_run_elsewhere(tmp_path, capsys):
    rc = cli.main(["study", str(experiment(tmp_path, "local", 1)), "--storage", f"journal:{tmp_path}/s.journal",
                   "--detach"])
    assert rc == 2 and "--detach: the local launcher's workers run inside this command" in capsys.readouterr().err


def test_status_of_a_study_that_is_not_there_exits_2(tmp_path, capsys):
    (tmp_path / "s.journal").touch()
    rc = cli.main(["study", str(experiment(tmp_path, "absent", 1)), "--storage", f"journal:{tmp_path}/s.journal",
                   "--status"])
    assert rc == 2 and "no study 'absent' in journal:" in capsys.readouterr().err
