"""Store trouble is a :class:`~robot_sac.store.StoreError` the service turns into 503, quickly.

SQLite-specific, on real files: a second connection holds ``BEGIN IMMEDIATE`` on the store's
file (what another process writing does), or the file is not a database at all.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from robot_sac.admin_schemas import LearnerStatus
from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.store import (
    ControlState,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    open_existing,
    open_store,
)
from robot_sac.store.sqlite import SQLiteStore
from tests.test_store import SPEC, all_rows, make_policy_bytes, step, tags

WAIT = 0.5  # the store's busy_timeout_s in these tests
MARGIN = 0.8  # SQLite's busy handler sleeps in steps of up to 100 ms; the machine may be loaded


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = open_store(SPEC, tmp_path / "data", busy_timeout_s=WAIT)
    assert isinstance(store, SQLiteStore)
    ensure_initial_policy(store)
    store.append([step(0, tag=1.0)])
    yield store
    store.close()


@pytest.fixture
def locker(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to the store's file, for holding its write lock."""
    conn = sqlite3.connect(
        tmp_path / "data" / "store.sqlite", isolation_level=None, check_same_thread=False
    )
    yield conn
    conn.close()


def test_the_store_errors_are_store_errors() -> None:
    assert issubclass(StoreBusy, StoreError) and issubclass(StoreUnavailable, StoreError)
    assert not issubclass(StoreBusy, StoreUnavailable)


def test_writes_to_a_locked_store_raise_store_busy_after_the_wait_and_reads_go_on(
    store: SQLiteStore, locker: sqlite3.Connection
) -> None:
    v0 = store.latest_policy()
    locker.execute("BEGIN IMMEDIATE")
    writes = {
        "append": lambda: store.append([step(1, tag=2.0)]),
        "update_control": lambda: store.update_control(hold=True),
        "write_learner_status": lambda: store.write_learner_status(LearnerStatus(updates=1)),
        "register_policy": lambda: store.register_policy(make_policy_bytes(seed=2)[0]),
    }
    for name, write in writes.items():
        started = time.monotonic()
        with pytest.raises(StoreBusy) as info:
            write()
        waited = time.monotonic() - started
        assert WAIT - 0.1 <= waited <= WAIT + MARGIN, (name, waited)
        assert str(info.value) == (
            "the store is busy: another process has held its write lock for 0.5 s"
        ), name
        # Reads go on meanwhile (WAL): the service keeps serving its policy and status.
        assert store.control() == ControlState()
        assert store.latest_policy() == v0
        assert store.transition_count() == 1
        assert tags(store.read_after(0, 10)) == [1.0]
    locker.execute("COMMIT")
    # Once the lock is released everything works again, and nothing refused was written.
    assert store.append([step(1, tag=2.0)]) == (1, 0)
    assert store.update_control(hold=True).hold
    store.write_learner_status(LearnerStatus(updates=2))
    status = store.learner_status()
    assert status is not None and status.updates == 2
    # The refused registration could not even reserve a number: the next one is 1.
    registered = store.register_policy(make_policy_bytes(seed=2)[0])
    assert registered is not None and registered.version == 1
    assert tags(all_rows(store)) == [1.0, 2.0]


def test_a_write_waiting_behind_this_process_waits_no_longer_than_the_timeout_in_all(
    store: SQLiteStore, locker: sqlite3.Connection
) -> None:
    # A first append holds the store's own lock while it waits for the other process's; a
    # second call waits for the first, then for the other process, in all no longer than the
    # store's timeout (not once for each lock).
    locker.execute("BEGIN IMMEDIATE")
    first: list[BaseException] = []

    def append() -> None:
        try:
            store.append([step(1)])
        except BaseException as exc:
            first.append(exc)

    thread = threading.Thread(target=append)
    thread.start()
    deadline = time.monotonic() + 5.0
    while not store._write_lock.locked() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(StoreBusy):
        store.update_control(hold=True)
    waited = time.monotonic() - started
    thread.join(10)
    assert len(first) == 1 and isinstance(first[0], StoreBusy)
    assert waited <= WAIT + 0.25, waited  # both waits in full would be ~0.95 s
    locker.execute("COMMIT")
    assert store.update_control(hold=True).hold


def test_a_batch_that_timed_out_behind_this_process_is_never_written_later(
    store: SQLiteStore,
) -> None:
    # The store's own lock, held here (as a long commit of other batches would hold it): the
    # append gives up after the wait, and its batch must not be written by a later commit.
    errors: list[BaseException] = []

    def append() -> None:
        try:
            store.append([step(5, tag=5.0)])
        except BaseException as exc:
            errors.append(exc)

    with store._write_lock:
        thread = threading.Thread(target=append)
        started = time.monotonic()
        thread.start()
        thread.join(10)
        waited = time.monotonic() - started
    assert len(errors) == 1 and isinstance(errors[0], StoreBusy)
    assert "this process's other writes have held its write lock for 0.5 s" in str(errors[0])
    assert WAIT - 0.1 <= waited <= WAIT + MARGIN
    assert store.append([step(6, tag=6.0)]) == (1, 0)
    assert tags(all_rows(store)) == [1.0, 6.0]


def test_a_file_that_is_not_a_store_is_unavailable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "store.sqlite").write_bytes(b"this is not an SQLite database, " * 64)
    with pytest.raises(StoreUnavailable, match="file is not a database"):
        open_store(SPEC, data)
    with pytest.raises(StoreUnavailable, match="file is not a database"):
        open_existing(data)


def test_a_store_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "data" / "store.sqlite").mkdir(parents=True)  # a directory where the file goes
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        open_store(SPEC, tmp_path / "data")


def test_a_database_error_during_a_call_is_unavailable_not_a_raw_sqlite_error(
    store: SQLiteStore, locker: sqlite3.Connection
) -> None:
    locker.execute("DROP TABLE control")  # the file damaged behind the store's back
    for call in (store.control, lambda: store.update_control(hold=True)):
        with pytest.raises(StoreUnavailable, match="no such table: control") as info:
            call()
        assert str(info.value).startswith(f"the store {store.path} is unavailable")
    assert store.transition_count() == 1  # what is still there still answers
