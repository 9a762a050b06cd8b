"""Run folders: `<out>/<run-id>/record.json` and `checkpoint.pt`, finding the run to resume, and `run()`."""
import json
import os
import pickle
import re
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
from .trainer import Trainer, one_line, unusable_checkpoint


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


def is_run_of(doc, run: tuple[str, str]) -> bool:
    """Whether a parsed record.json is a run record (record_problem) of this identity()."""
    return record_problem(doc) is None and (doc["config_key"], trained_in(doc)) == run


def record_problem(doc) -> str | None:
    """What keeps a parsed record.json from being a run record that can be matched and resumed; None if nothing."""
    if not isinstance(doc, dict):
        return f"it holds a JSON {json_type(doc)}, not an object"
    for key, types in (("config_key", str), ("status", str), ("precision", (str, type(None))),
                       ("device", (str, type(None)))):
        if key not in doc and types is str:
            return f"it has no {key!r}"
        if not isinstance(doc.get(key), types):
            return f"its {key!r} is a JSON {json_type(doc[key])}, not a string"
    return None


def json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def find_resumable(out: Path, cfg: RunConfig) -> Path | None:
    """The newest run folder under `out` of this config and precision whose record is not finished."""
    candidates, run = [], identity(cfg)
    for record in out.glob("*/record.json"):
        try:
            doc = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        # a file that is not a run record (is_run_of: False) is skipped like an unreadable one, not refused: one stray
        # or damaged folder must not block every --resume under --out; `--resume RUN_DIR` names and checks one
        if is_run_of(doc, run) and doc["status"] != "done" and (record.parent / "checkpoint.pt").exists():
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
    problem = record_problem(doc)
    if problem:
        raise UsageError(f"--resume {run_dir}: its record.json is not a run record ({problem}); the run cannot be "
                         f"resumed as it was, start a new one without --resume")
    if doc["status"] == "done":
        raise UsageError(f"--resume {run_dir}: that run has finished; its result is {run_dir / 'record.json'}")
    key, precision = identity(cfg)
    if doc["config_key"] != key:
        raise UsageError(f"--resume {run_dir}: that run has another config (key {doc['config_key']}, this "
                         f"command line's is {key}); give the same flags as the run, or leave out --resume")
    if trained_in(doc) != precision:
        raise UsageError(f"--resume {run_dir}: that run trained in {trained_in(doc)} and this process would go on in "
                         f"{precision}: resume with --precision {trained_in(doc)}")


# what Trainer.state writes: key -> the types its value may have ("precision" may be missing: runs from before it)
CHECKPOINT = {"model": dict, "optimizer": dict, "scheduler": dict, "history": list, "steps": int,
              "ema": (dict, type(None)), "train_time": (int, float), "train_images": int, "torch_rng": torch.Tensor,
              "augment_rng": torch.Tensor, "python_rng": tuple, "numpy_rng": dict,
              "cuda_rng": (torch.Tensor, type(None)), "rank_rng": (list, type(None))}


def read_checkpoint(run_dir: Path) -> dict:
    """The checkpoint of `run_dir`, on the CPU (random states must be). It is untrusted: loaded with
    weights_only=True (tensors and plain values; a pickle that would run code is refused) and checked for the
    structure Trainer.state writes before any training object sees it. Either failing is bad input naming the file."""
    path = run_dir / "checkpoint.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise unusable_checkpoint(path, f"it cannot be read ({type(e).__name__}): the file is damaged") from None
        found = re.search(r"GLOBAL [\w.]+", str(e))
        raise unusable_checkpoint(path, "it cannot be loaded safely: it holds objects other than tensors and plain "
                                        f"values{f' ({found.group(0)})' if found else ''}, so it was written by an "
                                        f"older ablate or not by ablate") from None
    except Exception as e:  # torch raises many types for a damaged zip
        raise unusable_checkpoint(path, f"it cannot be read ({one_line(e)}): the file is damaged") from None
    problem = checkpoint_problem(state)
    if problem:
        raise unusable_checkpoint(path, f"it is not a checkpoint of this ablate ({problem}): it is damaged, or was "
                                        f"written by an older ablate or not by ablate")
    return state


def checkpoint_problem(state) -> str | None:
    """What keeps a loaded checkpoint from having CHECKPOINT's structure; None if nothing."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    missing = [key for key in CHECKPOINT if key not in state]
    if missing:
        return f"no {', '.join(map(repr, missing))}"
    for key, types in {**CHECKPOINT, "precision": (str, type(None))}.items():
        if not isinstance(state.get(key), types):
            return f"its {key!r} is a {type(state.get(key)).__name__}"
    if not all(isinstance(entry, dict) for entry in state["history"]):
        return "its 'history' holds entries that are not dicts"
    return None


def prepare_out(out: Path) -> None:
    """Fails before any training when the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to output folder {out}: {e.strerror or e}") from None
