"""What the routes share: the application's state and the request as the guard hands it on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import HTTPException, Request

from robot_sac.schemas import TaskSpec
from robot_sac.services.inference.activity import RobotRegistry, TrafficMeter
from robot_sac.services.inference.batcher import MicroBatcher
from robot_sac.services.inference.metrics import ServiceMetrics
from robot_sac.services.inference.serving import ServingState
from robot_sac.settings import Settings
from robot_sac.store import Store, StoreBusy, StoreError


@dataclass
class AppState:
    """Everything a request may need, created in the lifespan and kept on ``app.state``."""

    settings: Settings
    spec: TaskSpec
    store: Store
    metrics: ServiceMetrics
    serving: ServingState
    batcher: MicroBatcher
    # Appends to the transition log wait for their fsync here, off the event loop. Threads of
    # their own, kept warm: handing work to anyio's shared pool cost ~80 us more per batch, and
    # several of them let concurrent batches share one commit (the store's group commit).
    writers: ThreadPoolExecutor
    # What this replica saw lately: the robots that acted, and its traffic.
    robots: RobotRegistry = field(default_factory=RobotRegistry)
    traffic: TrafficMeter = field(default_factory=TrafficMeter)


@dataclass(frozen=True)
class Incoming:
    """A request with a body, as the guard (:mod:`~robot_sac.services.inference.guard`) passed
    it: token checked, body read whole within its limits.

    Attributes:
        body: the request body.
        content_type: the ``Content-Type`` header, if any.
        deadline: ``X-Deadline-Ms`` as a ``time.monotonic()`` instant, if the client sent one.
    """

    body: bytes
    content_type: str | None = None
    deadline: float | None = None


async def get_state(request: Request) -> AppState:
    return request.app.state.robot_sac


async def incoming(request: Request) -> Incoming:
    """The request as the hot routes' handlers take it, when FastAPI serves them."""
    return Incoming(
        await request.body(),
        request.headers.get("content-type"),
        request.scope.get("robot_sac.deadline"),
    )


def store_refusal(exc: StoreError) -> HTTPException:
    """The 503 for a store that is busy (retry in a second) or away (retry in a few)."""
    retry = "1" if isinstance(exc, StoreBusy) else "5"
    return HTTPException(503, f"the store is unavailable: {exc}", {"Retry-After": retry})
