"""A bare ASGI app that answers every request with a fixed act-shaped JSON body.

The baseline of ``bench/serve_latency.py``: the same uvicorn, the same HTTP stack, no work.
Run with ``python -m uvicorn bench.echo_app:app --port P``.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"action":[0.1,0.2,0.3,0.4,0.5,0.6],"policy_version":0,"hold":false}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:  # read the request body, as a real endpoint must
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
