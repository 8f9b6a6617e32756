"""Dependencies of the routes: the application's state and the two token scopes."""

from __future__ import annotations

import hmac
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


def get_state(request: Request) -> AppState:
    return request.app.state.robot_sac


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, secret: object) -> bool:
    if secret is None:
        return False
    return hmac.compare_digest(token.encode(), secret.get_secret_value().encode())  # type: ignore[attr-defined]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require_robot(request: Request) -> None:
    """Robot scope: act, transitions, read the policy. The operator token may do it too."""
    settings: Settings = request.app.state.robot_sac.settings
    if not settings.auth_enabled:
        return
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    # Compare with both, always, so the time taken does not tell which one matched.
    robot = _matches(token, settings.robot_token)
    operator = _matches(token, settings.operator_token)
    if not (robot or operator):
        raise _unauthorized("invalid token")


def require_operator(request: Request) -> None:
    """Operator scope: everything, ``/v1/admin/*`` included."""
    settings: Settings = request.app.state.robot_sac.settings
    if not settings.auth_enabled:
        return
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    robot = _matches(token, settings.robot_token)
    operator = _matches(token, settings.operator_token)
    if operator:
        return
    if robot:
        raise HTTPException(
            403, "this route needs the operator token; a robot token may not use it"
        )
    raise _unauthorized("invalid token")
