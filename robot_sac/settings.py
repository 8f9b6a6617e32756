"""Settings of every robot_sac process, from ``ROBOT_SAC_*`` environment variables or CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """One frozen settings object per process; the CLI fills it from flags over the environment."""

    model_config = SettingsConfigDict(env_prefix="ROBOT_SAC_", frozen=True, extra="ignore")

    # where the state lives
    data_dir: Path = Field(
        default=Path("data"), description="SQLite store, policy files, learner checkpoint."
    )
    store_url: str | None = Field(
        default=None, description="postgresql://... for a fleet; default: SQLite in data_dir."
    )
    device: str = Field(default="auto", description="auto, cpu or cuda[:N].")

    # the inference service
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    robot_token: SecretStr | None = None
    operator_token: SecretStr | None = None
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
        default=8 * 2**20, ge=1024, description="Largest JSON request body."
    )
    max_upload_bytes: int = Field(
        default=256 * 2**20, ge=1024, description="Largest policy upload."
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

    @property
    def auth_enabled(self) -> bool:
        return self.robot_token is not None or self.operator_token is not None
