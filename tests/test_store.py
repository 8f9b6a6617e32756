"""The store (``robot_sac.store``): transition log, episodes, policy registry, control state.

Covers, on real files and without mocks: append/read round trips (float32 bit-identical vectors,
flags, ``policy_version``), tailing the log by position, idempotent appends (retries, repeats
inside a batch; plus a hypothesis property over random retried and reordered batches), the same key
with other content refused as a conflict, refusal of bad input with the whole batch left out,
episode returns and their crediting to versions, the registry (version 0, numbering that never
reuses a number, not even after a failed write or a reopen, metadata rewritten to the registered
number), version retention (the rule, with a hypothesis property; pruning keeps the newest, every
Kth, the pinned and the served versions and deletes the rest; a deleted version's number is never
given again), control state and learner status persisting across reopen, refusal of a data
directory made for another task, concurrent writers (threads and processes), two processes
creating one version 0, and ``open_store`` URLs.

Every backend-agnostic test goes through the ``make_store`` fixture and the public ``Store``
interface only, so a second backend joins by adding its name to ``BACKENDS`` and a branch to
``open_backend``. Tests marked ``# SQLite-specific`` look at the SQLite file directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import multiprocessing
import queue
import sqlite3
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robot_sac.bootstrap as bootstrap
import robot_sac.store.postgres as store_postgres
import robot_sac.store.sqlite as store_sqlite
from robot_sac.admin_schemas import LearnerStatus
from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.config import SACConfig
from robot_sac.networks import Actor
from robot_sac.policy import PolicyFileError, load_policy, policy_bytes, read_policy_info
from robot_sac.schemas import TaskSpec, Transition
from robot_sac.store import (
    ControlState,
    LogRows,
    PolicyRecord,
    Store,
    StoreError,
    StoreUnavailable,
    TransitionConflict,
    UnknownVersion,
    VersionEpisodes,
    open_store,
    versions_to_keep,
)
from robot_sac.store.codec import decode_learner_status
from tests.store_backends import BACKENDS, open_backend

SPEC = TaskSpec(
    name="store-test",
    obs_dim=3,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
    sac=SACConfig(hidden=(16, 16)),
)

# --- backends -------------------------------------------------------------------------------------

MakeStore = Callable[..., Store]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, tmp_path: Path) -> Iterator[MakeStore]:
    """``make_store(spec=SPEC, name="data")`` opens (or reopens) the store called ``name``."""
    opened: list[Store] = []

    def make(spec: TaskSpec = SPEC, name: str = "data") -> Store:
        store = open_backend(backend, spec, tmp_path / name)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


# --- helpers --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    """The attributes of :class:`Transition` without its validation: feeds the store bad input."""

    robot_id: str
    episode_id: str
    step: int
    obs: Sequence[float]
    action: Sequence[float]
    reward: float
    next_obs: Sequence[float]
    terminated: bool = False
    truncated: bool = False
    policy_version: int | None = None
    source: str = "policy"


def step(
    i: int = 0,
    *,
    robot: str = "r0",
    episode: str = "e0",
    tag: float = 0.0,
    reward: float = 0.0,
    version: int | None = None,
    terminated: bool = False,
    truncated: bool = False,
    **fields: Any,
) -> Step:
    """A valid transition; ``obs[0]`` carries ``tag`` so a stored row can be told apart."""
    values: dict[str, Any] = {
        "robot_id": robot,
        "episode_id": episode,
        "step": i,
        "obs": [tag, float(i), 0.5],
        "action": [0.25, -0.25],
        "reward": reward,
        "next_obs": [tag, float(i) + 1.0, 0.5],
        "terminated": terminated,
        "truncated": truncated,
        "policy_version": version,
    }
    values.update(fields)
    return Step(**values)


def all_rows(store: Store) -> LogRows:
    return store.read_after(0, 1_000_000)


def tags(rows: LogRows) -> list[float]:
    return [float(x) for x in rows.obs[:, 0]]


def bits(a: np.ndarray) -> np.ndarray:
    assert a.dtype == np.float32
    return np.ascontiguousarray(a).view(np.uint32)


def make_policy_bytes(
    version: int = 0, updates: int = 0, seed: int = 1, spec: TaskSpec = SPEC
) -> tuple[bytes, Actor]:
    torch.manual_seed(seed)
    actor = Actor(spec.obs_dim, spec.action_dim, spec.sac.hidden)
    data = policy_bytes(actor, spec.action_low, spec.action_high, version=version, updates=updates)
    return data, actor


def fail_next_write(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the store's next registration fail once its number is reserved (a crash, a full
    disk, the database gone); later ones work. Returns the numbers whose writing failed."""
    failed: list[int] = []
    calls = itertools.count()

    for module in (store_sqlite, store_postgres):
        real = module.with_version

        # A registration calls it twice: to check the file, then with its reserved number.
        def with_version(data: bytes, version: int, real: Any = real) -> bytes:
            if next(calls) == 1:
                failed.append(version)
                raise OSError(28, "No space left on device (simulated)")
            return real(data, version)

        monkeypatch.setattr(module, "with_version", with_version)
    return failed


# --- 1. append and read ---------------------------------------------------------------------------

AWKWARD = [-0.0, 1e-30, 3.0e38, -3.0e38, 1.0 / 3.0, 1e-45, -123456.789, 0.0, 7.0]


def test_empty_log_reads_nothing_and_reports_position_zero(store: Store) -> None:
    assert store.transition_count() == 0
    assert store.last_position() == 0
    rows = store.read_after(0, 10)
    assert len(rows) == 0
    assert rows.obs.shape == (0, 3) and rows.action.shape == (0, 2)
    assert store.append([]) == (0, 0)


def test_append_read_round_trip_is_bit_identical_float32(store: Store) -> None:
    n = len(AWKWARD)
    flags = [(False, False), (True, False), (False, True), (True, True)]
    versions = [None, 0, 5, None, 2**40, 1, None, 3, 4]
    batch = [
        Transition(
            robot_id="arm-1",
            episode_id=f"ep-{i % 2}",
            step=i,
            obs=[AWKWARD[i], AWKWARD[(i + 1) % n], AWKWARD[(i + 2) % n]],
            action=[AWKWARD[(i + 3) % n], -AWKWARD[(i + 4) % n]],
            reward=[0.5, -1e-30, 1e30, -0.0, 2.5, 1e-45, -7.25, 0.0, 1.0][i],
            next_obs=[AWKWARD[(i + 5) % n], AWKWARD[(i + 6) % n], AWKWARD[(i + 7) % n]],
            terminated=flags[i % 4][0],
            truncated=flags[i % 4][1],
            policy_version=versions[i],
        )
        for i in range(n)
    ]
    assert store.append(batch) == (n, 0)

    rows = all_rows(store)
    assert len(rows) == n
    assert rows.position.dtype == np.int64 and rows.policy_version.dtype == np.int64
    assert rows.terminated.dtype == bool and rows.truncated.dtype == bool
    assert rows.reward.dtype == np.float32
    assert np.all(np.diff(rows.position) > 0)
    want_obs = np.asarray([t.obs for t in batch], np.float32)
    want_action = np.asarray([t.action for t in batch], np.float32)
    want_next = np.asarray([t.next_obs for t in batch], np.float32)
    np.testing.assert_array_equal(bits(rows.obs), bits(want_obs))  # -0.0 keeps its sign
    np.testing.assert_array_equal(bits(rows.action), bits(want_action))
    np.testing.assert_array_equal(bits(rows.next_obs), bits(want_next))
    np.testing.assert_array_equal(rows.reward, np.asarray([t.reward for t in batch], np.float32))
    np.testing.assert_array_equal(rows.terminated, [t.terminated for t in batch])
    np.testing.assert_array_equal(rows.truncated, [t.truncated for t in batch])
    np.testing.assert_array_equal(rows.policy_version, [-1 if v is None else v for v in versions])
    assert store.transition_count() == n
    assert store.last_position() == int(rows.position[-1])


