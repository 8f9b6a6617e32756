"""The fleet's store: PostgreSQL (psycopg 3 and its connection pool), shared by every replica
and the learner, which need nothing else in common.

It keeps SQLite's semantics exactly; what PostgreSQL changes is how:

- **Durable before 200.** Every write is one transaction, committed with
  ``synchronous_commit = on`` (set on each connection, whatever the server's default). Batches
  that arrive while this process is committing are written together in the next transaction
  (group commit, as on SQLite): one statement of each kind and one commit for all of them, a
  batch that conflicts refused alone.
- **Idempotency.** ``(robot_id, episode_id, step)`` is a unique constraint; ``INSERT ... ON
  CONFLICT DO NOTHING RETURNING`` says which rows were new, and the others are compared with
  what is stored (the row codec's rule): identical is a duplicate, different a conflict.
- **A tail that never skips a row.** A sequence would hand out positions in the order
  transactions *start*, and they may commit in another order: a reader that had passed position
  7 would never see 5 committed after it. So a row's position is its transaction's id
  (``pg_current_xact_id()``) shifted left by :data:`ROW_BITS`, plus its index in the batch, and
  :meth:`read_after` returns only rows below the horizon of the snapshot it reads with: the
  oldest transaction of this database still running then, so nothing can ever appear below it
  again. Rows of a transaction that committed while an older one is still open wait
  (milliseconds) until that one ends. Writers never queue behind one another for this.
- **Nothing on a shared disk.** Version bytes, control state, learner status, episode tallies
  and which version each replica serves are tables. Registering a version and changing the
  control state ``NOTIFY`` the channel :data:`CHANNEL`; :meth:`wait_for_change` listens on a
  connection of its own, so a replica hears of them at once (its poll stays as the fallback).
- **Faults.** A call that cannot get a connection within ``busy_timeout_s``, or whose connection
  breaks, raises :class:`StoreUnavailable`; locks held longer than that raise
  :class:`StoreBusy`. The pool replaces broken connections by itself; a call whose connection
  broke is made once more on a fresh one (every call is safe to repeat).
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import numpy as np
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from robot_sac.admin_schemas import LearnerStatus
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

# The database's schema; the ``schema_version`` table records which one it has.
# 2 added robot_holds (the robots held one by one), 3 each transition's source and the counts by
# source; an older robot_sac refuses a newer schema rather than ignore what it cannot read.
SCHEMA_VERSION = 3
# Positions are ``transaction id << ROW_BITS | index in the batch``: up to 2**20 rows a batch.
ROW_BITS = 20
MAX_ROWS_PER_APPEND = 1 << ROW_BITS
# The channel new versions and control changes are announced on.
CHANNEL = "robot_sac"
# Serialises schema creation by processes starting at once (an arbitrary advisory-lock key).
_SCHEMA_LOCK = 0x726F626F745F7361
# Rows of the transaction-count table: writers add to one picked by their backend, so two
# concurrent batches rarely wait on the same row.
_COUNT_SLOTS = 32
# How often a transaction that deadlocked or failed to serialise is tried again.
_RETRIES = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    position BIGINT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    obs BYTEA NOT NULL,
    action BYTEA NOT NULL,
    reward DOUBLE PRECISION NOT NULL,
    next_obs BYTEA NOT NULL,
    terminated SMALLINT NOT NULL,
    truncated SMALLINT NOT NULL,
    policy_version BIGINT,
    source SMALLINT NOT NULL DEFAULT 0,
    received_at DOUBLE PRECISION NOT NULL,
    UNIQUE (robot_id, episode_id, step)
);
CREATE TABLE IF NOT EXISTS transition_counts (
    slot INTEGER NOT NULL,
    n BIGINT NOT NULL,
    source SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (source, slot)
);
CREATE TABLE IF NOT EXISTS episodes (
    robot_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    policy_version BIGINT,
    episode_return DOUBLE PRECISION NOT NULL,
    last_reward DOUBLE PRECISION NOT NULL,
    steps BIGINT NOT NULL,
    ended_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (robot_id, episode_id)
);
CREATE INDEX IF NOT EXISTS episodes_by_version ON episodes (policy_version, ended_at);
CREATE TABLE IF NOT EXISTS episode_tallies (
    robot_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    policy_version BIGINT NOT NULL,
    steps BIGINT NOT NULL,
    reward_sum DOUBLE PRECISION NOT NULL,
    ended SMALLINT NOT NULL,
    PRIMARY KEY (robot_id, episode_id, policy_version)
);
CREATE TABLE IF NOT EXISTS policies (
    version BIGINT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updates BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL,
    data BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS control (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    learner_paused BOOLEAN NOT NULL,
    mode TEXT NOT NULL,
    pinned_version BIGINT,
    hold BOOLEAN NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS robot_holds (
    robot_id TEXT PRIMARY KEY,
    held_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS replicas (
    replica TEXT PRIMARY KEY,
    served_version BIGINT NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS learner_status (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    heartbeat DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL
)
"""

