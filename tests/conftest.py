"""Shared fixtures: services on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import OPERATOR_TOKEN, ROBOT_TOKEN, ThreadService, start_thread_service


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
