"""How `study` and `report` read a --storage value: a journal file or an RDB URL, and its password hidden."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

JOURNAL_SUFFIXES = (".log", ".journal")


def journal_path(url: str) -> Path | None:
    """`journal:PATH`, or a bare PATH ending .log/.journal: a journal file, for shared filesystems."""
    if url.startswith("journal:"):
        return Path(url.split(":", 1)[1])
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return Path(url)
    return None


def masked(url: str) -> str:
    """The storage URL with any password hidden, for messages and summaries."""
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # shown as given; it fails to open anyway
        return url
