"""The store backends every store test runs against: SQLite in a directory, and PostgreSQL on
the machine's server (127.0.0.1:5432, trust auth), each test's store in a database of its own."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg

from robot_sac.schemas import TaskSpec
from robot_sac.store import Store, open_store
from tests.pg import admin_url, pg_server_available, with_database

BACKENDS = ["sqlite", "postgres"]
PG_ADMIN = admin_url()
PG_PREFIX = "rs_store_"


def pg_database_for(where: Path) -> str:
    """The URL of the PostgreSQL database standing for the path ``where`` (created if missing):
    each test's store in a database of its own, the same path the same database."""
    name = PG_PREFIX + hashlib.sha1(str(where).encode()).hexdigest()[:24]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        try:
            admin.execute(f"CREATE DATABASE {name}")
        except psycopg.errors.DuplicateDatabase:
            pass
        except psycopg.errors.UniqueViolation:  # two processes creating it at once
            pass
    return with_database(PG_ADMIN, name)


def drop_test_databases() -> None:
    if not pg_server_available(PG_ADMIN):
        return  # nothing was created on a server that is not there
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        names = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (PG_PREFIX + "%",)
        ).fetchall()
        for (name,) in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def open_backend(backend: str, spec: TaskSpec, where: Path) -> Store:
    """Open the ``backend`` store at ``where``: a new path is a new, empty store, the same path
    reopens the same store (the PostgreSQL backend maps the path to a database of its own)."""
    if backend == "sqlite":
        return open_store(spec, where)
    if backend == "postgres":
        return open_store(spec, where, url=pg_database_for(where))
    raise AssertionError(f"no such backend in this test file: {backend}")
