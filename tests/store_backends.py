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
# The databases this test session made: the only ones it drops. Other sessions (another worktree,
# CI jobs on one server) have their own, in use while this one ends.
_created: set[str] = set()


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
    _created.add(name)
    return with_database(PG_ADMIN, name)


def drop_test_databases() -> None:
    """Drop the databases this session made (never another session's: it may be using them)."""
    if not _created or not pg_server_available(PG_ADMIN):
        return
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        for name in sorted(_created):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _created.clear()


def open_backend(backend: str, spec: TaskSpec, where: Path) -> Store:
    """Open the ``backend`` store at ``where``: a new path is a new, empty store, the same path
    reopens the same store (the PostgreSQL backend maps the path to a database of its own)."""
    if backend == "sqlite":
        return open_store(spec, where)
    if backend == "postgres":
        return open_store(spec, where, url=pg_database_for(where))
    raise AssertionError(f"no such backend in this test file: {backend}")
