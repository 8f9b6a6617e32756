"""The row codec: transitions to the log's rows and back, checked, and the comparison that tells
an identical retry from a conflicting one. Shared by every backend, so both store exactly the
same bytes and refuse exactly the same input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pydantic

from robot_sac.admin_schemas import LearnerStatus
from robot_sac.schemas import FLOAT32_MAX, TaskSpec
from robot_sac.store.records import (
    SOURCE_CODES,
    SOURCE_NAMES,
    LogRows,
    RobotEpisodes,
    StoreError,
    TransitionConflict,
    TransitionKey,
    TransitionLike,
)


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
    """Transitions as row tuples for the transitions table, vectors as float32 bytes: ``(robot_id,
    episode_id, step, obs, action, reward, next_obs, terminated, truncated, policy_version,
    source code, received_at)``; :data:`CONTENT` is the part a retry is compared by.

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
    codes = SOURCE_CODES
    for t, o, a, n in zip(transitions, obs, action, next_obs, strict=True):
        if not (math.isfinite(t.reward) and abs(t.reward) <= reward_limit):
            raise _bad_reward(t, spec)
        source = codes.get(t.source)
        if source is None:
            raise ValueError(
                f"transition {t.robot_id}/{t.episode_id}/{t.step}: source must be one of "
                f"{', '.join(SOURCE_CODES)}, not {t.source!r}"
            )
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
                source,
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


# The content of a transition row: ``encode_rows``' columns 3 to 10, compared to find conflicts.
# The source is content: a stored key keeps its source, and a retry that says another is refused.
CONTENT_FIELDS = (
    "obs",
    "action",
    "reward",
    "next_obs",
    "terminated",
    "truncated",
    "policy_version",
    "source",
)
CONTENT = slice(3, 3 + len(CONTENT_FIELDS))
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
    if name == "source":  # codes, in words
        return SOURCE_NAMES[first], SOURCE_NAMES[second]
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
    """Rows ``(position, obs, action, reward, next_obs, terminated, truncated, version,
    source code)``."""
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
            np.zeros(0, np.uint8),
        )
    position, obs, action, reward, next_obs, terminated, truncated, version, source = zip(
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
        source=np.asarray(source, np.uint8),
    )


def source_counts(rows: Sequence[Sequence[Any]]) -> dict[int, int]:
    """How many of the encoded ``rows`` each source code has (codes without rows left out): what
    a commit adds to the log's counts by source."""
    counts: dict[int, int] = {}
    for r in rows:
        counts[r[10]] = counts.get(r[10], 0) + 1
    return counts


def counts_by_source(counts: Mapping[int, int]) -> dict[str, int]:
    """Counts by source code as counts by source name, every source named (0 if it has none)."""
    return {name: int(counts.get(code, 0)) for name, code in SOURCE_CODES.items()}


# The tally "version" of steps that an operator or a demonstration chose (source human or demo):
# an episode with any such step is credited to no version, so a version's success never counts
# what the expert did for it.
EXPERT_TALLY = -2


def episode_tallies(rows: Sequence[Sequence[Any]]) -> dict[tuple[str, str, int], list[Any]]:
    """What encoded rows add to their episodes' tallies, by ``(robot_id, episode_id, version)``:
    ``[steps, reward sum, ended (0/1)]``. Versions are >= 0, so -1 stands for "the robot did
    not say" (as in :class:`LogRows`; a NULL key column would match no upsert) and
    :data:`EXPERT_TALLY` for a step of another source than the policy."""
    policy = SOURCE_CODES["policy"]
    tallies: dict[tuple[str, str, int], list[Any]] = {}
    for r in rows:
        version = EXPERT_TALLY if r[10] != policy else -1 if r[9] is None else r[9]
        key = (r[0], r[1], version)
        ends = 1 if r[7] or r[8] else 0
        tally = tallies.get(key)
        if tally is None:
            tallies[key] = [1, r[5], ends]
        else:
            tally[0] += 1
            tally[1] += r[5]
            tally[2] |= ends
    return tallies


