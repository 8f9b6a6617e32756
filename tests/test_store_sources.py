"""Where a transition came from (``source``: policy, human, demo) in the store, on both backends.

Covers, on real SQLite files and the machine's real PostgreSQL, no mocks: sources stored and read
back as ``LogRows.source`` codes; the source as part of a key's content (an identical retry is a
duplicate, another source a conflict, and a stored key keeps its source); an unknown source
refused with its whole batch; the counts by source (duplicates and refused batches not counted,
concurrent writers of several sources, a reopen); and stores written before sources existed
(SQLite schema 3, PostgreSQL schema 2) migrated on open, their rows read back as the policy's.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import get_args

import numpy as np
import psycopg
import pytest

import robot_sac.client
from robot_sac.schemas import SOURCES, Source, Transition
from robot_sac.store import Store, TransitionConflict, open_store
from robot_sac.store.records import SOURCE_CODES, SOURCE_NAMES
from robot_sac.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA
from tests.store_backends import pg_database_for
from tests.test_store import (  # noqa: F401  (backend, make_store, store: fixtures)
    SPEC,
    MakeStore,
    all_rows,
    as_bytes,
    backend,
    make_store,
    step,
    store,
    tags,
)

NONE = {"policy": 0, "human": 0, "demo": 0}


def test_the_codes_are_fixed_and_every_part_names_the_same_sources() -> None:
    # The log and the learner's sampler rely on these numbers: they never change.
    assert SOURCE_CODES == {"policy": 0, "human": 1, "demo": 2}
    assert SOURCE_NAMES == ("policy", "human", "demo")
    assert set(SOURCES) == set(get_args(Source)) == set(SOURCE_CODES)
    assert tuple(robot_sac.client.SOURCES) == SOURCES  # the client's own copy (no pydantic)
    assert Transition.model_fields["source"].default == "policy"


def test_sources_are_stored_and_read_back_as_their_codes(store: Store) -> None:
    sources = ["policy", "demo", "human", "human", "policy", "demo"]
    batch = [step(i, tag=float(i), source=s) for i, s in enumerate(sources)]
    batch[1] = as_bytes(batch[1])  # a MessagePack body's vectors, beside lists
    assert store.append(batch) == (6, 0)
    # a batch of one source only, and a pydantic Transition that leaves source to its default
    assert store.append([step(6, tag=6.0, source="demo")]) == (1, 0)
    fields = dataclasses.asdict(step(7, tag=7.0))
    del fields["source"]
    assert store.append([Transition(**fields)]) == (1, 0)
    rows = all_rows(store)
    assert rows.source.dtype == np.uint8
    assert rows.source.tolist() == [0, 2, 1, 1, 0, 2, 2, 0]
    assert tags(rows) == [float(i) for i in range(8)]
    # paging keeps each row's source with it
    middle = store.read_after(int(rows.position[2]), 3)
    assert middle.source.tolist() == [1, 0, 2]
    assert store.read_after(int(rows.position[-1]), 10).source.shape == (0,)


def test_an_identical_retry_is_a_duplicate_and_another_source_is_a_conflict(
    store: Store,
) -> None:
    demo = step(3, robot="arm-1", episode="ep", tag=1.0, source="demo")
    assert store.append([demo]) == (1, 0)
    assert store.append([demo]) == (0, 1)
    assert store.append([as_bytes(demo)]) == (0, 1)
    newer = step(4, robot="arm-1", episode="ep", tag=2.0, source="human")
    for source, words in (
        ("policy", "demo stored, policy sent"),
        ("human", "demo stored, human sent"),
    ):
        with pytest.raises(TransitionConflict) as info:
            store.append([newer, dataclasses.replace(demo, source=source)])
        assert info.value.key == ("arm-1", "ep", 3) and info.value.field == "source"
        assert str(info.value) == (
            f"transition arm-1/ep/3 was already logged with a different source ({words})"
        )
    # ... and inside one batch: the first copy is what the second is compared with
    with pytest.raises(TransitionConflict, match=r"appears twice .* source \(human, then demo\)"):
        store.append([newer, dataclasses.replace(newer, source="demo")])
    # the stored key kept its source; the refused batches stored nothing
    rows = all_rows(store)
    assert rows.source.tolist() == [2] and tags(rows) == [1.0]
    assert store.transitions_by_source() == {**NONE, "demo": 1}


def test_an_unknown_source_is_refused_with_its_whole_batch(store: Store) -> None:
    batch = [step(0, source="demo"), step(1, source="teleop")]
    with pytest.raises(ValueError, match=r"r0/e0/1: source must be one of policy, human, demo"):
        store.append(batch)
    assert len(all_rows(store)) == 0
    assert store.transitions_by_source() == NONE


def test_counts_by_source_follow_what_is_stored(make_store: MakeStore) -> None:
    store = make_store()
    assert store.transitions_by_source() == NONE and store.transition_count() == 0
    store.append([step(i, source="policy") for i in range(5)])
    store.append([step(i, episode="d", source="demo") for i in range(3)])
    # duplicates are not counted again; a mixed batch counts each of its sources
    assert store.append([step(4), step(5, source="human"), step(6, source="human")]) == (2, 1)
    with pytest.raises(TransitionConflict):  # refused: counts nothing
        store.append([step(7, source="human"), step(0, source="demo")])
    want = {"policy": 5, "human": 2, "demo": 3}
    assert store.transitions_by_source() == want
    assert store.transition_count() == sum(want.values()) == len(all_rows(store))
    store.close()
    assert make_store().transitions_by_source() == want  # the counters are durable


def test_concurrent_writers_of_several_sources_are_counted_exactly(store: Store) -> None:
    # Batches of several threads meet in one commit (group commit): each source's count and the
    # rows' codes must still match what every thread stored.
    names = list(SOURCE_CODES)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for b in range(10):
                batch = [
                    step(i, robot=f"w{worker}", episode=f"b{b}", source=names[(worker + i) % 3])
                    for i in range(7)
                ]
                store.append(batch)
                store.append(batch[:3])  # a retry: duplicates only
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = all_rows(store)
    stored = {name: int((rows.source == code).sum()) for name, code in SOURCE_CODES.items()}
    want = {name: 0 for name in names}
    for worker in range(4):
        for i in range(7):
            want[names[(worker + i) % 3]] += 10
    assert stored == want and store.transitions_by_source() == want


# --- stores written before sources existed ------------------------------------------------------


def downgrade_sqlite_to_schema_3(path: Path) -> None:
    """Make the file what robot_sac wrote at schema 3: no source column, one transition count
    (``meta`` row ``transitions``) instead of one per source. Its rows must all be the policy's."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM transitions WHERE source != 0").fetchone() == (0,)
        conn.execute("ALTER TABLE transitions DROP COLUMN source")
        (count,) = conn.execute(
            "SELECT SUM(CAST(value AS INTEGER)) FROM meta WHERE key LIKE 'transitions.%'"
        ).fetchone()
        conn.execute("DELETE FROM meta WHERE key LIKE 'transitions.%'")
        conn.execute("INSERT INTO meta (key, value) VALUES ('transitions', ?)", (str(count),))
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def sqlite_schema(path: Path) -> tuple[int, list[str], list[str]]:
    """The file's schema version, its transitions table's columns and its meta keys."""
    with closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = [r[1] for r in conn.execute("PRAGMA table_info(transitions)")]
        keys = [r[0] for r in conn.execute("SELECT key FROM meta ORDER BY key")]
    return int(version), columns, keys


