"""The store: one interface over the transition log, the policy registry and the control state.

Processes talk only through the store (and HTTP), so this interface is narrow and its SQL
portable: SQLite is the default backend, PostgreSQL a second file. Every method is synchronous
and thread-safe; the service calls it from worker threads. Trouble with the store itself is a
:class:`StoreBusy` (locked for longer than the store was told to wait) or a
:class:`StoreUnavailable` (anything else the database failed at), never a driver's own exception.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from robot_sac.schemas import FLOAT32_MAX, TaskSpec

SCHEMA_VERSION = 2


class StoreError(RuntimeError):
    """The store cannot do what was asked (wrong task for this data, unknown version, ...)."""


class StoreBusy(StoreError):
    """The store stayed locked (by another process or by this one's other writes) for longer
    than the store was told to wait: the call may succeed if retried later."""


class StoreUnavailable(StoreError):
    """The store's database failed the call (disk I/O error, a file it cannot open, a missing
    table, ...): not something the caller got wrong."""


TransitionKey = tuple[str, str, int]


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

    robot_id: str
    episode_id: str
    step: int
    obs: Sequence[float] | bytes
    action: Sequence[float] | bytes
    reward: float
    next_obs: Sequence[float] | bytes
    terminated: bool
    truncated: bool
    policy_version: int | None


class LogRows(NamedTuple):
    """Rows of the transition log, oldest first, as arrays (``N`` rows).

    ``policy_version`` is -1 where the robot did not say which version acted.
    """

    position: np.ndarray  # (N,) int64, strictly increasing
    obs: np.ndarray  # (N, obs_dim) float32
    action: np.ndarray  # (N, action_dim) float32, robot units
    reward: np.ndarray  # (N,) float32
    next_obs: np.ndarray  # (N, obs_dim) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    policy_version: np.ndarray  # (N,) int64

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
    hold: bool = False


@dataclasses.dataclass(frozen=True)
class VersionEpisodes:
    """Episode returns of the episodes one version drove (most of their steps)."""

    version: int
    episodes: int
    mean_return: float | None
    recent_returns: tuple[float, ...]
    success_rate: float | None = None  # when the task defines success (TaskSpec.success_threshold)


class Store(abc.ABC):
    """The store interface. See the module docstring; backends implement the abstract methods."""

    spec: TaskSpec

    # --- the transition log ---------------------------------------------------------------
    @abc.abstractmethod
    def append(self, transitions: Sequence[TransitionLike]) -> tuple[int, int]:
        """Append a batch in one transaction; return ``(accepted, duplicates)`` once durable.

        ``(robot_id, episode_id, step)`` is the idempotency key. A transition whose key is
        already stored (or appears earlier in the same batch) with the same content (vectors
        compared by float32 value, reward by its float32 value, flags, ``policy_version``) is
        counted as a duplicate and not stored again. The same key with other content raises
        :class:`TransitionConflict` and nothing of the batch is stored; other callers' batches
        are not affected. Invalid transitions raise ``ValueError``; a store that stays locked
        raises :class:`StoreBusy`, one that fails :class:`StoreUnavailable`.
        """

    @abc.abstractmethod
    def read_after(self, position: int, limit: int) -> LogRows:
        """Up to ``limit`` rows with a position greater than ``position``, in log order."""

    @abc.abstractmethod
    def read_latest(self, limit: int) -> LogRows:
        """The newest ``limit`` rows, in log order (rebuilding a replay buffer)."""

    @abc.abstractmethod
    def position_before_latest(self, n: int) -> int:
        """A position after which exactly the newest ``n`` rows lie (0 if the log is shorter).

        ``read_after(position_before_latest(n), ...)`` pages through the newest ``n`` rows: how a
        learner rebuilds its replay buffer in chunks.
        """

    @abc.abstractmethod
    def transition_count(self) -> int: ...

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
    def update_control(self, **changes: Any) -> ControlState:
        """Change some fields of the control state atomically; return the new state."""

    @abc.abstractmethod
    def write_learner_status(self, status: dict[str, Any]) -> None:
        """Replace the learner's status row (a JSON object; ``heartbeat`` is set to now)."""

    @abc.abstractmethod
    def learner_status(self) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def check(self) -> None:
        """Raise if the store does not answer (readiness)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- shared logic -----------------------------------------------------------------------
    def ensure_initial_policy(self, seed: int = 0) -> PolicyRecord:
        """On first start, register version 0: a freshly initialised policy for the task."""
        latest = self.latest_policy()
        if latest is not None:
            return latest
        import torch

        from robot_sac.networks import Actor
        from robot_sac.policy import policy_bytes

        cfg = self.spec.sac
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            actor = Actor(
                self.spec.obs_dim,
                self.spec.action_dim,
                cfg.hidden,
                cfg.policy_family,
                cfg.log_std_min,
                cfg.log_std_max,
            )
        data = policy_bytes(actor, self.spec.action_low, self.spec.action_high, version=0)
        record = self.register_policy(data, first=True)
        deadline = time.monotonic() + 10.0
        while record is None:  # another process reserved version 0: wait for it to land
            if time.monotonic() > deadline:
                # It never did (that start crashed): register this one under the next number.
                return self.register_policy(data)  # type: ignore[return-value]
            time.sleep(0.05)
            record = self.latest_policy()
        return record

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def task_fingerprint(spec: TaskSpec) -> dict[str, Any]:
    """What a log's rows depend on: a store refuses to open for a task that differs in these."""
    return {
        "obs_dim": spec.obs_dim,
        "action_low": list(spec.action_low),
        "action_high": list(spec.action_high),
    }


