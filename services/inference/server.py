"""The HTTP server of the service: uvicorn, with the limits a robot cell needs at the socket.

Uvicorn bounds a connection's buffered body (it stops reading past 64 kB until the app reads) but
not how many connections it holds, nor how long a connection may take to send its headers: a
client that opens connections and sends nothing, or one header byte a second, holds them for
ever. :class:`GuardedHttpToolsProtocol` closes a connection at once when ``max_connections`` are
already open, and closes one whose request headers are not complete within ``header_timeout_s``
of its opening or of its previous answer. Body deadlines are the guard's
(:mod:`robot_sac.services.inference.guard`), which knows each route's limits.

Every way of running the service (``robot-sac serve``, ``up``, the tests, the benchmarks) builds
its server with :func:`server_config`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import uvicorn

from robot_sac.settings import Settings

log = logging.getLogger("robot_sac.service")

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools comes with uvicorn[standard]; without it uvicorn's own h11 runs
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def _guarded_protocol(max_connections: int, header_timeout_s: float) -> type[Any] | None:
    if HttpToolsProtocol is None:
        return None

    class GuardedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        """uvicorn's httptools protocol with a connection cap and a header deadline."""

        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.abort()  # connection_lost forgets it
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._cancel_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request's headers, on a kept-alive connection

        def send_400_response(self, msg: str) -> None:
            """A request the HTTP parser refuses (a bad Content-Length, say), answered as every
            error of the API is: ``{"detail": ...}``, and the connection closed."""
            body = json.dumps({"detail": f"malformed HTTP request: {msg}"}).encode()
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            head += [
                name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
            ]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """A uvicorn config for ``app`` with the service's socket limits (``overrides`` on top)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,
        # Answers that wait on a store or a forward pass still go out before a stop.
        "timeout_graceful_shutdown": 10,
    }
    protocol = _guarded_protocol(settings.max_connections, settings.header_timeout_s)
    if protocol is not None:
        options["http"] = protocol
    else:
        log.warning("httptools is missing: no header deadline or connection cap (h11 fallback)")
        options["limit_concurrency"] = settings.max_connections
    return uvicorn.Config(app, **{**options, **overrides})


def loopback_socket() -> socket.socket:
    """A socket bound to a free loopback port (tests and benchmarks serve on it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock
