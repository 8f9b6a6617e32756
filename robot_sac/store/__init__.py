"""The store: transition log, policy registry, control state (interface: :mod:`.base`).

``open_store`` picks the backend: SQLite in a data directory by default, PostgreSQL for fleets.
"""

from __future__ import annotations

from pathlib import Path

from robot_sac.schemas import TaskSpec
from robot_sac.store.base import Store, versions_to_keep
from robot_sac.store.codec import MAX_HELD_ROBOTS
from robot_sac.store.records import (
    ControlState,
    LogRows,
    PolicyRecord,
    RobotEpisodes,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    TransitionConflict,
    UnknownVersion,
    VersionEpisodes,
)

__all__ = [
    "MAX_HELD_ROBOTS",
    "ControlState",
    "LogRows",
    "PolicyRecord",
    "RobotEpisodes",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreUnavailable",
    "TransitionConflict",
    "UnknownVersion",
    "VersionEpisodes",
    "open_existing",
    "open_store",
    "versions_to_keep",
]


def open_existing(
    data_dir: str | Path = "data", url: str | None = None, busy_timeout_s: float = 30.0
) -> Store:
    """Open an existing store with the task it was last opened for (tools, plots): the SQLite
    store in ``data_dir``, or the PostgreSQL database at ``url``."""
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"unsupported store URL {url!r}: use postgresql://...")
        from robot_sac.store.postgres import PostgresStore, stored_task

        return PostgresStore(url, stored_task(url, busy_timeout_s), busy_timeout_s)
    import sqlite3
    from contextlib import closing

    from robot_sac.store.sqlite import SQLiteStore

    path = Path(data_dir) / "store.sqlite"
    if not path.exists():
        raise StoreError(f"{data_dir} holds no robot_sac store (no {path.name})")
    try:
        with closing(sqlite3.connect(path, timeout=busy_timeout_s)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'task_spec'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(f"the store {path} is unavailable: {exc}") from exc
    if row is None:
        raise StoreError(f"{path} does not record its task")
    return SQLiteStore(data_dir, TaskSpec.model_validate_json(row[0]), busy_timeout_s)


def open_store(
    spec: TaskSpec,
    data_dir: str | Path = "data",
    url: str | None = None,
    busy_timeout_s: float = 30.0,
) -> Store:
    """Open (creating if needed) the store for ``spec``.

    ``url`` ``postgresql://...`` selects PostgreSQL; otherwise SQLite in ``data_dir``.
    ``busy_timeout_s`` is the longest a store call waits for the store's locks before it raises
    :class:`StoreBusy` (a service answering robots passes a few seconds).
    """
    if url and url.startswith(("postgresql://", "postgres://")):
        try:
            from robot_sac.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"a PostgreSQL store needs psycopg: pip install 'robot-sac[postgres]' ({exc})"
            ) from exc
        return PostgresStore(url, spec, busy_timeout_s)
    if url:
        raise StoreError(
            f"unsupported store URL {url!r}: use postgresql://..., or leave it unset for SQLite "
            "in the data directory"
        )
    from robot_sac.store.sqlite import SQLiteStore

    return SQLiteStore(data_dir, spec, busy_timeout_s)