def check_fingerprint(stored: str, spec: TaskSpec, where: str) -> None:
    have = json.loads(stored)
    want = task_fingerprint(spec)
    if have != want:
        raise StoreError(
            f"{where} holds data of another task (obs_dim {have['obs_dim']}, action bounds "
            f"{have['action_low']}..{have['action_high']}); this one has obs_dim "
            f"{want['obs_dim']}, bounds {want['action_low']}..{want['action_high']}. Use another "
            "data directory or store."
        )


def _vectors(transitions: Sequence[TransitionLike], name: str, width: int) -> np.ndarray:
    """One field of every transition as a float32 ``(N, width)`` array, checked."""
    for t in transitions:
        vector = getattr(t, name)
        if isinstance(vector, bytes) and len(vector) != 4 * width:
            raise ValueError(
                f"transition {t.robot_id}/{t.episode_id}/{t.step}: {name} has {len(vector)} "
                f"bytes, the task's have {width} float32 values ({4 * width} bytes)"
            )
    try:
        with np.errstate(over="ignore"):  # overflow to inf is what the check below refuses
            array = np.asarray([_as_values(getattr(t, name)) for t in transitions], dtype="<f4")
    except ValueError:  # ragged: some row has another length
        array = np.zeros((0, 0), "<f4")
    if array.shape != (len(transitions), width):
        bad = next(t for t in transitions if len(_as_values(getattr(t, name))) != width)
        raise ValueError(
            f"transition {bad.robot_id}/{bad.episode_id}/{bad.step}: {name} has "
            f"{len(_as_values(getattr(bad, name)))} values, the task's have {width}"
        )
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = transitions[int(np.argmin(finite))]
        raise ValueError(
            f"transition {bad.robot_id}/{bad.episode_id}/{bad.step}: {name} must hold finite "
            "float32 values"
        )
    return array


def _as_values(vector: Sequence[float] | bytes) -> Any:
    return np.frombuffer(vector, "<f4") if isinstance(vector, bytes) else vector


def _packer(width: int) -> Callable[..., bytes]:
    return struct.Struct(f"<{width}f").pack


