"""`python -m ablate study FILE`: an experiment file's cells as optuna trials, run by workers that share one
storage, started by a launcher (engines.study.launchers)."""
import argparse
import json
from pathlib import Path

from ..engines.study import experiment
from ..engines.study.board import load_board, open_study
from ..engines.study.launchers import LAUNCHERS
from ..engines.study.summary import progress_line, render, summarize
from ..engines.study.worker import log, quiet_optuna
from ..foundations.errors import UsageError
from ..foundations.storage import masked, open_storage
from .args import positive_int

HELP = "run an optuna study from an experiment file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="experiment file (TOML), e.g. experiments/structure_x_mixer.toml")
    p.add_argument("--storage", default="sqlite:///ablate.db",
                   help="optuna storage: an RDB URL (sqlite:///FILE, postgresql://USER:PASS@HOST/DB, mysql://...) "
                        "or a journal file (journal:PATH, or a path ending .log/.journal) for shared filesystems")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="where the workers run: " + "; ".join(f"{k}: {v.help}" for k, v in LAUNCHERS.items()))
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes (local: the cores are split)")
    p.add_argument("--out", default="runs", help="run folders go to OUT/<study name>/<arm>/<cell>/")
    p.add_argument("--heartbeat", type=positive_int, default=30, metavar="SECONDS",
                   help="a running trial's heartbeat; after 2x this without one, its worker counts as dead and the "
                        "cell is retried")
    p.add_argument("--json", action="store_true", help="print one JSON document summarising the study on stdout")
    p.add_argument("--status", action="store_true",
                   help="show the study's progress (cells done, running, pending) and summary from the storage alone; "
                        "starts nothing")
    p.add_argument("--detach", action="store_true",
                   help="return once the workers are submitted (launchers whose workers run elsewhere, e.g. slurm); "
                        "--status follows them")
    for name, launcher in LAUNCHERS.items():
        if launcher.add_arguments:
            launcher.add_arguments(p.add_argument_group(f"--launcher {name}"))


def main(args: argparse.Namespace) -> int:
    quiet_optuna()
    try:
        return start(args)
    except KeyboardInterrupt:  # the running trials were failed on the way out, so their cells are free again
        log(f"ablate study: interrupted; the same command resumes the study of {args.file}")
        return 130


def start(args: argparse.Namespace) -> int:
    """The study of args.file: its progress (--status), or its workers launched until every cell is done."""
    exp = experiment.load(args.file)
    if args.status:
        return status(exp, args)
    launcher = LAUNCHERS[args.launcher]
    if args.detach and not launcher.remote:
        raise UsageError(f"--detach: the {args.launcher} launcher's workers run inside this command, so it cannot "
                         f"return before they finish; use a launcher whose workers run elsewhere (--launcher slurm)")
    if launcher.remote and args.storage.startswith("sqlite"):
        raise UsageError(f"--launcher {args.launcher} runs workers on other machines, and a SQLite file cannot be "
                         f"shared between machines (its locks do not work over network filesystems); use a server "
                         f"(postgresql://...) or a journal file on a shared filesystem (journal:/shared/x.journal)")
    if launcher.check:
        launcher.check(args)
    missing = [name for name in exp.reuse if not (Path(args.out) / name).is_dir()]
    if missing:
        raise UsageError(f"[study].reuse: no run folders of study {', '.join(map(repr, missing))} under --out "
                         f"{args.out} (a reused run is looked up in <out>/<study>/); check the name and --out")
    board = open_study(exp, open_storage(args.storage, heartbeat=args.heartbeat))
    rc = launcher.launch(exp, board, args)
    doc = summarize(exp, board, args.storage)
    print(json.dumps(doc) if args.json else render(doc))
    return rc


def status(exp: experiment.Experiment, args: argparse.Namespace) -> int:
    """`--status`: the study's progress and summary, read from the storage; nothing is created or started."""
    storage = open_storage(args.storage, create=False)
    try:
        board = load_board(exp, storage)
    except KeyError:
        raise UsageError(f"no study {exp.name!r} in {masked(args.storage)}; start it with `python -m ablate study "
                         f"{args.file} --storage {masked(args.storage)}`") from None
    doc = summarize(exp, board, args.storage)
    if args.json:
        print(json.dumps(doc))
    else:
        print(progress_line(exp.name, doc["cells"]))
        print(render(doc))
    return 0
