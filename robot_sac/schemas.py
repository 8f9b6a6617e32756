"""Types that cross process boundaries: the task spec (and, later, the HTTP wire schemas).

Imports no torch: a robot's computer needs only pydantic to describe its task.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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