def encode_rows(
    transitions: Sequence[TransitionLike], spec: TaskSpec, received_at: float | None = None
) -> list[tuple[Any, ...]]:
    """Transitions as row tuples for the transitions table, vectors as float32 bytes.

    This is the ingest hot path. Vectors already in float32 bytes (a MessagePack body) are
    stored as they are; lists of floats (a JSON body) are packed straight to float32 bytes, a few
    times faster than going through numpy. Either way the whole batch is then checked finite in
    one vectorised pass; anything else (arrays, tensors, a mixture) goes through numpy.
    """
    if not transitions:
        return []
    now = time.time() if received_at is None else received_at
    try:
        packed = _packed_bytes(transitions, spec) or _pack_lists(transitions, spec)
    except (struct.error, TypeError, OverflowError):
        packed = None  # not plain lists of the right lengths, or out of float32's range
    if packed is None:
        obs, action, next_obs = (
            [row.tobytes() for row in _vectors(transitions, name, width)]
            for name, width in (
                ("obs", spec.obs_dim),
                ("action", spec.action_dim),
                ("next_obs", spec.obs_dim),
            )
        )
    else:
        obs, action, next_obs = packed
    if spec.obs_bound is not None:
        _check_obs_bound(transitions, obs, next_obs, spec.obs_dim, spec.obs_bound)
    # The reward bound costs nothing extra: it replaces float32's range in the check every
    # reward goes through anyway.
    reward_limit = FLOAT32_MAX if spec.reward_bound is None else min(spec.reward_bound, FLOAT32_MAX)
    rows = []
    for t, o, a, n in zip(transitions, obs, action, next_obs, strict=True):
        if not (math.isfinite(t.reward) and abs(t.reward) <= reward_limit):
            raise _bad_reward(t, spec)
        version = t.policy_version
        rows.append(
            (
                t.robot_id,
                t.episode_id,
                int(t.step),
                o,
                a,
                float(t.reward),
                n,
                1 if t.terminated else 0,
                1 if t.truncated else 0,
                None if version is None else int(version),
                now,
            )
        )
    return rows


def _bad_reward(t: TransitionLike, spec: TaskSpec) -> ValueError:
    where = f"transition {t.robot_id}/{t.episode_id}/{t.step}"
    if not (math.isfinite(t.reward) and abs(t.reward) <= FLOAT32_MAX):
        return ValueError(f"{where}: reward {t.reward} is not a finite float32")
    return ValueError(
        f"{where}: reward {t.reward:.6g} is beyond the task's reward_bound ({spec.reward_bound})"
    )


def _check_obs_bound(
    transitions: Sequence[TransitionLike],
    obs: Sequence[bytes],
    next_obs: Sequence[bytes],
    width: int,
    bound: float,
) -> None:
    """Refuse the batch if an obs or next_obs value (as the float32 stored) is beyond ``bound``
    in magnitude: one vectorised pass over the whole batch, naming the first bad transition."""
    beyond = {
        name: np.abs(np.frombuffer(b"".join(vectors), "<f4").reshape(len(vectors), width)) > bound
        for name, vectors in (("obs", obs), ("next_obs", next_obs))
    }
    bad_rows = beyond["obs"].any(axis=1) | beyond["next_obs"].any(axis=1)
    if not bad_rows.any():
        return
    row = int(np.argmax(bad_rows))
    name = "obs" if beyond["obs"][row].any() else "next_obs"
    column = int(np.argmax(beyond[name][row]))
    value = np.frombuffer((obs if name == "obs" else next_obs)[row], "<f4")[column]
    t = transitions[row]
    raise ValueError(
        f"transition {t.robot_id}/{t.episode_id}/{t.step}: {name}[{column}] = {value:.6g} is "
        f"beyond the task's obs_bound ({bound})"
    )


# The content of a transition row: ``encode_rows``' columns 3 to 9, compared to find conflicts.
CONTENT_FIELDS = (
    "obs",
    "action",
    "reward",
    "next_obs",
    "terminated",
    "truncated",
    "policy_version",
)
_VECTOR_FIELDS = frozenset(("obs", "action", "next_obs"))


def _difference(name: str, first: Any, second: Any) -> tuple[str, str] | None:
    """How one content field of two rows differs, as each row's value in words; None if it
    does not. Vectors compare by float32 value (so -0.0 == 0.0), rewards by the float32 value
    the log keeps of them; flags and versions exactly."""
    if first == second:
        return None
    if name in _VECTOR_FIELDS:
        a, b = np.frombuffer(first, "<f4"), np.frombuffer(second, "<f4")
        unequal = a != b
        if not unequal.any():
            return None
        i = int(np.argmax(unequal))
        return f"{name}[{i}] = {a[i]}", str(b[i])
    if name == "reward":
        if np.float32(first) == np.float32(second):
            return None
        return repr(float(first)), repr(float(second))
    if name in ("terminated", "truncated"):
        if bool(first) == bool(second):
            return None
        return str(bool(first)), str(bool(second))
    return str(first), str(second)


