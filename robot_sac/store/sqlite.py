"""The default store: one SQLite file (WAL, ``synchronous=FULL``) and policy files beside it.

Layout in the data directory: ``store.sqlite`` (transitions, policy index, control state,
learner status) and ``policies/v<N>.safetensors`` (written atomically before they are indexed).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from robot_sac.admin_schemas import LearnerStatus
from robot_sac.fileio import write_atomic
from robot_sac.policy import check_task, read_policy_info, with_version
from robot_sac.schemas import TaskSpec
from robot_sac.store.base import Store
from robot_sac.store.codec import (
    CONTENT,
    EXPERT_TALLY,
    ROBOT_EPISODES_SQL,
    PendingBatch,
    check_control_changes,
    check_fingerprint,
    check_robot_holds,
    counts_by_source,
    decode_learner_status,
    decode_rows,
    encode_learner_status,
    encode_rows,
    episode_tallies,
    find_conflict,
    robot_episodes,
    source_counts,
    task_fingerprint,
)
from robot_sac.store.records import (
    SOURCE_CODES,
    ControlState,
    LogRows,
    PolicyRecord,
    RobotEpisodes,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    TransitionConflict,
    TransitionKey,
    TransitionLike,
    UnknownVersion,
    VersionEpisodes,
)

# The SQLite file's schema: 2 added the episode tallies, 3 the robots held one by one, 4 each
# transition's source and the counts by source (migrated on open; an older robot_sac refuses a
# newer file rather than ignore what it cannot read).
SCHEMA_VERSION = 4
# The meta rows counting the log's transitions, one per source: the status reads them instead of
# counting a log of millions of rows. The log's length is their sum.
_COUNT_KEYS = {code: f"transitions.{name}" for name, code in SOURCE_CODES.items()}

# Portable SQL: the PostgreSQL backend runs the same statements with BIGSERIAL/BYTEA types.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    robot_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    obs BLOB NOT NULL,
    action BLOB NOT NULL,
    reward REAL NOT NULL,
    next_obs BLOB NOT NULL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    policy_version INTEGER,
    source INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    UNIQUE (robot_id, episode_id, step)
);
CREATE TABLE IF NOT EXISTS episodes (
    robot_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    policy_version INTEGER,
    episode_return REAL NOT NULL,
    last_reward REAL NOT NULL,
    steps INTEGER NOT NULL,
    ended_at REAL NOT NULL,
    PRIMARY KEY (robot_id, episode_id)
);
CREATE INDEX IF NOT EXISTS episodes_by_version ON episodes (policy_version, ended_at);
CREATE TABLE IF NOT EXISTS episode_tallies (
    robot_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    reward_sum REAL NOT NULL,
    ended INTEGER NOT NULL,
    PRIMARY KEY (robot_id, episode_id, policy_version)
);
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    updates INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    metadata TEXT NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS control (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    learner_paused INTEGER NOT NULL,
    mode TEXT NOT NULL,
    pinned_version INTEGER,
    hold INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS robot_holds (
    robot_id TEXT PRIMARY KEY,
    held_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replicas (
    replica TEXT PRIMARY KEY,
    served_version INTEGER NOT NULL,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS learner_status (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    heartbeat REAL NOT NULL,
    status TEXT NOT NULL
);
"""

_INSERT_HEAD = (
    "INSERT INTO transitions (robot_id, episode_id, step, obs, action, reward, next_obs, "
    "terminated, truncated, policy_version, source, received_at) VALUES "
)
_INSERT_ROW = "(?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_TAIL = " ON CONFLICT (robot_id, episode_id, step) DO NOTHING"
_COLUMNS_PER_ROW = 12
_MAX_ROWS_PER_INSERT = 1000


@lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    """One ``INSERT`` of ``rows`` rows; a duplicate key, in the log or earlier in the same
    statement, is skipped (the first copy wins), exactly as row-by-row inserts would."""
    return _INSERT_HEAD + ",".join([_INSERT_ROW] * rows) + _INSERT_TAIL


