"""Shared fixtures. Resources a laptop may lack (the shared rocks-voc data, PostgreSQL,
MariaDB/MySQL, Chromium) skip cleanly there, but CI sets ABLATE_REQUIRE_ALL=1 and a missing one fails."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROCKS_VOC = Path(os.environ.get("ABLATE_ROCKS_VOC", ROOT.parent / "shared" / "data" / "rocks-voc"))
PG_ADMIN_URL = os.environ.get("ABLATE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("ABLATE_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def skip_or_fail(reason: str) -> None:
    """Skip on a user's machine; fail in CI, where every resource must be present."""
    if os.environ.get("ABLATE_REQUIRE_ALL") == "1":
        pytest.fail(f"required in CI (ABLATE_REQUIRE_ALL=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def rocks_voc() -> Path:
    if not (ROCKS_VOC / "VOC2007" / "JPEGImages").is_dir():
        skip_or_fail(f"shared dataset not found at {ROCKS_VOC}")
    return ROCKS_VOC


@contextlib.contextmanager
def _fresh_database(admin_url: str, server: str, create: str, drop: str):
    """A new, empty database on the server of `admin_url` for one test, dropped afterwards."""
    try:
        import sqlalchemy
        engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        conn = engine.connect()
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        skip_or_fail(f"{server} not reachable at {admin_url}: {type(exc).__name__}: {exc}")
    name = f"ablate_test_{uuid.uuid4().hex[:12]}"
    conn.execute(sqlalchemy.text(create.format(name=name)))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        conn.execute(sqlalchemy.text(drop.format(name=name)))
        conn.close()
        engine.dispose()


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with _fresh_database(PG_ADMIN_URL, "PostgreSQL", 'CREATE DATABASE "{name}"',
                         'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)') as url:
        yield url


@pytest.fixture
def mysql_url():
    """A fresh, empty MariaDB/MySQL database (PyMySQL driver: `ablate[mysql]`) for one test."""
    with _fresh_database(MYSQL_ADMIN_URL, "MariaDB/MySQL", "CREATE DATABASE `{name}`",
                         "DROP DATABASE IF EXISTS `{name}`") as url:
        yield url


def storage_url(kind: str, tmp_path: Path, request) -> str:
    """A storage of `kind` (journal, sqlite, postgresql, mysql) for one test."""
    if kind in ("postgresql", "mysql"):
        return request.getfixturevalue(f"{kind if kind == 'mysql' else 'postgres'}_url")
    return {"journal": str(tmp_path / "optuna.journal"), "sqlite": f"sqlite:///{tmp_path / 'optuna.db'}"}[kind]


@pytest.fixture(scope="session")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("Chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decode cache for the whole session, so tests share decoded datasets."""
    return tmp_path_factory.mktemp("cache")


def wsgi_json_getter(app):
    """GET `path` from a WSGI app in-process (optuna-dashboard's API) and return its JSON."""
    import json
    from wsgiref.util import setup_testing_defaults

    def get(path: str) -> dict:
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)
    return get


@pytest.fixture
def seen(monkeypatch):
    """What `fit` hands to train_one_epoch (loss function, optimizer) and the lr of every
    optimizer step, read as the step is taken."""
    seen = {"lrs": []}
    from ablate import engine

    real = engine.train_one_epoch

    def spy(*args, **kwargs):
        optimizer = kwargs["optimizer"]
        seen["loss_fn"], seen["optimizer"] = kwargs["loss_fn"], optimizer
        step = optimizer.step

        def logged(*a, **k):
            seen["lrs"].append(optimizer.param_groups[0]["lr"])
            return step(*a, **k)
        optimizer.step = logged
        try:
            return real(*args, **kwargs)
        finally:
            optimizer.step = step

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    return seen