def find_conflict(
    key: TransitionKey, first: Sequence[Any], second: Sequence[Any], in_batch: bool = False
) -> TransitionConflict | None:
    """The conflict between two rows of one key, or None if their content is the same.

    ``first`` and ``second`` are the content (:data:`CONTENT_FIELDS`, vectors as float32 bytes):
    the stored row and the one sent, or with ``in_batch`` two copies inside one batch.
    """
    if tuple(first) == tuple(second):
        return None
    for name, a, b in zip(CONTENT_FIELDS, first, second, strict=True):
        words = _difference(name, a, b)
        if words is None:
            continue
        where = f"transition {key[0]}/{key[1]}/{key[2]}"
        if in_batch:
            detail = f"{words[0]}, then {words[1]}"
            what = "appears twice in the batch"
        else:
            detail = f"{words[0]} stored, {words[1]} sent"
            what = "was already logged"
        return TransitionConflict(key, name, f"{where} {what} with a different {name} ({detail})")
    return None


def _packed_bytes(
    transitions: Sequence[TransitionLike], spec: TaskSpec
) -> tuple[list[bytes], list[bytes], list[bytes]] | None:
    """The three vectors of every transition if all are float32 bytes of the task's lengths and
    finite, else None (the caller's slower paths then name what is wrong)."""
    obs_bytes, action_bytes = 4 * spec.obs_dim, 4 * spec.action_dim
    obs, action, next_obs = [], [], []
    for t in transitions:
        o, a, n = t.obs, t.action, t.next_obs
        if not (
            type(o) is bytes
            and type(a) is bytes
            and type(n) is bytes
            and len(o) == obs_bytes
            and len(a) == action_bytes
            and len(n) == obs_bytes
        ):
            return None
        obs.append(o)
        action.append(a)
        next_obs.append(n)
    if not np.isfinite(np.frombuffer(b"".join(obs + action + next_obs), "<f4")).all():
        return None
    return obs, action, next_obs


def _pack_lists(
    transitions: Sequence[TransitionLike], spec: TaskSpec
) -> tuple[list[bytes], list[bytes], list[bytes]] | None:
    """The three vectors of every transition as float32 bytes, or None if some are not lists.

    ``struct`` refuses a wrong length and a value beyond float32's range (so the caller falls
    back to :func:`_vectors`, whose errors say which transition is wrong); NaN and infinity pack,
    so they are looked for afterwards in one pass over the batch.
    """
    if not all(
        type(t.obs) is list and type(t.action) is list and type(t.next_obs) is list
        for t in transitions
    ):
        return None
    pack_obs, pack_action = _packer(spec.obs_dim), _packer(spec.action_dim)
    obs = [pack_obs(*t.obs) for t in transitions]
    action = [pack_action(*t.action) for t in transitions]
    next_obs = [pack_obs(*t.next_obs) for t in transitions]
    for vectors in (obs, action, next_obs):
        if not np.isfinite(np.frombuffer(b"".join(vectors), "<f4")).all():
            return None  # _vectors names the transition and the field
    return obs, action, next_obs


def decode_rows(rows: Sequence[Sequence[Any]], spec: TaskSpec) -> LogRows:
    """Rows ``(position, obs, action, reward, next_obs, terminated, truncated, version)``."""
    n, o, a = len(rows), spec.obs_dim, spec.action_dim
    if n == 0:
        return LogRows(
            np.zeros(0, np.int64),
            np.zeros((0, o), np.float32),
            np.zeros((0, a), np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, o), np.float32),
            np.zeros(0, bool),
            np.zeros(0, bool),
            np.zeros(0, np.int64),
        )
    position, obs, action, reward, next_obs, terminated, truncated, version = zip(
        *rows, strict=True
    )
    return LogRows(
        position=np.asarray(position, np.int64),
        obs=np.frombuffer(b"".join(map(bytes, obs)), "<f4").reshape(n, o).astype(np.float32),
        action=np.frombuffer(b"".join(map(bytes, action)), "<f4").reshape(n, a).astype(np.float32),
        reward=np.asarray(reward, np.float32),
        next_obs=np.frombuffer(b"".join(map(bytes, next_obs)), "<f4")
        .reshape(n, o)
        .astype(np.float32),
        terminated=np.asarray(terminated, bool),
        truncated=np.asarray(truncated, bool),
        policy_version=np.asarray([-1 if v is None else v for v in version], np.int64),
    )
