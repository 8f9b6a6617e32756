"""``/v1/admin/*``: the operator's controls and views (operator token only, checked by the guard).

Every answer that needs the store and cannot have it in ``store_wait_s`` is a 503 with
``Retry-After`` (the app's handler for ``StoreError``), except the hold: it takes effect in
memory at once and answers the status it can give without the store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import ValidationError

from robot_sac.admin_schemas import (
    HoldRequest,
    LearnerStatus,
    LearnerView,
    PoliciesResponse,
    PolicyView,
    RobotsResponse,
    RobotView,
    StatusResponse,
    TaskView,
    TrafficView,
    UploadResponse,
    VersionEpisodesView,
)
from robot_sac.policy import PolicyFileError, load_policy
from robot_sac.schemas import PinRequest
from robot_sac.services.inference.activity import MAX_ROBOTS
from robot_sac.services.inference.deps import AppState, Incoming, get_state, store_refusal
from robot_sac.store import StoreError, UnknownVersion

log = logging.getLogger("robot_sac.service")

router = APIRouter(prefix="/v1/admin", tags=["admin"])
HOLD = "/v1/admin/hold"

LEARNER_OFFLINE_AFTER_S = 5.0
# How long the answer to a hold waits for the hold to be stored (it holds from its arrival).
HOLD_ANSWER_WAIT_S = 0.25


def learner_view(reported: LearnerStatus | None, now: float) -> LearnerView:
    """The learner as the operator sees it: ``offline`` once its heartbeat is 5 s old."""
    if reported is None:
        return LearnerView(state="offline")
    age = now - reported.heartbeat
    state: Literal["running", "paused", "offline", "faulted"] = "running"
    if age > LEARNER_OFFLINE_AFTER_S:
        state = "offline"
    elif reported.state == "paused":
        state = "paused"
    elif reported.state == "faulted":
        state = "faulted"
    return LearnerView(
        **reported.model_dump(exclude={"state"}),
        state=state,
        phase=reported.state,
        heartbeat_age_s=round(age, 3),
    )


def _traffic(state: AppState) -> TrafficView:
    return TrafficView(**dataclasses.asdict(state.traffic.read()))


def _from_memory(state: AppState) -> StatusResponse:
    """The part of the status this process knows without the store."""
    serving = state.serving
    control = serving.control
    return StatusResponse(
        served_version=None if serving.served is None else serving.served.version,
        mode=control.mode,  # type: ignore[arg-type]
        pinned_version=control.pinned_version,
        hold=serving.hold,
        held_robots=sorted(serving.held_robots),
        hold_persisted=serving.hold_persisted,
        learner_paused=control.learner_paused,
        refused_versions={str(v): reason for v, reason in serving.refused.items()},
        store=serving.store_health.describe(),
        uptime_s=round(time.time() - serving.started_at, 1),
        traffic=_traffic(state),
    )


def _status(state: AppState) -> StatusResponse:
    store = state.store
    latest = store.latest_policy()
    status = _from_memory(state)
    status.latest_version = None if latest is None else latest.version
    # One read of the counters: the total and its parts agree in the answer.
    by_source = store.transitions_by_source()
    status.transitions = sum(by_source.values())
    status.transitions_by_source = by_source
    status.learner = learner_view(store.learner_status(), time.time())
    status.episodes = [
        VersionEpisodesView(
            version=e.version,
            episodes=e.episodes,
            mean_return=e.mean_return,
            success_rate=e.success_rate,
            recent_returns=list(e.recent_returns),
        )
        for e in store.episodes_by_version(recent=10)[-10:]
    ]
    status.task = TaskView(
        name=state.spec.name,
        obs_dim=state.spec.obs_dim,
        action_dim=state.spec.action_dim,
        utd=state.spec.sac.utd,
        learning_starts=state.spec.sac.learning_starts,
        success_threshold=state.spec.success_threshold,
    )
    return status


async def status_of(state: AppState) -> StatusResponse:
    return await anyio.to_thread.run_sync(_status, state)


@router.get("/status", response_model=StatusResponse)
async def status(state: AppState = Depends(get_state)) -> StatusResponse:
    """Served version, mode, hold, log size, the learner (live or offline), recent returns."""
    return await status_of(state)


@router.get("/robots", response_model=RobotsResponse)
async def robots(state: AppState = Depends(get_state)) -> RobotsResponse:
    """The robots seen: those that acted here (naming themselves with ``robot_id``), those that
    ended episodes (from the store, every replica's), and those held one by one; the most
    recently active first. While the store cannot be read, the robots that acted here and the
    holds are listed without their episodes (``store_error`` says why)."""
    acted = state.robots.snapshot()
    held_alone = state.serving.held_robots
    hold_all = state.serving.hold
    store_error = None
    try:
        episodes = {
            r.robot_id: r
            for r in await anyio.to_thread.run_sync(
                lambda: state.store.episodes_by_robot(recent=10, robots=MAX_ROBOTS)
            )
        }
    except StoreError as exc:
        # In an outage the operator still needs to see who is acting and who is held.
        episodes, store_error = {}, store_refusal(exc).detail
    now = time.time()
    views: list[tuple[float, RobotView]] = []
    for robot_id in acted.keys() | episodes.keys() | held_alone:
        act, e = acted.get(robot_id), episodes.get(robot_id)
        returns = () if e is None else e.recent_returns
        view = RobotView(
            robot_id=robot_id,
            held=hold_all or robot_id in held_alone,
            held_alone=robot_id in held_alone,
            last_act_at=None if act is None else act.last_act_at,
            last_act_age_s=None if act is None else round(now - act.last_act_at, 3),
            last_version=None if act is None else act.last_version,
            acts=0 if act is None else act.acts,
            episodes=None if store_error else 0 if e is None else e.episodes,
            last_return=returns[0] if returns else None,
            mean_return=sum(returns) / len(returns) if returns else None,
        )
        seen_at = max(
            0.0 if act is None else act.last_act_at, 0.0 if e is None else e.last_ended_at
        )
        views.append((seen_at, view))
    views.sort(key=lambda pair: (-pair[0], pair[1].robot_id))
    return RobotsResponse(robots=[view for _, view in views], store_error=store_error)


@router.get("/policies", response_model=PoliciesResponse)
async def policies(state: AppState = Depends(get_state)) -> PoliciesResponse:
    """Every registered version, with the mean return of the episodes it drove."""

    def collect() -> list[PolicyView]:
        episodes = {e.version: e for e in state.store.episodes_by_version(recent=0)}
        out = []
        for record in state.store.list_policies():
            e = episodes.get(record.version)
            out.append(
                PolicyView(
                    **record.describe(),
                    episodes=0 if e is None else e.episodes,
                    mean_episode_return=None if e is None else e.mean_return,
                    success_rate=None if e is None else e.success_rate,
                    refused=state.serving.refused.get(record.version),
                )
            )
        return out

    return PoliciesResponse(policies=await anyio.to_thread.run_sync(collect))


@router.post(
    "/policies",
    response_model=UploadResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_policy(request: Request, state: AppState = Depends(get_state)) -> UploadResponse:
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
    return UploadResponse(version=version)


async def _set_control(
    state: AppState, robots: dict[str, bool] | None = None, **changes: Any
) -> StatusResponse:
    await state.serving.set_control(robots, **changes)
    return await status_of(state)


@router.post("/learner/pause", response_model=StatusResponse)
async def pause_learner(state: AppState = Depends(get_state)) -> StatusResponse:
    """Stop learning: the learner stops updating and publishing within a second."""
    return await _set_control(state, learner_paused=True)


@router.post("/learner/resume", response_model=StatusResponse)
async def resume_learner(state: AppState = Depends(get_state)) -> StatusResponse:
    return await _set_control(state, learner_paused=False)


@router.post("/policy/pin", response_model=StatusResponse)
async def pin_policy(body: PinRequest, state: AppState = Depends(get_state)) -> StatusResponse:
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


@router.post("/policy/follow", response_model=StatusResponse)
async def follow_policy(state: AppState = Depends(get_state)) -> StatusResponse:
    """Serve the newest version again, and every newer one as it is published."""
    await state.serving.set_control(mode="follow", pinned_version=None)
    await state.serving.sync()
    return await status_of(state)


def _hold_request(body: bytes) -> HoldRequest:
    """The optional body of a hold or release: none (every robot) or ``{"robot_id": ...}``."""
    if not body.strip():
        return HoldRequest()
    try:
        return HoldRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise _BadHoldBody(f"{where}: {first['msg']}") from None


class _BadHoldBody(ValueError):
    """A hold or release body that is not ``{"robot_id": "..."}``."""


async def _hold_now(state: AppState, robot_id: str | None) -> StatusResponse:
    """Hold now, then the status; without the store, what is known without it."""
    try:
        state.serving.press_hold(robot_id)
    except ValueError as exc:  # too many robots held one by one
        raise HTTPException(422, str(exc)) from exc
    if robot_id is None:
        log.warning("hold pressed: every act answers the safe action until released")
    else:
        log.warning("hold pressed for robot %r: its acts answer the safe action", robot_id)
    # The hold is in force already; a healthy store takes it within milliseconds, and then the
    # answer can say it is stored.
    await state.serving.persisted_within(HOLD_ANSWER_WAIT_S)
    try:
        return await status_of(state)
    except StoreError:  # the hold holds all the same
        return _from_memory(state)


async def press_hold(state: AppState, request: Incoming) -> bytes:
    """``POST /v1/admin/hold`` on the fast path, so the hold takes effect before any routing.

    A body that cannot be read is a 422, but only after every robot is held: whoever reached
    for the hold wanted the robots stopped, and holding more than asked is the safe error.
    """
    try:
        robot_id = _hold_request(request.body).robot_id
    except _BadHoldBody as exc:
        await _hold_now(state, None)
        raise HTTPException(
            422,
            f"the hold's body was not understood ({exc}); EVERY robot is now held. Send no body "
            'to hold every robot, or {"robot_id": "..."} for one; POST /v1/admin/release '
            "releases them",
        ) from None
    return (await _hold_now(state, robot_id)).model_dump_json().encode()


# The hold's and the release's body, read by hand (the hold on the fast path): optional.
_OPTIONAL_HOLD_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HoldRequest"}}},
    }
}


@router.post(
    "/hold",
    response_model=StatusResponse,
    openapi_extra=_OPTIONAL_HOLD_BODY,
)
async def hold(request: Request, state: AppState = Depends(get_state)) -> Response:
    """Every act (or, with ``{"robot_id": ...}``, every act of that robot) answers the task's
    safe action with ``"hold": true`` until released.

    It takes effect at once, in memory, for every act answered after it arrives, whatever the
    store is doing; it is then stored (``hold_persisted`` in the status says when), so other
    replicas and a restarted service hold too. A robot is held one by one only in the acts that
    name it (``robot_id``). A body that cannot be read holds every robot, then answers 422; so
    does a hold refused after its token was accepted (413, 415, 408, 400), and the hold is never
    rate-limited.
    A software hold: it does not replace a robot's hardware emergency stop.
    """
    data = await press_hold(state, Incoming(await request.body()))
    return Response(data, media_type="application/json")


@router.post(
    "/release",
    response_model=StatusResponse,
    openapi_extra=_OPTIONAL_HOLD_BODY,
)
async def release(request: Request, state: AppState = Depends(get_state)) -> StatusResponse:
    """End the hold for every robot (no body), or one robot's own hold (``{"robot_id": ...}``),
    once the store has it (503 with Retry-After while the store is busy).

    The hold for every robot and a robot's own hold are separate: releasing every robot leaves
    the robots held one by one held (the status lists them), and releasing one robot does not
    release it from a hold for every robot. Nothing is released that was not named.
    """
    try:
        robot_id = _hold_request(await request.body()).robot_id
    except _BadHoldBody as exc:
        raise HTTPException(
            422,
            f"the release's body was not understood ({exc}); nothing was released. Send no "
            'body to release the hold for every robot, or {"robot_id": "..."} for one robot',
        ) from None
    if robot_id is None:
        status = await _set_control(state, hold=False)
        log.warning("hold released (robots held one by one stay held: %d)", len(status.held_robots))
    else:
        status = await _set_control(state, robots={robot_id: False})
        log.warning("hold released for robot %r", robot_id)
    return status
