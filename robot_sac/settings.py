"""Settings of every robot_sac process, from ``ROBOT_SAC_*`` environment variables or CLI flags."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A token shorter than this is guessable; secrets.token_urlsafe() makes a good one (43 characters).
MIN_TOKEN_LENGTH = 16

# The devices a process may be given: robot_sac.devices.resolve_device maps each to a torch device.
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device_name(name: str) -> str:
    """``name`` if it is one of :data:`DEVICE_CHOICES`, else a ValueError saying so."""
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"{name!r} is not a device: use {DEVICE_CHOICES}")
    return name


class Settings(BaseSettings):
    """One frozen settings object per process; the CLI fills it from flags over the environment."""

    model_config = SettingsConfigDict(env_prefix="ROBOT_SAC_", frozen=True, extra="ignore")

    # where the state lives
    data_dir: Path = Field(
        default=Path("data"), description="SQLite store, policy files, learner checkpoint."
    )
    # A secret: the URL may hold the database's password, so it is never printed or logged.
    store_url: SecretStr | None = Field(
        default=None, description="postgresql://... for a fleet; default: SQLite in data_dir."
    )
    device: str = Field(default="auto", description=f"{DEVICE_CHOICES}.")

    # the inference service
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    robot_token: SecretStr | None = None
    operator_token: SecretStr | None = None
    viewer_token: SecretStr | None = Field(
        default=None,
        description="Optional read-only token: status, robots and policies, nothing else.",
    )
    max_batch_size: int = Field(
        default=256, ge=1, description="Most observations in one forward pass."
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="Extra time to wait for more requests before a forward pass. Requests that "
        "arrive while a pass runs are batched anyway, so 0 keeps a lone robot's latency lowest.",
    )
    max_body_bytes: int = Field(
        default=2**20,
        ge=1024,
        description="Largest /v1/transitions body (and of any other route not named below). 1 MiB "
        "holds 1,000 transitions of 17 observations as JSON; a body is parsed on the event loop, "
        "so its size bounds how long one request can delay the others.",
    )
    max_act_body_bytes: int = Field(
        default=64 * 2**10, ge=1024, description="Largest /v1/act body (one observation)."
    )
    max_act_batch_body_bytes: int = Field(
        default=2**20, ge=1024, description="Largest /v1/act/batch body."
    )
    max_upload_bytes: int = Field(
        default=256 * 2**20, ge=1024, description="Largest policy upload."
    )
    body_timeout_s: float = Field(
        default=5.0,
        gt=0.0,
        le=600.0,
        description="A request body must arrive whole within this time (408 after it); a slow "
        "sender cannot hold a connection and its buffers.",
    )
    upload_timeout_s: float = Field(
        default=120.0, gt=0.0, le=3600.0, description="The same for a policy upload."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        le=600.0,
        description="A connection must deliver a request's headers within this time of opening "
        "(or of its previous answer), or it is closed.",
    )
    max_connections: int = Field(
        default=512,
        ge=1,
        description="Open connections the server keeps; one more is closed at once.",
    )
    rate_limit_per_s: float = Field(
        default=20_000.0,
        ge=0.0,
        description="Requests per second one token may make (0: no limit); beyond it 429 with "
        "Retry-After. Every robot of a fleet shares the robot token, so size it for the fleet.",
    )
    rate_limit_burst: int = Field(
        default=10_000, ge=1, description="Requests a token may make at once above the rate."
    )
    max_queued_acts: int = Field(
        default=4096,
        ge=1,
        description="Observations waiting for a forward pass; beyond it an act is answered 503 "
        "at once instead of waiting without bound.",
    )
    store_wait_s: float = Field(
        default=2.0,
        gt=0.0,
        le=60.0,
        description="How long a request waits for a busy store before it is answered 503 with "
        "Retry-After (acts go on from the loaded policy meanwhile).",
    )
    policy_poll_s: float = Field(default=0.05, gt=0.0, le=1.0, description="Registry poll period.")
    fast_path: bool = Field(
        default=True,
        description="Serve /v1/act, /v1/act/batch and /v1/transitions in front of FastAPI's "
        "routing (much faster; the answers are the same).",
    )
    inference_threads: int = Field(
        default=1, ge=0, description="Torch CPU threads for serving (0: all)."
    )

    # the learner
    publish_every: int = Field(default=1000, ge=1, description="Publish a version every N updates.")
    publish_seconds: float = Field(
        default=10.0, gt=0.0, description="...or after this many seconds, whichever comes first."
    )
    checkpoint_every: int = Field(default=10_000, ge=1, description="Checkpoint every N updates.")
    learner_threads: int = Field(
        default=0,
        ge=0,
        description="Torch CPU threads (0: all cores but one, which the service and robots need; "
        "torch's threads spin while they wait, so an oversubscribed core stalls everyone).",
    )
    cuda_graphs: bool = Field(default=True, description="Capture the update as a CUDA graph.")
    # Version retention: after each publish the learner deletes what these do not keep.
    keep_versions: int = Field(
        default=20,
        ge=1,
        description="Retention: keep the newest N policy versions; an older one is deleted "
        "unless keep_every, a pin or a replica serving it keeps it.",
    )
    keep_every: int = Field(
        default=100,
        ge=0,
        description="Retention: also keep every version whose number is a multiple of K, a "
        "sparse history (0: none).",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _check_tokens(self) -> Settings:
        robot, operator, viewer = self.robot_token, self.operator_token, self.viewer_token
        for name, token in (
            ("robot_token", robot),
            ("operator_token", operator),
            ("viewer_token", viewer),
        ):
            if token is not None and len(token.get_secret_value().strip()) < MIN_TOKEN_LENGTH:
                raise ValueError(
                    f"{name} is empty or shorter than {MIN_TOKEN_LENGTH} characters: use a long "
                    "random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'"
                )
        if (
            robot is not None
            and operator is not None
            and robot.get_secret_value() == operator.get_secret_value()
        ):
            raise ValueError(
                "robot_token and operator_token are the same: a robot could then hold, pin and "
                "upload; give the operator a token of its own"
            )
        if viewer is not None:
            if operator is None:
                raise ValueError(
                    "viewer_token needs an operator_token too: a viewer only reads what an "
                    "operator runs"
                )
            others = [t.get_secret_value() for t in (robot, operator) if t is not None]
            if viewer.get_secret_value() in others:
                raise ValueError(
                    "viewer_token is the same as another token: a viewer could then act or "
                    "operate; give it a token of its own"
                )
        return self

    def token_warnings(self) -> list[str]:
        """What a service with these tokens should warn about at start-up."""
        if self.robot_token is not None and self.operator_token is None:
            return [
                "only a robot token is set, no operator token: nobody can use /v1/admin "
                "(hold, pin, pause); set ROBOT_SAC_OPERATOR_TOKEN"
            ]
        if self.operator_token is not None and self.robot_token is None:
            return [
                "only an operator token is set: robots must use the operator token, which can "
                "also hold, pin and upload; set ROBOT_SAC_ROBOT_TOKEN"
            ]
        return []

    @property
    def auth_enabled(self) -> bool:
        return self.robot_token is not None or self.operator_token is not None

    @property
    def store_url_value(self) -> str | None:
        """The store's URL itself, for opening the store only (it may hold a password)."""
        return None if self.store_url is None else self.store_url.get_secret_value()