def _rows_per_insert(conn: sqlite3.Connection) -> int:
    """How many rows one statement may bind: SQLite caps the ``?`` per statement (32,766 since
    3.32, 999 before; ``getlimit`` needs Python 3.11)."""
    getlimit = getattr(conn, "getlimit", None)
    if getlimit is not None:
        limit = int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    else:
        limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return max(1, min(_MAX_ROWS_PER_INSERT, limit // _COLUMNS_PER_ROW))


def _insert(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], per_statement: int) -> None:
    # A multi-row INSERT instead of executemany: one statement and one step for the batch
    # (~25 % less CPU for 100 rows in raw SQLite here), and the GIL is released once for the
    # whole insert instead of once per row.
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        conn.execute(_insert_sql(len(chunk)), list(chain.from_iterable(chunk)))


def _stored_rows(
    conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]
) -> dict[TransitionKey, tuple[int, tuple[Any, ...]]]:
    """The stored ``(position, content)`` of each key of ``rows``: a few index lookups, one per
    episode of the batch (and per 500 steps)."""
    steps: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        steps.setdefault((r[0], r[1]), []).append(r[2])
    stored: dict[TransitionKey, tuple[int, tuple[Any, ...]]] = {}
    for (robot_id, episode_id), wanted in steps.items():
        unique = sorted(set(wanted))
        for start in range(0, len(unique), _MAX_STEPS_PER_LOOKUP):
            chunk = unique[start : start + _MAX_STEPS_PER_LOOKUP]
            sql = _STORED_HEAD + "(" + ",".join("?" * len(chunk)) + ")"
            for step, position, *content in conn.execute(sql, (robot_id, episode_id, *chunk)):
                stored[(robot_id, episode_id, step)] = (position, tuple(content))
    return stored


def _settle(
    conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], accepted: int
) -> list[tuple[Any, ...]]:
    """Check a just-inserted batch of which only ``accepted`` rows were new: every row must have
    the content stored under its key, else :class:`TransitionConflict` (the caller rolls the
    batch back). Returns the rows the batch stored, as stored (the first copy of each new key).
    """
    # Positions only grow and this transaction is the only writer, so the batch's new rows are
    # the log's newest ``accepted`` ones: those above the newest row that was there before.
    row = conn.execute(
        "SELECT position FROM transitions ORDER BY position DESC LIMIT 1 OFFSET ?", (accepted,)
    ).fetchone()
    newest_before = 0 if row is None else int(row[0])
    stored = _stored_rows(conn, rows)
    for r in rows:
        key = (r[0], r[1], r[2])
        position, content = stored[key]
        # A key new to the log holds this batch's first copy: another copy differing from it
        # is a conflict inside the batch.
        conflict = find_conflict(key, content, r[CONTENT], in_batch=position > newest_before)
        if conflict is not None:
            raise conflict
    return [
        (*key, *content) for key, (position, content) in stored.items() if position > newest_before
    ]


