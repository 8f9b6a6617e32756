"""Shared fixtures: services on loopback, fresh PostgreSQL databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import OPERATOR_TOKEN, ROBOT_TOKEN, ThreadService, start_thread_service

if TYPE_CHECKING:  # tests.pg imports psycopg (the postgres extra) only when a test needs it
    from tests.pg import PgDatabases


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ThreadService]:
    """A service without tokens (loopback only), on a fresh data directory."""
    svc = start_thread_service(tmp_path / "data")
    yield svc
    svc.stop()


@pytest.fixture
def secured_service(tmp_path: Path) -> Iterator[ThreadService]:
    """A service with a robot token and an operator token."""
    svc = start_thread_service(
        tmp_path / "data", robot_token=ROBOT_TOKEN, operator_token=OPERATOR_TOKEN
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="session", autouse=True)
def _drop_store_test_databases() -> Iterator[None]:
    """Drop the PostgreSQL databases the store tests created, once the session ends."""
    yield
    from tests.store_backends import drop_test_databases

    drop_test_databases()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test (``postgresql://postgres@127.0.0.1:5432/...``),
    dropped afterwards. Fails (never skips) with how to start the server if it is down."""
    from tests.pg import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture
def make_pg_url() -> Iterator[PgDatabases]:
    """``make_pg_url()`` makes one more fresh database and returns its URL; all are dropped
    after the test."""
    from tests.pg import fresh_databases

    with fresh_databases() as dbs:
        yield dbs
