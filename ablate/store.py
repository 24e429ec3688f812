"""Results store stage: where Optuna studies live (SQLite, a journal file, or any SQLAlchemy
URL such as PostgreSQL), with credentials masked in everything printed or written. Liveness
of workers is not the storage's business: see `ablate.workers` (one heartbeat for every kind)."""
from __future__ import annotations

import random
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from ablate.errors import AblateError

def study_dir(results_dir: str | Path, study_name: str) -> Path:
    return Path(results_dir) / study_name


def default_storage(results_dir: str | Path, study_name: str, workers: int = 1) -> str:
    """SQLite for one process, Optuna's journal file for several; an existing one is reused
    so that a study keeps its storage when the worker count changes between reruns."""
    folder = study_dir(results_dir, study_name)
    sqlite, journal = folder / "optuna.db", folder / "optuna.journal"
    if sqlite.exists():
        return f"sqlite:///{sqlite}"
    if journal.exists() or workers > 1:
        return str(journal)
    return f"sqlite:///{sqlite}"


def is_journal(url: str) -> bool:
    return "://" not in url


def mask_url(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage at `url`; unreachable servers are a clear error."""
    if is_journal(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open_rdb(url)
    except ImportError as exc:
        raise AblateError(f"--storage {mask_url(url)}: missing database driver ({exc}); pip install 'psycopg[binary]'") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "cannot open"
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or 'default port'}" if parts.hostname else mask_url(url)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AblateError(f"--storage {mask_url(url)}: cannot open storage at {where} ({mask_url(first_line)}); "
                          "check that the server is running and the URL is right") from None


def _open_rdb(url: str, attempts: int = 6) -> RDBStorage:
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            # No Optuna RDB heartbeat: it exists for RDB storages only; ablate.workers beats
            # the same way for every storage kind.
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Several workers opening a fresh database at once all create Optuna's tables; the
            # losers of that race see "duplicate key"/"already exists" and simply try again.
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # Wait for a lock instead of failing at once when two processes write.
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def dashboard_command(url: str, artifact_dir: str | Path | None = None) -> str:
    """The exact command that opens this storage in optuna-dashboard (password masked), with
    the grid's artifact folder (each trial's run.json) when there is one."""
    return f"optuna-dashboard {mask_url(url)}" + (f" --artifact-dir {artifact_dir}" if artifact_dir else "")