def _tally(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Add the rows just stored to their episodes' tallies, and refresh the ``episodes`` row of
    every ended episode among them: work in proportion to the batch, not to the episodes."""
    tallies = episode_tallies(rows)
    conn.executemany(_UPSERT_TALLY, [(*key, *tally) for key, tally in tallies.items()])
    now = time.time()
    for robot_id, episode_id in sorted({(k[0], k[1]) for k in tallies}):
        _refresh_episode(conn, robot_id, episode_id, now)


def _refresh_episode(conn: sqlite3.Connection, robot_id: str, episode_id: str, now: float) -> None:
    """Write an episode's row from its tallies once a stored step has ended it. Its return and
    length count every stored step (a late step of an ended episode updates them); it is credited
    to the version that chose most of its actions (ties: the newer; unknown versions do not
    vote), and to none if an operator or a demonstration chose any; its last reward is that of
    its highest step."""
    tallies = conn.execute(
        "SELECT policy_version, steps, reward_sum, ended FROM episode_tallies "
        "WHERE robot_id = ? AND episode_id = ?",
        (robot_id, episode_id),
    ).fetchall()
    if not any(ended for *_, ended in tallies):
        return
    steps = sum(n for _, n, _, _ in tallies)
    total = sum(r for _, _, r, _ in tallies)
    voted = [(n, v) for v, n, _, _ in tallies if v >= 0]
    assisted = any(v == EXPERT_TALLY for v, *_ in tallies)
    top = max(voted)[1] if voted and not assisted else None
    (last_reward,) = conn.execute(
        "SELECT reward FROM transitions WHERE robot_id = ? AND episode_id = ? "
        "ORDER BY step DESC LIMIT 1",
        (robot_id, episode_id),
    ).fetchone()
    conn.execute(
        _UPSERT_EPISODE,
        (robot_id, episode_id, top, float(total), float(last_reward), steps, now),
    )


_UPSERT_EPISODE = """
    INSERT INTO episodes (robot_id, episode_id, policy_version, episode_return, last_reward,
        steps, ended_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (robot_id, episode_id) DO UPDATE SET policy_version = excluded.policy_version,
        episode_return = excluded.episode_return, last_reward = excluded.last_reward,
        steps = excluded.steps
"""
# Running tallies per (robot_id, episode_id, policy_version). Versions are >= 0, so -1 stands for
# "the robot did not say" (as in LogRows): a key column that is NULL would match no upsert.
_UPSERT_TALLY = """
    INSERT INTO episode_tallies (robot_id, episode_id, policy_version, steps, reward_sum, ended)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (robot_id, episode_id, policy_version) DO UPDATE SET
        steps = episode_tallies.steps + excluded.steps,
        reward_sum = episode_tallies.reward_sum + excluded.reward_sum,
        ended = CASE WHEN excluded.ended = 1 THEN 1 ELSE episode_tallies.ended END
"""
# Schema 1 -> 2: the tallies of every episode already logged, from its stored rows.
_BACKFILL_TALLIES = """
    INSERT INTO episode_tallies (robot_id, episode_id, policy_version, steps, reward_sum, ended)
    SELECT robot_id, episode_id, COALESCE(policy_version, -1), COUNT(*), SUM(reward),
        MAX(CASE WHEN terminated = 1 OR truncated = 1 THEN 1 ELSE 0 END)
    FROM transitions GROUP BY robot_id, episode_id, COALESCE(policy_version, -1)
"""
_STORED_HEAD = (
    "SELECT step, position, obs, action, reward, next_obs, terminated, truncated, policy_version, "
    "source FROM transitions WHERE robot_id = ? AND episode_id = ? AND step IN "
)
_MAX_STEPS_PER_LOOKUP = 500
_COLUMNS = "position, obs, action, reward, next_obs, terminated, truncated, policy_version, source"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _check_pinnable(conn: sqlite3.Connection, version: int | None) -> None:
    """Refuse, inside the caller's write transaction, to pin a version that is not registered."""
    if version is None:
        return
    if conn.execute("SELECT 1 FROM policies WHERE version = ?", (int(version),)).fetchone() is None:
        raise UnknownVersion(f"policy version {version} does not exist")


def _use_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch the file to WAL (persistent). Two processes creating it at once can collide:
    the switch needs an exclusive lock and SQLite does not wait for it, so retry."""
    deadline = time.monotonic() + timeout
    while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite said the database is busy or locked (and the busy wait ran out)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; extended codes keep the low byte
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction. SQLite may have rolled it back itself already (an I/O error),
    and a rollback that fails too must not hide the error that caused it."""
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _store_errors(method: _Method) -> _Method:
    """Raise the store's own errors instead of sqlite3's: :class:`StoreBusy` when the database
    stayed locked, :class:`StoreUnavailable` for any other database failure."""

    @functools.wraps(method)
    def translated(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise self._store_error(exc) from exc

    return translated  # type: ignore[return-value]


class SQLiteStore(Store):
    """A :class:`~robot_sac.store.base.Store` in ``data_dir`` (created if missing).

    Each thread gets its own connection; writes from this process are serialised by a lock
    (other processes by SQLite's own locking), and each write is one ``BEGIN IMMEDIATE``
    transaction whose ``COMMIT`` returns only once the WAL is on disk.

    ``busy_timeout_s`` is the longest a call waits for the locks (this process's write lock, then
    SQLite's) before it raises :class:`StoreBusy`: a service that must answer quickly passes a
    few seconds, a learner or a tool can afford to wait longer.
    """

    def __init__(self, data_dir: str | Path, spec: TaskSpec, busy_timeout_s: float = 30.0) -> None:
        if not busy_timeout_s >= 0.0:
            raise ValueError(
                f"busy_timeout_s must be a number of seconds >= 0, not {busy_timeout_s}"
            )
        self.spec = spec
        self.busy_timeout_s = float(busy_timeout_s)
        self._busy_timeout_ms = round(self.busy_timeout_s * 1000)
        self.data_dir = Path(data_dir)
        self.policy_dir = self.data_dir / "policies"
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "store.sqlite"
        self.where = str(self.path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[PendingBatch] = []
        self._closed = False
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    # --- errors -------------------------------------------------------------------------------
    def _store_error(self, exc: sqlite3.DatabaseError) -> StoreError:
        if _is_busy(exc):
            return StoreBusy(
                f"the store is busy: its database stayed locked for {self.busy_timeout_s:.1f} s "
                f"({exc})"
            )
        return StoreUnavailable(f"the store {self.path} is unavailable: {exc}")

    def _busy_here(self) -> StoreBusy:
        return StoreBusy(
            "the store is busy: this process's other writes have held its write lock for "
            f"{self.busy_timeout_s:.1f} s"
        )

    # --- connections and transactions ------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("the store is closed")
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
                _use_wal(conn, self.busy_timeout_s)
                conn.execute("PRAGMA synchronous=FULL")
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _begin(self, conn: sqlite3.Connection, waited: float) -> None:
        """``BEGIN IMMEDIATE``, waiting for another process's write lock only as long as is left
        of ``busy_timeout_s`` after ``waited`` seconds spent on this process's lock."""
        left = max(0.0, self.busy_timeout_s - waited)
        shortened = waited > 0.001
        if shortened:
            conn.execute(f"PRAGMA busy_timeout={int(left * 1000)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            raise StoreBusy(
                "the store is busy: another process has held its write lock for "
                f"{self.busy_timeout_s:.1f} s"
            ) from exc
        finally:
            if shortened:
                conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")

    def _lock(self) -> float:
        """Take this process's write lock, waiting at most ``busy_timeout_s``; the time waited."""
        started = time.monotonic()
        if not self._write_lock.acquire(timeout=self.busy_timeout_s):
            raise self._busy_here()
        return time.monotonic() - started

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        waited = self._lock()
        try:
            conn = self._conn()
            self._begin(conn, waited)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        finally:
            self._write_lock.release()

    @_store_errors
    def _init_schema(self) -> None:
        with self._write() as c:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            defaults = {
                "schema_version": str(SCHEMA_VERSION),
                "task": json.dumps(task_fingerprint(self.spec)),
                "next_version": "0",
                **dict.fromkeys(_COUNT_KEYS.values(), "0"),
            }
            for key, value in defaults.items():
                c.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (key, value),
                )
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            # Refused here, inside the transaction, a wrong store is left as it was.
            check_fingerprint(meta["task"], self.spec, str(self.data_dir))
            opened = schema = int(meta["schema_version"])
            # Each migration takes the file one schema up, all in this transaction.
            if schema == 1:
                # Schema 2 adds the episode tallies: computed once from the stored rows.
                c.execute(_BACKFILL_TALLIES)
                schema = 2
            if schema == 2:
                schema = 3  # schema 3 adds robot_holds, created empty above
            if schema == 3:
                # Schema 4 adds each row's source: every row logged before it is the policy's.
                # A constant default: SQLite does not rewrite the table, however long the log.
                c.execute("ALTER TABLE transitions ADD COLUMN source INTEGER NOT NULL DEFAULT 0")
                # ... and counts by source: the log's count so far is the policy's.
                c.execute(
                    "UPDATE meta SET value = (SELECT value FROM meta WHERE key = 'transitions') "
                    "WHERE key = ?",
                    (_COUNT_KEYS[SOURCE_CODES["policy"]],),
                )
                c.execute("DELETE FROM meta WHERE key = 'transitions'")
                schema = 4
            if schema != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema {opened}; this version of robot_sac reads schemas "
                    f"1 to {SCHEMA_VERSION}"
                )
            if opened != schema:
                c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(schema),))
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('task_spec', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (self.spec.model_dump_json(),),
            )
            c.execute(
                "INSERT INTO control (id, learner_paused, mode, pinned_version, hold, updated_at) "
                "VALUES (1, 0, 'follow', NULL, 0, ?) ON CONFLICT (id) DO NOTHING",
                (time.time(),),
            )

    # --- the transition log -----------------------------------------------------------------
    @_store_errors
    def append(self, transitions: Sequence[TransitionLike]) -> tuple[int, int]:
        rows = encode_rows(transitions, self.spec)
        if not rows:
            return 0, 0
        # Group commit: batches that arrive while a commit is under way wait for the lock and
        # are then written by whichever thread gets it first, all in one transaction and one
        # fsync. Each caller still returns only once its own rows are durable.
        pending = PendingBatch(rows)
        with self._queue_lock:
            self._queue.append(pending)
        started = time.monotonic()
        if self._write_lock.acquire(timeout=self.busy_timeout_s):
            try:
                if not pending.finished.is_set():
                    with self._queue_lock:
                        group, self._queue = self._queue, []
                    self._commit_group(group, time.monotonic() - started)
            finally:
                self._write_lock.release()
        else:
            with self._queue_lock:
                queued = any(p is pending for p in self._queue)
                if queued:
                    self._queue = [p for p in self._queue if p is not pending]
            if queued:
                raise self._busy_here()
            # A commit under way took this batch with its own; its waits are bounded too.
            pending.finished.wait()
        if pending.error is not None:
            raise pending.error
        return pending.accepted, len(rows) - pending.accepted

    def _commit_group(self, group: list[PendingBatch], waited: float) -> None:
        """Write the batches of ``group`` in one transaction. A batch that conflicts with the log
        is rolled back alone (to its savepoint) and its caller told; the others commit."""
        several = len(group) > 1
        try:
            conn = self._conn()
            self._begin(conn, waited)
            try:
                per_statement = _rows_per_insert(conn)
                stored: list[tuple[Any, ...]] = []  # the rows accepted, for the episode tallies
                for pending in group:
                    if several:
                        conn.execute("SAVEPOINT batch")
                    before = conn.total_changes
                    _insert(conn, pending.rows, per_statement)
                    pending.accepted = conn.total_changes - before
                    if pending.accepted == len(pending.rows):
                        stored += pending.rows  # every row is new: nothing to compare
                    else:
                        try:
                            stored += _settle(conn, pending.rows, pending.accepted)
                        except TransitionConflict as exc:
                            if not several:
                                raise
                            conn.execute("ROLLBACK TO SAVEPOINT batch")
                            pending.accepted, pending.error = 0, exc
                    if several:
                        conn.execute("RELEASE SAVEPOINT batch")
                if stored:
                    conn.executemany(
                        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) "
                        "WHERE key = ?",
                        [(n, _COUNT_KEYS[code]) for code, n in source_counts(stored).items()],
                    )
                    _tally(conn, stored)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except BaseException as exc:  # nothing of the group is durable: every caller hears it
            error = self._store_error(exc) if isinstance(exc, sqlite3.DatabaseError) else exc
            for pending in group:
                pending.accepted, pending.error = 0, error
        finally:
            for pending in group:
                pending.finished.set()

    @_store_errors
    def read_after(self, position: int, limit: int) -> LogRows:
        rows = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM transitions WHERE position > ? ORDER BY position LIMIT ?",
                (int(position), int(limit)),
            )
            .fetchall()
        )
        return decode_rows(rows, self.spec)

    @_store_errors
    def steps_at(self, times: Sequence[float]) -> list[int]:
        received = np.asarray(
            [r[0] for r in self._conn().execute("SELECT received_at FROM transitions")], float
        )
        received.sort()
        return [int(n) for n in np.searchsorted(received, np.asarray(times, float), side="right")]

    @_store_errors
    def position_before_latest(self, n: int) -> int:
        row = (
            self._conn()
            .execute(
                "SELECT position FROM transitions ORDER BY position DESC LIMIT 1 OFFSET ?",
                (int(n),),
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    @_store_errors
    def transition_count(self) -> int:
        return sum(self.transitions_by_source().values())

    @_store_errors
    def transitions_by_source(self) -> dict[str, int]:
        # The counters kept by each commit: three rows of meta, whatever the log's length.
        keys = list(_COUNT_KEYS.values())
        rows = self._conn().execute(
            f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(keys))})", keys
        )
        codes = {key: code for code, key in _COUNT_KEYS.items()}
        return counts_by_source({codes[key]: int(value) for key, value in rows})

    @_store_errors
    def last_position(self) -> int:
        row = self._conn().execute("SELECT MAX(position) FROM transitions").fetchone()
        return int(row[0] or 0)

    @_store_errors
    def episodes_by_version(self, recent: int = 10) -> list[VersionEpisodes]:
        c = self._conn()
        threshold = self.spec.success_threshold
        summary = c.execute(
            "SELECT policy_version, COUNT(*), AVG(episode_return), "
            "AVG(CASE WHEN last_reward >= ? THEN 1.0 ELSE 0.0 END) FROM episodes "
            "WHERE policy_version IS NOT NULL GROUP BY policy_version ORDER BY policy_version",
            (threshold if threshold is not None else 0.0,),
        ).fetchall()
        out = []
        for version, count, mean, success in summary:
            returns = c.execute(
                "SELECT episode_return FROM episodes WHERE policy_version = ? "
                "ORDER BY ended_at DESC LIMIT ?",
                (version, recent),
            ).fetchall()
            out.append(
                VersionEpisodes(
                    int(version),
                    int(count),
                    float(mean),
                    tuple(r[0] for r in returns),
                    None if threshold is None else float(success),
                )
            )
        return out

    @_store_errors
    def episodes_by_robot(self, recent: int = 10, robots: int = 1000) -> list[RobotEpisodes]:
        rows = self._conn().execute(ROBOT_EPISODES_SQL.format(p="?"), (recent,)).fetchall()
        return robot_episodes(rows, robots)

    # --- the policy registry ----------------------------------------------------------------
    @_store_errors
    def register_policy(self, data: bytes, first: bool = False) -> PolicyRecord | None:
        # Refuse what is not a whole version file for this task before using a number.
        check_task(read_policy_info(with_version(data, 0)), self.spec)
        with self._write() as c:
            version = int(
                c.execute("SELECT value FROM meta WHERE key = 'next_version'").fetchone()[0]
            )
            if first and version != 0:
                return None
            c.execute("UPDATE meta SET value = ? WHERE key = 'next_version'", (str(version + 1),))
        data = with_version(data, version)
        info = read_policy_info(data)
        path = self.policy_dir / f"v{version}.safetensors"
        sha256 = write_atomic(path, data)
        record = PolicyRecord(
            version=version,
            created_at=info.created_at,
            updates=info.updates,
            sha256=sha256,
            registered_at=time.time(),
            metadata=info.metadata(),
            path=str(path),
        )
        try:
            with self._write() as c:
                c.execute(
                    "INSERT INTO policies (version, created_at, updates, sha256, path, metadata, "
                    "registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        version,
                        record.created_at,
                        record.updates,
                        sha256,
                        path.name,
                        json.dumps(record.metadata),
                        record.registered_at,
                    ),
                )
        except BaseException:
            path.unlink(missing_ok=True)  # the number stays used; leave no orphan file behind
            raise
        return record

    def _record(self, row: Sequence[Any]) -> PolicyRecord:
        version, created_at, updates, sha256, path, metadata, registered_at = row
        return PolicyRecord(
            version=int(version),
            created_at=created_at,
            updates=int(updates),
            sha256=sha256,
            registered_at=float(registered_at),
            metadata=json.loads(metadata),
            path=str(self.policy_dir / path),
        )

    _POLICY_COLUMNS = "version, created_at, updates, sha256, path, metadata, registered_at"

    @_store_errors
    def latest_policy(self) -> PolicyRecord | None:
        row = (
            self._conn()
            .execute(f"SELECT {self._POLICY_COLUMNS} FROM policies ORDER BY version DESC LIMIT 1")
            .fetchone()
        )
        return None if row is None else self._record(row)

    @_store_errors
    def get_policy(self, version: int) -> PolicyRecord | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {self._POLICY_COLUMNS} FROM policies WHERE version = ?", (int(version),)
            )
            .fetchone()
        )
        return None if row is None else self._record(row)

    @_store_errors
    def list_policies(self) -> list[PolicyRecord]:
        rows = (
            self._conn()
            .execute(f"SELECT {self._POLICY_COLUMNS} FROM policies ORDER BY version")
            .fetchall()
        )
        return [self._record(r) for r in rows]

    def policy_bytes(self, record: PolicyRecord) -> bytes:
        assert record.path is not None
        return Path(record.path).read_bytes()

    @_store_errors
    def delete_policies(self, versions: Sequence[int]) -> None:
        doomed = [int(v) for v in versions]
        if not doomed:
            return
        rows = []
        with self._write() as c:
            # Inside the write transaction: a pin that landed since the caller looked is kept.
            mode, pinned = c.execute("SELECT mode, pinned_version FROM control").fetchone()
            if mode == "pinned":
                doomed = [v for v in doomed if v != pinned]
            for start in range(0, len(doomed), 500):
                chunk = doomed[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += c.execute(
                    f"SELECT path FROM policies WHERE version IN ({marks})", chunk
                ).fetchall()
                c.execute(f"DELETE FROM policies WHERE version IN ({marks})", chunk)
        # The rows go first: a file without a row is harmless, a row without its file is not.
        for (name,) in rows:
            (self.policy_dir / name).unlink(missing_ok=True)

    @_store_errors
    def report_served(self, replica: str, version: int) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO replicas (replica, served_version, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (replica) DO UPDATE SET served_version = excluded.served_version, "
                "seen_at = excluded.seen_at",
                (replica, int(version), time.time()),
            )

    @_store_errors
    def served_versions(self, within_s: float) -> dict[str, int]:
        rows = (
            self._conn()
            .execute(
                "SELECT replica, served_version FROM replicas WHERE seen_at >= ?",
                (time.time() - within_s,),
            )
            .fetchall()
        )
        return {str(r): int(v) for r, v in rows}

    # --- control state and learner status ---------------------------------------------------
    @_store_errors
    def control(self) -> ControlState:
        # One statement, so the row and the held robots come from one snapshot.
        paused, mode, pinned, hold, robots = (
            self._conn()
            .execute(
                "SELECT learner_paused, mode, pinned_version, hold, "
                "(SELECT json_group_array(robot_id) FROM robot_holds) FROM control WHERE id = 1"
            )
            .fetchone()
        )
        return ControlState(bool(paused), mode, pinned, bool(hold), frozenset(json.loads(robots)))

    @_store_errors
    def update_control(
        self, robots: Mapping[str, bool] | None = None, **changes: Any
    ) -> ControlState:
        check_control_changes(changes)
        check_robot_holds(robots)
        if changes or robots:
            assignments = "".join(f"{k} = ?, " for k in changes)
            values = [int(v) if isinstance(v, bool) else v for v in changes.values()]
            now = time.time()
            with self._write() as c:
                _check_pinnable(c, changes.get("pinned_version"))
                c.execute(
                    f"UPDATE control SET {assignments}updated_at = ? WHERE id = 1", (*values, now)
                )
                for robot_id, held in (robots or {}).items():
                    if held:
                        c.execute(
                            "INSERT INTO robot_holds (robot_id, held_at) VALUES (?, ?) "
                            "ON CONFLICT (robot_id) DO NOTHING",
                            (robot_id, now),
                        )
                    else:
                        c.execute("DELETE FROM robot_holds WHERE robot_id = ?", (robot_id,))
        return self.control()

    @_store_errors
    def write_learner_status(self, status: LearnerStatus) -> None:
        now = time.time()
        with self._write() as c:
            c.execute(
                "INSERT INTO learner_status (id, heartbeat, status) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat, "
                "status = excluded.status",
                (now, encode_learner_status(status)),
            )

    @_store_errors
    def learner_status(self) -> LearnerStatus | None:
        row = (
            self._conn()
            .execute("SELECT heartbeat, status FROM learner_status WHERE id = 1")
            .fetchone()
        )
        if row is None:
            return None
        return decode_learner_status(row[1], float(row[0]))

    @_store_errors
    def check(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    @_store_errors
    def close(self) -> None:
        self._closed = True
        self._local = threading.local()  # every thread's next call finds no connection
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
