"""Run folders: `<out>/<run-id>/record.json` and `checkpoint.pt`, finding the run to resume, and `run()`."""
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import torch

from ...foundations import distributed
from ...foundations.config import RunConfig, resolve
from ...foundations.errors import UsageError
from ...foundations.io import write_json
from ...foundations.runtime import pick_device, pick_precision, precision_before_option
from .plan import check
from .trainer import Trainer


def run(cfg: RunConfig, resume: str | bool = False, quiet: bool = False, on_eval=None) -> dict:
    """Runs (or resumes) one training job and returns its record.

    Everything the command line can get wrong is checked first (plan.check, the output folder, the run to
    resume and its files), so bad input stops before anything is loaded or written. Under torchrun every rank
    calls it: rank 0 picks the run folder and writes there, the others train and evaluate their shards; the
    process group is left at the end.
    """
    plan = check(cfg)
    cfg = resolve(cfg)
    out = Path(cfg.out)
    main = distributed.context().main
    run_dir, state = None, None
    if main:
        prepare_out(out)
        if isinstance(resume, str):
            run_dir = Path(resume)
            check_resumable(run_dir, cfg)
        elif resume:
            run_dir = find_resumable(out, cfg)
            if run_dir is None:
                print(f"no unfinished run of this config in {identity(cfg)[1]} under {out}; starting a new one",
                      file=sys.stderr)
        if run_dir is not None:
            state = read_checkpoint(run_dir)
    try:
        trainer = Trainer(cfg, plan, quiet=quiet)
        if main and run_dir is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            run_dir = out / f"{stamp}-{cfg.spatial}-{cfg.channel}-{cfg.preset}-s{cfg.seed}"
            run_dir.mkdir(parents=True)
            write_json(run_dir / "record.json", trainer.record(run_dir, "running"))
        run_dir = Path(distributed.broadcast(str(run_dir) if main else None))
        # rank 0's checkpoint, sent to every rank (other nodes need not see rank 0's disk)
        return trainer.run(run_dir, distributed.broadcast(state), on_eval)
    finally:
        distributed.teardown()


def trained_in(doc: dict) -> str:
    """The precision a run record's run trains in."""
    return doc.get("precision") or precision_before_option(doc.get("device", "cpu"))


def identity(cfg: RunConfig) -> tuple[str, str]:
    """What makes two runs the same run: the config key and the precision this process trains in. The key leaves
    the precision out (`auto` differs between machines), but a run is only reused or continued in its own."""
    return cfg.key(), pick_precision(cfg.precision, pick_device(cfg.device))


def is_run_of(doc: dict, run: tuple[str, str]) -> bool:
    """Whether a run record is of this identity()."""
    return (doc.get("config_key"), trained_in(doc)) == run


def find_resumable(out: Path, cfg: RunConfig) -> Path | None:
    """The newest run folder under `out` of this config and precision whose record is not finished."""
    candidates, run = [], identity(cfg)
    for record in out.glob("*/record.json"):
        try:
            doc = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("status") != "done" and is_run_of(doc, run) and (record.parent / "checkpoint.pt").exists():
            candidates.append(record.parent)
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def check_resumable(run_dir: Path, cfg: RunConfig) -> None:
    """`--resume RUN_DIR`: a run folder with a checkpoint and a readable record of this same config and precision."""
    if not (run_dir / "checkpoint.pt").exists():
        raise UsageError(f"--resume {run_dir}: no checkpoint.pt there")
    try:
        doc = json.loads((run_dir / "record.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--resume {run_dir}: its record.json cannot be read ({e}); the run cannot be resumed "
                         f"as it was, start a new one without --resume") from None
    if doc.get("status") == "done":
        raise UsageError(f"--resume {run_dir}: that run has finished; its result is {run_dir / 'record.json'}")
    key, precision = identity(cfg)
    if doc.get("config_key") != key:
        raise UsageError(f"--resume {run_dir}: that run has another config (key {doc.get('config_key')}, this "
                         f"command line's is {key}); give the same flags as the run, or leave out --resume")
    if trained_in(doc) != precision:
        raise UsageError(f"--resume {run_dir}: that run trained in {trained_in(doc)} and this process would go on in "
                         f"{precision}: resume with --precision {trained_in(doc)}")


def read_checkpoint(run_dir: Path) -> dict:
    """The checkpoint of `run_dir`, on the CPU (random states must be); a file torch cannot read is bad input."""
    path = run_dir / "checkpoint.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged zip or pickle
        raise UsageError(f"--resume: cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0]}); it is "
                         f"damaged; the run folder is left as it is, start a new run without --resume") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UsageError(f"--resume: {path} is not an ablate checkpoint")
    return state


def prepare_out(out: Path) -> None:
    """Fails before any training when the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to output folder {out}: {e.strerror or e}") from None