def test_arrays_and_lists_are_stored_as_the_same_float32_bytes(make_store: MakeStore) -> None:
    # Lists (what the service parses) take the packing fast path, arrays the numpy one.
    rng = np.random.default_rng(3)
    obs = rng.standard_normal((6, 3)) * np.asarray([1.0, 1e-30, 1e30])
    action = rng.uniform(-1.0, 1.0, (6, 2))
    as_lists = [
        step(i, obs=obs[i].tolist(), action=action[i].tolist(), next_obs=[0.0, -0.0, 1.0])
        for i in range(6)
    ]
    as_arrays = [
        step(i, obs=obs[i], action=action[i].astype(np.float32), next_obs=np.array([0.0, -0.0, 1]))
        for i in range(6)
    ]
    a, b = make_store(name="lists"), make_store(name="arrays")
    assert a.append(as_lists) == b.append(as_arrays) == (6, 0)
    ra, rb = all_rows(a), all_rows(b)
    np.testing.assert_array_equal(bits(ra.obs), bits(obs.astype(np.float32)))
    np.testing.assert_array_equal(bits(ra.obs), bits(rb.obs))
    np.testing.assert_array_equal(bits(ra.action), bits(rb.action))
    np.testing.assert_array_equal(bits(ra.next_obs), bits(rb.next_obs))


def as_bytes(t: Step) -> Step:
    """``t`` with its vectors as little-endian float32 bytes, as a MessagePack body has them."""
    return dataclasses.replace(
        t, **{n: np.asarray(getattr(t, n), "<f4").tobytes() for n in ("obs", "action", "next_obs")}
    )


def test_bytes_vectors_are_stored_as_the_same_float32_bytes(make_store: MakeStore) -> None:
    rng = np.random.default_rng(4)
    obs = (rng.standard_normal((6, 3)) * np.asarray([1.0, 1e-30, 1e30])).tolist()
    as_lists = [step(i, obs=obs[i], next_obs=[0.0, -0.0, float(i)]) for i in range(6)]
    packed = [as_bytes(t) for t in as_lists]
    mixed = [as_bytes(t) if i % 2 else t for i, t in enumerate(as_lists)]  # the numpy path
    stores = [make_store(name=n) for n in ("lists", "bytes", "mixed")]
    for st_, batch in zip(stores, (as_lists, packed, mixed), strict=True):
        assert st_.append(batch) == (6, 0)
    reference = all_rows(stores[0])
    np.testing.assert_array_equal(bits(reference.obs), bits(np.asarray(obs, np.float32)))
    for other in stores[1:]:
        rows = all_rows(other)
        for name in ("obs", "action", "next_obs"):
            np.testing.assert_array_equal(bits(getattr(rows, name)), bits(getattr(reference, name)))
    # A retry in the other form is the same key.
    assert stores[0].append(packed) == (0, 6)


@pytest.mark.parametrize("bad", ["obs_bytes_too_short", "obs_bytes_nan", "action_bytes_inf"])
def test_a_bad_bytes_vector_in_an_all_bytes_batch_is_named(store: Store, bad: str) -> None:
    batch = [as_bytes(step(i)) for i in range(2)]
    batch.append(dataclasses.replace(as_bytes(step(2)), **BAD_FIELDS[bad]))
    with pytest.raises(ValueError, match="r0/e0/2"):
        store.append(batch)
    assert store.transition_count() == 0


def test_read_after_pages_through_every_row_once_in_order(store: Store) -> None:
    sizes = [7, 1, 12, 5]
    tag = itertools.count()
    for b, size in enumerate(sizes):
        batch = [step(i, episode=f"e{b}", tag=float(next(tag))) for i in range(size)]
        assert store.append(batch) == (size, 0)
    total = sum(sizes)

    seen: list[float] = []
    positions: list[int] = []
    last = 0
    while True:
        page = store.read_after(last, 4)
        assert len(page) <= 4
        if len(page) == 0:
            break
        assert int(page.position[0]) > last
        positions += page.position.tolist()
        seen += tags(page)
        last = int(page.position[-1])
    assert seen == [float(x) for x in range(total)]  # every row once, in append order
    assert all(b > a for a, b in itertools.pairwise(positions))
    assert last == store.last_position()
    assert len(store.read_after(last, 10)) == 0
    assert len(store.read_after(0, 0)) == 0
    assert store.transition_count() == total


def test_log_survives_close_and_reopen_and_positions_keep_increasing(
    make_store: MakeStore,
) -> None:
    store = make_store()
    store.append([step(i, tag=float(i)) for i in range(6)])
    before = all_rows(store)
    store.close()

    store = make_store()
    again = all_rows(store)
    np.testing.assert_array_equal(again.position, before.position)
    np.testing.assert_array_equal(bits(again.obs), bits(before.obs))
    assert store.transition_count() == 6
    assert store.append([step(i, episode="later", tag=100.0) for i in range(2)]) == (2, 0)
    new = store.read_after(int(before.position[-1]), 10)
    assert len(new) == 2 and tags(new) == [100.0, 100.0]
    assert int(new.position[0]) > int(before.position[-1])


def test_a_committed_batch_is_visible_to_another_store_on_the_same_data(
    make_store: MakeStore,
) -> None:
    writer, reader = make_store(), make_store()
    assert reader.transition_count() == 0
    writer.append([step(i, tag=float(i)) for i in range(3)])
    assert reader.transition_count() == 3
    assert tags(reader.read_after(0, 10)) == [0.0, 1.0, 2.0]
    assert reader.last_position() == writer.last_position()


# --- 2. idempotency -------------------------------------------------------------------------------


def test_a_retried_batch_is_counted_as_duplicates_and_stores_nothing(store: Store) -> None:
    batch = [step(i, tag=float(i)) for i in range(5)]
    assert store.append(batch) == (5, 0)
    last = store.last_position()
    assert store.append(batch) == (0, 5)
    assert store.append(list(reversed(batch))) == (0, 5)
    assert store.transition_count() == 5
    assert store.last_position() == last
    assert tags(all_rows(store)) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_partly_new_batch_stores_only_the_new_keys(store: Store) -> None:
    store.append([step(i, tag=float(i)) for i in range(3)])
    assert store.append([step(i, tag=float(i)) for i in range(1, 6)]) == (3, 2)
    assert sorted(tags(all_rows(store))) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_key_repeated_inside_a_batch_is_stored_once(store: Store) -> None:
    t = step(3, tag=1.0)
    assert store.append([t, t]) == (1, 1)
    assert store.transition_count() == 1
    assert len(all_rows(store)) == 1


