"""Where a dataset's files are looked for: --data-dir, $ABLATE_DATA, ~/.cache/ablate, the Debian package."""
import os
from collections.abc import Callable
from pathlib import Path

from ...foundations.errors import DataError
from ...foundations.runtime import cache_dir

DEBIAN_DIR = Path("/usr/share/datasets")


def search_dirs(name: str) -> list[Path]:
    """The folders looked in without --data-dir, in order: $ABLATE_DATA, ~/.cache/ablate, the Debian package."""
    roots = [Path(d) for d in (os.environ.get("ABLATE_DATA"),) if d] + [cache_dir()]
    return [d for root in roots for d in (root / name, root)] + [DEBIAN_DIR / name]


def locate(name: str, data_dir: str | None, holds: Callable[[Path], bool]) -> Path | None:
    """The first folder that holds the dataset (`holds(folder)`), or None to download it.

    An explicit --data-dir is a promise: a folder that does not hold the dataset is an error, not a silent
    fallback to another copy.
    """
    if data_dir is not None:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataError(f"--data-dir {data_dir} is not a folder")
        found = next((d for d in (root / name, root) if holds(d)), None)
        if found is None:
            raise DataError(f"--data-dir {data_dir} does not hold {name} (looked in {root / name} and {root}); "
                            f"leave --data-dir out to use {cache_dir() / name} or download it there")
        return found
    return next((d for d in search_dirs(name) if holds(d)), None)
