"""The safety envelope: the one place that turns a policy's output into an action a robot may take.

Every serving path (the numpy path for a few rows, torch for batches and GPUs, and a hold) goes
through :class:`SafetyEnvelope`, which gives three guarantees for each answered row:

1. unit actions in ``[-1, 1]`` are mapped affinely onto the task's ``[low, high]``;
2. a row holding any non-finite value is replaced, whole, by the task's safe action (and
   reported, so the service can count it);
3. every value is clipped into ``[low, high]`` (float32 rounding of the affine map can step one
   ulp outside).

A hold answers the safe action without the policy: :meth:`SafetyEnvelope.held`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from robot_sac.schemas import TaskSpec


def _frozen(values: np.ndarray) -> np.ndarray:
    values.setflags(write=False)
    return values


class SafetyEnvelope:
    """A task's action bounds and safe action, applied to unit actions in numpy or torch.

    Args:
        low: the lower bounds, ``(action_dim,)``, finite in float32.
        high: the upper bounds, ``(action_dim,)``, each above its lower bound in float32.
        safe_action: what a non-finite row and a hold answer, ``(action_dim,)``, finite and inside
            the bounds; default: zeros clipped into the bounds.

    Raises:
        ValueError: for bounds or a safe action that break those rules.

    Attributes:
        low, high, safe_action: float32 arrays ``(action_dim,)``, read-only.
        action_dim: the number of action dimensions.
    """

    def __init__(
        self,
        low: Sequence[float] | np.ndarray,
        high: Sequence[float] | np.ndarray,
        safe_action: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        low64 = np.asarray(low, dtype=np.float64)
        high64 = np.asarray(high, dtype=np.float64)
        if low64.ndim != 1 or low64.shape != high64.shape or low64.size == 0:
            raise ValueError(
                f"action bounds must be two vectors of one length, got shapes {low64.shape} "
                f"and {high64.shape}"
            )
        with np.errstate(over="ignore"):  # a bound beyond float32 becomes inf: refused below
            low32, high32 = low64.astype(np.float32), high64.astype(np.float32)
        if not (np.isfinite(low32).all() and np.isfinite(high32).all()):
            raise ValueError("action bounds must be finite in float32")
        if not (low32 < high32).all():
            raise ValueError("each action_low must be below its action_high in float32")
        if safe_action is None:
            safe64 = np.clip(np.zeros_like(low64), low64, high64)
        else:
            safe64 = np.asarray(safe_action, dtype=np.float64)
            if safe64.shape != low64.shape:
                raise ValueError(
                    f"safe_action must have {low64.size} entries, got shape {safe64.shape}"
                )
            inside = (low64 <= safe64) & (safe64 <= high64)  # False for NaN too
            if not (np.isfinite(safe64).all() and inside.all()):
                raise ValueError(
                    f"safe_action {safe64.tolist()} must be finite and inside the action bounds"
                )
        self.action_dim = int(low64.size)
        self.low, self.high = _frozen(low32), _frozen(high32)
        # Rounding is monotonic, so a safe action inside the float64 bounds stays inside in float32.
        self.safe_action = _frozen(safe64.astype(np.float32))
        # The affine map unit -> center + unit * half_range, halved before subtracting so that
        # bounds near float32's largest value cannot overflow.
        self._center = _frozen(high32 / 2 + low32 / 2)
        self._half_range = _frozen(high32 / 2 - low32 / 2)
        self._tensors: dict[torch.device, tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = {}

    @classmethod
    def from_spec(cls, spec: TaskSpec) -> SafetyEnvelope:
        """The envelope of a task: its ``action_low``, ``action_high`` and ``safe_action``."""
        return cls(spec.action_low, spec.action_high, spec.safe_action)

    def with_safe_action(self, safe_action: Sequence[float] | np.ndarray | None) -> SafetyEnvelope:
        """The same bounds with another safe action (``None``: the default)."""
        return SafetyEnvelope(self.low, self.high, safe_action)

    def held(self, rows: int) -> np.ndarray:
        """What a hold answers: ``(rows, action_dim)`` float32, every row the safe action.

        A new, writable array on each call.
        """
        return np.repeat(self.safe_action[None, :], rows, axis=0)

    def to_robot_numpy(self, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Robot actions for unit actions, in numpy.

        Args:
            unit: ``(B, action_dim)`` float32, normally in ``[-1, 1]``; any value (NaN, inf, huge)
                is handled.

        Returns:
            ``(actions, replaced)``: ``(B, action_dim)`` float32, finite and inside
            ``[low, high]``; ``(B,)`` bool, True where a row was not finite after mapping and the
            safe action was answered instead.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # handled below, not warned about
            action = unit * self._half_range
            action += self._center
        finite = np.isfinite(action).all(axis=1)
        if not finite.all():
            action[~finite] = self.safe_action
        np.minimum(action, self.high, out=action)
        np.maximum(action, self.low, out=action)
        return action, ~finite

    def to_robot_tensor(self, unit: Tensor) -> tuple[Tensor, Tensor]:
        """Robot actions for unit actions, in torch, on ``unit``'s device.

        Args:
            unit: ``(B, action_dim)`` float32, normally in ``[-1, 1]``; any value is handled.

        Returns:
            ``(actions, replaced)``: ``(B, action_dim)`` float32 on ``unit``'s device, finite and
            inside ``[low, high]``; ``(B,)`` bool, as :meth:`to_robot_numpy`.
        """
        center, half_range, low, high, safe = self._on(unit.device)
        action = torch.addcmul(center, unit, half_range)
        finite = torch.isfinite(action)
        if bool(finite.all()):  # the usual case: one check for the whole batch
            return torch.clamp(action, low, high), torch.zeros_like(finite[..., 0])
        bad = ~finite.all(-1)
        action = torch.where(bad.unsqueeze(-1), safe, action)
        return torch.clamp(action, low, high), bad

    def safe_action_tensor(self, device: str | torch.device = "cpu") -> Tensor:
        """The safe action as a float32 tensor ``(action_dim,)`` on ``device``."""
        return self._on(torch.device(device))[4]

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        # Copies on each device, made once: no host-to-device transfer per call.
        cached = self._tensors.get(device)
        if cached is None:
            center, half_range, low, high, safe = (
                torch.tensor(a, device=device)
                for a in (self._center, self._half_range, self.low, self.high, self.safe_action)
            )
            cached = (center, half_range, low, high, safe)
            self._tensors[device] = cached
        return cached
