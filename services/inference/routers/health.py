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
    """Ready once a policy is loaded: acts are answered from it whatever the store is doing.

    ``store`` says how the store answers (``ok``, ``busy`` or ``unavailable``, and why): while it
    is not ``ok``, transitions and operator changes get 503 with ``Retry-After``.
    """
    served = state.serving.served
    if served is None:
        return JSONResponse({"detail": "no policy is loaded yet"}, status_code=503)
    health = state.serving.store_health
    try:
        await anyio.to_thread.run_sync(state.store.check)
    except Exception as exc:
        health.failed(exc)
    return JSONResponse(
        {"status": "ready", "policy_version": served.version, "store": health.describe()}
    )


@router.get("/metrics")
async def metrics(state: AppState = Depends(get_state)) -> Response:
    """Prometheus text exposition."""
    # Collecting reads the learner's row from the store: off the event loop.
    text = await anyio.to_thread.run_sync(generate_latest, state.metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
