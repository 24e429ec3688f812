"""Results store stage: where Optuna studies live (SQLite, a journal file, or any SQLAlchemy
URL such as PostgreSQL), with credentials masked in everything printed or written. Liveness
of workers is not the storage's business: see `ablate.workers` (one heartbeat for every kind)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import weakref
from pathlib import Path
from typing import Any, Iterator, NamedTuple
from urllib.parse import urlsplit

import optuna
from optuna.storages import RDBStorage

from ablate import _io
from ablate import record as records
from ablate._journal import open_journal
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


def local_path(url: str) -> Path | None:
    """The file a storage lives in on this machine: a journal file, or a SQLite database
    (sqlite:///PATH); None for a database server."""
    if is_journal(url):
        return Path(url)
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def storage_exists(url: str) -> bool:
    """Whether the storage at `url` already exists: its file for a journal or SQLite; a server
    is assumed to (opening it is how we learn whether it is reachable)."""
    path = local_path(url)
    return path is None or path.is_file()


_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_study_name(name: str, label: str = "--study-name") -> str:
    """`name` if it may name a study's results folder, else the one-line error naming `label`."""
    if not _STUDY_NAME.match(name):
        raise AblateError(f"{label} must be letters, digits, '.', '_' or '-' (it names a folder), got {name!r}")
    return name


def mask_url(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage at `url`; unreachable servers are a clear error."""
    if is_journal(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return open_journal(path)  # checked, a dead writer's partial last line set aside
    if (path := local_path(url)) is not None:  # SQLite: its folder, as for a journal
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open_rdb(url)
    except ImportError as exc:
        raise AblateError(f"--storage {mask_url(url)}: missing database driver ({exc}); {_driver_hint(url)}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "cannot open"
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or 'default port'}" if parts.hostname else mask_url(url)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AblateError(f"--storage {mask_url(url)}: cannot open storage at {where} ({mask_url(first_line)}); "
                          "check that the server is running and the URL is right") from None


_OPENED: weakref.WeakSet = weakref.WeakSet()  # database storages of this process still in use


def close_all() -> None:
    """Close the database connections of every storage this process still holds (a worker
    process ends through os._exit: a PostgreSQL or MySQL server then sees them closed, not
    dropped)."""
    for storage in list(_OPENED):
        with contextlib.suppress(Exception):
            storage.engine.dispose()
    _OPENED.clear()


def _open_rdb(url: str) -> RDBStorage:
    """Optuna's RDB storage at `url`, its tables created under a server-wide lock: several
    machines opening a fresh database at once would all create them, and MySQL/MariaDB DDL is
    not transactional, so the losers fail with "table already exists" half-way through."""
    # No Optuna RDB heartbeat: it exists for RDB storages only; ablate.workers beats the
    # same way for every storage kind.
    if url.startswith("sqlite"):
        # One machine: a file lock beside the database, since SQLite serialises writes but not
        # Optuna's check-then-create of its tables (two commands starting on a fresh file race).
        path = local_path(url)
        with file_lock(f"{path}.schema-lock") if path is not None else contextlib.nullcontext():
            storage = RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    else:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
        try:
            with engine.connect() as conn, server_lock(conn, "ablate-schema"):
                storage = RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        finally:
            engine.dispose()
    _OPENED.add(storage)
    return storage


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (created if needed) among the processes of this
    machine, released by the kernel if the holder dies: the file storages' lock."""
    import fcntl  # POSIX only, and only where a lock is taken

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def study_lock(url: str, storage, name: str) -> Iterator[None]:
    """An exclusive lock named `name` among every process using the storage at `url` (opened as
    `storage`): a file lock beside a journal or SQLite file (one machine), a server lock for
    PostgreSQL and MySQL (every machine). The tuner's: its default trial and confirmation runs."""
    path = local_path(url)
    if path is not None:
        with file_lock(f"{path}.{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}.lock"):
            yield
        return
    with storage.engine.connect() as conn, server_lock(conn, name):
        yield


LOCK_POLL_SECONDS = 10  # a MySQL GET_LOCK waits this long per try (MariaDB refuses "forever": -1)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"ablate:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def server_lock(conn, name: str) -> Iterator[None]:
    """An exclusive lock named `name`, held by the database server for the session of `conn`
    (PostgreSQL advisory lock, MySQL/MariaDB GET_LOCK): released by the server if this process
    dies. A lock is held only once the server said it granted it; GET_LOCK answers 1 (granted),
    0 (timed out: ask again) or NULL (an error, e.g. MariaDB's answer to a timeout of -1)."""
    import sqlalchemy

    key = _lock_key(name)
    if conn.dialect.name == "postgresql":
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        unlock, args = "SELECT pg_advisory_unlock(:k)", {"k": key}
    elif conn.dialect.name in ("mysql", "mariadb"):
        args = {"k": f"ablate-{key}"}  # MySQL lock names: at most 64 characters
        while True:
            granted = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, :t)"), {**args, "t": LOCK_POLL_SECONDS}).scalar()
            if granted == 1:
                break
            if granted is None:
                raise AblateError(f"the database server refused the lock {name!r} (GET_LOCK returned NULL)")
        unlock = "SELECT RELEASE_LOCK(:k)"
    else:
        raise AblateError(f"no cross-process lock for a {conn.dialect.name} database; use PostgreSQL, MySQL, "
                          "SQLite or a journal file")
    try:
        yield
    finally:
        conn.execute(sqlalchemy.text(unlock), args)
        conn.commit()


def _driver_hint(url: str) -> str:
    """How to install the driver a storage URL names."""
    dialect = urlsplit(url).scheme.split("+", 1)[0]
    if dialect in ("mysql", "mariadb"):
        return "pip install 'ablate[mysql]' (PyMySQL), and use mysql+pymysql://USER:PASSWORD@HOST/DB"
    if dialect == "postgresql":
        return "pip install 'psycopg[binary]', and use postgresql://USER:PASSWORD@HOST/DB"
    return f"install the SQLAlchemy driver for {dialect}"


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # Wait for a lock instead of failing at once when two processes write.
        return {"connect_args": {"timeout": 60}}
    if url.startswith(("postgresql", "mysql", "mariadb")):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def dashboard_command(url: str, artifact_dir: str | Path | None = None) -> str:
    """The exact command that opens this storage in optuna-dashboard (password masked), with
    the grid's artifact folder (each trial's run.json) when there is one."""
    return f"optuna-dashboard {mask_url(url)}" + (f" --artifact-dir {artifact_dir}" if artifact_dir else "")


# --------------------------------------------------------------------------- artifacts
ARTIFACT_DIR = "artifacts"  # the default artifact folder: <results-dir>/<study>/artifacts
PREDICTIONS_FILE = "predictions.png"  # a run's masks for the report gallery's val images (`predict.gallery_predictions`)
KEEP_CHECKPOINTS = ("best", "all", "none")


class Artifacts(NamedTuple):
    spec: str  # what trials record: an absolute folder or s3://bucket/prefix
    store: Any  # the Optuna artifact store there


def default_artifacts(results_dir: str | Path, study_name: str) -> str:
    return str((study_dir(results_dir, study_name) / ARTIFACT_DIR).resolve())


def artifact_spec(spec: str | Path) -> str:
    """What a trial records as the place of its files: an S3 URL as given, a folder as an
    absolute path (the same string on every process of one machine)."""
    spec = str(spec)
    return spec.rstrip("/") if spec.startswith("s3://") else str(Path(spec).expanduser().resolve())


def artifacts(spec: str | Path, *, create: bool = True) -> Artifacts:
    spec = artifact_spec(spec)
    return Artifacts(spec, open_artifacts(spec, create=create))


def open_artifacts(spec: str | Path, *, create: bool = True):
    """The Optuna artifact store at `spec`: a folder (FileSystemArtifactStore; created when
    `create`) or s3://BUCKET[/PREFIX] (Boto3ArtifactStore, with the usual AWS credentials and
    AWS_ENDPOINT_URL for MinIO or another S3-compatible server; needs `pip install boto3`)."""
    from optuna.artifacts import FileSystemArtifactStore

    spec = artifact_spec(spec)
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://"):].partition("/")
        if not bucket:
            raise AblateError(f"--artifacts {spec}: expected s3://BUCKET or s3://BUCKET/PREFIX")
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise AblateError(f"--artifacts {spec}: an S3 artifact store needs boto3; pip install boto3") from None
        from optuna.artifacts import Boto3ArtifactStore

        s3 = Boto3ArtifactStore(bucket)
        return _Prefixed(s3, prefix) if prefix else s3
    folder = Path(spec)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AblateError(f"--artifacts {spec}: cannot create the artifact folder ({exc})") from None
    elif not folder.is_dir():
        raise AblateError(f"--artifacts {spec}: no such folder; pass --artifacts with the study's artifact folder")
    return FileSystemArtifactStore(str(folder))


class _Prefixed:
    """An artifact store whose ids live under a key prefix (several studies in one bucket)."""

    def __init__(self, inner, prefix: str):
        self._inner, self._prefix = inner, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str):
        return self._inner.open_reader(self._prefix + artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self._inner.write(self._prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._inner.remove(self._prefix + artifact_id)


def attach(storage, trial_id: int, artifacts, path: Path) -> str:
    """Upload `path` into the artifact store as an artifact of the (still running) trial;
    returns its artifact id. Failures are errors: the store is the only copy."""
    from optuna.artifacts import upload_artifact

    mimetype = "application/json" if path.suffix == ".json" else ("image/png" if path.suffix == ".png"
                                                                  else "application/octet-stream")
    try:
        return upload_artifact(artifact_store=artifacts, file_path=str(path), study_or_trial=storage.get_trial(trial_id),
                               storage=storage, mimetype=mimetype)
    except OSError as exc:
        raise AblateError(f"{path.name}: cannot upload to the artifact store ({exc}); check --artifacts") from None


def attach_run(storage, trial_id: int, record: dict, run_dir: Path, artifacts: Artifacts, *, completed: bool,
               with_checkpoint: bool) -> None:
    """Attach a finished run's files to its (still running) trial: run.json always; for a
    completed run its predictions of the report gallery's val images when it drew them
    (predictions.png, `predict.gallery_predictions`: the gallery then needs no checkpoint) and,
    `with_checkpoint` (the run wrote one because --keep-checkpoints may keep it), its best.pt.
    Used by the grid's cells and the tuner's trials alike."""
    if not (run_dir / records.RECORD_FILE).is_file():
        records.write(run_dir, record, None)
    storage.set_trial_user_attr(trial_id, "artifact_store", artifacts.spec)
    attach(storage, trial_id, artifacts.store, run_dir / records.RECORD_FILE)
    if not completed:
        return
    predictions = run_dir / PREDICTIONS_FILE
    if predictions.is_file():
        attach(storage, trial_id, artifacts.store, predictions)
    if with_checkpoint:
        checkpoint = run_dir / records.CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise AblateError(f"{checkpoint}: the completed run left no checkpoint")
        attach(storage, trial_id, artifacts.store, checkpoint)


def artifact_ids(system_attrs: dict) -> dict[str, str]:
    """filename -> artifact id of the artifacts recorded in a trial's (or study's) system
    attributes by `optuna.artifacts.upload_artifact`."""
    out = {}
    for key, value in system_attrs.items():
        if key.startswith("artifacts:"):
            meta = json.loads(value)
            out[meta["filename"]] = meta["artifact_id"]
    return out


PRUNED_PREFIX = "pruned_checkpoint:"  # study user attr per checkpoint removed by --keep-checkpoints best


def mark_pruned(storage, study_id: int, artifact_id: str) -> None:
    """Record, before removing it, that a finished trial's checkpoint artifact is removed on
    purpose (a finished trial's artifact list cannot change). One attr per id, so workers
    that prune at the same time never overwrite each other's marks."""
    storage.set_study_user_attr(study_id, PRUNED_PREFIX + artifact_id, True)


def pruned_ids(study_user_attrs: dict) -> set[str]:
    """The checkpoint artifact ids `mark_pruned` recorded."""
    return {k[len(PRUNED_PREFIX):] for k in study_user_attrs if k.startswith(PRUNED_PREFIX)}


def remove_artifact(artifacts: Artifacts, artifact_id: str) -> None:
    """Remove an artifact; one already gone (another worker pruned it first) is fine."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        artifacts.store.remove(artifact_id)
    except ArtifactNotFound:
        pass
    except OSError as exc:
        raise AblateError(f"cannot remove artifact {artifact_id} from {artifacts.spec} ({exc})") from None


def prune_trial_checkpoints(storage, study_id: int, trials, artifacts: Artifacts, *, keep: set[int]) -> list[str]:
    """Remove from `artifacts` the checkpoint of every COMPLETE trial among `trials` whose
    number is not in `keep` (a trial whose files went to another store is left to that
    store's machine), each marked first (`mark_pruned`) so the report says "pruned", not
    "missing". Returns the ids removed now. The grid's and the tuner's --keep-checkpoints best."""
    from optuna.trial import TrialState

    pruned, removed = pruned_ids(storage.get_study_user_attrs(study_id)), []
    for t in trials:
        aid = artifact_ids(t.system_attrs).get(records.CHECKPOINT_FILE)
        if (t.state != TrialState.COMPLETE or t.number in keep or not aid or aid in pruned
                or t.user_attrs.get("artifact_store") != artifacts.spec):
            continue
        mark_pruned(storage, study_id, aid)
        remove_artifact(artifacts, aid)
        removed.append(aid)
    return removed


def fetch(artifacts, artifact_id: str, dest: Path, *, what: str) -> Path:
    """Download one artifact to `dest` (atomically; an existing file is reused: artifact ids
    are never reused for other content). A missing artifact is an error naming `what`."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    if dest.is_file():
        return dest
    try:
        with artifacts.open_reader(artifact_id) as reader:
            data = reader.read()
    except ArtifactNotFound:
        raise AblateError(f"{what}: artifact {artifact_id} is missing from the artifact store; pass the study's "
                          "--artifacts, or rerun the cell") from None
    except OSError as exc:
        raise AblateError(f"{what}: cannot read artifact {artifact_id} ({exc})") from None
    return _io.write_bytes(dest, data)
