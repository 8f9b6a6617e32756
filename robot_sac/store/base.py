"""The store interface: the transition log, the policy registry and the control state.

Processes talk only through the store (and HTTP), so this interface is narrow. SQLite is the
default backend (:mod:`robot_sac.store.sqlite`), PostgreSQL the fleet's
(:mod:`robot_sac.store.postgres`); both pass the same test suite. Every method is synchronous
and thread-safe; the service calls it from worker threads. Trouble with the store itself is a
:class:`StoreBusy` (locked for longer than the store was told to wait) or a
:class:`StoreUnavailable` (anything else the database failed at), never a driver's own exception.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from robot_sac.admin_schemas import LearnerStatus
from robot_sac.schemas import TaskSpec
from robot_sac.store.records import (
    ControlState,
    LogRows,
    PolicyRecord,
    RobotEpisodes,
    TransitionLike,
    VersionEpisodes,
)

# Retention keeps the versions replicas reported serving within this many seconds. A replica
# reports every 30 s (robot_sac.services.inference.serving.REPORT_SERVED_S): a replica that
# missed a few reports keeps its version, one gone for ten minutes no longer does.
SERVED_WITHIN_S = 600.0


class Store(abc.ABC):
    """The store interface. See the module docstring; backends implement the abstract methods."""

    spec: TaskSpec
    where: str  # the store for a message: its SQLite file, or its URL without the password

    # --- the transition log ---------------------------------------------------------------
    @abc.abstractmethod
    def append(self, transitions: Sequence[TransitionLike]) -> tuple[int, int]:
        """Append a batch in one transaction; return ``(accepted, duplicates)`` once durable.

        ``(robot_id, episode_id, step)`` is the idempotency key. A transition whose key is
        already stored (or appears earlier in the same batch) with the same content (vectors
        compared by float32 value, reward by its float32 value, flags, ``policy_version``,
        ``source``) is counted as a duplicate and not stored again. The same key with other
        content raises :class:`TransitionConflict` and nothing of the batch is stored (a stored
        key keeps its source); other callers' batches are not affected. Invalid transitions
        raise ``ValueError``; a store that stays locked raises :class:`StoreBusy`, one that fails
        :class:`StoreUnavailable`.
        """

    @abc.abstractmethod
    def read_after(self, position: int, limit: int) -> LogRows:
        """Up to ``limit`` rows with a position greater than ``position``, in log order."""

    @abc.abstractmethod
    def position_before_latest(self, n: int) -> int:
        """A position after which exactly the newest ``n`` rows lie (0 if the log is shorter).

        ``read_after(position_before_latest(n), ...)`` pages through the newest ``n`` rows: how a
        learner rebuilds its replay buffer in chunks.
        """

    @abc.abstractmethod
    def transition_count(self) -> int: ...

    @abc.abstractmethod
    def transitions_by_source(self) -> dict[str, int]:
        """How many transitions the log holds of each source (``"policy"``, ``"human"``,
        ``"demo"``: every one named, 0 if it has none), from counters each commit keeps: as cheap
        for a log of millions of rows as for an empty one. They sum to :meth:`transition_count`.
        """

    @abc.abstractmethod
    def last_position(self) -> int:
        """The position of the newest row (0 for an empty log)."""

    # --- episodes ----------------------------------------------------------------------------
    @abc.abstractmethod
    def steps_at(self, times: Sequence[float]) -> list[int]:
        """How many transitions had been received at each wall-clock time (for learning curves)."""

    @abc.abstractmethod
    def episodes_by_version(self, recent: int = 10) -> list[VersionEpisodes]:
        """Per version (oldest first): episode count, mean return, the last ``recent`` returns."""

    @abc.abstractmethod
    def episodes_by_robot(self, recent: int = 10, robots: int = 1000) -> list[RobotEpisodes]:
        """Per robot that ended an episode: episode count and its ``recent`` newest returns; the
        ``robots`` whose last episode ended latest, most recent first."""

    # --- the policy registry ----------------------------------------------------------------
    @abc.abstractmethod
    def register_policy(self, data: bytes, first: bool = False) -> PolicyRecord | None:
        """Register a version file as the next version number.

        The number is reserved first and never reused, even if this call fails afterwards; the
        file's metadata ``version`` is rewritten to it. The caller validates the file first.
        With ``first=True`` it registers only if no number was ever reserved (version 0), and
        returns None otherwise: two processes starting at once create one version 0.
        """

    @abc.abstractmethod
    def latest_policy(self) -> PolicyRecord | None: ...

    @abc.abstractmethod
    def get_policy(self, version: int) -> PolicyRecord | None: ...

    @abc.abstractmethod
    def list_policies(self) -> list[PolicyRecord]: ...

    @abc.abstractmethod
    def policy_bytes(self, record: PolicyRecord) -> bytes: ...

    # --- control state and learner status --------------------------------------------------
    @abc.abstractmethod
    def control(self) -> ControlState: ...

    @abc.abstractmethod
    def update_control(
        self, robots: Mapping[str, bool] | None = None, **changes: Any
    ) -> ControlState:
        """Change some fields of the control state atomically; return the new state.

        ``robots`` holds (``True``) or releases (``False``) robots one by one, in the same
        transaction; a hold or release of one robot never touches another's. Pinning a version
        that is not registered (``pinned_version``) raises :class:`UnknownVersion` and changes
        nothing.
        """

    @abc.abstractmethod
    def write_learner_status(self, status: LearnerStatus) -> None:
        """Replace the learner's status row (stored as JSON; its ``heartbeat`` is set to now)."""

    @abc.abstractmethod
    def learner_status(self) -> LearnerStatus | None:
        """The learner's last status, with the time it was written as ``heartbeat``; ``None``
        before the first."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise if the store does not answer (readiness)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- change announcements ----------------------------------------------------------------
    #: Whether :meth:`wait_for_change` hears of changes as they happen (PostgreSQL's
    #: LISTEN/NOTIFY); without it the service polls.
    announces_changes: bool = False

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block until another process announces a new version or a control change, or for
        ``timeout_s``; whether a change was announced. Backends without announcements sleep."""
        time.sleep(timeout_s)
        return False

    # --- version retention ----------------------------------------------------------------------
    @abc.abstractmethod
    def report_served(self, replica: str, version: int) -> None:
        """Record that ``replica`` (a service process) serves ``version`` now."""

    @abc.abstractmethod
    def served_versions(self, within_s: float) -> dict[str, int]:
        """What each replica that reported in the last ``within_s`` seconds serves."""

    @abc.abstractmethod
    def delete_policies(self, versions: Sequence[int]) -> None:
        """Delete these versions (their rows and bytes); their numbers are never reused.

        The version pinned when the deletion commits is never deleted, whatever the caller read
        before: a pin and a prune that race leave the pinned version in place.
        """

    def prune_policies(
        self, keep_newest: int, keep_every: int, served_within_s: float = SERVED_WITHIN_S
    ) -> list[int]:
        """Delete the versions that :func:`versions_to_keep` does not keep; return them."""
        versions = [r.version for r in self.list_policies()]
        control = self.control()
        pinned = control.pinned_version if control.mode == "pinned" else None
        keep = versions_to_keep(
            versions,
            keep_newest,
            keep_every,
            pinned=pinned,
            served=self.served_versions(served_within_s).values(),
        )
        doomed = [v for v in versions if v not in keep]
        if doomed:
            self.delete_policies(doomed)
        return doomed

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def versions_to_keep(
    versions: Iterable[int],
    keep_newest: int,
    keep_every: int,
    pinned: int | None = None,
    served: Iterable[int] = (),
) -> set[int]:
    """The versions retention keeps: the newest ``keep_newest``, every ``keep_every``-th number
    (0 included; 0 turns this off), the pinned one and the ones replicas serve."""
    ordered = sorted(set(versions))
    keep = set(ordered[-keep_newest:]) if keep_newest > 0 else set()
    if keep_every > 0:
        keep.update(v for v in ordered if v % keep_every == 0)
    if pinned is not None:
        keep.add(pinned)
    keep.update(served)
    return keep & set(ordered)
