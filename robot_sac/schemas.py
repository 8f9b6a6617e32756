"""Types that cross process boundaries: the task spec and the HTTP API v1 wire schemas.

Imports no torch: a robot's computer needs only pydantic to describe its task and talk to the
service.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robot_sac.config import SACConfig


class TaskSpec(BaseModel):
    """What a deployment serves: observation size, action bounds, a safe action and SAC settings.

    ``safe_action`` defaults to zeros clipped into the bounds: the action a software hold answers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "task"
    obs_dim: int = Field(ge=1)
    action_low: tuple[float, ...] = Field(min_length=1)
    action_high: tuple[float, ...] = Field(min_length=1)
    safe_action: tuple[float, ...] | None = None
    success_threshold: float | None = Field(
        default=None,
        description="An episode whose last reward is at least this counts as a success "
        "(reported per policy version); None: the task has no notion of success.",
    )
    obs_bound: float | None = Field(
        default=None,
        gt=0.0,
        description="If set, the largest magnitude an observation value may have: a transition "
        "whose obs or next_obs holds a value beyond it is refused at ingest (422). A glitching "
        "sensor's 3.4e38 is finite, but it would poison learning.",
    )
    reward_bound: float | None = Field(
        default=None,
        gt=0.0,
        description="If set, the largest magnitude a reward may have; beyond it a transition is "
        "refused at ingest (422).",
    )
    sac: SACConfig = SACConfig()

    @model_validator(mode="after")
    def _check_bounds(self) -> TaskSpec:
        low, high = self.action_low, self.action_high
        if len(low) != len(high):
            raise ValueError(f"action_low has {len(low)} entries but action_high has {len(high)}")
        for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"action bounds must be finite (dimension {i}: [{lo}, {hi}])")
            if not lo < hi:
                raise ValueError(
                    f"action_low must be below action_high (dimension {i}: {lo} >= {hi})"
                )
        if self.safe_action is None:
            safe = tuple(min(max(0.0, lo), hi) for lo, hi in zip(low, high, strict=True))
            object.__setattr__(self, "safe_action", safe)
        else:
            if len(self.safe_action) != len(low):
                raise ValueError(
                    f"safe_action has {len(self.safe_action)} entries, expected {len(low)}"
                )
            for i, (s, lo, hi) in enumerate(zip(self.safe_action, low, high, strict=True)):
                if not (math.isfinite(s) and lo <= s <= hi):
                    raise ValueError(f"safe_action[{i}]={s} is not inside [{lo}, {hi}]")
        return self

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @classmethod
    def from_file(cls, path: str | Path) -> TaskSpec:
        """Read a task file (``.json`` or ``.toml``) describing a real robot."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise ValueError(f"task file {path} must end in .json or .toml")
        text = path.read_text()
        data: dict[str, Any]
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
        data.setdefault("name", path.stem)
        return cls.model_validate(data)


# --- HTTP API v1 wire schemas -------------------------------------------------------------------
# Observations and actions are flat lists of finite numbers: strict floats refuse strings and
# booleans, and NaN or infinity (which Python's JSON parser accepts) are refused too.

# Values are stored as float32: a finite number beyond its range would overflow to infinity.
FLOAT32_MAX = 3.4028234663852886e38
FiniteFloat = Annotated[
    float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
]
# Version numbers and steps fit a signed 64-bit database integer.
Version = Annotated[int, Field(strict=True, ge=0, le=2**62)]
Vector = Annotated[list[FiniteFloat], Field(min_length=1, max_length=65_536)]
Identifier = Annotated[str, Field(min_length=1, max_length=128)]
# Where a transition came from: the served policy acting (the default), an operator's correction
# (a human took over), or a demonstration. The learner tells them apart (RLPD's sampling); the
# log keeps each as a small code (robot_sac.store.records.SOURCE_CODES).
Source = Literal["policy", "human", "demo"]
SOURCES: tuple[str, ...] = get_args(Source)


class _Request(BaseModel):
    # A misspelt field must not be ignored silently on a robot: refuse unknown fields.
    model_config = ConfigDict(extra="forbid")


_OBS = "The robot's observation now: obs_dim finite numbers, as the task defines them."
_DETERMINISTIC = (
    "true: the policy's mean action (evaluation); false (default): a sample, which explores."
)
_ROBOT_ID = "Which robot asks (optional): names it in the status and the operator's views."


class ActRequest(_Request):
    """``POST /v1/act``: one observation, one action back."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"obs": [0.12, -0.4, 0.05], "robot_id": "arm-1"}]},
    )

    obs: Annotated[Vector, Field(description=_OBS)]
    deterministic: Annotated[bool, Field(strict=True, description=_DETERMINISTIC)] = False
    robot_id: Annotated[Identifier | None, Field(description=_ROBOT_ID)] = None


