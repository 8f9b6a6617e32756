"""The operator's API, typed: what ``/v1/admin/*`` takes and answers.

The service answers these models, the operator CLI reads them, the learner writes its status as
:class:`LearnerStatus`. No torch and no web framework: an operator's laptop needs only pydantic.
Answers ignore fields they do not know (a newer service may add some); requests refuse them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from robot_sac.schemas import Identifier, Version


class _Answer(BaseModel):
    # A newer service may add fields: an older CLI reads what it knows.
    model_config = ConfigDict(extra="ignore")


class HoldRequest(BaseModel):
    """``POST /v1/admin/hold`` · ``/release``: no body (or no ``robot_id``) for every robot."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"robot_id": "arm-1"}, {}]}
    )

    robot_id: Annotated[
        Identifier | None,
        Field(description="The one robot to hold or release; absent: the hold for every robot."),
    ] = None


class LearnerStatus(_Answer):
    """What the learner reports every heartbeat (stored, read by every replica).

    Losses are ``None`` for an update the learner skipped (a non-finite loss).
    """

    state: str = "running"  # running | waiting | paused | faulted (as the learner says)
    heartbeat: float = 0.0  # unix time of this report
    updates: int = 0
    updates_per_s: float = 0.0
    replay_size: int = 0
    transitions_consumed: int = 0
    log_position: int | None = None
    losses: dict[str, float | None] = {}
    alpha: float | None = None
    entropy: float | None = None
    q_mean: float | None = None
    latest_version: int | None = None
    data_age_updates: float | None = None
    utd: float | None = None
    utd_effective: float | None = None
    data_age_s: float | None = None
    env_steps: int | None = None
    learning_starts: int | None = None
    device: str | None = None
    quarantined_rows: int = 0
    quarantined_positions: list[int] = []
    skipped_updates: int = 0
    rollbacks: int = 0
    fault: str | None = None


class LearnerView(LearnerStatus):
    """The learner as the operator sees it: ``offline`` once its heartbeat is 5 s old."""

    state: Literal["running", "paused", "offline", "faulted"] = "offline"  # type: ignore[assignment]
    phase: str | None = Field(
        default=None, description="What the learner last said it was doing (e.g. waiting)."
    )
    heartbeat_age_s: float | None = None


class VersionEpisodesView(_Answer):
    version: int
    episodes: int
    mean_return: float | None
    success_rate: float | None = None
    recent_returns: list[float] = []


class TaskView(_Answer):
    name: str
    obs_dim: int
    action_dim: int
    utd: float
    learning_starts: int
    success_threshold: float | None = None


class TrafficView(_Answer):
    """This replica's traffic over the last minute (what the dashboard's tiles show)."""

    window_s: float = Field(description="The span the rates and percentiles cover.")
    acts_per_s: float
    act_latency_p50_ms: float | None
    act_latency_p99_ms: float | None
    transitions_per_s: float


class StatusResponse(_Answer):
    """``GET /v1/admin/status`` (and the answer of every control route).

    Without the store (an outage) only what this replica knows in memory is filled in:
    ``transitions``, ``transitions_by_source``, ``learner``, ``episodes``, ``task`` and
    ``latest_version`` are then null.
    """

    served_version: int | None
    mode: Literal["follow", "pinned"]
    pinned_version: int | None = None
    hold: bool = Field(description="Every robot is held (the hold for all).")
    held_robots: list[str] = Field(
        default=[], description="Robots held one by one (besides the hold for all)."
    )
    hold_persisted: bool
    learner_paused: bool
    refused_versions: dict[str, str] = {}
    store: dict[str, object] = {}
    uptime_s: float
    traffic: TrafficView | None = None
    latest_version: int | None = None
    transitions: int | None = None
    transitions_by_source: dict[str, int] | None = Field(
        default=None,
        description="The log's transitions by source: policy (the served policy acted), human "
        "(an operator's correction), demo (a demonstration); they sum to transitions.",
    )
    learner: LearnerView | None = None
    episodes: list[VersionEpisodesView] | None = None
    task: TaskView | None = None


class RobotView(_Answer):
    """One robot this replica has seen (acts) or the store has held."""

    robot_id: str
    held: bool = Field(description="Held one by one, or by the hold for every robot.")
    held_alone: bool = Field(description="Held one by one (a release of this robot ends it).")
    last_act_at: float | None = Field(description="Unix time of its last act here.")
    last_act_age_s: float | None
    last_version: int | None = Field(description="The version that answered its last act.")
    acts: int = Field(description="Acts answered here since this replica started.")
    episodes: int | None = Field(
        description="Episodes it ended (transitions logged here); null while the store cannot "
        "be read."
    )
    last_return: float | None = Field(description="The return of its last ended episode.")
    mean_return: float | None = Field(description="Mean return of its recent episodes.")


class RobotsResponse(_Answer):
    robots: list[RobotView]
    store_error: str | None = Field(
        default=None,
        description="Why the episodes are missing: the store could not be read. The robots that "
        "acted here and the holds are listed all the same.",
    )


class PolicyView(_Answer):
    version: int
    created_at: str
    updates: int
    sha256: str
    episodes: int = 0
    mean_episode_return: float | None = None
    success_rate: float | None = None
    refused: str | None = Field(
        default=None, description="Why this replica refused the version, if it did."
    )


class PoliciesResponse(_Answer):
    policies: list[PolicyView]


class UploadResponse(_Answer):
    version: Version