def test_a_batch_longer_than_one_insert_statement_is_stored_whole_in_order(store: Store) -> None:
    # 2,500 rows take three multi-row INSERTs; a key repeated across a statement boundary is
    # still stored once, and positions follow the order sent.
    batch = [step(i, tag=float(i)) for i in range(2_500)]
    batch.insert(1_001, step(999, tag=999.0))  # a repeat of row 999, sent in the next statement
    assert store.append(batch) == (2_500, 1)
    rows = all_rows(store)
    assert tags(rows) == [float(i) for i in range(2_500)]
    assert np.all(np.diff(rows.position) > 0)
    # The same repeat with other content is a conflict, across the boundary too: all refused.
    later = [step(i, episode="later", tag=float(i)) for i in range(2_500)]
    later.insert(1_001, step(999, episode="later", tag=-1.0))
    with pytest.raises(TransitionConflict, match="r0/later/999"):
        store.append(later)
    assert store.transition_count() == 2_500


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="needs Python 3.11")
def test_inserts_follow_sqlites_limit_on_parameters_per_statement(backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's own limit")
    with tempfile.TemporaryDirectory() as where:
        store = open_backend(backend, SPEC, Path(where))
        try:
            assert isinstance(store, store_sqlite.SQLiteStore)
            # This thread's connection is the one append writes with: 2 rows per statement.
            per_row = store_sqlite._COLUMNS_PER_ROW
            store._conn().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 2 * per_row + 10)
            batch = [step(i % 5, tag=float(i % 5)) for i in range(13)]
            assert store.append(batch) == (5, 8)
            assert tags(all_rows(store)) == [0.0, 1.0, 2.0, 3.0, 4.0]
            with pytest.raises(sqlite3.OperationalError, match="too many SQL variables"):
                store._conn().execute(store_sqlite._insert_sql(3), [0] * 33)
        finally:
            store.close()


def test_same_key_with_other_content_is_a_conflict_and_the_stored_row_stays(
    store: Store,
) -> None:
    # (tests/test_store_conflicts.py covers conflicts field by field and under group commit.)
    assert store.append([step(0, tag=1.0, reward=1.0)]) == (1, 0)
    with pytest.raises(TransitionConflict, match="r0/e0/0"):
        store.append([step(0, tag=2.0, reward=2.0, terminated=True, version=4)])
    # ... also inside one batch
    with pytest.raises(TransitionConflict, match="r0/e0/1"):
        store.append([step(1, tag=3.0, reward=3.0), step(1, tag=4.0, reward=4.0)])
    rows = all_rows(store)
    assert tags(rows) == [1.0]
    assert rows.reward.tolist() == [1.0]
    assert rows.terminated.tolist() == [False]
    assert rows.policy_version.tolist() == [-1]


def test_keys_differing_in_any_one_part_are_distinct(store: Store) -> None:
    batch = [
        step(0, robot="a", episode="x"),
        step(0, robot="b", episode="x"),
        step(0, robot="a", episode="y"),
        step(1, robot="a", episode="x"),
    ]
    assert store.append(batch) == (4, 0)
    assert store.transition_count() == 4


_KEYS = st.lists(
    st.tuples(st.sampled_from(["r0", "r1"]), st.sampled_from(["e0", "e1"]), st.integers(0, 4)),
    min_size=1,
    max_size=10,
    unique=True,
)


@st.composite
def retried_batches(draw: st.DrawFn) -> tuple[list[tuple[str, str, int]], list[list[int]]]:
    """Keys, and batches of indices into them: repeats, retries of earlier batches, reorderings."""
    keys = draw(_KEYS)
    index = st.integers(0, len(keys) - 1)
    batches: list[list[int]] = []
    for _ in range(draw(st.integers(1, 6))):
        if batches and draw(st.booleans()):  # a retry of an earlier batch, maybe reordered
            batch = list(draw(st.sampled_from(batches)))
            batch = draw(st.permutations(batch)) if batch else batch
        else:
            batch = draw(st.lists(index, max_size=8))
        batches.append(batch)
    return keys, batches


@settings(max_examples=25, deadline=None)
@given(case=retried_batches())
def test_property_each_key_is_stored_exactly_once(
    backend: str, case: tuple[list[tuple[str, str, int]], list[list[int]]]
) -> None:
    # Every sending of a key has the same content (a retry); conflicts are covered by the
    # property test in tests/test_store_conflicts.py.
    keys, batches = case
    seen: set[int] = set()
    total_accepted = 0
    with tempfile.TemporaryDirectory() as where:
        store = open_backend(backend, SPEC, Path(where))
        try:
            for batch in batches:
                steps = []
                for k in batch:
                    seen.add(k)
                    robot, episode, i = keys[k]
                    steps.append(step(i, robot=robot, episode=episode, tag=float(k)))
                accepted, duplicates = store.append(steps)
                assert accepted + duplicates == len(batch)
                total_accepted += accepted
            rows = all_rows(store)
            stored = [int(k) for k in rows.obs[:, 0]]
            assert sorted(stored) == sorted(seen)  # each key sent is stored exactly once
            assert total_accepted == len(seen)
            assert store.transition_count() == len(seen)
            assert np.all(np.diff(rows.position) > 0)
        finally:
            store.close()


