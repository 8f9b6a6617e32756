"""``/healthz`` (alive), ``/readyz`` (a policy is loaded and the store answers), ``/metrics``."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from robot_sac.services.inference.deps import AppState, get_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: AppState = Depends(get_state)) -> Response:
    served = state.serving.served
    if served is None:
        return JSONResponse({"detail": "no policy is loaded yet"}, status_code=503)
    try:
        await anyio.to_thread.run_sync(state.store.check)
    except Exception as exc:
        return JSONResponse({"detail": f"the store does not answer: {exc}"}, status_code=503)
    return JSONResponse({"status": "ready", "policy_version": served.version})


@router.get("/metrics")
async def metrics(state: AppState = Depends(get_state)) -> Response:
    """Prometheus text exposition."""
    # Collecting reads the learner's row from the store: off the event loop.
    text = await anyio.to_thread.run_sync(generate_latest, state.metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