def test_a_schema_3_sqlite_store_is_migrated_and_its_rows_are_the_policys(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    path = data / "store.sqlite"
    with open_store(SPEC, data) as store:
        store.append([step(i, tag=float(i), version=1) for i in range(4)])
    downgrade_sqlite_to_schema_3(path)
    version, columns, keys = sqlite_schema(path)
    assert version == 3 and "source" not in columns and "transitions" in keys

    with open_store(SPEC, data) as store:
        version, columns, keys = sqlite_schema(path)
        assert version == SQLITE_SCHEMA == 4 and "source" in columns
        assert "transitions" not in keys
        assert store.transitions_by_source() == {**NONE, "policy": 4}
        assert all_rows(store).source.tolist() == [0, 0, 0, 0]
        # an old row keeps its (policy) source; new rows of every source go in beside it
        with pytest.raises(TransitionConflict, match="source"):
            store.append([step(0, tag=0.0, version=1, source="demo")])
        assert store.append([step(0, tag=0.0, version=1), step(4, source="human")]) == (1, 1)
        assert store.append([step(5, source="demo")]) == (1, 0)
        assert all_rows(store).source.tolist() == [0, 0, 0, 0, 1, 2]
    # reopening a migrated store migrates nothing again
    with open_store(SPEC, data) as store:
        assert store.transitions_by_source() == {"policy": 4, "human": 1, "demo": 1}
        assert store.transition_count() == 6
    assert sqlite_schema(path)[0] == 4


def downgrade_postgres_to_schema_2(url: str) -> None:
    """Make the database what robot_sac wrote at schema 2: no source column, transition counts
    by slot only. Its rows must all be the policy's."""
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM transitions WHERE source != 0").fetchone() == (0,)
        conn.execute("ALTER TABLE transitions DROP COLUMN source")
        conn.execute("DELETE FROM transition_counts WHERE source != 0")  # zero rows, if any
        conn.execute("ALTER TABLE transition_counts DROP CONSTRAINT transition_counts_pkey")
        conn.execute("ALTER TABLE transition_counts DROP COLUMN source")
        conn.execute("ALTER TABLE transition_counts ADD PRIMARY KEY (slot)")
        conn.execute("UPDATE schema_version SET version = 2")


def postgres_columns(url: str, table: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return sorted(r[0] for r in rows)


def test_a_schema_2_postgres_store_is_migrated_and_its_rows_are_the_policys(
    tmp_path: Path,
) -> None:
    url = pg_database_for(tmp_path / "data")
    with open_store(SPEC, url=url) as store:
        store.append([step(i, tag=float(i), version=1) for i in range(4)])
        store.append([step(i, episode="e1") for i in range(3)])
    downgrade_postgres_to_schema_2(url)
    assert "source" not in postgres_columns(url, "transitions")
    assert postgres_columns(url, "transition_counts") == ["n", "slot"]

    with open_store(SPEC, url=url) as store:
        assert "source" in postgres_columns(url, "transitions")
        assert store.transitions_by_source() == {**NONE, "policy": 7}
        assert all_rows(store).source.tolist() == [0] * 7
        with pytest.raises(TransitionConflict, match="source"):
            store.append([step(0, tag=0.0, version=1, source="human")])
        assert store.append([step(0, tag=0.0, version=1), step(4, source="human")]) == (1, 1)
        assert store.append([step(5, source="demo"), step(6, source="demo")]) == (2, 0)
        assert all_rows(store).source.tolist() == [0] * 7 + [1, 2, 2]
    with open_store(SPEC, url=url) as store:
        assert store.transitions_by_source() == {"policy": 7, "human": 1, "demo": 2}
        assert store.transition_count() == 10
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
