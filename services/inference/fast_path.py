"""The service's hot routes served in front of FastAPI's routing.

``/v1/act``, ``/v1/act/batch`` and ``/v1/transitions`` carry nearly all of a fleet's requests. A
plain ASGI layer hands the body the guard has read to the route's own function and writes the
answer as bytes, skipping the framework's per-request routing,
dependency and response machinery. The FastAPI routes document the same endpoints in the
OpenAPI schema and serve them when ``ROBOT_SAC_FAST_PATH=false``; both run the same function, so
the answers are the same either way.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from robot_sac.services.inference.deps import AppState, Incoming, store_refusal
from robot_sac.services.inference.routers.act import ACT, ACT_BATCH, answer
from robot_sac.services.inference.routers.admin import HOLD, press_hold
from robot_sac.services.inference.routers.transitions import TRANSITIONS, ingest
from robot_sac.store import StoreError

# (state, the request as the guard passed it) -> the JSON answer's bytes
Handler = Callable[[AppState, Incoming], Awaitable[bytes]]


HANDLERS: dict[str, Handler] = {
    ACT: partial(answer, path=ACT),
    ACT_BATCH: partial(answer, path=ACT_BATCH),
    TRANSITIONS: ingest,
    # The hold is served here so that it takes effect before any routing.
    HOLD: press_hold,
}


class FastPath:
    """Serves the POST routes of :data:`HANDLERS` before FastAPI's routing; the rest passes.

    It runs inside the guard, which has checked the token and read the body
    (``scope["robot_sac.body"]``; absent when the request has none).
    """

    def __init__(self, app: ASGIApp, describe_error: Any) -> None:
        self.app, self.describe_error = app, describe_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        handler = HANDLERS.get(path) if scope["type"] == "http" else None
        state = getattr(scope["app"].state, "robot_sac", None) if "app" in scope else None
        if (
            handler is None
            or scope["method"] != "POST"
            or state is None
            or not state.settings.fast_path
        ):
            await self.app(scope, receive, send)
            return
        scope["robot_sac.route"] = path
        request = Incoming(
            scope.get("robot_sac.body", b""),
            scope.get("robot_sac.content_type"),
            scope.get("robot_sac.deadline"),
        )
        headers = [(b"content-type", b"application/json")]
        try:
            data = await handler(state, request)
            status = 200
        except HTTPException as exc:
            status, data = exc.status_code, json.dumps({"detail": exc.detail}).encode()
            headers += [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        except ValidationError as exc:
            status, detail = self.describe_error(list(exc.errors()))
            data = json.dumps({"detail": detail}).encode()
        except StoreError as exc:
            refusal = store_refusal(exc)
            status, data = 503, json.dumps({"detail": refusal.detail}).encode()
            headers += [
                (k.lower().encode(), v.encode()) for k, v in (refusal.headers or {}).items()
            ]
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
