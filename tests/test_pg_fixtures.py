"""The PostgreSQL fixtures: a fresh database per test, dropped after it; a clear failure when the
server is down."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.pg import (
    DATABASE_PREFIX,
    PgDatabases,
    database_exists,
    database_of,
    fresh_database,
    pg_server_available,
)
from tests.servers import free_port

# What the two fixture tests below saw; the third checks it (pytest runs a module in order).
SEEN: list[str] = []


def _current_database(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return row[0]


def test_pg_url_is_a_fresh_empty_database(pg_url: str):
    name = database_of(pg_url)
    assert name.startswith(DATABASE_PREFIX)
    assert pg_url == f"postgresql://postgres@127.0.0.1:5432/{name}"
    assert database_exists(name)
    assert _current_database(pg_url) == name
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (x int)")  # this test's own; the next one will not see it
    SEEN.append(name)


def test_pg_url_another_test_gets_another_database(pg_url: str):
    name = database_of(pg_url)
    assert database_exists(name)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT to_regclass('public.t')").fetchone()
    assert row == (None,)
    SEEN.append(name)


def test_pg_url_databases_are_dropped_after_their_tests():
    if len(SEEN) != 2:  # only in a partial run (-k): a whole run always has both
        pytest.skip("needs the two tests above, which record their databases")
    assert SEEN[0] != SEEN[1]
    for name in SEEN:
        assert not database_exists(name)


def test_make_pg_url_makes_several(make_pg_url: PgDatabases):
    urls = [make_pg_url(), make_pg_url(), make_pg_url()]
    names = [database_of(u) for u in urls]
    assert len(set(names)) == 3
    assert all(database_exists(n) for n in names)
    assert [_current_database(u) for u in urls] == names


def test_databases_are_dropped_even_with_a_session_left_open():
    with fresh_database() as url:
        name = database_of(url)
        leftover = psycopg.connect(url)  # a test that forgot to close its connection
        assert database_exists(name)
    try:
        assert not database_exists(name)
        with pytest.raises(psycopg.OperationalError):
            leftover.execute("SELECT 1")  # DROP ... WITH (FORCE) ended its session
    finally:
        leftover.close()


def test_databases_are_dropped_when_the_test_fails():
    names = []
    try:
        with fresh_database() as url:
            names.append(database_of(url))
            raise RuntimeError("the test failed")
    except RuntimeError:
        pass
    assert len(names) == 1
    assert not database_exists(names[0])


def test_an_unreachable_server_fails_in_one_line_saying_how_to_start_it():
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    assert pg_server_available()
    started = time.monotonic()
    assert not pg_server_available(down)
    dbs = PgDatabases(down)
    with pytest.raises(pytest.fail.Exception) as failed:
        dbs.create()
    assert time.monotonic() - started < 5
    message = str(failed.value)
    assert "\n" not in message
    assert "PostgreSQL is not reachable at 127.0.0.1:" in message
    assert "pg_ctlcluster" in message
    assert dbs.names == []
    dbs.close()  # nothing to drop, nothing to connect to
