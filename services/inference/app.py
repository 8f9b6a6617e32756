"""The FastAPI application: ``create_app(settings, spec)``.

Start-up (the lifespan) opens the store, registers version 0 on first start, loads the served
version, and starts the micro-batcher and the registry watcher; shut-down stops them and closes
the store. Every error a client can cause is a 4xx whose ``detail`` is a sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from robot_sac import __version__
from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.devices import resolve_device
from robot_sac.schemas import TaskSpec
from robot_sac.services.inference import openapi
from robot_sac.services.inference.batcher import MicroBatcher
from robot_sac.services.inference.deps import AppState, store_refusal
from robot_sac.services.inference.fast_path import FastPath
from robot_sac.services.inference.guard import Guard
from robot_sac.services.inference.metrics import ServiceMetrics
from robot_sac.services.inference.routers import (
    act,
    admin,
    dashboard,
    health,
    policy,
    transitions,
)
from robot_sac.services.inference.serving import ServingState
from robot_sac.settings import Settings
from robot_sac.store import Store, StoreBusy, StoreError, open_store

log = logging.getLogger("robot_sac.service")

# Threads that append to the transition log. Batches that wait while one commits are written
# together in the next commit (group commit), so these threads mostly wait: more of them let a
# commit take more batches (on PostgreSQL, 16 rather than 4 gave one replica ~15 % more ingest).
WRITER_THREADS = 16
# How long start-up waits for a store that another process keeps busy.
STARTUP_WAIT_S = 60.0


async def _patiently(call: Callable[[], Any], wait_s: float = STARTUP_WAIT_S) -> Any:
    """``call()`` (a coroutine function, or a blocking one run off the loop), tried again while
    the store is busy, for up to ``wait_s``: at start-up another process may hold its lock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if inspect.iscoroutinefunction(call):
                return await call()
            return await anyio.to_thread.run_sync(call)
        except StoreBusy as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for the store: %s", exc)
            await asyncio.sleep(0.5)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """A readable sentence for pydantic's error list, and the status (400 for broken JSON)."""
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", e.get("msg", ""))
            return 400, f"the request body is not valid JSON ({reason})"
    parts = []
    for e in errors[:10]:
        where = _where(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing" and where in ("", "body"):
            msg, where = "the request needs a JSON body", ""
        elif e.get("type") == "model_attributes_type" and where == "":
            msg = "the body must be a JSON object, sent with Content-Type: application/json"
        parts.append(f"{where}: {msg}" if where else msg)
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return 422, "; ".join(parts) + more


def create_app(settings: Settings, spec: TaskSpec, store: Store | None = None) -> FastAPI:
    """The inference service for ``spec``; ``store`` defaults to the one ``settings`` names."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = resolve_device(settings.device)
        own_store = store is None
        st = store or await _patiently(
            lambda: open_store(
                spec,
                settings.data_dir,
                settings.store_url_value,
                busy_timeout_s=settings.store_wait_s,
            )
        )
        metrics = ServiceMetrics()
        metrics.watch_learner(st.learner_status)
        metrics.watch_episodes(lambda: st.episodes_by_version(recent=0))
        serving = ServingState(spec, st, device, metrics, settings.policy_poll_s)
        batcher = MicroBatcher(
            serving,
            metrics,
            settings.max_batch_size,
            settings.max_wait_ms / 1000.0,
            settings.inference_threads,
            settings.max_queued_acts,
        )
        writers = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="log-writer")
        tasks: list[asyncio.Task[None]] = []
        try:
            await _patiently(lambda: ensure_initial_policy(st))
            await _patiently(serving.sync)
            if serving.served is None:
                raise RuntimeError(
                    "no registered policy version passes validation: "
                    + "; ".join(f"v{v}: {r}" for v, r in serving.refused.items())
                )
            app.state.robot_sac = AppState(settings, spec, st, metrics, serving, batcher, writers)
            tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(serving.watch())]
            # Start-up made many long-lived objects (torch, the app); keep the collector from
            # re-scanning them in a pause that would land on some robot's request.
            gc.collect()
            gc.freeze()
            if not settings.auth_enabled:
                log.warning(
                    "no tokens configured: every route is open to this machine (loopback only; "
                    "foreign hosts and web-page origins are refused)"
                )
            for warning in settings.token_warnings():
                log.warning(warning)
            log.info(
                "serving %s: policy version %d on %s", spec.name, serving.served.version, device
            )
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            batcher.close()
            writers.shutdown(wait=True)  # appends under way finish before the store closes
            serving.close()
            if own_store:
                st.close()

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's native OpenTelemetry reads the environment on every request; this service
        # exports its own Prometheus metrics instead.
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(
        title="robot_sac inference service",
        version=__version__,
        description="Actions from the current SAC policy, the durable transition log, and the "
        "operator's controls. Errors are JSON objects with a `detail` sentence.",
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own assets
        redoc_url=None,
        **extra,
    )
    for module in (act, transitions, policy, admin, health):
        app.include_router(module.router)
    openapi.document(app)
    openapi.serve_docs(app)
    dashboard.serve_dashboard(app)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = describe_validation_errors(list(exc.errors()))
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(ValidationError)
    async def _body_validation(request: Request, exc: ValidationError) -> JSONResponse:
        # Bodies parsed by hand (the act path) raise pydantic's own error type.
        status, detail = describe_validation_errors([dict(e) for e in exc.errors()])
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(StoreError)
    async def _store_unavailable(request: Request, exc: StoreError) -> JSONResponse:
        refusal = store_refusal(exc)
        return JSONResponse({"detail": refusal.detail}, status_code=503, headers=refusal.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    def metrics_of() -> ServiceMetrics | None:
        state = getattr(app.state, "robot_sac", None)
        return None if state is None else state.metrics

    def hold_every_robot() -> None:
        state = getattr(app.state, "robot_sac", None)
        if state is not None:  # before start-up there is nothing to hold
            state.serving.press_hold(None)

    # Added last is outermost: the guard sees every request, the fast path runs inside it.
    app.add_middleware(FastPath, describe_error=describe_validation_errors)
    app.add_middleware(
        Guard,
        settings=settings,
        metrics_of=metrics_of,
        hold_path=admin.HOLD,
        hold_all=hold_every_robot,
    )
    return app
