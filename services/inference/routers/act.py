"""``POST /v1/act`` and ``POST /v1/act/batch``: actions from the served policy.

The act path is the service's hottest, so it is served by the fast path
(:mod:`robot_sac.services.inference.fast_path`), a plain ASGI layer in front of the framework, at
a fraction of FastAPI's per-request cost. The FastAPI routes below document the two endpoints in
the OpenAPI schema and serve them when the fast path is off; both run :func:`answer`. The token
and the body's size and type were checked by the guard before either runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from robot_sac.schemas import ActBatchRequest, ActBatchResponse, ActRequest, ActResponse
from robot_sac.services.inference.batcher import DeadlineMissed, QueueFull
from robot_sac.services.inference.deps import AppState, Incoming, incoming
from robot_sac.services.inference.wire import BodyError, read_act, read_act_batch

router = APIRouter(prefix="/v1", tags=["act"])
ACT, ACT_BATCH = "/v1/act", "/v1/act/batch"
RETRY_SOON = {"Retry-After": "1"}


def _obs_array(rows: Sequence[Sequence[float]], obs_dim: int, single: bool) -> np.ndarray:
    for i, row in enumerate(rows):
        if len(row) != obs_dim:
            where = "obs" if single else f"obs[{i}]"
            raise HTTPException(
                422, f"{where} has {len(row)} values; the task's observations have {obs_dim}"
            )
    return np.asarray(rows, dtype=np.float32)


async def answer(state: AppState, request: Incoming, path: str = ACT) -> bytes:
    """The work of both act endpoints; the JSON answer's bytes.

    Raises ``HTTPException`` or pydantic's ``ValidationError`` for anything the client got wrong,
    503 when the act queue is full, 504 when ``X-Deadline-Ms`` cannot be met.
    """
    start = time.perf_counter()
    body = request.body
    if not body:
        raise HTTPException(422, "the request needs a JSON body")
    try:
        parsed = read_act(body) if path == ACT else read_act_batch(body)
    except BodyError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    single = path == ACT
    rows: Any = [parsed.obs] if single else parsed.obs
    obs = _obs_array(rows, state.spec.obs_dim, single)
    try:
        actions, version, hold = await state.batcher.act(
            obs, parsed.deterministic, request.deadline, parsed.robot_id
        )
    except QueueFull as exc:
        raise HTTPException(503, str(exc), RETRY_SOON) from exc
    except DeadlineMissed as exc:
        raise HTTPException(504, str(exc)) from exc
    if not hold and state.serving.holds(parsed.robot_id):
        # A hold that arrived while this act was computed: it is answered after the hold, so it
        # answers the safe action. Nothing awaits between here and the answer going out.
        actions, hold = state.batcher.held(obs.shape[0]), True
    if request.deadline is not None and time.monotonic() > request.deadline:
        state.metrics.acts_late.inc()
        raise HTTPException(504, "the act could not be answered before its X-Deadline-Ms")
    payload: dict[str, Any]
    if single:
        payload = {"action": actions[0].tolist(), "policy_version": version, "hold": hold}
    else:
        payload = {"actions": actions.tolist(), "policy_version": version, "hold": hold}
    latency = time.perf_counter() - start
    state.metrics.act_latency_of(path).observe(latency)
    state.traffic.act(latency)
    if parsed.robot_id is not None:
        state.robots.acted(parsed.robot_id, version)
    return json.dumps(payload).encode()


def _body_schema(model: type) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@router.post(
    ACT.removeprefix("/v1"), response_model=ActResponse, openapi_extra=_body_schema(ActRequest)
)
async def act(request: Request, body: Incoming = Depends(incoming)) -> Response:
    """One action for one observation, in robot units, finite and inside the task's bounds.

    ``X-Deadline-Ms: N`` (optional): answer 504 rather than an action later than N ms after the
    request arrived.
    """
    data = await answer(request.app.state.robot_sac, body, path=ACT)
    return Response(data, media_type="application/json")


@router.post(
    ACT_BATCH.removeprefix("/v1"),
    response_model=ActBatchResponse,
    openapi_extra=_body_schema(ActBatchRequest),
)
async def act_batch(request: Request, body: Incoming = Depends(incoming)) -> Response:
    """Actions for many observations of one robot, in one forward pass."""
    data = await answer(request.app.state.robot_sac, body, path=ACT_BATCH)
    return Response(data, media_type="application/json")