CONTROL_FIELDS = frozenset(("learner_paused", "mode", "pinned_version", "hold"))


def check_control_changes(changes: dict[str, Any]) -> None:
    """Refuse (``ValueError``) a control change naming an unknown field or mode."""
    unknown = set(changes) - CONTROL_FIELDS
    if unknown:
        raise ValueError(f"unknown control fields {sorted(unknown)}")
    if "mode" in changes and changes["mode"] not in ("follow", "pinned"):
        raise ValueError("mode must be 'follow' or 'pinned'")


# Every robot's newest episodes, for episodes_by_robot (portable SQL: SQLite and PostgreSQL);
# parameters: how many returns per robot.
ROBOT_EPISODES_SQL = (
    "SELECT robot_id, n, episode_return, ended_at FROM ("
    "SELECT robot_id, episode_return, ended_at, COUNT(*) OVER (PARTITION BY robot_id) AS n, "
    "ROW_NUMBER() OVER (PARTITION BY robot_id ORDER BY ended_at DESC, episode_id DESC) AS rn "
    "FROM episodes) AS e WHERE rn <= {p} ORDER BY robot_id, rn"
)


def robot_episodes(rows: Sequence[tuple[Any, ...]], robots: int) -> list[RobotEpisodes]:
    """Fold :data:`ROBOT_EPISODES_SQL`'s rows into one record per robot; the ``robots`` whose
    last episode ended latest, most recent first."""
    out: dict[str, RobotEpisodes] = {}
    for robot_id, n, episode_return, ended_at in rows:
        seen = out.get(robot_id)
        if seen is None:
            out[robot_id] = RobotEpisodes(robot_id, int(n), (float(episode_return),), ended_at)
        else:
            returns = (*seen.recent_returns, float(episode_return))
            out[robot_id] = dataclasses.replace(seen, recent_returns=returns)
    return sorted(out.values(), key=lambda r: -r.last_ended_at)[:robots]


# Robots that may be held one by one (beyond it, hold them all): the set is read on every act.
MAX_HELD_ROBOTS = 4096


def check_robot_holds(robots: Mapping[str, bool] | None) -> None:
    """Refuse (``ValueError``) a change of robot holds that is not ``{robot_id: held}``."""
    for robot_id, held in (robots or {}).items():
        if not isinstance(robot_id, str) or not 1 <= len(robot_id) <= 128:
            raise ValueError("a robot id is a string of 1 to 128 characters")
        if not isinstance(held, bool):
            raise ValueError(f"robot {robot_id!r}: held must be true or false")


class PendingBatch:
    """One caller's encoded batch waiting in a backend's group commit; ``accepted`` (rows it
    stored) or ``error`` are set before ``finished``."""

    __slots__ = ("accepted", "error", "finished", "rows")

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.accepted = 0
        self.finished = threading.Event()
        self.error: BaseException | None = None


def encode_learner_status(status: LearnerStatus) -> str:
    """The learner's status row as JSON, without its heartbeat (the store stamps the time).

    JSON has no infinity: a non-finite figure (a skipped update's loss) is written as null.
    """
    return status.model_dump_json(exclude={"heartbeat"})


def decode_learner_status(text: str, heartbeat: float) -> LearnerStatus:
    """The stored row back as a :class:`LearnerStatus` written at ``heartbeat``.

    A row this version cannot read (written by an incompatible learner) is reported as a faulted
    learner that says so, rather than failing every status read.
    """
    try:
        status = LearnerStatus.model_validate_json(text)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the row"
        return LearnerStatus(
            state="faulted",
            heartbeat=heartbeat,
            fault=f"unreadable learner status ({where}: {first['msg']})",
        )
    status.heartbeat = heartbeat
    return status
