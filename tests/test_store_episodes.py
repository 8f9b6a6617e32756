"""Episode bookkeeping from running tallies: O(batch) per append, and stores written before the
tallies existed (schema 1) migrated on open.

SQLite-specific (the tests reach into the file to build a schema-1 store and to recompute the
``episodes`` table from the stored rows), on real files, no mocks.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robot_sac.store import StoreError, VersionEpisodes, open_store
from robot_sac.store.sqlite import SCHEMA_VERSION
from tests.test_store import SPEC, step
from tests.test_store_sources import downgrade_sqlite_to_schema_3


def recomputed_episodes(path: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The ``episodes`` rows, worked out from scratch from the stored transitions: each episode
    one of whose stored steps ended it, with its steps, return, last reward (its highest step's)
    and the version that chose most of its steps (ties: the newer; unknown versions do not vote).
    """
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT robot_id, episode_id, step, reward, terminated, truncated, policy_version "
            "FROM transitions ORDER BY robot_id, episode_id, step"
        ).fetchall()
    episodes: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for r in rows:
        episodes.setdefault((r[0], r[1]), []).append(r[2:])
    out = {}
    for key, steps in episodes.items():
        if not any(t or u for _, _, t, u, _ in steps):
            continue
        votes: dict[int, int] = {}
        for *_, version in steps:
            if version is not None:
                votes[version] = votes.get(version, 0) + 1
        top = max(votes, key=lambda v: (votes[v], v)) if votes else None
        total = sum(r for _, r, _, _, _ in steps)
        out[key] = (top, pytest.approx(total), steps[-1][1], len(steps))
    return out


def stored_episodes(path: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT robot_id, episode_id, policy_version, episode_return, last_reward, steps "
            "FROM episodes"
        ).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def downgrade_to_schema_1(path: Path) -> None:
    """Make the file what robot_sac wrote before the episode tallies: no tallies table, schema 1
    (nor what schema 4 added; robot_holds, schema 3's, is left: it is created empty on open)."""
    downgrade_sqlite_to_schema_3(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE episode_tallies")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")


def schema_of(path: Path) -> tuple[int, list[str]]:
    with closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return int(version), tables


def test_a_schema_1_store_is_migrated_on_open_and_its_episodes_stay_right(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    path = data / "store.sqlite"
    with open_store(SPEC, data) as store:
        # ended, by version 1; not ended yet, by version 2; ended, mixed versions (2 wins)
        store.append([step(i, episode="a", reward=1.0, version=1) for i in range(4)])
        store.append([step(4, episode="a", reward=2.0, version=1, terminated=True)])
        store.append([step(i, episode="b", reward=0.5, version=2) for i in range(3)])
        store.append(
            [
                step(i, episode="c", reward=float(i), version=v, truncated=i == 4)
                for i, v in enumerate([1, 2, 2, None, None])
            ]
        )
    downgrade_to_schema_1(path)
    assert schema_of(path) == (1, [t for t in schema_of(path)[1] if t != "episode_tallies"])

    with open_store(SPEC, data) as store:
        version, tables = schema_of(path)
        assert version == SCHEMA_VERSION == 4 and {"episode_tallies", "robot_holds"} <= set(tables)
        # more rows for every episode: a late step of an ended one, the end of a running one,
        # and one that moves the vote of a mixed one to a tie (the newer version wins)
        store.append([step(5, episode="a", reward=10.0, version=1)])
        store.append([step(3, episode="b", reward=0.5, version=2, terminated=True)])
        store.append([step(5, episode="c", reward=-1.0, version=1)])
        assert store.episodes_by_version() == [
            VersionEpisodes(1, 1, 16.0, (16.0,)),
            VersionEpisodes(2, 2, 5.5, (2.0, 9.0)),
        ]
    assert stored_episodes(path) == recomputed_episodes(path)

    # Reopening a migrated store does not backfill again (no double counting).
    with open_store(SPEC, data) as store:
        store.append([step(6, episode="a", reward=1.0, version=1)])
        assert store.episodes_by_version()[0] == VersionEpisodes(1, 1, 17.0, (17.0,))
    assert stored_episodes(path) == recomputed_episodes(path)


def test_a_store_of_an_unknown_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    open_store(SPEC, data).close()
    with closing(sqlite3.connect(data / "store.sqlite", isolation_level=None)) as conn:
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="has schema 5"):
        open_store(SPEC, data)
    assert schema_of(data / "store.sqlite")[0] == 5


