"""``POST /v1/transitions``: the durable, idempotent transition log.

Robots send their transitions in batches of dozens to hundreds; the route is served by the
service's fast path (:mod:`robot_sac.services.inference.fast_path`) in front of FastAPI's routing,
and by the FastAPI route below (which documents it) when that is off. Both run :func:`ingest`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from robot_sac.schemas import TaskSpec, TransitionsResponse
from robot_sac.services.inference.deps import AppState, Incoming, incoming, store_refusal
from robot_sac.services.inference.wire import (
    BodyError,
    is_msgpack,
    read_packed_transitions,
    read_transitions,
)
from robot_sac.store import StoreError, TransitionConflict
from robot_sac.store.records import TransitionLike

router = APIRouter(prefix="/v1", tags=["transitions"])
TRANSITIONS = "/v1/transitions"


def _values(vector: Sequence[float] | bytes) -> float:
    """How many values a vector holds: float32 bytes hold 4 bytes each (a fraction if the length
    is not a multiple of 4, which then matches no task)."""
    return len(vector) / 4 if isinstance(vector, bytes) else len(vector)


def _wrong_length(transitions: Sequence[TransitionLike], spec: TaskSpec) -> str | None:
    """Which vector of which transition has a length other than the task's, in words."""
    widths = (("obs", spec.obs_dim), ("action", spec.action_dim), ("next_obs", spec.obs_dim))
    for i, t in enumerate(transitions):
        for name, want in widths:
            vector = getattr(t, name)
            if _values(vector) == want:
                continue
            if isinstance(vector, bytes):
                return (
                    f"transitions[{i}].{name} has {len(vector)} bytes; the task's have {want} "
                    f"float32 values ({4 * want} bytes)"
                )
            return f"transitions[{i}].{name} has {len(vector)} values; the task's have {want}"
    return None


async def ingest(state: AppState, request: Incoming) -> bytes:
    """Append the transitions of the request's body; the JSON answer's bytes, once on disk.

    The body is JSON, or MessagePack when its Content-Type says so (see
    :mod:`robot_sac.services.inference.wire`). Raises ``HTTPException`` or pydantic's
    ``ValidationError`` for anything the client got wrong, 503 with ``Retry-After`` when the
    store is busy or away.
    """
    body = request.body
    packed = is_msgpack(request.content_type)
    if not body:
        raise HTTPException(422, f"the request needs a {'MessagePack' if packed else 'JSON'} body")
    try:
        transitions = read_packed_transitions(body) if packed else read_transitions(body)
    except BodyError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    try:
        # The store checks every vector's length and values (in the writer thread, off the
        # event loop); only a refused batch is searched for a message that names the index.
        accepted, duplicates = await asyncio.get_running_loop().run_in_executor(
            state.writers, state.store.append, transitions
        )
    except StoreError as exc:
        state.serving.store_health.failed(exc)
        raise store_refusal(exc) from exc
    except TransitionConflict as exc:  # the same key, other content: never dropped silently
        raise HTTPException(409, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, _wrong_length(transitions, state.spec) or str(exc)) from exc
    state.serving.store_health.ok(wrote=True)
    state.metrics.transitions_accepted.inc(accepted)
    state.traffic.transitions(accepted)
    state.metrics.transitions_duplicates.inc(duplicates)
    return TransitionsResponse(accepted=accepted, duplicates=duplicates).model_dump_json().encode()


@router.post(
    TRANSITIONS.removeprefix("/v1"),
    response_model=TransitionsResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/TransitionsRequest"}},
                "application/msgpack": {
                    "schema": {
                        "description": "The same object as MessagePack; obs, action and "
                        "next_obs may each be a bin of little-endian float32 values."
                    }
                },
            },
        }
    },
)
async def log_transitions(request: Request, body: Incoming = Depends(incoming)) -> Response:
    """Append transitions; the answer comes only once they are on disk.

    ``(robot_id, episode_id, step)`` is the idempotency key: a retried batch is a success, its
    transitions counted as duplicates and stored once; the same key with other content is a 409
    naming the key, and nothing of that batch is stored. The body is JSON, or MessagePack with
    ``Content-Type: application/msgpack`` (vectors may then be float32 bytes).
    """
    data = await ingest(request.app.state.robot_sac, body)
    return Response(data, media_type="application/json")
