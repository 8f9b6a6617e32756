"""The learner's checkpoint: everything needed to resume training, and nothing to unpickle.

Saved with ``torch.save`` (tensors, numbers, strings, dicts) written atomically, and loaded with
``weights_only=True``, so a tampered file cannot run code. The replay buffer is not in it: the
transition log is the source of truth and the buffer is rebuilt from it. With observation
normalisation it holds the running statistics (``obs_norm``: a count and float64 tensors); a
checkpoint without them (written before, or with normalisation off) loads all the same.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from robot_sac.fileio import write_atomic

FORMAT = "robot_sac.checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is no checkpoint yet."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a robot_sac learner checkpoint")
    return state
