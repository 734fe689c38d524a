"""Where a study lives: a journal file by default, or a database named by URL.

SQLite serialises writers with a database-wide lock that parallel workers hit as "database is
locked"; Optuna's journal file appends under a file lock instead, so it is the default and the
choice for several workers or processes on one machine (or a shared file system).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from apt import AptError

JOURNAL = "journal.log"
#: Seconds after which a journal lock left by a killed process is broken (the lock is held for milliseconds).
LOCK_GRACE_S = 10


def describe(url: str | None, study_dir: Path) -> str:
    """The storage as printed to the user: the URL without its password."""
    return str(study_dir / JOURNAL) if url is None else re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def database_url(url: str) -> str:
    """SQLAlchemy's form of a PostgreSQL URL: ``postgres://`` and plain ``postgresql://`` use psycopg 3
    when psycopg2 (SQLAlchemy's default driver) is not installed."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        has_psycopg2 = importlib.util.find_spec("psycopg2") is not None
        if importlib.util.find_spec("psycopg") is not None and not has_psycopg2:
            return f"postgresql+psycopg://{rest}"
        if not has_psycopg2:
            raise AptError("--storage postgresql:// needs a PostgreSQL driver: pip install 'apt-plugin-tune[postgres]'")
        return f"postgresql://{rest}"
    return url


def open_storage(url: str | None, study_dir: Path, workers: int) -> Any:
    """An Optuna storage for ``--storage URL`` (None: the journal file in the study directory)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    if url is None or "://" not in url:
        path = study_dir / JOURNAL if url is None else Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileSymlinkLock(str(path), grace_period=LOCK_GRACE_S)
        backend = JournalFileBackend(str(path), lock_obj=lock)
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:") and workers > 1:
        raise AptError(f"--storage {url} cannot serve --workers {workers}: SQLite locks the whole database per "
                       "writer; leave --storage out (a journal file safe for several workers) or use postgresql://")
    try:
        return optuna.storages.RDBStorage(database_url(url), engine_kwargs={"pool_pre_ping": True})
    except AptError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AptError(f"--storage {describe(url, study_dir)}: cannot open the database ({first})") from None