# One statement for the whole batch: the rows arrive as arrays, in key order (so two batches
# sharing keys lock them in the same order and cannot deadlock), each with its index in the batch
# (so positions follow the batch's order).
_INSERT = f"""
INSERT INTO transitions (position, robot_id, episode_id, step, obs, action, reward, next_obs,
    terminated, truncated, policy_version, source, received_at)
SELECT (pg_current_xact_id()::text::bigint << {ROW_BITS}) + r.ord, r.robot_id, r.episode_id,
    r.step, r.obs, r.action, r.reward, r.next_obs, r.terminated, r.truncated, r.policy_version,
    r.source, r.received_at
FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bytea[], %b::bytea[],
    %b::float8[], %b::bytea[], %b::smallint[], %b::smallint[], %b::bigint[], %b::smallint[],
    %b::float8[])
    AS r(ord, robot_id, episode_id, step, obs, action, reward, next_obs, terminated, truncated,
    policy_version, source, received_at)
ORDER BY r.robot_id, r.episode_id, r.step
ON CONFLICT (robot_id, episode_id, step) DO NOTHING
RETURNING robot_id, episode_id, step
"""
_STORED = """
SELECT t.robot_id, t.episode_id, t.step, t.obs, t.action, t.reward, t.next_obs, t.terminated,
    t.truncated, t.policy_version, t.source
FROM transitions t JOIN unnest(%b::text[], %b::text[], %b::bigint[]) AS k(robot_id, episode_id,
    step) USING (robot_id, episode_id, step)
"""
# One row per (source, slot): the batch's counts by source, added in source order (two writers
# sharing a slot lock its rows in the same order, so they cannot deadlock).
_COUNT = f"""
INSERT INTO transition_counts (source, slot, n)
SELECT c.source, pg_backend_pid() %% {_COUNT_SLOTS}, c.n
FROM unnest(%s::smallint[], %s::bigint[]) AS c(source, n) ORDER BY c.source
ON CONFLICT (source, slot) DO UPDATE SET n = transition_counts.n + excluded.n
"""
# Versions are >= 0, so -1 stands for "the robot did not say" (as in LogRows).
_TALLY = """
INSERT INTO episode_tallies (robot_id, episode_id, policy_version, steps, reward_sum, ended)
SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::float8[],
    %b::smallint[]) ORDER BY 1, 2, 3
ON CONFLICT (robot_id, episode_id, policy_version) DO UPDATE SET
    steps = episode_tallies.steps + excluded.steps,
    reward_sum = episode_tallies.reward_sum + excluded.reward_sum,
    ended = GREATEST(episode_tallies.ended, excluded.ended)
"""
# The episodes row of every ended episode among the given ones, from its tallies: the return
# and length count every stored step; the version that chose most of its actions gets the
# credit (ties: the newer; unknown versions do not vote), none if an operator or a demonstration
# chose any of its steps; the last reward is its highest step's.
_EPISODES = f"""
INSERT INTO episodes (robot_id, episode_id, policy_version, episode_return, last_reward, steps,
    ended_at)
SELECT t.robot_id, t.episode_id,
    CASE WHEN MIN(t.policy_version) = {EXPERT_TALLY} THEN NULL ELSE
    (SELECT v.policy_version FROM episode_tallies v
        WHERE v.robot_id = t.robot_id AND v.episode_id = t.episode_id AND v.policy_version >= 0
        ORDER BY v.steps DESC, v.policy_version DESC LIMIT 1) END,
    SUM(t.reward_sum),
    (SELECT x.reward FROM transitions x
        WHERE x.robot_id = t.robot_id AND x.episode_id = t.episode_id
        ORDER BY x.step DESC LIMIT 1),
    SUM(t.steps), %s
FROM episode_tallies t
    JOIN unnest(%b::text[], %b::text[]) AS e(robot_id, episode_id) USING (robot_id, episode_id)
GROUP BY t.robot_id, t.episode_id
HAVING MAX(t.ended) = 1
ORDER BY t.robot_id, t.episode_id
ON CONFLICT (robot_id, episode_id) DO UPDATE SET policy_version = excluded.policy_version,
    episode_return = excluded.episode_return, last_reward = excluded.last_reward,
    steps = excluded.steps
"""
_COLUMNS = "position, obs, action, reward, next_obs, terminated, truncated, policy_version, source"
# The horizon: the oldest transaction still running in this database when the snapshot was
# taken, else the snapshot's xmax (every id below it had ended). Transactions of other
# databases of the same server cannot write here, so they do not hold the tail back; one that
# ended before pg_stat_activity was read cannot be placed and counts as this database's (the
# tail then waits one more read). It is computed in the same statement, hence from the same
# snapshot, as the rows it bounds.
_READ_AFTER = f"""
WITH snap AS (SELECT pg_current_snapshot() AS s),
elsewhere AS (
    SELECT backend_xid FROM pg_stat_activity
    WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()
),
horizon AS (
    SELECT COALESCE(
        (SELECT MIN(x::text::bigint) FROM snap, pg_snapshot_xip(snap.s) AS x
            WHERE x::xid NOT IN (SELECT backend_xid FROM elsewhere)),
        (SELECT pg_snapshot_xmax(snap.s)::text::bigint FROM snap)
    ) << {ROW_BITS} AS below
)
SELECT {_COLUMNS} FROM transitions, horizon
WHERE position > %s AND position < horizon.below
ORDER BY position LIMIT %s
"""
_POLICY_COLUMNS = "version, created_at, updates, sha256, metadata, registered_at"

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _store_errors(method: _Method) -> _Method:
    """Raise the store's own errors instead of psycopg's (see the module docstring)."""

    @functools.wraps(method)
    def translated(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._store_error(exc) from exc

    return translated  # type: ignore[return-value]


def _busy(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (
            pg_errors.LockNotAvailable,
            pg_errors.QueryCanceled,
            pg_errors.DeadlockDetected,
            pg_errors.SerializationFailure,
        ),
    )


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the PostgreSQL store"
    host, port, db = params.get("host", "localhost"), params.get("port", 5432), params.get("dbname")
    return f"postgresql://{host}:{port}/{db or ''}"


class PostgresStore(Store):
    """A :class:`~robot_sac.store.base.Store` in the PostgreSQL database at ``url``.

    The schema is created (or migrated) on open; opening a database that holds another task's
    data is refused. ``busy_timeout_s`` bounds how long a call waits for a connection or a lock;
    ``pool_size`` is the most connections this process opens (one more listens for changes).
    """

    announces_changes = True

    def __init__(
        self, url: str, spec: TaskSpec, busy_timeout_s: float = 30.0, pool_size: int = 8
    ) -> None:
        if not busy_timeout_s >= 0.0:
            raise ValueError(
                f"busy_timeout_s must be a number of seconds >= 0, not {busy_timeout_s}"
            )
        self.spec = spec
        self.url = url
        self.where = redacted(url)
        self.busy_timeout_s = float(busy_timeout_s)
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_lock = threading.Lock()
        self._leader = threading.Lock()  # held by the caller writing a group of batches
        self._queue_lock = threading.Lock()
        self._queue: list[PendingBatch] = []
        self._closed = False
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"the store URL is not a PostgreSQL URL: {exc}") from exc
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=self._connect_kwargs(),
            configure=self._configure,
            timeout=max(self.busy_timeout_s, 0.1),
            # Give up a reconnection attempt soon: the next caller that needs a connection starts
            # a new one at once, instead of waiting out an ever longer backoff.
            reconnect_timeout=2.0,
            open=False,
            name="robot_sac",
        )
        try:
            self._pool.open(wait=False)
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def _connect_kwargs(self) -> dict[str, Any]:
        """Connection options: autocommit (writes open their own transactions), a bounded
        connect, and a connection that notices a peer gone silent (keepalives, a send timeout)."""
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(min(self.busy_timeout_s, 10.0))),
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
            "application_name": "robot_sac",
        }

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        wait_ms = max(1, round(self.busy_timeout_s * 1000))
        conn.execute(
            "SELECT set_config('synchronous_commit', 'on', false), "
            "set_config('lock_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', '60s', false)",
            (f"{wait_ms}ms",),
        )

    # --- errors and connections -------------------------------------------------------------
    def _store_error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        if _busy(exc):
            return StoreBusy(
                f"the store is busy: {self.where} kept a lock for {self.busy_timeout_s:.1f} s "
                f"({_first_line(exc)})"
            )
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return StoreUnavailable(
                f"the store {self.where} gave no connection within {self.busy_timeout_s:.1f} s "
                "(the server is away or every connection is busy)"
            )
        return StoreUnavailable(f"the store {self.where} is unavailable: {_first_line(exc)}")

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreError("the store is closed")
        with self._pool.connection(timeout=max(self.busy_timeout_s, 0.1)) as conn:
            yield conn

    def _run(self, work: Callable[[psycopg.Connection[Any]], Any], write: bool = True) -> Any:
        """``work(conn)`` in a transaction (``write``) or on its own, on a pooled connection.

        A call whose connection broke (the server restarted, a proxy cut it) is made once more
        on a fresh one; a deadlock or a serialisation failure is retried a few times. Every call
        here is safe to repeat: appends are idempotent by key, control writes set values, and a
        version number reserved twice is only a gap.
        """
        broken_once = False
        attempt = 0
        while True:
            with self._connection() as conn:
                try:
                    if not write:
                        return work(conn)
                    with conn.transaction():
                        return work(conn)
                except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                    attempt += 1
                    if attempt >= _RETRIES:
                        raise
                    time.sleep(0.01 * attempt)
                except psycopg.OperationalError:
                    # The pool throws a broken connection away when it is given back.
                    if broken_once or not conn.broken:
                        raise
                    broken_once = True
            # The others idle in the pool broke with it (a server restart, a cut network):
            # throw them away too, so the second try gets a fresh connection.
            self._pool.check()

    @_store_errors
    def _init_schema(self) -> None:
        def create(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in SCHEMA.split(";"):
                conn.execute(statement)  # type: ignore[call-overload]
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, %s) "
                "ON CONFLICT (id) DO NOTHING",
                (SCHEMA_VERSION,),
            )
            (schema,) = conn.execute("SELECT version FROM schema_version").fetchone()  # type: ignore[misc]
            opened = schema
            # Each migration takes the database one schema up, all in this transaction.
            if schema == 1:
                schema = 2  # schema 2 adds robot_holds, created empty above
            if schema == 2:
                _add_sources(conn)
                schema = 3
            if schema != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} has robot_sac schema {opened}; this version of robot_sac "
                    f"reads schemas 1 to {SCHEMA_VERSION}"
                )
            if opened != schema:
                conn.execute("UPDATE schema_version SET version = %s", (schema,))
            defaults = {"task": json.dumps(task_fingerprint(self.spec)), "next_version": "0"}
            for key, value in defaults.items():
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                    (key, value),
                )
            (task,) = conn.execute("SELECT value FROM meta WHERE key = 'task'").fetchone()  # type: ignore[misc]
            check_fingerprint(task, self.spec, self.where)  # refused here, nothing is changed
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('task_spec', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (self.spec.model_dump_json(),),
            )
            conn.execute(
                "INSERT INTO control (id, learner_paused, mode, pinned_version, hold, updated_at) "
                "VALUES (1, false, 'follow', NULL, false, %s) ON CONFLICT (id) DO NOTHING",
                (time.time(),),
            )

        self._run(create)

    # --- the transition log -----------------------------------------------------------------
    @_store_errors
    def append(self, transitions: Sequence[TransitionLike]) -> tuple[int, int]:
        rows = encode_rows(transitions, self.spec)
        if not rows:
            return 0, 0
        if len(rows) > MAX_ROWS_PER_APPEND:
            raise ValueError(
                f"a batch holds at most {MAX_ROWS_PER_APPEND} transitions, not {len(rows)}"
            )
        # Group commit: batches that arrive while this process's transaction is under way are
        # written together by whichever caller leads next, in one transaction (one statement
        # per kind, one commit). Each caller returns once its own rows are committed.
        pending = PendingBatch(rows)
        with self._queue_lock:
            self._queue.append(pending)
        if self._leader.acquire(timeout=self.busy_timeout_s):
            try:
                if not pending.finished.is_set():
                    with self._queue_lock:
                        group, self._queue = self._queue, []
                    self._commit_group(group)
            finally:
                self._leader.release()
        else:
            with self._queue_lock:
                queued = any(p is pending for p in self._queue)
                if queued:
                    self._queue = [p for p in self._queue if p is not pending]
            if queued:
                raise StoreBusy(
                    "the store is busy: this process's other writes kept it for "
                    f"{self.busy_timeout_s:.1f} s"
                )
            pending.finished.wait()  # a leader took it; its waits are bounded too
        if pending.error is not None:
            raise pending.error
        return pending.accepted, len(rows) - pending.accepted

    def _commit_group(self, group: list[PendingBatch]) -> None:
        """Write ``group`` in one transaction. A batch that conflicts is refused alone: the
        transaction is rolled back and written again without it (conflicts are rare)."""
        live = list(group)
        try:
            while live:
                try:
                    accepted = self._run(functools.partial(_write_group, group=live))
                except _Refused as refused:
                    for index, conflict in refused.conflicts.items():
                        live[index].error = conflict
                    live = [p for i, p in enumerate(live) if i not in refused.conflicts]
                    continue
                for p, n in zip(live, accepted, strict=True):
                    p.accepted = n
                live = []
        except BaseException as exc:  # nothing of the group is committed: every caller hears it
            error = (
                self._store_error(exc)
                if isinstance(exc, (psycopg.Error, psycopg_pool.PoolTimeout))
                else exc
            )
            for p in live:
                p.accepted, p.error = 0, error
        finally:
            for p in group:
                p.finished.set()

    @_store_errors
    def read_after(self, position: int, limit: int) -> LogRows:
        def read(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(_READ_AFTER, (int(position), int(limit))).fetchall()

        return decode_rows(self._run(read, write=False), self.spec)

    @_store_errors
    def position_before_latest(self, n: int) -> int:
        row = self._run(
            lambda c: c.execute(
                "SELECT position FROM transitions ORDER BY position DESC LIMIT 1 OFFSET %s",
                (int(n),),
            ).fetchone(),
            write=False,
        )
        return 0 if row is None else int(row[0])

    @_store_errors
    def transition_count(self) -> int:
        row = self._run(
            lambda c: c.execute("SELECT COALESCE(SUM(n), 0) FROM transition_counts").fetchone(),
            write=False,
        )
        return int(row[0])

    @_store_errors
    def transitions_by_source(self) -> dict[str, int]:
        # The counters kept by each commit: at most _COUNT_SLOTS rows per source.
        rows = self._run(
            lambda c: c.execute(
                "SELECT source, SUM(n) FROM transition_counts GROUP BY source"
            ).fetchall(),
            write=False,
        )
        return counts_by_source({int(code): int(n) for code, n in rows})

    @_store_errors
    def last_position(self) -> int:
        row = self._run(
            lambda c: c.execute("SELECT MAX(position) FROM transitions").fetchone(), write=False
        )
        return int(row[0] or 0)

    @_store_errors
    def steps_at(self, times: Sequence[float]) -> list[int]:
        rows = self._run(
            lambda c: c.execute("SELECT received_at FROM transitions").fetchall(), write=False
        )
        received = np.sort(np.asarray([r[0] for r in rows], float))
        return [int(n) for n in np.searchsorted(received, np.asarray(times, float), side="right")]

    # --- episodes ----------------------------------------------------------------------------
    @_store_errors
    def episodes_by_version(self, recent: int = 10) -> list[VersionEpisodes]:
        threshold = self.spec.success_threshold

        def read(conn: psycopg.Connection[Any]) -> list[VersionEpisodes]:
            summary = conn.execute(
                "SELECT policy_version, COUNT(*), AVG(episode_return), "
                "AVG(CASE WHEN last_reward >= %s THEN 1.0 ELSE 0.0 END) FROM episodes "
                "WHERE policy_version IS NOT NULL GROUP BY policy_version ORDER BY policy_version",
                (threshold if threshold is not None else 0.0,),
            ).fetchall()
            out = []
            for version, count, mean, success in summary:
                returns = conn.execute(
                    "SELECT episode_return FROM episodes WHERE policy_version = %s "
                    "ORDER BY ended_at DESC LIMIT %s",
                    (version, recent),
                ).fetchall()
                out.append(
                    VersionEpisodes(
                        int(version),
                        int(count),
                        float(mean),
                        tuple(float(r[0]) for r in returns),
                        None if threshold is None else float(success),
                    )
                )
            return out

        return self._run(read, write=False)  # type: ignore[no-any-return]

    @_store_errors
    def episodes_by_robot(self, recent: int = 10, robots: int = 1000) -> list[RobotEpisodes]:
        rows = self._run(
            lambda c: c.execute(ROBOT_EPISODES_SQL.format(p="%s"), (recent,)).fetchall(),  # type: ignore[arg-type]
            write=False,
        )
        return robot_episodes(rows, robots)

    # --- the policy registry ----------------------------------------------------------------
    @_store_errors
    def register_policy(self, data: bytes, first: bool = False) -> PolicyRecord | None:
        # Refuse what is not a whole version file for this task before using a number.
        check_task(read_policy_info(with_version(data, 0)), self.spec)

        def reserve(conn: psycopg.Connection[Any]) -> int | None:
            row = conn.execute(
                "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'next_version' "
                + ("AND value = '0' " if first else "")
                + "RETURNING value::bigint - 1"
            ).fetchone()
            return None if row is None else int(row[0])

        version = self._run(reserve)  # committed: the number is never reused
        if version is None:
            return None
        data = with_version(data, version)
        info = read_policy_info(data)
        record = PolicyRecord(
            version=version,
            created_at=info.created_at,
            updates=info.updates,
            sha256=hashlib.sha256(data).hexdigest(),
            registered_at=time.time(),
            metadata=info.metadata(),
        )

        def insert(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO policies (version, created_at, updates, sha256, metadata, "
                "registered_at, data) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    version,
                    record.created_at,
                    record.updates,
                    record.sha256,
                    json.dumps(record.metadata),
                    record.registered_at,
                    data,
                ),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"version {version}"))

        self._run(insert)
        return record

    def _records(self, where: str = "", params: Sequence[Any] = ()) -> list[PolicyRecord]:
        rows = self._run(
            lambda c: c.execute(
                f"SELECT {_POLICY_COLUMNS} FROM policies {where}",  # type: ignore[arg-type]
                params,
            ).fetchall(),
            write=False,
        )
        return [
            PolicyRecord(
                version=int(version),
                created_at=created_at,
                updates=int(updates),
                sha256=sha256,
                registered_at=float(registered_at),
                metadata=json.loads(metadata),
            )
            for version, created_at, updates, sha256, metadata, registered_at in rows
        ]

    @_store_errors
    def latest_policy(self) -> PolicyRecord | None:
        records = self._records("ORDER BY version DESC LIMIT 1")
        return records[0] if records else None

    @_store_errors
    def get_policy(self, version: int) -> PolicyRecord | None:
        records = self._records("WHERE version = %s", (int(version),))
        return records[0] if records else None

    @_store_errors
    def list_policies(self) -> list[PolicyRecord]:
        return self._records("ORDER BY version")

    @_store_errors
    def policy_bytes(self, record: PolicyRecord) -> bytes:
        row = self._run(
            lambda c: c.execute(
                "SELECT data FROM policies WHERE version = %s", (record.version,)
            ).fetchone(),
            write=False,
        )
        if row is None:
            raise StoreError(f"version {record.version} is no longer in {self.where}")
        return bytes(row[0])

    @_store_errors
    def delete_policies(self, versions: Sequence[int]) -> None:
        doomed = [int(v) for v in versions]
        if not doomed:
            return

        def delete(conn: psycopg.Connection[Any]) -> None:
            # The control row's lock orders this against a pin (which takes it first too): the
            # version pinned when this commits is kept.
            conn.execute(
                "DELETE FROM policies WHERE version = ANY(%s) AND version IS DISTINCT FROM "
                "(SELECT CASE WHEN mode = 'pinned' THEN pinned_version END FROM control "
                "WHERE id = 1 FOR UPDATE)",
                (doomed,),
            )

        self._run(delete)

    @_store_errors
    def report_served(self, replica: str, version: int) -> None:
        self._run(
            lambda c: c.execute(
                "INSERT INTO replicas (replica, served_version, seen_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (replica) DO UPDATE SET served_version = excluded.served_version, "
                "seen_at = excluded.seen_at",
                (replica, int(version), time.time()),
            )
        )

    @_store_errors
    def served_versions(self, within_s: float) -> dict[str, int]:
        rows = self._run(
            lambda c: c.execute(
                "SELECT replica, served_version FROM replicas WHERE seen_at >= %s",
                (time.time() - within_s,),
            ).fetchall(),
            write=False,
        )
        return {str(r): int(v) for r, v in rows}

    # --- control state and learner status ---------------------------------------------------
    @_store_errors
    def control(self) -> ControlState:
        # One statement, so the row and the held robots come from one snapshot.
        row = self._run(
            lambda c: c.execute(
                "SELECT learner_paused, mode, pinned_version, hold, "
                "ARRAY(SELECT robot_id FROM robot_holds) FROM control WHERE id = 1"
            ).fetchone(),
            write=False,
        )
        paused, mode, pinned, hold, robots = row
        return ControlState(
            bool(paused),
            mode,
            None if pinned is None else int(pinned),
            bool(hold),
            frozenset(robots),
        )

    @_store_errors
    def update_control(
        self, robots: Mapping[str, bool] | None = None, **changes: Any
    ) -> ControlState:
        check_control_changes(changes)
        check_robot_holds(robots)
        if changes or robots:
            assignments = "".join(f"{k} = %s, " for k in changes)

            def write(conn: psycopg.Connection[Any]) -> None:
                now = time.time()
                conn.execute(
                    f"UPDATE control SET {assignments}updated_at = %s WHERE id = 1",  # type: ignore[arg-type]
                    (*changes.values(), now),
                )
                for robot_id, held in (robots or {}).items():
                    if held:
                        conn.execute(
                            "INSERT INTO robot_holds (robot_id, held_at) VALUES (%s, %s) "
                            "ON CONFLICT (robot_id) DO NOTHING",
                            (robot_id, now),
                        )
                    else:
                        conn.execute("DELETE FROM robot_holds WHERE robot_id = %s", (robot_id,))
                # After the update took the control row's lock (see delete_policies).
                pinned = changes.get("pinned_version")
                if pinned is not None and (
                    conn.execute(
                        "SELECT 1 FROM policies WHERE version = %s", (int(pinned),)
                    ).fetchone()
                    is None
                ):
                    raise UnknownVersion(f"policy version {pinned} does not exist")
                conn.execute("SELECT pg_notify(%s, 'control')", (CHANNEL,))

            self._run(write)
        return self.control()

    @_store_errors
    def write_learner_status(self, status: LearnerStatus) -> None:
        self._run(
            lambda c: c.execute(
                "INSERT INTO learner_status (id, heartbeat, status) VALUES (1, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat, "
                "status = excluded.status",
                (time.time(), encode_learner_status(status)),
            )
        )

    @_store_errors
    def learner_status(self) -> LearnerStatus | None:
        row = self._run(
            lambda c: c.execute(
                "SELECT heartbeat, status FROM learner_status WHERE id = 1"
            ).fetchone(),
            write=False,
        )
        if row is None:
            return None
        return decode_learner_status(row[1], float(row[0]))

    @_store_errors
    def check(self) -> None:
        self._run(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    # --- announcements ------------------------------------------------------------------------
    def wait_for_change(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a ``NOTIFY`` on :data:`CHANNEL`.

        The listening connection is opened on first use and again after it breaks; since an
        announcement may have been missed meanwhile, a fresh connection reports a change.
        """
        deadline = time.monotonic() + timeout_s
        with self._listener_lock:
            fresh = False
            if self._listener is None or self._listener.closed:
                try:
                    self._listener = psycopg.connect(self.url, **self._connect_kwargs())
                    self._listener.execute(f"LISTEN {CHANNEL}")
                    fresh = True
                except psycopg.Error:
                    self._drop_listener()
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    return False
            if fresh:
                return True
            try:
                for _ in self._listener.notifies(timeout=timeout_s, stop_after=1):
                    return True
                return False
            except psycopg.Error:
                self._drop_listener()
                return False

    def _drop_listener(self) -> None:
        if self._listener is not None:
            with suppress(psycopg.Error):
                self._listener.close()
            self._listener = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.close(timeout=1.0)
        with self._listener_lock:
            self._drop_listener()


def stored_task(url: str, busy_timeout_s: float = 30.0) -> TaskSpec:
    """The task the PostgreSQL store at ``url`` was last opened for."""
    where = redacted(url)
    try:
        with psycopg.connect(
            url, autocommit=True, connect_timeout=max(1, round(min(busy_timeout_s, 10.0)))
        ) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'task_spec'").fetchone()
    except pg_errors.UndefinedTable as exc:
        raise StoreError(f"{where} holds no robot_sac store") from exc
    except psycopg.Error as exc:
        raise StoreUnavailable(f"the store {where} is unavailable: {_first_line(exc)}") from exc
    if row is None:
        raise StoreError(f"{where} does not record its task")
    return TaskSpec.model_validate_json(row[0])


class _Refused(Exception):
    """Batches of a group conflict (by index in the group): roll back, write the others."""

    def __init__(self, conflicts: dict[int, TransitionConflict]) -> None:
        super().__init__(f"{len(conflicts)} batches conflict")
        self.conflicts = conflicts


def _write_group(conn: psycopg.Connection[Any], *, group: Sequence[PendingBatch]) -> list[int]:
    """Insert the batches of ``group``, in order, in the caller's transaction; how many rows each
    stored. Raises :class:`_Refused` naming the batches whose content conflicts.

    The first copy of each key (in group order) is the one inserted; every other copy is
    compared with it, or, for a key already logged, with the stored row.
    """
    rows = [r for p in group for r in p.rows]
    owner = [i for i, p in enumerate(group) for _ in p.rows]
    first: dict[TransitionKey, int] = {}
    for i, r in enumerate(rows):
        first.setdefault((r[0], r[1], r[2]), i)
    unique = sorted(first.values())
    params = [unique, *(list(c) for c in zip(*(rows[i] for i in unique), strict=True))]
    new: set[TransitionKey] = {
        (k[0], k[1], int(k[2])) for k in conn.execute(_INSERT, params, binary=True).fetchall()
    }
    conflicts: dict[int, TransitionConflict] = {}
    if len(new) < len(rows):
        stored = _stored_content(conn, [k for k in first if k not in new])
        firsts: dict[TransitionKey, tuple[tuple[Any, ...], int]] = {}
        for i, r in enumerate(rows):
            key = (r[0], r[1], r[2])
            if key in stored:
                conflict = find_conflict(key, stored[key], r[CONTENT])
            elif key in firsts:
                content, by = firsts[key]
                conflict = find_conflict(key, content, r[CONTENT], in_batch=by == owner[i])
            else:
                firsts[key] = (r[CONTENT], owner[i])
                continue
            if conflict is not None and owner[i] not in conflicts:
                conflicts[owner[i]] = conflict
    if conflicts:
        # Only the first: a later batch may conflict only with a row of a refused one, and is
        # judged again, as SQLite's batch-by-batch savepoints would, without it.
        earliest = min(conflicts)
        raise _Refused({earliest: conflicts[earliest]})
    accepted = [0] * len(group)
    for key in new:
        accepted[owner[first[key]]] += 1
    if new:
        written = [rows[first[k]] for k in sorted(new)]
        counts = sorted(source_counts(written).items())
        conn.execute(_COUNT, ([code for code, _ in counts], [n for _, n in counts]))
        _tally(conn, written)
    return accepted


def _stored_content(
    conn: psycopg.Connection[Any], keys: Sequence[TransitionKey]
) -> dict[TransitionKey, tuple[Any, ...]]:
    """The stored content (the codec's :data:`CONTENT` columns) of each of ``keys`` that is
    logged."""
    if not keys:
        return {}
    columns = [list(c) for c in zip(*keys, strict=True)]
    return {
        (r[0], r[1], int(r[2])): tuple(bytes(v) if isinstance(v, memoryview) else v for v in r[3:])
        for r in conn.execute(_STORED, columns)
    }


def _add_sources(conn: psycopg.Connection[Any]) -> None:
    """Schema 2 to 3: each transition's source (every row logged before is the policy's), and
    the transition counts kept per source (the counts so far are the policy's). A column with a
    constant default is added without rewriting the table, however long the log."""
    conn.execute("ALTER TABLE transitions ADD COLUMN source SMALLINT NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE transition_counts ADD COLUMN source SMALLINT NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE transition_counts DROP CONSTRAINT transition_counts_pkey")
    conn.execute("ALTER TABLE transition_counts ADD PRIMARY KEY (source, slot)")


def _tally(conn: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]]) -> None:
    """Add the rows just stored to their episodes' tallies, then refresh the ``episodes`` row of
    every ended episode among them (work in proportion to the batch, not to the log)."""
    tallies = episode_tallies(rows)
    conn.execute(
        _TALLY, [list(c) for c in zip(*(k + tuple(t) for k, t in tallies.items()), strict=True)]
    )
    episodes = sorted({(k[0], k[1]) for k in tallies})
    robot_ids, episode_ids = (list(c) for c in zip(*episodes, strict=True))
    conn.execute(_EPISODES, (time.time(), robot_ids, episode_ids))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
