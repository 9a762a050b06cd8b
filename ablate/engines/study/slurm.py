"""`--launcher slurm`: the workers as one Slurm job array, submitted through submitit; this process then follows
the study's progress in the storage until every cell is done (or returns at once with --detach).

Each array task is a worker (worker.work) with its own storage connection, so the storage must be one that every
node reaches: a database server or a journal file on a shared filesystem. Slurm sends a task its warning signal
before the time limit (and on preemption, where the cluster is set up to send it): submitit calls
SlurmWorker.checkpoint, which hands submitit the same worker to requeue, and submitit's exit unwinds through
worker.run_cell, which fails the task's running trial. So the cell is free at once, and it runs again, from its last
checkpoint, in the requeued task or in another one. SIGTERM (scancel, or a preemption without the warning signal)
fails the running trial the same way and ends the task without a requeue of its own.
"""
import argparse
import contextlib
import io
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError
from tqdm import tqdm

from blocks.checks import shown

from ...foundations.errors import UsageError
from ...foundations.parsing import whole_number
from ...foundations.storage import journal_path, masked, open_storage
from . import experiment
from .board import Board, load_board
from .experiment import Experiment
from .summary import progress, progress_line
from .worker import log, quiet_optuna, work

MAX_REQUEUES = 100  # time-limit requeues per task (submitit's max_num_timeout); preemptions do not count


