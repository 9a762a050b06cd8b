"""The one opener of an optuna storage for `study` and `report`: an RDB URL or a journal file, its password hidden
in every message, and anything unusable a UsageError that says why."""
from __future__ import annotations

import random
import re
import time
from pathlib import Path
from urllib.parse import unquote

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .errors import UsageError

JOURNAL_SUFFIXES = (".log", ".journal")
# USER:PASSWORD@ after the scheme, up to the LAST @: a password may hold @, / or ? that a parser splits elsewhere (and a
# driver's message then shows a piece of it), so all of it is hidden, whatever the URL's shape; also where `://` was
# mistyped (postgresql:USER:PASSWORD@HOST, USER:PASSWORD@HOST)
USERINFO = re.compile(r"^(?P<head>.*?://[^:/]*):(?P<secret>.*)@", re.S)
USERINFO_NO_SLASHES = re.compile(r"^(?P<head>(?:[A-Za-z][\w+.-]*:)?[^:/]*):(?P<secret>.*)@", re.S)
# a query (or libpq key=value) parameter that may hold a credential; its value runs to the next `KEY=`
CREDENTIAL = re.compile(r"(?P<key>(?:^|[?&;\s])[^=&;?#\s]*(?:pass|pwd|secret|token|key|auth|cred)[^=&;?#\s]*=)"
                        r"(?P<secret>.*?)(?=[&;\s][^=&;?#\s]*=|\Z)", re.S | re.I)
FORMS = "sqlite:///FILE, postgresql://USER:PASS@HOST/DB, mysql+pymysql://..., journal:FILE or a FILE ending .log/.journal"


def journal_path(url: str) -> Path | None:
    """`journal:PATH`, or a bare PATH ending .log/.journal: a journal file, for shared filesystems."""
    if url.startswith("journal:"):
        return Path(url.split(":", 1)[1])
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return Path(url)
    return None


def masked(url: str) -> str:
    """The storage URL with its password and credential parameters hidden, for messages and summaries. Read by
    pattern, not parsed: a URL that does not parse is hidden all the same."""
    found = userinfo(url)
    text = url if found is None else found["head"] + ":***@" + url[found.end():]
    return CREDENTIAL.sub(lambda m: m["key"] + "***", text)


def userinfo(url: str) -> re.Match | None:
    return (USERINFO if "://" in url else USERINFO_NO_SLASHES).match(url)


def secrets(url: str) -> list[str]:
    """What masked() hides, as written and percent-decoded, longest first."""
    found = [m["secret"] for m in (userinfo(url), *CREDENTIAL.finditer(url)) if m and m["secret"]]
    return sorted({form for s in found for form in (s, unquote(s))}, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """`text` (a parser's or driver's message) with the secrets of `url` hidden wherever they appear in it."""
    for secret in secrets(url):
        text = text.replace(secret, "***")
    return text


def first_line(e: BaseException, url: str = "") -> str:
    """The first line of an error's message, with the secrets of the storage `url` it may quote hidden."""
    return scrubbed((str(e).strip().splitlines() or [type(e).__name__])[0], url)


def open_storage(url: str, create: bool = True, heartbeat: int | None = None) -> BaseStorage:
    """An optuna storage for --storage. create=False (report) only reads: it never makes a database or a file.
    With `heartbeat` seconds, RDB storages record trial heartbeats (a dead worker's trial goes stale after 2x)."""
    path = journal_path(url)
    if path is not None:
        return open_journal(url, path, create)
    if "://" not in url:
        raise UsageError(f"--storage {masked(url)!r} is not a storage; valid: {FORMS}")
    password = userinfo(url)
    if password and "@" in password["secret"]:  # a parser would take a piece of the password for the host
        raise UsageError(f"--storage {masked(url)}: the password (or the URL before the host) holds an '@'; write "
                         f"it percent-encoded, as %40")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise UsageError(f"--storage {masked(url)}: not a storage URL ({first_line(e, url)}); "
                         f"e.g. sqlite:///ablate.db") from None
    if parsed.drivername.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise UsageError(f"--storage {masked(url)}: an in-memory SQLite database is gone when the process exits and "
                         f"is not shared with worker processes; name a file, e.g. sqlite:///ablate.db")
    if not create and parsed.drivername.startswith("sqlite") and not (parsed.database and Path(parsed.database).is_file()):
        raise UsageError(f"--storage {masked(url)}: no such file; run a study first "
                         f"(`python -m ablate study FILE --storage {masked(url)}`)")
    # SQLite: wait for other workers' writes instead of failing with "database is locked"; servers: fail in 10 s
    engine_kwargs = ({"connect_args": {"timeout": 60}} if parsed.drivername.startswith("sqlite") else
                     {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
                     if parsed.drivername.startswith(("postgresql", "mysql")) else {})
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=not create,
                                              heartbeat_interval=heartbeat, grace_period=heartbeat and 2 * heartbeat)
        except ImportError as e:
            raise UsageError(f"cannot open storage {masked(url)}: no database driver "
                             f"({first_line(e.__cause__ or e, url)}); install it, or name an installed one in the URL, "
                             f"e.g. postgresql+psycopg2://") from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError, optuna.exceptions.OptunaError) as e:
            if create and attempt < 2 and creating_tables_at_once(e):
                time.sleep(random.uniform(0.2, 1.0))
                continue
            reason = first_line(getattr(e, "orig", None) or e.__cause__ or e, url)
            hint = "" if create else " (is it an optuna storage?)"
            raise UsageError(f"cannot open storage {masked(url)}{hint}: {reason}") from None


def open_journal(url: str, path: Path, create: bool) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    if create and not path.parent.is_dir():
        raise UsageError(f"--storage {masked(url)}: folder {masked(str(path.parent))} does not exist")
    if not create and not path.is_file():
        raise UsageError(f"--storage {masked(url)}: no such journal file; give an existing journal file or an RDB "
                         f"URL such as sqlite:///ablate.db or postgresql://user@host/db")
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except (OSError, ValueError) as e:
        raise UsageError(f"--storage {masked(url)}: cannot open the journal file: {first_line(e, url)}") from None


def creating_tables_at_once(e: Exception) -> bool:
    """Workers that open a new database together race to create optuna's tables; the losers find them made."""
    return isinstance(e, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) or (
        isinstance(e, sqlalchemy.exc.OperationalError) and "already exists" in str(e))
