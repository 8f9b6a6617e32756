"""``/v1/admin/*``: the operator's controls and views (operator token only, checked by the guard).

Every answer that needs the store and cannot have it in ``store_wait_s`` is a 503 with
``Retry-After`` (the app's handler for ``StoreError``), except the hold: it takes effect in
memory at once and answers the status it can give without the store.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request

from robot_sac.policy import PolicyFileError, load_policy
from robot_sac.schemas import PinRequest
from robot_sac.services.inference.deps import AppState, Incoming, get_state
from robot_sac.store import StoreError, UnknownVersion

log = logging.getLogger("robot_sac.service")

router = APIRouter(prefix="/v1/admin", tags=["admin"])
HOLD = "/v1/admin/hold"

LEARNER_OFFLINE_AFTER_S = 5.0
# How long the answer to a hold waits for the hold to be stored (it holds from its arrival).
HOLD_ANSWER_WAIT_S = 0.25


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def learner_view(status: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The learner as the operator sees it: ``offline`` once its heartbeat is 5 s old."""
    if status is None:
        return {
            "state": "offline",
            "updates": 0,
            "updates_per_s": 0.0,
            "replay_size": 0,
            "losses": {},
            "alpha": None,
            "heartbeat_age_s": None,
        }
    age = now - float(status.get("heartbeat", 0.0))
    reported = status.get("state", "running")
    state = (
        "offline"
        if age > LEARNER_OFFLINE_AFTER_S
        else (reported if reported in ("paused", "faulted") else "running")
    )
    # A skipped update's losses can be infinite (the learner skipped that step); JSON has no
    # infinity, so they are shown as null.
    status = {k: _finite_or_none(v) for k, v in status.items()}
    view = {
        "updates": 0,
        "updates_per_s": 0.0,
        "replay_size": 0,
        "losses": {},
        "alpha": None,
        **{k: v for k, v in status.items() if k not in ("heartbeat", "state")},
    }
    return {"state": state, "phase": reported, "heartbeat_age_s": round(age, 3), **view}


def _from_memory(state: AppState) -> dict[str, Any]:
    """The part of the status this process knows without the store."""
    serving = state.serving
    control = serving.control
    return {
        "served_version": None if serving.served is None else serving.served.version,
        "mode": control.mode,
        "pinned_version": control.pinned_version,
        "hold": serving.hold,
        "hold_persisted": serving.hold_persisted,
        "learner_paused": control.learner_paused,
        "refused_versions": {str(v): reason for v, reason in serving.refused.items()},
        "store": serving.store_health.describe(),
        "uptime_s": round(time.time() - serving.started_at, 1),
    }


def _status(state: AppState) -> dict[str, Any]:
    store = state.store
    latest = store.latest_policy()
    return {
        **_from_memory(state),
        "latest_version": None if latest is None else latest.version,
        "transitions": store.transition_count(),
        "learner": learner_view(store.learner_status(), time.time()),
        "episodes": [
            {
                "version": e.version,
                "episodes": e.episodes,
                "mean_return": e.mean_return,
                "success_rate": e.success_rate,
                "recent_returns": list(e.recent_returns),
            }
            for e in store.episodes_by_version(recent=10)[-10:]
        ],
        "task": {
            "name": state.spec.name,
            "obs_dim": state.spec.obs_dim,
            "action_dim": state.spec.action_dim,
            "utd": state.spec.sac.utd,
            "learning_starts": state.spec.sac.learning_starts,
            "success_threshold": state.spec.success_threshold,
        },
    }


async def status_of(state: AppState) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(_status, state)


@router.get("/status")
async def status(state: AppState = Depends(get_state)) -> dict[str, Any]:
    """Served version, mode, hold, log size, the learner (live or offline), recent returns."""
    return await status_of(state)


@router.get("/policies")
async def policies(state: AppState = Depends(get_state)) -> dict[str, Any]:
    """Every registered version, with the mean return of the episodes it drove."""

    def collect() -> list[dict[str, Any]]:
        episodes = {e.version: e for e in state.store.episodes_by_version(recent=0)}
        out = []
        for record in state.store.list_policies():
            e = episodes.get(record.version)
            out.append(
                {
                    **record.describe(),
                    "episodes": 0 if e is None else e.episodes,
                    "mean_episode_return": None if e is None else e.mean_return,
                    "success_rate": None if e is None else e.success_rate,
                    "refused": state.serving.refused.get(record.version),
                }
            )
        return out

    return {"policies": await anyio.to_thread.run_sync(collect)}


