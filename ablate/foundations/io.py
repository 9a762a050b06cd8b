"""Atomic writes: results files are written to a temp file in the same folder, then renamed."""
import json
import os
import tempfile
from pathlib import Path

import torch

UMASK = os.umask(0o022)  # read once at import (setting it is process-wide, so not from threads later), restored
os.umask(UMASK)


def atomic_write(path: Path, write) -> None:
    """Calls write(file) on a temp file next to `path`, fsyncs, and renames it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; results files get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, doc) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode()))


def save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))
