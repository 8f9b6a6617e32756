"""A real PostgreSQL for tests: one fresh database per test, dropped afterwards.

The server is the one CI starts (``.ci/run``): 127.0.0.1:5432, user ``postgres``, trust
authentication, and a database ``test`` to connect to while creating and dropping the others.
``ROBOT_SAC_TEST_PG_ADMIN_URL`` points the tests at another server (same rights needed:
CREATE DATABASE). A test that needs PostgreSQL and cannot reach it fails with one line saying
how to start it: it is never skipped, so CI cannot pass without running it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ADMIN_URL_VARIABLE = "ROBOT_SAC_TEST_PG_ADMIN_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
DATABASE_PREFIX = "robot_sac_"
HOW_TO_START = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(as root or postgres; .ci/run does this), or point "
    f"{ADMIN_URL_VARIABLE} at a server where user postgres may CREATE DATABASE"
)


def admin_url() -> str:
    """The URL of the maintenance database the fixtures connect to."""
    return os.environ.get(ADMIN_URL_VARIABLE) or DEFAULT_ADMIN_URL


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def database_of(url: str) -> str:
    """The database a ``postgresql://`` URL names."""
    return urlsplit(url).path.lstrip("/")


def _connect_admin(url: str, timeout_s: float = 5.0) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout_s)))


def pg_server_available(url: str | None = None, timeout_s: float = 2.0) -> bool:
    """Whether the test PostgreSQL answers (for benches that run only when it does)."""
    try:
        with _connect_admin(url or admin_url(), timeout_s) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _unreachable(url: str, exc: Exception) -> None:
    where = urlsplit(url)
    reason = " ".join(str(exc).split())  # psycopg's messages span lines; keep it to one
    pytest.fail(
        f"PostgreSQL is not reachable at {where.hostname}:{where.port or 5432} ({reason}); "
        + HOW_TO_START,
        pytrace=False,
    )


def database_exists(name: str, url: str | None = None) -> bool:
    with _connect_admin(url or admin_url()) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


class PgDatabases:
    """Creates fresh databases on the test server and drops every one of them on :meth:`close`."""

    def __init__(self, url: str | None = None) -> None:
        self.admin_url = url or admin_url()
        self.names: list[str] = []

    def create(self) -> str:
        """A new empty database; returns its URL (``postgresql://postgres@127.0.0.1:5432/<name>``)."""
        name = DATABASE_PREFIX + uuid.uuid4().hex[:12]
        failure: psycopg.OperationalError | None = None
        try:
            with _connect_admin(self.admin_url) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.OperationalError as exc:
            failure = exc
        if failure is not None:  # out of the except block: one line, not a chained traceback
            _unreachable(self.admin_url, failure)
        self.names.append(name)
        return with_database(self.admin_url, name)

    __call__ = create

    def close(self) -> None:
        """Drop the databases made here; ``WITH (FORCE)`` ends sessions a test left open."""
        names, self.names = self.names, []
        if not names:
            return
        with _connect_admin(self.admin_url) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@contextmanager
def fresh_databases(url: str | None = None) -> Iterator[PgDatabases]:
    """A :class:`PgDatabases` whose databases are dropped on leaving, whatever happened."""
    dbs = PgDatabases(url)
    try:
        yield dbs
    finally:
        dbs.close()


@contextmanager
def fresh_database(url: str | None = None) -> Iterator[str]:
    """The URL of one new database, dropped on leaving."""
    with fresh_databases(url) as dbs:
        yield dbs.create()
