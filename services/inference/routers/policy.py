"""``GET /v1/policy`` and ``GET /v1/policy/weights``: what is served, and its version file."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Response

from robot_sac.schemas import PolicyDescription
from robot_sac.services.inference.deps import AppState, get_state
from robot_sac.store import StoreError

# Robot token (or operator), checked by the guard before the route runs.
router = APIRouter(prefix="/v1", tags=["policy"])


def _served(state: AppState):  # type: ignore[no-untyped-def]
    served = state.serving.served
    if served is None:
        raise HTTPException(503, "no policy is loaded yet")
    return served


@router.get("/policy", response_model=PolicyDescription)
async def describe_policy(state: AppState = Depends(get_state)) -> PolicyDescription:
    """The version being served: number, provenance, sizes, bounds and the file's sha256."""
    served = _served(state)
    info = served.policy.info
    return PolicyDescription(
        version=served.version,
        created_at=served.record.created_at,
        obs_dim=info.obs_dim,
        action_dim=info.action_dim,
        action_low=list(info.action_low),
        action_high=list(info.action_high),
        sha256=served.record.sha256,
        updates=served.record.updates,
        family=info.family,
    )


@router.get(
    "/policy/weights",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "safetensors bytes"}
    },
)
async def policy_weights(
    version: int | None = Query(
        default=None, ge=0, le=2**62, description="Default: the served version."
    ),
    state: AppState = Depends(get_state),
) -> Response:
    """A version file (safetensors bytes); load it with ``robot_sac.policy.load_policy``.

    A version deleted by retention is unknown (404), also when it goes between the look-up and
    the read."""
    if version is None:
        record = _served(state).record
    else:
        record = await anyio.to_thread.run_sync(state.store.get_policy, version)
        if record is None:
            raise HTTPException(404, f"policy version {version} does not exist")
    try:
        data = await anyio.to_thread.run_sync(state.store.policy_bytes, record)
    except (OSError, StoreError):
        if await anyio.to_thread.run_sync(state.store.get_policy, record.version) is None:
            raise HTTPException(
                404, f"policy version {record.version} does not exist (it was just deleted)"
            ) from None
        raise
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "X-Policy-Version": str(record.version),
            "X-Policy-Sha256": record.sha256,
            "Content-Disposition": f'attachment; filename="v{record.version}.safetensors"',
        },
    )
