"""The service's edge: every request passes here before any route runs.

In this order, from the headers alone: a no-token service refuses foreign hosts and origins
(403); the token is checked (401, 403); the token's rate is checked (429 with ``Retry-After``);
a body must be of a type the route takes (415) and not declared larger than the route's limit
(413). Only then is the body read, whole, within a deadline (408 for a slow sender) and within
the limit (413 for a chunked body that grows past it). A refused request's body is never read:
the answer goes out at once and, for 401, 403 and 413, the connection is closed. The routes get
the body already read (``scope["robot_sac.body"]``), its ``Content-Type``
(``scope["robot_sac.content_type"]``), and the ``X-Deadline-Ms`` header as an absolute deadline
(``scope["robot_sac.deadline"]``, monotonic seconds).

The operator's hold (``POST /v1/admin/hold``) is the one exception after the token: it is never
rate-limited, and a hold refused for anything past its token (a bad deadline, 415, 413, 408, a
sender that hangs up) holds every robot before the refusal goes out.

Plain ASGI, not ``BaseHTTPMiddleware``: this runs on every act, so it keeps to one pass over the
headers and a few comparisons.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from robot_sac.services.inference.auth import Refusal, Role, authenticate, check_local
from robot_sac.services.inference.metrics import ServiceMetrics
from robot_sac.services.inference.wire import MSGPACK_TYPES
from robot_sac.settings import Settings

log = logging.getLogger("robot_sac.service")

JSON_TYPES = frozenset({"application/json"})
OCTET_TYPES = frozenset({"application/octet-stream"})
# The operator's control bodies are a few bytes ({"version": 7}).
ADMIN_BODY_BYTES = 16 * 2**10
# X-Deadline-Ms: from 1 ms to 10 minutes.
MAX_DEADLINE_MS = 600_000


@dataclass(frozen=True)
class RoutePolicy:
    """What one route needs: a role, the body types it takes, its body limit and deadline."""

    role: Role
    media: frozenset[str]
    limit: Callable[[Settings], int]
    timeout: Callable[[Settings], float]


def _body_timeout(s: Settings) -> float:
    return s.body_timeout_s


POLICIES: dict[tuple[str, str], RoutePolicy] = {
    ("POST", "/v1/act"): RoutePolicy(
        Role.ROBOT, JSON_TYPES, lambda s: s.max_act_body_bytes, _body_timeout
    ),
    ("POST", "/v1/act/batch"): RoutePolicy(
        Role.ROBOT, JSON_TYPES, lambda s: s.max_act_batch_body_bytes, _body_timeout
    ),
    ("POST", "/v1/transitions"): RoutePolicy(
        Role.ROBOT, JSON_TYPES | MSGPACK_TYPES, lambda s: s.max_body_bytes, _body_timeout
    ),
    ("POST", "/v1/admin/policies"): RoutePolicy(
        Role.OPERATOR, OCTET_TYPES, lambda s: s.max_upload_bytes, lambda s: s.upload_timeout_s
    ),
    # What a viewer may read: the operator's views, nothing that changes anything.
    **{
        ("GET", path): RoutePolicy(
            Role.VIEWER,
            JSON_TYPES,
            lambda s: min(ADMIN_BODY_BYTES, s.max_body_bytes),
            _body_timeout,
        )
        for path in ("/v1/admin/status", "/v1/admin/policies", "/v1/admin/robots")
    },
}
_ADMIN = RoutePolicy(
    Role.OPERATOR, JSON_TYPES, lambda s: min(ADMIN_BODY_BYTES, s.max_body_bytes), _body_timeout
)
_ROBOT = RoutePolicy(Role.ROBOT, JSON_TYPES, lambda s: s.max_body_bytes, _body_timeout)
_PUBLIC = RoutePolicy(Role.PUBLIC, JSON_TYPES, lambda s: s.max_body_bytes, _body_timeout)


def policy_of(method: str, path: str) -> RoutePolicy:
    """The policy of a route: the table's, else by prefix (``/v1/admin`` operator, ``/v1``
    robot, the rest -- health, metrics, docs -- public)."""
    policy = POLICIES.get((method, path))
    if policy is not None:
        return policy
    if path.startswith("/v1/admin"):
        return _ADMIN
    if path.startswith("/v1/"):
        return _ROBOT
    return _PUBLIC


class _ClientGone(Exception):
    """The client disconnected before its body was whole: nobody is left to answer."""


class RateLimiter:
    """A token bucket per key (a token's role): ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self._buckets: dict[object, list[float]] = {}

    def wait_s(self, key: object, now: float) -> float:
        """0 if a request of ``key`` may go now (and count it), else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
        level = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if level >= 1.0:
            bucket[0] = level - 1.0
            return 0.0
        bucket[0] = level
        return (1.0 - level) / self.rate


def _media_type(content_type: bytes) -> str:
    return content_type.partition(b";")[0].strip().lower().decode("latin-1")


def _deadline(value: bytes, arrived: float) -> float:
    text = value.decode("latin-1").strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_DEADLINE_MS:
        raise Refusal(
            400, f"X-Deadline-Ms must be a whole number of milliseconds from 1 to {MAX_DEADLINE_MS}"
        )
    return arrived + int(text) / 1000.0


async def send_refusal(send: Send, refusal: Refusal) -> None:
    """Answer ``{"detail": ...}`` with the refusal's status and headers."""
    data = json.dumps({"detail": refusal.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    headers += [(k.lower().encode(), v.encode()) for k, v in refusal.headers.items()]
    if refusal.close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """The ASGI layer described in the module docstring; counts every answer by route."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics_of: Callable[[], ServiceMetrics | None],
        hold_path: str | None = None,
        hold_all: Callable[[], None] | None = None,
    ) -> None:
        """``hold_all`` holds every robot at once; it is pressed for an operator's hold
        (``POST hold_path``) that this layer refuses after its token was accepted."""
        self.app, self.settings, self.metrics_of = app, settings, metrics_of
        self.hold_path, self.hold_all = hold_path, hold_all
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            body = await self._admit(scope, receive, arrived)
            if body is not None:
                scope["robot_sac.body"] = body
                receive = _replay(body, receive)
            await self.app(scope, receive, counting_send)
        except Refusal as refusal:
            if status:  # an answer has begun: nothing sensible is left to send
                raise
            await send_refusal(counting_send, refusal)
        except _ClientGone:
            status = 499  # nginx's "client closed request", for the metrics only
        finally:
            self._count(scope, status or 500)

    async def _admit(self, scope: Scope, receive: Receive, arrived: float) -> bytes | None:
        """Check the headers, then read the body if there is one; raises :class:`Refusal`."""
        settings = self.settings
        authorization = content_type = length = chunked = host = origin = deadline = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
            elif key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"transfer-encoding":
                chunked = value
            elif key == b"host":
                host = value
            elif key == b"origin":
                origin = value
            elif key == b"x-deadline-ms":
                deadline = value
        policy = policy_of(scope["method"], scope["path"])
        if settings.auth_enabled:
            role = (
                authenticate(settings, authorization, policy.role)
                if policy.role > Role.PUBLIC
                else Role.PUBLIC
            )
        else:
            check_local(host, origin)
            role = Role.OPERATOR
        if self._is_hold(scope):
            # The operator's hold is never rate-limited, and whatever is wrong with its request
            # from here on (its deadline, its body's type, size or pace, a dropped connection),
            # every robot is held before the refusal goes out: whoever pressed it wanted the
            # robots stopped, and holding more than asked is the safe error.
            try:
                return await self._body(
                    scope, receive, arrived, policy, content_type, length, chunked, deadline
                )
            except Refusal as refusal:
                raise self._held_anyway(refusal) from None
            except _ClientGone:
                self._press_hold_for_all("its connection closed before its body arrived")
                raise
        if policy.role > Role.PUBLIC:
            wait = self.limiter.wait_s(role, arrived)
            if wait > 0:
                metrics = self.metrics_of()
                if metrics is not None:
                    metrics.rate_limited.inc()
                raise Refusal(
                    429,
                    f"too many requests for this token (the limit is "
                    f"{settings.rate_limit_per_s:g} a second); retry after {wait:.3f} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return await self._body(
            scope, receive, arrived, policy, content_type, length, chunked, deadline
        )

    async def _body(
        self,
        scope: Scope,
        receive: Receive,
        arrived: float,
        policy: RoutePolicy,
        content_type: bytes | None,
        length: bytes | None,
        chunked: bytes | None,
        deadline: bytes | None,
    ) -> bytes | None:
        """The deadline and the body's type and size from the headers, then the body itself."""
        settings = self.settings
        if deadline is not None:
            scope["robot_sac.deadline"] = _deadline(deadline, arrived)
        if content_type is not None:  # the routes read it from here, not from the headers again
            scope["robot_sac.content_type"] = content_type.decode("latin-1")
        has_body = chunked is not None or (length is not None and length.strip() != b"0")
        if not has_body:
            return None
        if content_type is None or _media_type(content_type) not in policy.media:
            taken = ", ".join(sorted(policy.media))
            sent = "none" if content_type is None else content_type.decode("latin-1")
            raise Refusal(
                415, f"this route takes a body of Content-Type {taken}, not {sent}", close=True
            )
        limit = policy.limit(settings)
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            raise Refusal(413, f"the request body is larger than {limit} bytes", close=True)
        return await _read_body(receive, limit, policy.timeout(settings))

    def _is_hold(self, scope: Scope) -> bool:
        return (
            self.hold_all is not None
            and scope["method"] == "POST"
            and scope["path"] == self.hold_path
        )

    def _press_hold_for_all(self, why: str) -> None:
        assert self.hold_all is not None
        self.hold_all()
        log.warning("hold pressed with a request that was refused (%s): every robot is held", why)

    def _held_anyway(self, refusal: Refusal) -> Refusal:
        self._press_hold_for_all(refusal.detail)
        return Refusal(
            refusal.status,
            f"{refusal.detail}; EVERY robot is now held all the same. POST /v1/admin/release "
            "releases them",
            refusal.headers,
            close=refusal.close,
        )

    def _count(self, scope: Scope, status: int) -> None:
        metrics = self.metrics_of()
        if metrics is None:
            return
        path = scope.get("robot_sac.route") or getattr(scope.get("route"), "path", None)
        if path is None and (scope["method"], scope["path"]) in POLICIES:
            path = scope["path"]  # refused here, before any route ran; a fixed set of labels
        metrics.request_counter(path or "unmatched", str(status)).inc()


async def _read_body(receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout_s`` (else :class:`Refusal`)."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"the request body is larger than {limit} bytes", close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if not expired:
            raise
        uncancel: Any = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        raise Refusal(
            408, f"the request body did not arrive within {timeout_s:g} s", close=True
        ) from None
    finally:
        timer.cancel()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the routes the body already read, then waits for a disconnect."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