def slurm_option(text: str) -> tuple[str, str]:
    """--slurm-opt KEY=VALUE: an sbatch option without its dashes; an empty VALUE is a bare flag (exclusive=)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option without its dashes, e.g. "
                                         f"account=proj or constraint=a100), got {shown(text)}")
    key, value = text.split("=", 1)
    if not key.strip().lstrip("-"):
        raise argparse.ArgumentTypeError(f"no option name before '=' in {shown(text)}")
    return key.strip().lstrip("-"), value


def add_arguments(p) -> None:
    p.add_argument("--partition", help="Slurm partition of the workers (default: the cluster's default partition)")
    p.add_argument("--time", type=whole_number(1), default=60, metavar="MINUTES",
                   help="time limit of each worker (default 60); a worker that reaches it frees its cell and is "
                        "requeued, and the cell continues from its last checkpoint")
    p.add_argument("--cpus-per-worker", type=whole_number(1), default=None, metavar="N", help="CPUs of each worker")
    p.add_argument("--gpus-per-worker", type=whole_number(0), default=0, metavar="G",
                   help="GPUs of each worker: 0 or 1 (a cell trains on one device; more is exit 2)")
    p.add_argument("--mem", help="memory of each worker in sbatch's form (16G, 4000M)")
    p.add_argument("--slurm-opt", action="append", type=slurm_option, default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, without its dashes (account=proj, qos=low, exclusive=); repeatable")


def check(args: argparse.Namespace) -> None:
    """Bad flags and a machine without Slurm stop before the storage is touched."""
    if args.gpus_per_worker > 1:
        raise UsageError(f"--gpus-per-worker {args.gpus_per_worker}: more than one GPU per worker is not supported "
                         f"yet (each cell trains on one device); use --gpus-per-worker 1 and more --workers")
    for tool in ("sbatch", "srun"):
        if shutil.which(tool) is None:
            raise UsageError(f"--launcher slurm: no `{tool}` on PATH (the job array is submitted with sbatch and "
                             f"its tasks start with srun); run this on a machine of the cluster, such as a login "
                             f"node, or add Slurm's bin folder to PATH")


def signal_delay(minutes: int) -> int:
    """Seconds before the time limit that the warning signal is asked for. Slurm checks limits every 30 s, so it
    comes 0-30 s earlier than that; freeing the cell and requeueing takes a few seconds."""
    return min(60, 5 * minutes)


def shared_url(url: str) -> str:
    """The storage as the workers must name it: a journal file by its absolute path (their cwd may differ)."""
    path = journal_path(url)
    return f"journal:{path.resolve()}" if path is not None else url


class Requeued(BaseException):
    """The task was requeued (time limit or preemption); raised through the cell so its trial is failed."""


class Stopped(BaseException):
    """The task got SIGTERM (scancel, or a preemption without the warning signal)."""


class SlurmWorker(submitit.helpers.Checkpointable):
    """One array task: a study worker on the shared storage, requeued with its state when Slurm signals it."""

    def __init__(self, file: str, url: str, out: str, heartbeat: int):
        self.file, self.url, self.out, self.heartbeat = file, url, out, heartbeat
        self.name, self.requeueing = "slurm worker", False

    def __call__(self) -> int:
        quiet_optuna()
        self.name, self.requeueing = f"slurm task {submitit.JobEnvironment().job_id}", False
        warning = signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]
        submitits = signal.getsignal(warning)  # set by submitit: checkpoint(), scontrol requeue, exit
        signal.signal(warning, lambda signum, frame: self.on_warning(submitits, signum, frame))
        signal.signal(signal.SIGTERM, self.on_term)
        try:
            exp = experiment.load(self.file)
            return work(exp, load_board(exp, open_storage(self.url, heartbeat=self.heartbeat)), Path(self.out),
                        self.heartbeat, self.name)
        except Requeued:
            log(f"{self.name}: requeued; its cell is free again and continues from its last checkpoint")
            sys.exit(-1)
        except Stopped:
            log(f"{self.name}: stopped by SIGTERM; its cell is free again for the other workers")
            sys.exit(143)

    def on_warning(self, submitits, signum, frame) -> None:
        self.requeueing = True  # the SIGTERM of the requeue itself is then expected
        log(f"{self.name}: got {signal.Signals(signum).name} (time limit or preemption): freeing the cell, requeueing")
        try:
            submitits(signum, frame)
        except SystemExit:  # submitit requeued the task and exits: unwind through run_cell, which fails the trial
            raise Requeued("requeued by Slurm (time limit or preemption)") from None
        except subprocess.CalledProcessError as e:
            if e.returncode != -signal.SIGTERM or e.cmd[:2] != ["scontrol", "requeue"]:
                raise
            # The requeue took effect: Slurm's SIGTERM to the requeued job's processes reached scontrol, a process
            # of this job, before it exited.
            raise Requeued("requeued by Slurm (time limit or preemption); the requeue's SIGTERM ended scontrol "
                           "before it returned") from None

    def on_term(self, signum, frame) -> None:
        if not self.requeueing:
            raise Stopped("SIGTERM from Slurm (scancel or preemption)")


def launch(exp: Experiment, board: Board, args: argparse.Namespace) -> int:
    """Submits `--workers` tasks as one job array, prints its id, then follows the study until every cell is done."""
    out = Path(args.out).resolve()
    folder = out / exp.name / "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES)
    params = {"name": f"ablate-{exp.name}", "timeout_min": args.time, "slurm_signal_delay_s": signal_delay(args.time),
              "slurm_partition": args.partition, "cpus_per_task": args.cpus_per_worker,
              "gpus_per_node": args.gpus_per_worker or None, "slurm_mem": args.mem,
              "slurm_additional_parameters": {k: v if v else True for k, v in args.slurm_opt} or None}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    workers = [SlurmWorker(str(Path(args.file).resolve()), shared_url(args.storage), str(out), args.heartbeat)
               for _ in range(args.workers)]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's complaint too; ours says it once
            jobs = executor.submit_array(workers)
    except FailedJobError as e:
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or "no reason given"
        raise UsageError(f"sbatch refused the job array: {reason}") from None
    job_id = jobs[0].job_id.split("_")[0]
    log(f"submitted Slurm job {job_id}: {args.workers} worker(s), logs in {folder}; `scancel {job_id}` stops them")
    if args.detach:
        log(f"detached; `python -m ablate study {args.file} --storage {masked(args.storage)} --status` shows the "
            f"progress")
        return 0
    try:
        return follow(exp, board, job_id, folder, poll=min(5, args.heartbeat))
    except KeyboardInterrupt:
        log(f"stopped following; Slurm job {job_id} keeps running (`--status` shows it, `scancel {job_id}` stops it)")
        return 130


def follow(exp: Experiment, board: Board, job_id: str, folder: Path, poll: float) -> int:
    """Cells done / running / pending from the storage until all are done (0), or until Slurm has no task of the
    job left (1: the workers died or were cancelled; the same command resumes with new ones)."""
    state = progress(exp, board.study.get_trials(deepcopy=False))
    tty = sys.stderr.isatty()
    bar = tqdm(total=state["total"], unit="cell", desc=f"study {exp.name}", disable=not tty, file=sys.stderr)
    last, asked = None, 0.0
    try:
        while True:
            state = progress(exp, board.study.get_trials(deepcopy=False))
            if state != last:
                bar.n = state["done"]
                bar.set_postfix(running=state["running"], pending=state["pending"])
                if not tty:
                    log(progress_line(exp.name, state))
                last = state
            if state["done"] == state["total"]:
                return 0
            if time.monotonic() - asked >= max(5, 2 * poll):
                asked = time.monotonic()
                # read again after squeue answers: the last cell may have finished in between
                if queued_tasks(job_id) == 0 and (state := progress(exp, board.study.get_trials(deepcopy=False)))["done"] < state["total"]:
                    log(f"Slurm job {job_id} has no task left, with {state['done']}/{state['total']} cells done; "
                        f"see the logs in {folder}; the same command submits new workers that resume the study")
                    return 1
            time.sleep(poll)
    finally:
        bar.close()


def queued_tasks(job_id: str) -> int | None:
    """How many entries squeue lists for the job (its pending, running or requeued tasks; pending tasks of an
    array may share one); 0 once Slurm has none, None when squeue cannot say (the controller is busy)."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode == 0:
        return len(r.stdout.split())
    return 0 if "Invalid job id" in r.stderr else None
