"""``POST /v1/act`` and ``POST /v1/act/batch``: actions from the served policy.

The act path is the service's hottest, so it is served by the fast path
(:mod:`robot_sac.services.inference.fast_path`), a plain ASGI layer in front of the framework, at
a fraction of FastAPI's per-request cost. The FastAPI routes below document the two endpoints in
the OpenAPI schema and serve them when the fast path is off; both run :func:`answer`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response

from robot_sac.schemas import ActBatchRequest, ActBatchResponse, ActRequest, ActResponse
from robot_sac.services.inference.deps import AppState, check_robot

router = APIRouter(prefix="/v1", tags=["act"])
ACT, ACT_BATCH = "/v1/act", "/v1/act/batch"


def _obs_array(rows: list[list[float]], obs_dim: int, single: bool) -> np.ndarray:
    for i, row in enumerate(rows):
        if len(row) != obs_dim:
            where = "obs" if single else f"obs[{i}]"
            raise HTTPException(
                422, f"{where} has {len(row)} values; the task's observations have {obs_dim}"
            )
    return np.asarray(rows, dtype=np.float32)


async def answer(
    state: AppState,
    authorization: str | None,
    body: bytes,
    content_type: str | None = None,
    path: str = ACT,
) -> bytes:
    """The work of both act endpoints; the JSON answer's bytes.

    ``content_type`` is not read: act bodies are JSON whatever it says (the argument is there so
    that every hot route has one signature, see ``fast_path.HANDLERS``).

    Raises ``HTTPException`` or pydantic's ``ValidationError`` for anything the client got wrong.
    """
    start = time.perf_counter()
    check_robot(state.settings, authorization)
    if not body:
        raise HTTPException(422, "the request needs a JSON body")
    if path == ACT:
        one = ActRequest.model_validate_json(body)
        obs = _obs_array([one.obs], state.spec.obs_dim, single=True)
        actions, version, hold = await state.batcher.act(obs, one.deterministic)
        payload: dict[str, Any] = {
            "action": actions[0].tolist(),
            "policy_version": version,
            "hold": hold,
        }
    else:
        many = ActBatchRequest.model_validate_json(body)
        obs = _obs_array(many.obs, state.spec.obs_dim, single=False)
        actions, version, hold = await state.batcher.act(obs, many.deterministic)
        payload = {"actions": actions.tolist(), "policy_version": version, "hold": hold}
    state.metrics.act_latency_of(path).observe(time.perf_counter() - start)
    return json.dumps(payload).encode()


def _body_schema(model: type) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@router.post(
    ACT.removeprefix("/v1"), response_model=ActResponse, openapi_extra=_body_schema(ActRequest)
)
async def act(request: Request) -> Response:
    """One action for one observation, in robot units, finite and inside the task's bounds."""
    data = await answer(
        request.app.state.robot_sac,
        request.headers.get("authorization"),
        await request.body(),
        path=ACT,
    )
    return Response(data, media_type="application/json")


@router.post(
    ACT_BATCH.removeprefix("/v1"),
    response_model=ActBatchResponse,
    openapi_extra=_body_schema(ActBatchRequest),
)
async def act_batch(request: Request) -> Response:
    """Actions for many observations of one robot, in one forward pass."""
    data = await answer(
        request.app.state.robot_sac,
        request.headers.get("authorization"),
        await request.body(),
        path=ACT_BATCH,
    )
    return Response(data, media_type="application/json")
