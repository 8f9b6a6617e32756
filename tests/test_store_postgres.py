"""What only the PostgreSQL store has to prove: a tail that never skips a row when transactions
commit out of order, announcements that reach other processes at once, its schema table, and
connections that come back by themselves. The rest of its behaviour is the shared store suite
(tests/test_store*.py, parametrised over both backends). On the machine's real PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.store import StoreError, TransitionConflict, open_existing, open_store
from robot_sac.store.postgres import PostgresStore
from tests.store_backends import PG_ADMIN, pg_database_for
from tests.test_store import SPEC, all_rows, make_policy_bytes, step, tags
from tests.test_store_sources import downgrade_postgres_to_schema_2


@pytest.fixture
def url(tmp_path: Path) -> str:
    return pg_database_for(tmp_path / "data")


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    opened = open_store(SPEC, url=url, busy_timeout_s=5.0)
    assert isinstance(opened, PostgresStore)
    yield opened
    opened.close()


def test_a_transaction_that_commits_after_a_later_one_is_still_read_in_order(
    store: PostgresStore, url: str
) -> None:
    # T1 (robot "a", this store) starts first and is held open by a lock an outside session
    # keeps on its episode's tally row; T2 (robot "b", another replica's store) starts later and
    # commits first. A reader that took positions as they became visible would pass T2's and
    # never see T1's.
    store.append([step(0, robot="a", tag=0.0)])  # creates the tally row T1 will wait on
    cursor = int(store.read_after(0, 10).position[-1])
    blocker = psycopg.connect(url)
    blocker.execute("SELECT * FROM episode_tallies WHERE robot_id = 'a' FOR UPDATE")
    first = threading.Thread(target=store.append, args=([step(1, robot="a", tag=1.0)],))
    first.start()
    with psycopg.connect(url, autocommit=True) as probe:
        deadline = time.monotonic() + 10
        while probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone() != (1,):
            assert time.monotonic() < deadline, "T1 never reached the lock"
            time.sleep(0.01)
        with open_store(SPEC, url=url) as replica:
            assert replica.append([step(0, robot="b", tag=2.0)]) == (1, 0)  # T2 commits
        (visible,) = probe.execute("SELECT count(*) FROM transitions").fetchone()  # type: ignore[misc]
        assert visible == 2  # T2's row is committed and visible to anyone...
        assert len(store.read_after(cursor, 10)) == 0  # ...but the tail does not pass T1
        blocker.commit()  # T1 goes on and commits
        first.join(10)
    blocker.close()
    rows = store.read_after(cursor, 10)
    assert tags(rows) == [1.0, 2.0]  # both, T1's first: nothing skipped
    assert tags(all_rows(store)) == [0.0, 1.0, 2.0]


def test_an_open_transaction_in_another_database_does_not_hold_the_tail_back(
    store: PostgresStore,
) -> None:
    with psycopg.connect(PG_ADMIN) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")  # a write transaction, left open
        store.append([step(0, tag=5.0)])
        assert tags(store.read_after(0, 10)) == [5.0]
        elsewhere.rollback()


def test_many_concurrent_writers_are_tailed_without_a_gap_or_a_repeat(
    store: PostgresStore,
) -> None:
    stop = threading.Event()
    seen: list[float] = []

    def tail() -> None:
        position = 0
        while True:
            done = stop.is_set()
            rows = store.read_after(position, 1000)
            if len(rows):
                seen.extend(tags(rows))
                position = int(rows.position[-1])
            elif done:
                return

    def write(thread: int) -> None:
        for b in range(20):
            store.append(
                [
                    step(i, robot=f"w{thread}", episode=f"e{b}", tag=thread * 1000 + b * 10 + i)
                    for i in range(5)
                ]
            )

    reader = threading.Thread(target=tail)
    reader.start()
    writers = [threading.Thread(target=write, args=(t,)) for t in range(6)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    stop.set()
    reader.join(30)
    expected = {t * 1000 + b * 10 + i for t in range(6) for b in range(20) for i in range(5)}
    assert len(seen) == len(expected) and set(seen) == expected


def test_a_new_version_and_a_control_change_are_announced_to_another_store(
    store: PostgresStore, url: str
) -> None:
    other = open_store(SPEC, url=url)
    try:
        store.wait_for_change(0.01)  # the first call opens the listener (and says "changed")
        assert store.wait_for_change(0.2) is False  # nothing announced: it waits out the time
        for change in (
            lambda: other.update_control(hold=True),
            lambda: other.register_policy(make_policy_bytes()[0]),
        ):
            heard: list[float] = []

            def wait(heard: list[float] = heard) -> None:
                if store.wait_for_change(5):
                    heard.append(time.monotonic())

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.1)
            sent = time.monotonic()
            change()
            waiter.join(5)
            assert heard and heard[0] - sent < 0.5
    finally:
        other.close()


def test_the_schema_version_is_recorded_and_a_newer_one_is_refused(
    store: PostgresStore, url: str
) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
        conn.execute("UPDATE schema_version SET version = 4")
    with pytest.raises(StoreError, match="schema 4"):
        open_store(SPEC, url=url)


def test_a_schema_1_database_is_migrated_and_keeps_its_state(
    store: PostgresStore, url: str
) -> None:
    store.update_control(learner_paused=True)
    store.append([step(0, tag=0.0)])
    downgrade_postgres_to_schema_2(url)  # then what robot_sac wrote before robot holds
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE robot_holds")
        conn.execute("UPDATE schema_version SET version = 1")
    with open_store(SPEC, url=url) as reopened:
        assert reopened.control().learner_paused
        assert reopened.update_control(robots={"arm-1": True}).held_robots == {"arm-1"}
        assert reopened.transitions_by_source() == {"policy": 1, "human": 0, "demo": 0}
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]


def test_connections_cut_by_the_server_are_replaced_without_losing_a_call(
    store: PostgresStore, url: str
) -> None:
    store.append([step(0, tag=0.0)])
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'robot_sac'"
        ).fetchall()
    assert killed  # the pool's connections were there, and are gone now
    assert store.append([step(1, tag=1.0)]) == (1, 0)
    assert store.transition_count() == 2
    assert tags(all_rows(store)) == [0.0, 1.0]


def test_plot_reads_a_fleets_store_by_its_url(
    store: PostgresStore, url: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from robot_sac.cli import app

    ensure_initial_policy(store)
    store.append([step(i, version=0, reward=1.0, terminated=i == 2) for i in range(3)])
    opened = open_existing(url=url)
    try:
        assert opened.spec == SPEC and opened.transition_count() == 3
    finally:
        opened.close()
    out = tmp_path / "curve.png"
    result = CliRunner().invoke(app, ["plot", "--store-url", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_conflict_in_a_group_commit_fails_only_its_own_batch(
    store: PostgresStore, url: str
) -> None:
    # An outside session locks the count table, so the first append waits inside its
    # transaction holding the store's leader lock; three more batches queue behind it and are
    # then written in one transaction (group commit). The middle one conflicts: it alone is
    # refused, and its new row does not stay behind (the next batch stores that key with other
    # content).
    store.append([step(0, robot="old", tag=-1.0)])
    batches = {
        "first": [step(0, robot="a", tag=1.0)],
        "before": [step(0, robot="b", tag=2.0), step(1, robot="b", tag=2.5)],
        "conflict": [step(0, robot="c", tag=3.0), step(0, robot="old", tag=-2.0)],
        "after": [step(0, robot="c", tag=4.0), step(0, robot="old", tag=-1.0)],
    }
    results: dict[str, object] = {}

    def send(name: str) -> None:
        try:
            results[name] = store.append(batches[name])
        except BaseException as exc:
            results[name] = exc

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)

    threads = {name: threading.Thread(target=send, args=(name,)) for name in batches}
    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE transition_counts IN EXCLUSIVE MODE")
        threads["first"].start()
        wait_for(lambda: store._leader.locked() and not store._queue, "the first append")
        for queued, name in enumerate(("before", "conflict", "after"), start=1):
            threads[name].start()
            wait_for(lambda n=queued: len(store._queue) == n, f"batch {name} to queue")  # type: ignore[misc]
        locker.commit()
    for thread in threads.values():
        thread.join(30)
    assert results["first"] == (1, 0)
    assert results["before"] == (2, 0)
    conflict = results["conflict"]
    assert isinstance(conflict, TransitionConflict) and conflict.key == ("old", "e0", 0)
    assert results["after"] == (1, 1)
    assert sorted(tags(all_rows(store))) == [-1.0, 1.0, 2.0, 2.5, 4.0]
    assert store.transition_count() == 5
