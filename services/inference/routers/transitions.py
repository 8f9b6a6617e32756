"""``POST /v1/transitions``: the durable, idempotent transition log."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from robot_sac.schemas import TransitionsRequest, TransitionsResponse
from robot_sac.services.inference.deps import AppState, get_state, require_robot
from robot_sac.store import StoreError

router = APIRouter(prefix="/v1", tags=["transitions"], dependencies=[Depends(require_robot)])


@router.post(
    "/transitions",
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
async def log_transitions(request: Request, state: AppState = Depends(get_state)) -> Response:
    """Append transitions; the answer comes only once they are on disk.

    ``(robot_id, episode_id, step)`` is the idempotency key: a retried batch is a success, its
    transitions counted as duplicates and stored once.
    """
    # pydantic's own JSON parser: several times faster than json.loads plus validation for
    # the large bodies a robot's batches are.
    raw = await request.body()
    if not raw:
        raise HTTPException(422, "the request needs a JSON body")
    body = TransitionsRequest.model_validate_json(raw)
    spec = state.spec
    for i, t in enumerate(body.transitions):
        for name, want in (
            ("obs", spec.obs_dim),
            ("action", spec.action_dim),
            ("next_obs", spec.obs_dim),
        ):
            got = len(getattr(t, name))
            if got != want:
                raise HTTPException(
                    422, f"transitions[{i}].{name} has {got} values; the task's have {want}"
                )
    try:
        accepted, duplicates = await anyio.to_thread.run_sync(state.store.append, body.transitions)
    except StoreError as exc:
        raise HTTPException(503, f"the transition log is unavailable: {exc}") from exc
    except ValueError as exc:  # the store's own checks, behind the schema's
        raise HTTPException(422, str(exc)) from exc
    state.metrics.transitions_accepted.inc(accepted)
    state.metrics.transitions_duplicates.inc(duplicates)
    return Response(
        TransitionsResponse(accepted=accepted, duplicates=duplicates).model_dump_json(),
        media_type="application/json",
    )
