"""``POST /v1/transitions``: the durable, idempotent transition log.

Robots send their transitions in batches of dozens to hundreds; the route is served by the
service's fast path (:mod:`robot_sac.services.inference.fast_path`) in front of FastAPI's routing,
and by the FastAPI route below (which documents it) when that is off. Both run :func:`ingest`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response

from robot_sac.schemas import TransitionsResponse
from robot_sac.services.inference.deps import AppState, check_robot
from robot_sac.services.inference.wire import read_transitions
from robot_sac.store import StoreError

router = APIRouter(prefix="/v1", tags=["transitions"])
TRANSITIONS = "/v1/transitions"


async def ingest(state: AppState, authorization: str | None, body: bytes) -> bytes:
    """Append the transitions in ``body``; the JSON answer's bytes, once they are on disk.

    Raises ``HTTPException`` or pydantic's ``ValidationError`` for anything the client got wrong.
    """
    check_robot(state.settings, authorization)
    if not body:
        raise HTTPException(422, "the request needs a JSON body")
    transitions = read_transitions(body)
    obs_dim, action_dim = state.spec.obs_dim, state.spec.action_dim
    for i, t in enumerate(transitions):
        if len(t.obs) != obs_dim or len(t.action) != action_dim or len(t.next_obs) != obs_dim:
            for name, want in (("obs", obs_dim), ("action", action_dim), ("next_obs", obs_dim)):
                got = len(getattr(t, name))
                if got != want:
                    raise HTTPException(
                        422, f"transitions[{i}].{name} has {got} values; the task's have {want}"
                    )
    try:
        accepted, duplicates = await asyncio.get_running_loop().run_in_executor(
            state.writers, state.store.append, transitions
        )
    except StoreError as exc:
        raise HTTPException(503, f"the transition log is unavailable: {exc}") from exc
    except ValueError as exc:  # the store's own checks, behind the schema's
        raise HTTPException(422, str(exc)) from exc
    state.metrics.transitions_accepted.inc(accepted)
    state.metrics.transitions_duplicates.inc(duplicates)
    return TransitionsResponse(accepted=accepted, duplicates=duplicates).model_dump_json().encode()


@router.post(
    TRANSITIONS.removeprefix("/v1"),
    response_model=TransitionsResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/TransitionsRequest"}}
            },
        }
    },
)
async def log_transitions(request: Request) -> Response:
    """Append transitions; the answer comes only once they are on disk.

    ``(robot_id, episode_id, step)`` is the idempotency key: a retried batch is a success, its
    transitions counted as duplicates and stored once.
    """
    data = await ingest(
        request.app.state.robot_sac, request.headers.get("authorization"), await request.body()
    )
    return Response(data, media_type="application/json")
