"""The idempotency key ``(robot_id, episode_id, step)``: a retry is a duplicate, other content under
the same key is a :class:`~robot_sac.store.TransitionConflict` and its whole batch is refused.

On real SQLite files, no mocks. The group-commit test is SQLite-specific: it holds the database's
write lock from a second connection so that several callers' batches meet in one transaction.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robot_sac.store import Store, TransitionConflict, open_store
from robot_sac.store.sqlite import SQLiteStore

# The store suite's fixtures: every test here runs on each backend.
from tests.test_store import (  # noqa: F401
    SPEC,
    MakeStore,
    all_rows,
    as_bytes,
    backend,
    bits,
    make_store,
    step,
    store,
    tags,
)


def test_an_identical_retry_is_a_duplicate_even_with_negative_zero(store: Store) -> None:
    sent = step(0, obs=[-0.0, 1.0, 0.5], action=[0.0, -0.0], reward=-0.0)
    assert store.append([sent]) == (1, 0)
    # the same values with the other zero, and the vectors as float32 bytes: the same content
    again = dataclasses.replace(sent, obs=[0.0, 1.0, 0.5], action=[-0.0, 0.0], reward=0.0)
    assert store.append([again]) == (0, 1)
    assert store.append([as_bytes(again)]) == (0, 1)
    rows = all_rows(store)
    assert len(rows) == 1
    assert bits(rows.obs)[0, 0] == np.float32(-0.0).view(np.uint32)  # the first copy is kept


def test_a_reward_is_compared_as_the_float32_the_log_keeps(store: Store) -> None:
    # A robot that sends 0.1 in JSON and retries with the float32 it packed is retrying.
    assert store.append([step(0, reward=0.1)]) == (1, 0)
    assert store.append([step(0, reward=float(np.float32(0.1)))]) == (0, 1)
    with pytest.raises(TransitionConflict, match="reward"):
        store.append([step(0, reward=float(np.nextafter(np.float32(0.1), np.float32(1.0))))])


CHANGES: dict[str, tuple[dict[str, Any], str]] = {
    "obs": ({"obs": [5.0, 17.0, 0.25]}, "obs[2] = 0.5 stored, 0.25 sent"),
    "action": ({"action": [0.25, 0.5]}, "action[1] = -0.25 stored, 0.5 sent"),
    "reward": ({"reward": 2.0}, "1.0 stored, 2.0 sent"),
    "next_obs": ({"next_obs": [6.0, 18.0, 0.5]}, "next_obs[0] = 5.0 stored, 6.0 sent"),
    "terminated": ({"terminated": True}, "False stored, True sent"),
    "truncated": ({"truncated": True}, "False stored, True sent"),
    "policy_version": ({"policy_version": 4}, "3 stored, 4 sent"),
    "source": ({"source": "demo"}, "policy stored, demo sent"),
}


@pytest.mark.parametrize("field", CHANGES)
@pytest.mark.parametrize("form", ["lists", "bytes"])
def test_the_same_key_with_one_field_changed_is_a_conflict_naming_it(
    store: Store, field: str, form: str
) -> None:
    convert: Callable[[Any], Any] = as_bytes if form == "bytes" else (lambda t: t)
    first = step(17, robot="arm-1", episode="ep-3", tag=5.0, reward=1.0, version=3)
    assert store.append([convert(first)]) == (1, 0)
    change, words = CHANGES[field]
    other = dataclasses.replace(first, **change)
    newer = step(18, robot="arm-1", episode="ep-3", tag=6.0)  # new, refused with the batch
    with pytest.raises(TransitionConflict) as info:
        store.append([newer, convert(other)])
    error = info.value
    assert isinstance(error, ValueError)  # a client error, not a store failure
    assert error.key == ("arm-1", "ep-3", 17)
    assert error.field == field
    assert str(error) == (
        f"transition arm-1/ep-3/17 was already logged with a different {field} ({words})"
    )
    assert store.transition_count() == 1
    assert tags(all_rows(store)) == [5.0]
    assert store.append([convert(first), newer]) == (1, 1)  # without the conflict it goes in


def test_a_key_twice_in_one_batch_with_other_content_refuses_the_batch(store: Store) -> None:
    store.append([step(0, tag=1.0)])
    batch = [step(1, tag=2.0), step(2, tag=3.0, reward=1.0), step(2, tag=3.0, reward=5.0)]
    with pytest.raises(TransitionConflict) as info:
        store.append(batch)
    assert info.value.key == ("r0", "e0", 2) and info.value.field == "reward"
    assert str(info.value) == (
        "transition r0/e0/2 appears twice in the batch with a different reward (1.0, then 5.0)"
    )
    assert tags(all_rows(store)) == [1.0]
    # identical copies inside one batch count once, beside a retry of a stored key
    assert store.append([step(0, tag=1.0), *batch[:2], batch[1], batch[0]]) == (2, 3)
    assert tags(all_rows(store)) == [1.0, 2.0, 3.0]
    assert store.transition_count() == 3


def test_a_conflict_after_an_accepted_duplicate_still_refuses_the_whole_batch(
    store: Store,
) -> None:
    # The new rows of the refused batch must not stay behind, nor count.
    store.append([step(i, tag=float(i)) for i in range(3)])
    batch = [step(i, tag=float(i)) for i in range(3, 8)] + [step(1, tag=1.0, version=9)]
    with pytest.raises(TransitionConflict, match=r"r0/e0/1 .* policy_version"):
        store.append(batch)
    assert store.transition_count() == 3
    assert len(all_rows(store)) == 3
    assert store.append(batch[:-1]) == (5, 0)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_conflict_in_a_group_commit_fails_only_its_own_batch(tmp_path: Path) -> None:
    # SQLite-specific. A second connection holds the write lock, so the first append waits in
    # BEGIN holding the store's own lock; three more batches queue behind it and are then written
    # in one transaction (group commit). The middle one conflicts: it alone is refused, and its
    # new row does not stay behind (the next batch stores the same key with other content).
    store = open_store(SPEC, tmp_path / "data")
    assert isinstance(store, SQLiteStore)
    store.append([step(0, robot="old", tag=-1.0)])
    other = sqlite3.connect(tmp_path / "data" / "store.sqlite", isolation_level=None)
    batches = {
        "first": [step(0, robot="a", tag=1.0)],
        "before": [step(0, robot="b", tag=2.0), step(1, robot="b", tag=2.5)],
        "conflict": [step(0, robot="c", tag=3.0), step(0, robot="old", tag=-2.0)],
        "after": [step(0, robot="c", tag=4.0), step(0, robot="old", tag=-1.0)],
    }
    results: dict[str, Any] = {}

    def send(name: str) -> None:
        try:
            results[name] = store.append(batches[name])
        except BaseException as exc:
            results[name] = exc

    threads = {name: threading.Thread(target=send, args=(name,)) for name in batches}
    try:
        other.execute("BEGIN IMMEDIATE")
        threads["first"].start()
        _wait_for(lambda: store._write_lock.locked() and not store._queue, "the first append")
        for queued, name in enumerate(("before", "conflict", "after"), start=1):
            threads[name].start()
            _wait_for(lambda n=queued: len(store._queue) == n, f"batch {name} to queue")  # type: ignore[misc]
        other.execute("COMMIT")
        for thread in threads.values():
            thread.join(30)
        assert results["first"] == (1, 0)
        assert results["before"] == (2, 0)
        assert isinstance(results["conflict"], TransitionConflict)
        assert results["conflict"].key == ("old", "e0", 0)
        assert results["after"] == (1, 1)
        assert sorted(tags(all_rows(store))) == [-1.0, 1.0, 2.0, 2.5, 4.0]
        assert store.transition_count() == 5
    finally:
        other.close()
        store.close()


def test_conflicts_and_duplicates_survive_a_reopen(make_store: MakeStore) -> None:
    store = make_store()
    store.append([step(i, tag=float(i), reward=float(i)) for i in range(4)])
    store.close()
    store = make_store()
    assert store.append([step(i, tag=float(i), reward=float(i)) for i in range(4)]) == (0, 4)
    with pytest.raises(TransitionConflict, match="r0/e0/3 was already logged"):
        store.append([step(3, tag=3.0, reward=30.0)])
