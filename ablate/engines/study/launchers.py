"""How a study's workers are started: a registry of launchers. Every launcher starts workers that pull cells from
the shared storage (worker.work); they differ in where the workers run.

Adding a launcher is one file and one entry in LAUNCHERS: a function that starts the workers and returns an exit
code, whether its workers run on other machines (then the storage must be one they can all reach), and, if it
has any, its own command-line flags and the check of them that runs before the storage is opened.
"""
import argparse
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blocks.errors import ConfigError

from ...foundations.storage import open_storage
from . import experiment, slurm
from .board import Board, load_board
from .experiment import Experiment
from .worker import log, quiet_optuna, work


@dataclass(frozen=True)
class Launcher:
    launch: Callable[[Experiment, Board, argparse.Namespace], int]  # starts the workers, returns an exit code
    help: str                                                        # one line for `study --help`
    remote: bool = False          # workers on other machines: they must all reach the storage (no SQLite file)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # its own flags, if any
    check: Callable[[argparse.Namespace], None] | None = None  # raises UsageError before the storage is touched


def launch_local(exp: Experiment, board: Board, args: argparse.Namespace) -> int:
    """Worker 0 in this process, workers 1..N-1 spawned, each on its share of the cores; returns the worst exit
    code of the spawned ones. If worker 0 stops abnormally, it stops the others."""
    exit_on_sigterm()
    if args.workers == 1:
        work(exp, board, Path(args.out), args.heartbeat, "worker")
        return 0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker_process, args=(args.file, args.storage, args.out, args.heartbeat, i,
                                                       args.workers)) for i in range(1, args.workers)]
    for p in procs:
        p.start()
    try:
        with core_share(0, args.workers):
            work(exp, board, Path(args.out), args.heartbeat, "worker 0")
    except BaseException:  # an error, Ctrl-C or SIGTERM here: the workers free their cells (exit_on_sigterm) and exit
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    codes = [p.exitcode for p in procs]
    return 0 if all(c == 0 for c in codes) else max((c for c in codes if c > 0), default=1)


def exit_on_sigterm() -> None:
    """`kill` (SIGTERM) unwinds like Ctrl-C, so a worker fails its claimed trial at once (run_cell) and the cell is
    free for the next worker, instead of waiting until its heartbeat goes stale. A second SIGTERM (worker 0 stopping
    the others after `kill` of the whole group) must not cut that short."""
    def unwind(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, unwind)


@contextlib.contextmanager
def core_share(index: int, count: int):
    """Pins this process to every count-th core from `index`; the trainer sizes torch's threads from the pinning."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(cores)[index::count] or cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def worker_process(file: str, url: str, out: str, heartbeat: int, index: int, count: int) -> None:
    """One of the spawned workers: its own share of the cores, its own storage connection."""
    quiet_optuna()
    exit_on_sigterm()
    try:
        with core_share(index, count):
            exp = experiment.load(file)
            work(exp, load_board(exp, open_storage(url, heartbeat=heartbeat)), Path(out), heartbeat, f"worker {index}")
    except ConfigError as e:  # UsageError too
        log(f"ablate study: error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker of the terminal: the parent says how to resume, once
        sys.exit(130)


LAUNCHERS: dict[str, Launcher] = {
    "local": Launcher(launch_local, "worker processes on this machine (--workers N splits its cores)"),
    "slurm": Launcher(slurm.launch, "one Slurm job array of --workers tasks (submitit); follows it until done",
                      remote=True, add_arguments=slurm.add_arguments, check=slurm.check),
}