class ActResponse(BaseModel):
    action: list[float]
    policy_version: int
    hold: bool


class ActBatchRequest(_Request):
    """``POST /v1/act/batch``: several observations (robots, or one robot's candidates) at once."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"obs": [[0.12, -0.4, 0.05], [0.0, 0.3, -0.1]]}]},
    )

    obs: Annotated[
        list[Vector],
        Field(
            min_length=1, max_length=4096, description="1 to 4096 observations, each as in /v1/act."
        ),
    ]
    deterministic: Annotated[bool, Field(strict=True, description=_DETERMINISTIC)] = False
    robot_id: Annotated[Identifier | None, Field(description=_ROBOT_ID)] = None


class ActBatchResponse(BaseModel):
    actions: list[list[float]]
    policy_version: int
    hold: bool


class Transition(_Request):
    """One step of one robot; ``(robot_id, episode_id, step)`` identifies it (idempotency key)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "robot_id": "arm-1",
                    "episode_id": "2026-11-30T14:02:11-0001",
                    "step": 17,
                    "obs": [0.12, -0.4, 0.05],
                    "action": [0.3, -0.1],
                    "reward": -0.25,
                    "next_obs": [0.13, -0.38, 0.05],
                    "terminated": False,
                    "truncated": False,
                    "policy_version": 7,
                },
                {
                    "robot_id": "arm-1",
                    "episode_id": "2026-11-30T14:09:40-0002",
                    "step": 0,
                    "obs": [0.3, -0.2, 0.0],
                    "action": [-0.5, 0.2],
                    "reward": -0.6,
                    "next_obs": [0.28, -0.19, 0.0],
                    "terminated": False,
                    "truncated": False,
                    "source": "human",
                },
            ]
        },
    )

    robot_id: Annotated[Identifier, Field(description="The robot that took the step.")]
    episode_id: Annotated[
        Identifier, Field(description="The episode, unique for this robot (a time stamp will do).")
    ]
    step: Annotated[
        int,
        Field(
            strict=True,
            ge=0,
            le=2**62,
            description="The step's index in its episode (0 first). With robot_id and "
            "episode_id it is the key: a retry with the same content is a duplicate, with "
            "other content a 409.",
        ),
    ]
    obs: Annotated[Vector, Field(description="The observation the action was chosen for.")]
    action: Annotated[
        Vector, Field(description="The action the robot took, in its own units (action_dim).")
    ]
    reward: Annotated[FiniteFloat, Field(description="The reward the step earned.")]
    next_obs: Annotated[Vector, Field(description="The observation after the step.")]
    terminated: Annotated[
        bool,
        Field(strict=True, description="The task ended (success or failure): no bootstrapping."),
    ]
    truncated: Annotated[
        bool,
        Field(
            strict=True,
            description="The episode was cut short (time limit, operator stop): the learner "
            "bootstraps through it.",
        ),
    ]
    policy_version: Annotated[
        Version | None,
        Field(description="The version whose answer the robot acted on (from /v1/act)."),
    ] = None
    source: Annotated[
        Source,
        Field(
            description="Who chose the action: 'policy' (the served policy, the default), "
            "'human' (an operator's correction, taking over from the policy) or 'demo' (a "
            "demonstration). Part of the content a retry is compared by: a stored key keeps "
            "its source.",
        ),
    ] = "policy"


class TransitionsRequest(_Request):
    """``POST /v1/transitions``: a batch of steps, stored durably before the answer."""

    transitions: Annotated[
        list[Transition],
        Field(min_length=1, max_length=10_000, description="1 to 10,000 steps, any robots."),
    ]


class TransitionsResponse(BaseModel):
    accepted: int
    duplicates: int


class PinRequest(_Request):
    version: Version


class PolicyDescription(BaseModel):
    """``GET /v1/policy``: the version being served."""

    version: int
    created_at: str
    obs_dim: int
    action_dim: int
    action_low: list[float]
    action_high: list[float]
    sha256: str
    updates: int
    family: str