def test_episodes_follow_random_traffic_with_late_steps_and_retries(tmp_path: Path) -> None:
    # The tallies against a from-scratch recomputation, over traffic that interleaves episodes,
    # sends steps late and out of order, retries batches and mixes versions.
    rng = np.random.default_rng(7)
    # Each key's content is fixed, so a resent step is a duplicate, never a conflict.
    rewards = rng.integers(-4, 5, (6, 20)) / 4
    versions = rng.choice(np.asarray([None, 0, 1, 2], object), (6, 20))
    truncations = rng.random((6, 20)) < 0.03
    with open_store(SPEC, tmp_path / "data") as store:
        sent: list[Any] = []
        for _ in range(60):
            e = int(rng.integers(0, 6))
            start = int(rng.integers(0, 20))
            batch = [
                step(
                    i,
                    robot=f"r{e % 2}",
                    episode=f"e{e}",
                    reward=float(rewards[e, i]),
                    version=versions[e, i],
                    terminated=i == 19,
                    truncated=bool(truncations[e, i]),
                )
                for i in range(start, min(20, start + int(rng.integers(1, 8))))
            ]
            if sent and rng.random() < 0.3:
                batch = batch + sent[int(rng.integers(0, len(sent)))]  # a retry rides along
            store.append(batch)
            sent.append(batch)
    got = stored_episodes(tmp_path / "data" / "store.sqlite")
    assert got == recomputed_episodes(tmp_path / "data" / "store.sqlite")
    assert len(got) >= 3


def median_append_ms(store: Any, batches: list[list[Any]]) -> float:
    times = []
    for batch in batches:
        started = time.perf_counter()
        store.append(batch)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def test_logging_into_a_long_ended_episode_costs_about_as_much_as_a_fresh_one(
    tmp_path: Path,
) -> None:
    # Refreshing an episode's return used to re-read all its rows on every batch (~18 ms a
    # batch for 30,000 steps against ~3 ms for a fresh episode). It is O(batch) now; the
    # precise figure is a benchmark's job, this guards the order of growth.
    n = 30_000
    with open_store(SPEC, tmp_path / "data") as store:
        for start in range(0, n, 2_000):
            store.append(
                [
                    step(i, episode="long", reward=1.0, version=1, terminated=i == n - 1)
                    for i in range(start, start + 2_000)
                ]
            )
        assert store.episodes_by_version() == [VersionEpisodes(1, 1, float(n), (float(n),))]
        for attempt in range(3):  # a loaded machine may disturb one measurement
            base = n + 1_000 * attempt
            late = [
                [step(base + 100 * k + i, episode="long", version=1) for i in range(100)]
                for k in range(7)
            ]
            fresh = [
                [step(i, episode=f"fresh{attempt}-{k}", version=1) for i in range(100)]
                for k in range(7)
            ]
            late_ms, fresh_ms = median_append_ms(store, late), median_append_ms(store, fresh)
            if late_ms <= 3.0 * fresh_ms:
                break
        assert late_ms <= 3.0 * fresh_ms, (late_ms, fresh_ms)
        steps = n + 700 * (attempt + 1)  # each attempt logged 700 late steps
        assert store.episodes_by_version()[0].recent_returns == (float(n),)
        (row,) = [v for k, v in stored_episodes(tmp_path / "data" / "store.sqlite").items()]
        assert row[3] == steps  # every late step was counted