# --- 3. bad input ---------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
BAD_FIELDS = {
    "obs_too_short": {"obs": [0.0, 0.0]},
    "obs_too_long": {"obs": [0.0, 0.0, 0.0, 0.0]},
    "obs_empty": {"obs": []},
    "action_too_short": {"action": [0.0]},
    "action_too_long": {"action": [0.0, 0.0, 0.0]},
    "next_obs_wrong_length": {"next_obs": [0.0, 0.0]},
    "obs_matrix": {"obs": [[0.0, 0.0, 0.0]]},
    "obs_nan": {"obs": [0.0, NAN, 0.0]},
    "obs_inf": {"obs": [INF, 0.0, 0.0]},
    "obs_overflows_float32": {"obs": [1e39, 0.0, 0.0]},
    "action_minus_inf": {"action": [0.0, -INF]},
    "action_nan": {"action": [NAN, 0.0]},
    "next_obs_nan": {"next_obs": [0.0, 0.0, NAN]},
    "next_obs_inf": {"next_obs": [0.0, 0.0, -INF]},
    "reward_nan": {"reward": NAN},
    "reward_inf": {"reward": INF},
    "reward_minus_inf": {"reward": -INF},
    # vectors given as float32 bytes (a MessagePack body)
    "obs_bytes_too_short": {"obs": np.zeros(2, "<f4").tobytes()},
    "obs_bytes_not_whole_floats": {"obs": b"\x00" * 11},
    "obs_bytes_empty": {"obs": b""},
    "action_bytes_too_long": {"action": np.zeros(3, "<f4").tobytes()},
    "obs_bytes_nan": {"obs": np.asarray([0.0, NAN, 0.0], "<f4").tobytes()},
    "action_bytes_inf": {"action": np.asarray([INF, 0.0], "<f4").tobytes()},
    "next_obs_bytes_minus_inf": {"next_obs": np.asarray([0.0, 0.0, -INF], "<f4").tobytes()},
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_bad_transition_is_refused_and_its_whole_batch_left_out(
    store: Store, fields: dict[str, Any]
) -> None:
    store.append([step(0, episode="earlier", tag=9.0)])
    good = step(0, tag=1.0, terminated=True, version=1)
    bad = step(1, tag=2.0, **fields)
    with pytest.raises(ValueError, match="r0/e0/1"):  # the message names the transition
        store.append([good, bad])
    assert store.transition_count() == 1
    assert tags(all_rows(store)) == [9.0]
    assert store.episodes_by_version() == []
    assert store.append([good]) == (1, 0)  # the valid one was not stored before


def test_reward_beyond_float32_is_refused_or_read_back_finite(store: Store) -> None:
    with np.errstate(over="ignore"):
        try:
            store.append([step(0, reward=1e39)])
        except ValueError:
            assert store.transition_count() == 0  # refused: fine
            return
        assert np.isfinite(all_rows(store).reward).all()


# --- 4. episodes ----------------------------------------------------------------------------------


def test_episode_return_is_the_sum_of_rewards_once_its_last_step_is_logged(
    store: Store,
) -> None:
    store.append([step(i, reward=r, version=3) for i, r in enumerate([1.0, 2.0, 3.0, 4.0])])
    assert store.episodes_by_version() == []  # not ended yet
    store.append([step(4, reward=0.5, version=3, terminated=True)])
    assert store.episodes_by_version() == [VersionEpisodes(3, 1, 10.5, (10.5,))]
    # a truncated step ends an episode too
    store.append([step(i, episode="e1", reward=-1.0, version=3) for i in range(2)])
    store.append([step(2, episode="e1", reward=-1.0, version=3, truncated=True)])
    assert store.episodes_by_version() == [VersionEpisodes(3, 2, 3.75, (-3.0, 10.5))]


def test_an_episode_without_an_ending_step_is_not_counted(store: Store) -> None:
    store.append([step(i, reward=1.0, version=1) for i in range(10)])
    store.append([step(0, episode="done", reward=2.0, version=1, terminated=True)])
    assert store.episodes_by_version() == [VersionEpisodes(1, 1, 2.0, (2.0,))]


def test_a_mixed_episode_is_credited_to_the_version_that_chose_most_steps(
    store: Store,
) -> None:
    versions = [2, 1, 2, 1, 2, None, None]  # 3 steps by v2, 2 by v1, 2 unknown
    store.append(
        [
            step(i, reward=1.0, version=v, terminated=i == len(versions) - 1)
            for i, v in enumerate(versions)
        ]
    )
    # steps whose version is unknown do not vote
    store.append(
        [
            step(i, episode="mostly-unknown", reward=0.5, version=v, terminated=i == 3)
            for i, v in enumerate([None, None, None, 1])
        ]
    )
    assert store.episodes_by_version() == [
        VersionEpisodes(1, 1, 2.0, (2.0,)),
        VersionEpisodes(2, 1, 7.0, (7.0,)),
    ]


def test_a_late_earlier_step_of_an_ended_episode_updates_its_return(store: Store) -> None:
    store.append([step(1, reward=2.0, version=1), step(2, reward=4.0, version=1, terminated=True)])
    assert store.episodes_by_version() == [VersionEpisodes(1, 1, 6.0, (6.0,))]
    store.append([step(0, reward=1.0, version=1)])  # a retry arriving late
    assert store.episodes_by_version() == [VersionEpisodes(1, 1, 7.0, (7.0,))]
    assert store.append([step(0, reward=1.0, version=1)]) == (0, 1)  # a duplicate changes nothing
    assert store.episodes_by_version() == [VersionEpisodes(1, 1, 7.0, (7.0,))]
    with pytest.raises(TransitionConflict):  # nor does a conflicting copy, refused
        store.append([step(0, reward=100.0, version=1)])
    assert store.episodes_by_version() == [VersionEpisodes(1, 1, 7.0, (7.0,))]


def test_episodes_by_version_gives_counts_means_and_newest_returns_first(
    store: Store,
) -> None:
    for k in range(5):  # version 1: returns 1, 2, 3, 4, 5, one batch (and time) each
        store.append([step(0, episode=f"a{k}", reward=float(k + 1), version=1, terminated=True)])
    store.append([step(0, episode="b", reward=-4.0, version=2, truncated=True)])
    assert store.episodes_by_version(recent=3) == [
        VersionEpisodes(1, 5, 3.0, (5.0, 4.0, 3.0)),
        VersionEpisodes(2, 1, -4.0, (-4.0,)),
    ]
    assert store.episodes_by_version()[0].recent_returns == (5.0, 4.0, 3.0, 2.0, 1.0)


def test_episodes_of_different_robots_with_the_same_episode_id_are_separate(
    store: Store,
) -> None:
    store.append(
        [
            step(0, robot="a", episode="1", reward=1.0, version=0, terminated=True),
            step(0, robot="b", episode="1", reward=3.0, version=0, terminated=True),
        ]
    )
    (summary,) = store.episodes_by_version()
    assert (summary.version, summary.episodes, summary.mean_return) == (0, 2, 2.0)
    assert sorted(summary.recent_returns) == [1.0, 3.0]


def test_episodes_by_robot_counts_each_robots_episodes_newest_first(store: Store) -> None:
    assert store.episodes_by_robot() == []
    for k in range(4):  # robot a: returns 1..4 (a retried ending counts once), robot b: one
        ending = step(1, robot="a", episode=f"a{k}", reward=float(k), version=0, terminated=True)
        store.append([step(0, robot="a", episode=f"a{k}", reward=1.0, version=0), ending])
        store.append([ending])
        time.sleep(0.002)  # each episode ends at its own time
    store.append([step(0, robot="b", episode="b0", reward=-2.0, truncated=True)])
    store.append([step(0, robot="c", episode="c0", reward=5.0)])  # not ended: no episode
    b, a = store.episodes_by_robot(recent=3)
    assert (b.robot_id, b.episodes, b.recent_returns) == ("b", 1, (-2.0,))
    assert (a.robot_id, a.episodes, a.recent_returns) == ("a", 4, (4.0, 3.0, 2.0))
    assert b.last_ended_at >= a.last_ended_at
    assert [r.robot_id for r in store.episodes_by_robot(robots=1)] == ["b"]


def test_a_refused_ending_step_does_not_end_an_episode(store: Store) -> None:
    store.append([step(0, reward=1.0, version=1)])
    with pytest.raises(TransitionConflict, match="terminated"):
        store.append([step(0, reward=1.0, version=1, terminated=True)])
    assert store.episodes_by_version() == []  # no stored step ended the episode
    assert store.append([step(0, reward=1.0, version=1)]) == (0, 1)
    assert store.episodes_by_version() == []


@st.composite
def episode_traffic(draw: st.DrawFn) -> list[list[tuple[int, int, float, int, bool]]]:
    """Batches of ``(episode, step, reward, version, ends)`` over two short episodes, with retries
    that may repeat a key with other content (another reward, version or end flag)."""
    sending = st.tuples(
        st.integers(0, 1),
        st.integers(0, 4),
        st.integers(-3, 3).map(float),
        st.integers(0, 2),
        st.booleans(),
    )
    return draw(st.lists(st.lists(sending, min_size=1, max_size=6), min_size=1, max_size=6))


@settings(max_examples=80, deadline=None)
@given(traffic=episode_traffic())
def test_property_episode_returns_follow_the_stored_steps(
    backend: str, traffic: list[list[tuple[int, int, float, int, bool]]]
) -> None:
    # The reference: a batch that sends a key with content other than the stored one (or than
    # its own earlier copy) is refused whole; otherwise its new keys are stored. An episode is
    # summed once a stored step ends it, over all its stored steps, and credited to the version
    # that chose most of them (ties: the newer one).
    stored: dict[tuple[int, int], tuple[float, int, bool]] = {}
    with tempfile.TemporaryDirectory() as where:
        store = open_backend(backend, SPEC, Path(where))
        try:
            for batch in traffic:
                sent: dict[tuple[int, int], tuple[float, int, bool]] = {}
                conflict = False
                for e, i, r, v, ends in batch:
                    first = stored.get((e, i)) or sent.setdefault((e, i), (r, v, ends))
                    conflict |= first != (r, v, ends)
                steps = [
                    step(i, episode=f"e{e}", reward=r, version=v, terminated=ends)
                    for e, i, r, v, ends in batch
                ]
                if conflict:
                    with pytest.raises(TransitionConflict):
                        store.append(steps)
                else:
                    store.append(steps)
                    stored.update(sent)
            returns: dict[int, list[float]] = {}
            for e in (0, 1):
                steps = [value for (episode, _), value in stored.items() if episode == e]
                if not any(ends for _, _, ends in steps):
                    continue
                votes = [sum(1 for _, v, _ in steps if v == version) for version in range(3)]
                top = max(range(3), key=lambda version: (votes[version], version))
                returns.setdefault(top, []).append(sum(r for r, _, _ in steps))
            got = {
                s.version: (s.episodes, s.mean_return, sorted(s.recent_returns))
                for s in store.episodes_by_version()
            }
            want = {
                v: (len(rs), pytest.approx(sum(rs) / len(rs)), sorted(rs))
                for v, rs in returns.items()
            }
            assert got == want
        finally:
            store.close()


# --- 5. the policy registry -----------------------------------------------------------------------


def test_ensure_initial_policy_registers_version_0_once(store: Store) -> None:
    assert store.latest_policy() is None and store.list_policies() == []
    v0 = ensure_initial_policy(store)
    assert v0.version == 0
    assert ensure_initial_policy(store) == v0
    assert store.list_policies() == [v0]
    assert store.register_policy(make_policy_bytes()[0], first=True) is None
    assert store.list_policies() == [v0]

    data = store.policy_bytes(v0)
    assert hashlib.sha256(data).hexdigest() == v0.sha256
    policy = load_policy(data, sha256=v0.sha256)
    info = policy.info
    assert (info.obs_dim, info.action_dim, info.version) == (3, 2, 0)
    assert info.action_low == SPEC.action_low and info.action_high == SPEC.action_high
    assert info.hidden == (16, 16)
    action = policy.act(np.zeros(3, np.float32))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
    # first=True did not use a number: the next version is 1
    assert store.register_policy(make_policy_bytes()[0]).version == 1


def test_register_policy_numbers_versions_and_rewrites_the_file_version(store: Store) -> None:
    v0 = ensure_initial_policy(store)
    data, actor = make_policy_bytes(version=42, updates=7)
    v1 = store.register_policy(data)
    v2 = store.register_policy(make_policy_bytes(version=1, seed=2)[0])
    assert v1 is not None and v2 is not None
    assert (v1.version, v2.version) == (1, 2)
    assert v1.updates == 7
    assert v1.metadata["version"] == "1"

    stored = store.policy_bytes(v1)
    assert hashlib.sha256(stored).hexdigest() == v1.sha256
    assert read_policy_info(stored).version == 1  # the uploaded file said 42
    loaded = load_policy(stored, sha256=v1.sha256)
    assert loaded.info.updates == 7
    for name, tensor in actor.state_dict().items():
        assert torch.equal(loaded.actor.state_dict()[name], tensor), name
    assert read_policy_info(store.policy_bytes(v2)).version == 2

    assert store.get_policy(1) == v1
    assert store.get_policy(7) is None
    assert store.latest_policy() == v2
    assert store.list_policies() == [v0, v1, v2]


GARBAGE = {
    "empty": b"",
    "text": b"not a policy file at all",
    "zeros": bytes(64),
    "safetensors_without_metadata": (lambda h: len(h).to_bytes(8, "little") + h)(b"{}      "),
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_refused_without_using_a_version_number(store: Store, data: bytes) -> None:
    ensure_initial_policy(store)
    with pytest.raises(PolicyFileError):
        store.register_policy(data)
    assert [r.version for r in store.list_policies()] == [0]
    assert store.register_policy(make_policy_bytes()[0]).version == 1


def test_a_number_reserved_by_a_failed_registration_is_never_reused(
    store: Store, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_initial_policy(store)
    failed = fail_next_write(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        store.register_policy(make_policy_bytes(seed=5)[0])
    assert failed == [1], "the number was not reserved before the failure"
    assert store.get_policy(1) is None
    assert [r.version for r in store.list_policies()] == [0]
    after = store.register_policy(make_policy_bytes(seed=6)[0])
    assert after.version > 1  # a gap is fine, reuse of 1 is not
    assert load_policy(store.policy_bytes(after), sha256=after.sha256).version == after.version
    store.close()
    reopened = make_store()
    assert reopened.register_policy(make_policy_bytes(seed=7)[0]).version > after.version


def test_version_numbering_continues_after_reopen(make_store: MakeStore) -> None:
    store = make_store()
    ensure_initial_policy(store)
    store.register_policy(make_policy_bytes()[0])
    store.close()
    store = make_store()
    latest = store.latest_policy()
    assert latest is not None and latest.version == 1
    assert ensure_initial_policy(store) == latest  # no new version on a restart
    assert store.register_policy(make_policy_bytes(seed=3)[0]).version == 2
    assert [r.version for r in store.list_policies()] == [0, 1, 2]


def test_concurrent_registrations_get_distinct_numbers(store: Store) -> None:
    ensure_initial_policy(store)
    data = [make_policy_bytes(seed=s)[0] for s in range(6)]
    got: list[int] = []
    errors: list[BaseException] = []

    def register(chunk: list[bytes]) -> None:
        try:
            for d in chunk:
                record = store.register_policy(d)
                assert record is not None
                got.append(record.version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(data[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [r.version for r in store.list_policies()] == list(range(7))


def test_a_failed_first_start_does_not_block_later_starts(
    store: Store, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_next_write(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        ensure_initial_policy(store)
    store.close()
    # Restart. A fake clock makes the store's wait for "another process" pass at once.
    clock = itertools.count(0.0, 5.0)
    fake_time = types.SimpleNamespace(
        monotonic=lambda: next(clock), sleep=lambda _s: None, time=time.time
    )
    monkeypatch.setattr(bootstrap, "time", fake_time)
    restarted = make_store()
    record = ensure_initial_policy(restarted)  # a number > 0 is fine: 0 must not be reused
    assert load_policy(restarted.policy_bytes(record), sha256=record.sha256).obs_dim == 3


# --- 6, 7. concurrency ----------------------------------------------------------------------------


def test_two_threads_append_through_one_store_while_a_reader_tails(store: Store) -> None:
    own, shared = 60, 20  # each thread sends its own keys and all the shared ones
    expected = {float(1000 * k + i) for k in range(2) for i in range(own)}
    expected |= {float(2000 + i) for i in range(shared)}

    def keys_for(thread: int) -> list[Step]:
        mine = [step(i, robot=f"t{thread}", tag=float(1000 * thread + i)) for i in range(own)]
        common = [step(i, robot="shared", tag=float(2000 + i)) for i in range(shared)]
        if thread:
            common.reverse()
        mixed = [x for pair in itertools.zip_longest(mine, common) for x in pair if x]
        return mixed

    counts: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()
    tailed: list[float] = []
    tailed_positions: list[int] = []

    def write(thread: int) -> None:
        try:
            sends = keys_for(thread)
            for b in range(0, len(sends), 8):
                counts.append(store.append(sends[b : b + 8]))
        except BaseException as exc:
            errors.append(exc)

    def tail() -> None:
        try:
            last = 0
            while True:
                finished = done.is_set()
                page = store.read_after(last, 7)
                if len(page):
                    tailed.extend(tags(page))
                    tailed_positions.extend(page.position.tolist())
                    last = int(page.position[-1])
                elif finished:
                    return
                else:
                    time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    reader = threading.Thread(target=tail)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    done.set()
    reader.join(60)
    assert not errors
    assert sum(a for a, _ in counts) == len(expected)
    assert sum(a + d for a, d in counts) == 2 * (own + shared)
    assert store.transition_count() == len(expected)
    stored = tags(all_rows(store))
    assert len(stored) == len(set(stored)) and set(stored) == expected
    assert sorted(tailed) == sorted(stored)  # the tailing reader saw every row exactly once
    assert all(b > a for a, b in itertools.pairwise(tailed_positions))


def _append_in_child(
    backend: str, where: str, proc: int, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a spawned process
    store = open_backend(backend, SPEC, Path(where))
    try:
        mine = [step(i, robot=f"p{proc}", tag=float(1000 * proc + i)) for i in range(100)]
        common = [step(i, robot="shared", tag=float(5000 + i)) for i in range(30)]
        sends = mine + (common if proc else common[::-1])
        batches = [sends[b : b + 10] for b in range(0, len(sends), 10)]
        barrier.wait(60)
        accepted = duplicates = 0
        for batch in batches:
            a, d = store.append(batch)
            accepted, duplicates = accepted + a, duplicates + d
        results.put((proc, accepted, duplicates))
    finally:
        store.close()


def _ensure_in_child(
    backend: str, where: str, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a spawned process
    barrier.wait(60)  # open a fresh store at the same moment
    store = open_backend(backend, SPEC, Path(where))
    try:
        barrier.wait(60)  # and ask for version 0 at the same moment
        record = ensure_initial_policy(store)
        results.put((record.version, record.sha256))
    finally:
        store.close()


def run_children(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(args)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + 90
        while len(out) < len(procs) and time.monotonic() < deadline:
            try:
                out.append(results.get(timeout=0.2))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    break  # a child failed: do not wait for its result
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert len(out) == len(procs)
    return out


def test_two_processes_append_concurrently_and_every_transition_is_stored_once(
    backend: str, tmp_path: Path
) -> None:
    where = tmp_path / "data"
    open_backend(backend, SPEC, where).close()  # created before the race
    out = run_children(_append_in_child, [(backend, str(where), 0), (backend, str(where), 1)])
    assert all(a + d == 130 for _, a, d in out)
    assert sum(a for _, a, _ in out) == 230  # 2 x 100 own + 30 shared, each once
    assert sum(d for _, _, d in out) == 30
    store = open_backend(backend, SPEC, where)
    try:
        assert store.transition_count() == 230
        rows = all_rows(store)
        stored = tags(rows)
        expected = {float(1000 * p + i) for p in range(2) for i in range(100)}
        expected |= {float(5000 + i) for i in range(30)}
        assert len(stored) == 230 and set(stored) == expected
        assert np.all(np.diff(rows.position) > 0)
    finally:
        store.close()
    if backend == "sqlite":  # SQLite-specific: the file is consistent after the concurrent writes
        with sqlite3.connect(where / "store.sqlite") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_two_processes_starting_at_once_create_one_version_0(backend: str, tmp_path: Path) -> None:
    where = tmp_path / "fresh"
    out = run_children(_ensure_in_child, [(backend, str(where)), (backend, str(where))])
    assert [v for v, _ in out] == [0, 0]
    assert out[0][1] == out[1][1]  # the same file, not two different version 0s
    store = open_backend(backend, SPEC, where)
    try:
        (v0,) = store.list_policies()
        assert v0.version == 0 and v0.sha256 == out[0][1]
        assert load_policy(store.policy_bytes(v0), sha256=v0.sha256).version == 0
        assert store.register_policy(make_policy_bytes()[0]).version == 1
    finally:
        store.close()


# --- 8. control state and learner status ----------------------------------------------------------


def test_control_state_defaults(store: Store) -> None:
    assert store.control() == ControlState(
        learner_paused=False, mode="follow", pinned_version=None, hold=False
    )


def test_update_control_changes_only_the_given_fields_and_persists(
    make_store: MakeStore,
) -> None:
    store = make_store()
    register_versions(store, 4)  # only a registered version may be pinned
    assert store.update_control(learner_paused=True) == ControlState(True, "follow", None, False)
    state = store.update_control(mode="pinned", pinned_version=3, hold=True)
    assert state == ControlState(True, "pinned", 3, True)
    assert store.control() == state
    assert store.update_control() == state
    store.close()
    store = make_store()
    assert store.control() == state
    assert store.update_control(mode="follow", pinned_version=None, learner_paused=False) == (
        ControlState(False, "follow", None, True)
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"paused": True}, "unknown control fields"),
        ({"mode": "newest"}, "mode must be"),
        ({"mode": "pinned", "colour": "red"}, "unknown control fields"),
    ],
    ids=["unknown_field", "bad_mode", "valid_with_unknown"],
)
def test_update_control_refuses_bad_changes_and_changes_nothing(
    store: Store, changes: dict[str, Any], message: str
) -> None:
    before = store.control()
    with pytest.raises(ValueError, match=message):
        store.update_control(**changes)
    assert store.control() == before


def test_robots_are_held_and_released_one_by_one_and_it_persists(make_store: MakeStore) -> None:
    store = make_store()
    state = store.update_control(robots={"arm-1": True, "arm-2": True})
    assert state.held_robots == {"arm-1", "arm-2"} and not state.hold
    assert state.holds("arm-1") and not state.holds("arm-3") and not state.holds(None)
    # Holding one already held, and a field change beside a release, touch nothing else.
    state = store.update_control(robots={"arm-2": True, "arm-1": False}, learner_paused=True)
    assert state == ControlState(True, "follow", None, False, frozenset({"arm-2"}))
    assert store.update_control(hold=True).held_robots == {"arm-2"}  # the hold for all beside
    store.close()
    store = make_store()
    assert store.control() == ControlState(True, "follow", None, True, frozenset({"arm-2"}))
    assert store.control().holds("anyone")
    # Releasing a robot that is not held is a no-op, not an error.
    assert store.update_control(robots={"arm-9": False}).held_robots == {"arm-2"}


def test_concurrent_robot_holds_from_two_connections_are_all_kept(make_store: MakeStore) -> None:
    # Two replicas holding different robots at once: neither hold may overwrite the other (a set
    # written whole would lose one).
    first, second = make_store(), make_store()
    errors: list[BaseException] = []

    def hold_all(store: Store, prefix: str) -> None:
        try:
            for i in range(20):
                store.update_control(robots={f"{prefix}-{i}": True})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=hold_all, args=(s, p)) for s, p in ((first, "a"), (second, "b"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = {f"{p}-{i}" for p in "ab" for i in range(20)}
    assert first.control().held_robots == second.control().held_robots == expected
    second.close()


@pytest.mark.parametrize(
    "robots",
    [{"": True}, {"x" * 129: True}, {"arm-1": 1}],
    ids=["empty_id", "long_id", "not_a_bool"],
)
def test_bad_robot_holds_are_refused_and_change_nothing(
    store: Store, robots: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="robot"):
        store.update_control(robots=robots, hold=True)
    assert store.control() == ControlState()


def test_learner_status_round_trip_with_heartbeat_and_persists(make_store: MakeStore) -> None:
    store = make_store()
    assert store.learner_status() is None
    written = LearnerStatus(
        state="paused", updates=5, losses={"loss_actor": 1.5, "loss_qvalue": 0.25}, alpha=0.5
    )
    store.write_learner_status(written)
    status = store.learner_status()
    assert status is not None
    assert abs(status.heartbeat - time.time()) < 5.0  # the store stamps the time
    assert status.model_dump(exclude={"heartbeat"}) == written.model_dump(exclude={"heartbeat"})
    heartbeat = status.heartbeat
    store.write_learner_status(LearnerStatus(updates=6))  # replaces the row, old fields gone
    status = store.learner_status()
    assert status is not None and status == LearnerStatus(updates=6, heartbeat=status.heartbeat)
    assert status.heartbeat >= heartbeat
    store.close()
    reopened = make_store().learner_status()
    assert reopened is not None and reopened.updates == 6


def test_a_non_finite_learner_figure_is_stored_as_null(make_store: MakeStore) -> None:
    # JSON has no infinity: a skipped update's loss is read back as None, not as an error.
    store = make_store()
    store.write_learner_status(
        LearnerStatus(losses={"loss_qvalue": math.inf, "loss_actor": 0.25}, alpha=math.nan)
    )
    status = store.learner_status()
    assert status is not None
    assert status.losses == {"loss_qvalue": None, "loss_actor": 0.25} and status.alpha is None


def test_a_learner_status_row_this_version_cannot_read_says_so() -> None:
    # e.g. written by an incompatible learner: a faulted learner naming the field, not a crash
    status = decode_learner_status('{"updates": "many"}', heartbeat=12.5)
    assert status.state == "faulted" and status.heartbeat == 12.5
    assert status.fault is not None
    assert status.fault.startswith("unreadable learner status (updates")


# --- 9. one data directory, one task; SQLite settings ---------------------------------------------


def test_opening_data_of_another_obs_dim_is_refused(make_store: MakeStore) -> None:
    make_store().close()
    other = SPEC.model_copy(update={"obs_dim": 4})
    with pytest.raises(StoreError, match="obs_dim") as info:
        make_store(other)
    assert "obs_dim 3" in str(info.value) and "obs_dim 4" in str(info.value)


def test_opening_data_of_other_action_bounds_is_refused(make_store: MakeStore) -> None:
    make_store().close()
    wider = TaskSpec(obs_dim=3, action_low=(-2.0, -1.0), action_high=(1.0, 1.0))
    with pytest.raises(StoreError, match="bounds") as info:
        make_store(wider)
    assert "-2.0" in str(info.value)
    more = TaskSpec(obs_dim=3, action_low=(-1.0, -1.0, -1.0), action_high=(1.0, 1.0, 1.0))
    with pytest.raises(StoreError):
        make_store(more)


def test_the_same_task_reopens_and_keeps_its_data(make_store: MakeStore) -> None:
    store = make_store()
    store.append([step(0)])
    store.close()
    same_dims = TaskSpec(name="renamed", obs_dim=3, action_low=(-1.0, -1.0), action_high=(1.0, 1.0))
    assert make_store(SPEC).transition_count() == 1
    assert make_store(same_dims).transition_count() == 1  # name and SAC settings may change


def test_sqlite_runs_in_wal_mode_with_full_synchronous(tmp_path: Path) -> None:
    # SQLite-specific: the durability settings on the store's own connection and in the file.
    store = open_store(SPEC, tmp_path / "data")
    try:
        store.append([step(0)])
        conn = store._conn()  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with sqlite3.connect(tmp_path / "data" / "store.sqlite") as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    finally:
        store.close()


def test_sqlite_append_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    # SQLite-specific: a write lock held by another connection delays an append (busy timeout),
    # it does not fail it with "database is locked".
    store = open_store(SPEC, tmp_path / "data")
    other = sqlite3.connect(
        tmp_path / "data" / "store.sqlite", isolation_level=None, check_same_thread=False
    )
    try:
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        assert store.append([step(0)]) == (1, 0)
        assert time.monotonic() - started >= 0.2
        release.join()
        assert store.transition_count() == 1
    finally:
        other.close()
        store.close()


# --- 9b. version retention ------------------------------------------------------------------------
# versions_to_keep is the rule; prune_policies applies it to a store (with the control state's pin
# and the versions replicas report serving); delete_policies removes rows and bytes.


def test_versions_to_keep_keeps_the_newest_n() -> None:
    assert versions_to_keep(range(10), 3, 0) == {7, 8, 9}
    assert versions_to_keep(range(10), 1, 0) == {9}


def test_versions_to_keep_keeps_every_kth_number_and_zero_turns_it_off() -> None:
    assert versions_to_keep(range(25), 1, 10) == {0, 10, 20, 24}
    assert versions_to_keep(range(25), 2, 0) == {23, 24}
    assert versions_to_keep(range(5), 1, 1) == {0, 1, 2, 3, 4}
    # K counts version numbers, not positions: after gaps, 13 is not a tenth version
    assert versions_to_keep([0, 10, 13, 20, 21], 2, 10) == {0, 10, 20, 21}
    assert versions_to_keep([3, 7, 11, 12], 1, 10) == {12}  # no multiple of 10 left


def test_versions_to_keep_keeps_the_pinned_and_served_ones_if_they_exist() -> None:
    assert versions_to_keep(range(10), 2, 0, pinned=3) == {3, 8, 9}
    assert versions_to_keep(range(10), 2, 0, served=[1, 5, 5]) == {1, 5, 8, 9}
    assert versions_to_keep(range(10), 2, 5, pinned=1, served=[2]) == {0, 1, 2, 5, 8, 9}
    # a pin or a report naming a version that is gone keeps nothing that is not there
    assert versions_to_keep(range(10), 2, 0, pinned=42, served=[99, -1]) == {8, 9}


def test_versions_to_keep_with_more_room_than_versions_keeps_them_all() -> None:
    assert versions_to_keep([0, 1, 2], 20, 100) == {0, 1, 2}
    assert versions_to_keep([], 20, 100, pinned=3, served=[4]) == set()


def test_versions_to_keep_counts_duplicates_once_and_ignores_order() -> None:
    assert versions_to_keep([3, 3, 5, 5, 7, 7], 2, 0) == {5, 7}
    assert versions_to_keep([9, 1, 5, 1], 1, 0) == {9}
    assert versions_to_keep(iter([4, 2, 6]), 2, 0) == {4, 6}  # any iterable, read once


@settings(max_examples=200, deadline=None)
@given(
    versions=st.lists(st.integers(0, 300), max_size=60),
    keep_newest=st.integers(1, 30),
    keep_every=st.integers(0, 50),
    pinned=st.none() | st.integers(0, 300),
    served=st.lists(st.integers(0, 300), max_size=4),
)
def test_property_versions_to_keep_keeps_exactly_what_a_rule_names(
    versions: list[int], keep_newest: int, keep_every: int, pinned: int | None, served: list[int]
) -> None:
    keep = versions_to_keep(versions, keep_newest, keep_every, pinned=pinned, served=served)
    distinct = sorted(set(versions))
    newest = set(distinct[max(0, len(distinct) - keep_newest) :])
    for v in distinct:
        named = (
            v in newest or (keep_every > 0 and v % keep_every == 0) or v == pinned or v in served
        )
        assert (v in keep) == named, v
    assert keep <= set(distinct)


def register_versions(store: Store, n: int) -> list[PolicyRecord]:
    """Version 0 and ``n - 1`` more: versions 0 to ``n - 1``."""
    records = [ensure_initial_policy(store)]
    for seed in range(1, n):
        record = store.register_policy(make_policy_bytes(seed=seed)[0])
        assert record is not None
        records.append(record)
    assert [r.version for r in records] == list(range(n))
    return records


def assert_loads_as_itself(store: Store, record: PolicyRecord) -> None:
    policy = load_policy(store.policy_bytes(record), sha256=record.sha256)
    assert policy.info.version == record.version


def test_prune_deletes_exactly_what_retention_does_not_keep(store: Store) -> None:
    records = register_versions(store, 25)
    deleted = store.prune_policies(5, 10)
    # newest 5: 20-24; every 10th: 0, 10, 20
    assert sorted(deleted) == [*range(1, 10), *range(11, 20)]
    kept = [0, 10, 20, 21, 22, 23, 24]
    assert [r.version for r in store.list_policies()] == kept
    for v in deleted:
        assert store.get_policy(v) is None
    for record in store.list_policies():
        assert record == records[record.version]  # the kept records are unchanged
        assert_loads_as_itself(store, record)
    latest = store.latest_policy()
    assert latest is not None and latest.version == 24
    assert store.prune_policies(5, 10) == []  # nothing more to delete
    assert [r.version for r in store.list_policies()] == kept


def test_prune_keeps_the_pinned_version_only_while_pinned(store: Store) -> None:
    register_versions(store, 12)
    store.update_control(mode="pinned", pinned_version=3)
    assert sorted(store.prune_policies(2, 0)) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [r.version for r in store.list_policies()] == [3, 10, 11]
    pinned = store.get_policy(3)
    assert pinned is not None
    assert_loads_as_itself(store, pinned)
    store.update_control(mode="follow", pinned_version=None)
    assert store.prune_policies(2, 0) == [3]
    assert [r.version for r in store.list_policies()] == [10, 11]


def test_a_pin_that_lands_after_prune_looked_is_still_kept(store: Store) -> None:
    # The deletion itself keeps the version pinned when it commits, whatever the caller read.
    register_versions(store, 6)
    store.update_control(mode="pinned", pinned_version=2)
    store.delete_policies([1, 2, 3])
    assert [r.version for r in store.list_policies()] == [0, 2, 4, 5]


def test_pinning_a_version_that_is_not_registered_is_refused_and_changes_nothing(
    store: Store,
) -> None:
    register_versions(store, 4)
    store.delete_policies([1])
    before = store.control()
    for version in (1, 99):
        with pytest.raises(UnknownVersion, match=f"version {version} does not exist"):
            store.update_control(mode="pinned", pinned_version=version)
    assert store.control() == before
    assert store.update_control(mode="pinned", pinned_version=2).pinned_version == 2


def test_a_pin_and_a_prune_racing_never_leave_the_pin_on_a_deleted_version(
    make_store: MakeStore,
) -> None:
    pinner, pruner = make_store(), make_store()
    register_versions(pinner, 30)
    # Pinned from the start, so a pruner that outruns every later pin still races one.
    pinner.update_control(mode="pinned", pinned_version=29)
    errors: list[BaseException] = []

    def pin_each() -> None:
        for version in range(29, -1, -1):
            try:
                pinner.update_control(mode="pinned", pinned_version=version)
            except UnknownVersion:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            control = pinner.control()
            if control.pinned_version is not None:
                assert pinner.get_policy(control.pinned_version) is not None

    def prune_each() -> None:
        for version in range(30):
            try:
                pruner.delete_policies([version])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=pin_each), threading.Thread(target=prune_each)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    control = pinner.control()
    assert control.pinned_version is not None
    assert pinner.get_policy(control.pinned_version) is not None


def test_prune_keeps_versions_replicas_report_serving(store: Store) -> None:
    register_versions(store, 12)
    store.report_served("replica-a", 4)
    store.report_served("replica-b", 6)
    store.report_served("replica-c", 6)
    assert store.served_versions(60.0) == {"replica-a": 4, "replica-b": 6, "replica-c": 6}
    store.prune_policies(2, 0)
    assert [r.version for r in store.list_policies()] == [4, 6, 10, 11]
    # a replica that moved on no longer keeps what it served before
    store.report_served("replica-a", 10)
    assert store.served_versions(60.0)["replica-a"] == 10
    assert store.prune_policies(2, 0) == [4]
    assert [r.version for r in store.list_policies()] == [6, 10, 11]


def test_prune_forgets_a_replica_that_stopped_reporting(store: Store) -> None:
    register_versions(store, 12)
    store.report_served("gone", 3)
    time.sleep(1.2)
    store.report_served("alive", 5)
    # within 0.8 s: only the fresh report counts (generous for a slow machine: 1.2 s apart)
    assert store.served_versions(0.8) == {"alive": 5}
    assert store.served_versions(60.0) == {"gone": 3, "alive": 5}
    assert sorted(store.prune_policies(2, 0, served_within_s=0.8)) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [r.version for r in store.list_policies()] == [5, 10, 11]


def test_numbering_continues_after_deleting_the_newest_versions(make_store: MakeStore) -> None:
    store = make_store()
    register_versions(store, 6)
    store.prune_policies(1, 0)
    assert [r.version for r in store.list_policies()] == [5]
    store.delete_policies([5])  # even the newest: its number is never given again
    assert store.list_policies() == [] and store.latest_policy() is None
    assert store.register_policy(make_policy_bytes(seed=9)[0], first=True) is None
    record = store.register_policy(make_policy_bytes(seed=9)[0])
    assert record is not None and record.version == 6
    assert_loads_as_itself(store, record)
    store.close()
    reopened = make_store()
    again = reopened.register_policy(make_policy_bytes(seed=10)[0])
    assert again is not None and again.version == 7
    assert [r.version for r in reopened.list_policies()] == [6, 7]


def test_deleting_unknown_or_no_versions_changes_nothing(store: Store) -> None:
    register_versions(store, 3)
    store.delete_policies([])
    store.delete_policies([7, 99])
    assert [r.version for r in store.list_policies()] == [0, 1, 2]


def test_sqlite_prune_removes_the_policy_files(tmp_path: Path) -> None:
    # SQLite-specific: the bytes live in policies/v<N>.safetensors; pruned versions leave none.
    store = open_store(SPEC, tmp_path / "data")
    try:
        register_versions(store, 25)
        policies = tmp_path / "data" / "policies"
        assert len(list(policies.iterdir())) == 25
        store.report_served("replica", 7)
        store.prune_policies(5, 10)
        kept = [0, 7, 10, 20, 21, 22, 23, 24]
        assert [r.version for r in store.list_policies()] == kept
        assert sorted(p.name for p in policies.iterdir()) == sorted(
            f"v{v}.safetensors" for v in kept
        )
    finally:
        store.close()


# --- 10. open_store URLs --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_with_a_postgres_url_that_does_not_answer_is_unavailable(
    tmp_path: Path, scheme: str
) -> None:
    url = f"{scheme}://robot:s3cret@127.0.0.1:9/robots"  # the discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refused:
        open_store(SPEC, tmp_path / "data", url=url, busy_timeout_s=1.0)
    assert time.monotonic() - started < 10
    assert "127.0.0.1:9/robots" in str(refused.value) and "s3cret" not in str(refused.value)


def test_open_store_with_an_unknown_url_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported store URL"):
        open_store(SPEC, tmp_path / "data", url="mysql://db/robots")


def test_open_store_without_url_opens_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    store = open_store(SPEC, tmp_path / "data")
    try:
        assert isinstance(store, Store)
        assert store.spec == SPEC
        store.check()
        assert (tmp_path / "data" / "store.sqlite").exists()
    finally:
        store.close()


def test_policy_record_describe_names_the_version(store: Store) -> None:
    v0 = ensure_initial_policy(store)
    assert isinstance(v0, PolicyRecord)
    assert v0.describe() == {
        "version": 0,
        "created_at": v0.created_at,
        "updates": 0,
        "sha256": v0.sha256,
    }


def test_an_episode_the_expert_helped_with_is_credited_to_no_version(store: Store) -> None:
    """A version's episodes (and success) are the policy's own: an episode in which an operator
    took over, or a demonstration, counts for no version, however many steps the policy chose."""
    sources = ["policy"] * 6 + ["human"] * 2 + ["policy"]
    store.append(
        [
            step(i, episode="assisted", reward=1.0, version=4, source=s, terminated=i == 8)
            for i, s in enumerate(sources)
        ]
    )
    store.append(
        [step(i, episode="demo", reward=1.0, source="demo", terminated=i == 2) for i in range(3)]
    )
    store.append([step(i, episode="own", reward=0.5, version=4, terminated=i == 1) for i in (0, 1)])
    assert store.episodes_by_version() == [VersionEpisodes(4, 1, 1.0, (1.0,))]
    # a late human step of an episode credited so far takes the credit away
    store.append([step(2, episode="own", reward=0.5, source="human")])
    assert store.episodes_by_version() == []