@router.post(
    "/policies",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_policy(request: Request, state: AppState = Depends(get_state)) -> dict[str, int]:
    """Register a version file trained elsewhere, after the same checks as any version."""
    data = await request.body()
    if not data:
        raise HTTPException(422, "the body must be a version file (safetensors bytes)")

    def validate_and_register() -> int:
        # The task is checked from the metadata, the tensors from the header, before anything
        # is built from the file.
        load_policy(data, device="cpu", spec=state.spec)
        record = state.store.register_policy(data)
        assert record is not None
        return record.version

    try:
        version = await anyio.to_thread.run_sync(validate_and_register)
    except PolicyFileError as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"version": version}


async def _set_control(state: AppState, **changes: Any) -> dict[str, Any]:
    await state.serving.set_control(**changes)
    return await status_of(state)


@router.post("/learner/pause")
async def pause_learner(state: AppState = Depends(get_state)) -> dict[str, Any]:
    """Stop learning: the learner stops updating and publishing within a second."""
    return await _set_control(state, learner_paused=True)


@router.post("/learner/resume")
async def resume_learner(state: AppState = Depends(get_state)) -> dict[str, Any]:
    return await _set_control(state, learner_paused=False)


@router.post("/policy/pin")
async def pin_policy(body: PinRequest, state: AppState = Depends(get_state)) -> dict[str, Any]:
    """Serve this version and stop following new ones (a rollback); at once."""
    record = await anyio.to_thread.run_sync(state.store.get_policy, body.version)
    if record is None:
        raise HTTPException(404, f"policy version {body.version} does not exist")
    if body.version in state.serving.refused:
        raise HTTPException(
            422, f"version {body.version} failed validation: {state.serving.refused[body.version]}"
        )
    previous = state.serving.control
    try:
        await state.serving.set_control(mode="pinned", pinned_version=body.version)
    except UnknownVersion as exc:  # deleted by retention since the look-up
        raise HTTPException(404, f"policy version {body.version} does not exist") from exc
    swapped, reason = await state.serving.swap_to(body.version)
    if not swapped:
        await state.serving.set_control(mode=previous.mode, pinned_version=previous.pinned_version)
        if await anyio.to_thread.run_sync(state.store.get_policy, body.version) is None:
            # deleted by retention between the look-up and the swap
            raise HTTPException(404, f"policy version {body.version} does not exist")
        raise HTTPException(422, f"version {body.version} failed validation: {reason}")
    return await status_of(state)


@router.post("/policy/follow")
async def follow_policy(state: AppState = Depends(get_state)) -> dict[str, Any]:
    """Serve the newest version again, and every newer one as it is published."""
    await state.serving.set_control(mode="follow", pinned_version=None)
    await state.serving.sync()
    return await status_of(state)


async def _hold_now(state: AppState) -> dict[str, Any]:
    """Hold now, then the status; without the store, what is known without it."""
    state.serving.press_hold()
    log.warning("hold pressed: every act answers the safe action until released")
    # The hold is in force already; a healthy store takes it within milliseconds, and then the
    # answer can say it is stored.
    await state.serving.persisted_within(HOLD_ANSWER_WAIT_S)
    try:
        return await status_of(state)
    except StoreError:  # the hold holds all the same
        return _from_memory(state)


async def press_hold(state: AppState, request: Incoming) -> bytes:
    """``POST /v1/admin/hold`` on the fast path, so the hold takes effect before any routing."""
    return json.dumps(await _hold_now(state)).encode()


@router.post("/hold")
async def hold(state: AppState = Depends(get_state)) -> dict[str, Any]:
    """Every act answers the task's safe action with ``"hold": true`` until released.

    Every robot: a body naming one robot (``{"robot_id": ...}``) holds them all, the safe reading
    until one robot's hold is available.

    It takes effect at once, in memory, for every act answered after it arrives, whatever the
    store is doing; it is then stored (``hold_persisted`` in the status says when), so other
    replicas and a restarted service hold too. A software hold: it does not replace a robot's
    hardware emergency stop.
    """
    return await _hold_now(state)


@router.post("/release")
async def release(request: Request, state: AppState = Depends(get_state)) -> dict[str, Any]:
    """End the hold, once the store has it (503 with Retry-After while the store is busy).

    The hold is for every robot in this version: a body naming one robot is refused rather than
    read as a release of all of them.
    """
    if await request.body():
        raise HTTPException(
            422,
            "a release takes no body: the hold is for every robot in this version (one robot's "
            "hold and release are not available yet); POST /v1/admin/release without a body "
            "releases every robot",
        )
    status = await _set_control(state, hold=False)
    log.warning("hold released")
    return status
