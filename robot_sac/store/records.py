"""The store's records and errors: what crosses the store interface, typed.

Kept apart from the interface (:mod:`robot_sac.store.base`) and the row codec
(:mod:`robot_sac.store.codec`) so the service and the wire schemas can name them without
importing either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np


class StoreError(RuntimeError):
    """The store cannot do what was asked (wrong task for this data, unknown version, ...)."""


class StoreBusy(StoreError):
    """The store stayed locked (by another process or by this one's other writes) for longer
    than the store was told to wait: the call may succeed if retried later."""


class StoreUnavailable(StoreError):
    """The store's database failed the call (disk I/O error, a file it cannot open, a missing
    table, ...): not something the caller got wrong."""


class UnknownVersion(StoreError):
    """The version asked for is not registered (never was, or retention deleted it)."""


TransitionKey = tuple[str, str, int]

# The code the log keeps for each transition source (robot_sac.schemas.Source), and that
# LogRows.source holds: fixed forever, since stored rows and the learner's sampler rely on them.
SOURCE_CODES: dict[str, int] = {"policy": 0, "human": 1, "demo": 2}
# The name of each code: SOURCE_NAMES[code].
SOURCE_NAMES: tuple[str, ...] = tuple(sorted(SOURCE_CODES, key=SOURCE_CODES.__getitem__))


class TransitionConflict(ValueError):
    """A transition reuses a stored key, ``(robot_id, episode_id, step)``, with other content
    (or a batch holds one key twice with different content); the whole batch is refused.

    ``key`` is the transition's key and ``field`` the first field found to differ.
    """

    def __init__(self, key: TransitionKey, field: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.field = field


class TransitionLike(Protocol):
    """Anything with the fields of :class:`robot_sac.schemas.Transition`.

    A vector may also be ``bytes``: its values as little-endian float32, as the log stores them.
    """

    # Read-only members (properties), so that a list of floats is a Sequence[float] here.
    @property
    def robot_id(self) -> str: ...
    @property
    def episode_id(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def obs(self) -> Sequence[float] | bytes: ...
    @property
    def action(self) -> Sequence[float] | bytes: ...
    @property
    def reward(self) -> float: ...
    @property
    def next_obs(self) -> Sequence[float] | bytes: ...
    @property
    def terminated(self) -> bool: ...
    @property
    def truncated(self) -> bool: ...
    @property
    def policy_version(self) -> int | None: ...
    @property
    def source(self) -> str: ...  # a key of SOURCE_CODES


class LogRows(NamedTuple):
    """Rows of the transition log, oldest first, as arrays (``N`` rows).

    ``policy_version`` is -1 where the robot did not say which version acted. ``source`` is
    each row's :data:`SOURCE_CODES` value: 0 policy, 1 human (an operator's correction), 2 demo.
    """

    position: np.ndarray  # (N,) int64, strictly increasing
    obs: np.ndarray  # (N, obs_dim) float32
    action: np.ndarray  # (N, action_dim) float32, robot units
    reward: np.ndarray  # (N,) float32
    next_obs: np.ndarray  # (N, obs_dim) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    policy_version: np.ndarray  # (N,) int64
    source: np.ndarray  # (N,) uint8, SOURCE_CODES

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.position.shape[0])


@dataclasses.dataclass(frozen=True)
class PolicyRecord:
    """A registered version: its number, provenance and where its bytes are."""

    version: int
    created_at: str
    updates: int
    sha256: str
    registered_at: float
    metadata: dict[str, str]
    path: str | None = None  # the file, for stores that keep bytes on disk

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "updates": self.updates,
            "sha256": self.sha256,
        }


@dataclasses.dataclass(frozen=True)
class ControlState:
    """What operators decide: whether the learner runs, which version is served, the hold."""

    learner_paused: bool = False
    mode: str = "follow"  # "follow": serve the newest version; "pinned": serve pinned_version
    pinned_version: int | None = None
    hold: bool = False  # every robot is held
    # Robots held one by one, besides the hold for all (acts naming one answer the safe action).
    held_robots: frozenset[str] = frozenset()

    def holds(self, robot_id: str | None) -> bool:
        """Whether an act from ``robot_id`` (None: unnamed) answers the safe action."""
        return self.hold or (robot_id is not None and robot_id in self.held_robots)


@dataclasses.dataclass(frozen=True)
class RobotEpisodes:
    """The episodes one robot ended: how many, and the returns of its newest (newest first)."""

    robot_id: str
    episodes: int
    recent_returns: tuple[float, ...]
    last_ended_at: float


@dataclasses.dataclass(frozen=True)
class VersionEpisodes:
    """Episode returns of the episodes one version drove (most of their steps)."""

    version: int
    episodes: int
    mean_return: float | None
    recent_returns: tuple[float, ...]
    success_rate: float | None = None  # when the task defines success (TaskSpec.success_threshold)
