"""Dependencies of the routes: the application's state and the two token scopes."""

from __future__ import annotations

import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import HTTPException, Request

from robot_sac.schemas import TaskSpec
from robot_sac.services.inference.batcher import MicroBatcher
from robot_sac.services.inference.metrics import ServiceMetrics
from robot_sac.services.inference.serving import ServingState
from robot_sac.settings import Settings
from robot_sac.store import Store


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


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker
# thread, two thread hops per request on the act path for what is a few comparisons.


async def get_state(request: Request) -> AppState:
    return request.app.state.robot_sac


def _token_of(authorization: str | None) -> str:
    if authorization is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("malformed Authorization header: send 'Authorization: Bearer <token>'")
    return token.strip()


def _matches(token: str, secret: object) -> bool:
    if secret is None:
        return False
    return hmac.compare_digest(token.encode(), secret.get_secret_value().encode())  # type: ignore[attr-defined]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def check_robot(settings: Settings, authorization: str | None) -> None:
    """Robot scope: act, transitions, read the policy. The operator token may do it too."""
    if not settings.auth_enabled:
        return
    token = _token_of(authorization)
    # Compare with both, always, so the time taken does not tell which one matched.
    robot = _matches(token, settings.robot_token)
    operator = _matches(token, settings.operator_token)
    if not (robot or operator):
        raise _unauthorized("invalid token")


def check_operator(settings: Settings, authorization: str | None) -> None:
    """Operator scope: everything, ``/v1/admin/*`` included."""
    if not settings.auth_enabled:
        return
    token = _token_of(authorization)
    robot = _matches(token, settings.robot_token)
    operator = _matches(token, settings.operator_token)
    if operator:
        return
    if robot:
        raise HTTPException(
            403, "this route needs the operator token; a robot token may not use it"
        )
    raise _unauthorized("invalid token")


async def require_robot(request: Request) -> None:
    check_robot(request.app.state.robot_sac.settings, request.headers.get("authorization"))


async def require_operator(request: Request) -> None:
    check_operator(request.app.state.robot_sac.settings, request.headers.get("authorization"))
