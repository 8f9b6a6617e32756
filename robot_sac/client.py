"""The robot's side of the HTTP API: ask for actions, log transitions, never lose one.

Imports no torch and no numpy: a robot's computer needs only httpx and msgspec.

.. code-block:: python

    from robot_sac.client import RobotClient

    with RobotClient("http://robot-sac:8000", robot_id="arm-1", token=TOKEN) as robot:
        obs = read_sensors()
        for step in range(10_000):
            action, version, hold = robot.act(obs)
            next_obs, reward, done = apply(action)
            robot.log(episode_id, step, obs, action, reward, next_obs,
                      terminated=done, truncated=False, policy_version=version)
            obs = next_obs

A step whose action an operator chose (taking over from the policy) is logged with
``source="human"``, a demonstration's with ``source="demo"``; the learner can tell them apart.

``log`` checks and queues: a background thread sends batches (``batch_size`` transitions or every
``flush_interval_s``), retrying with backoff on connection errors, timeouts and 5xx answers (safe:
the service stores a transition once per key). Batches go as MessagePack with float32 vectors: a
quarter of the JSON body's size, and the service stores the bytes as they come
(``body_format="json"`` sends the API's JSON instead). When the service is away so long that the
queue fills, ``log`` blocks, with a warning, instead of dropping data. ``flush()`` waits until every
queued transition is stored; ``close()`` flushes and stops the thread.
"""

from __future__ import annotations

import collections
import logging
import math
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec

if TYPE_CHECKING:  # pydantic is loaded by status() only: acting and logging need no pydantic
    from robot_sac.admin_schemas import StatusResponse

log = logging.getLogger("robot_sac.client")
# float32's largest finite value: the log stores float32 (robot_sac.schemas.FLOAT32_MAX, not
# imported so that a robot needs no pydantic).
_FLOAT32_MAX = 3.4028234663852886e38
# Where a transition came from (robot_sac.schemas.SOURCES, not imported for the same reason).
SOURCES = ("policy", "human", "demo")
_json, _msgpack = msgspec.json.Encoder(), msgspec.msgpack.Encoder()


class ServiceError(RuntimeError):
    """The service refused a request: a 4xx (retrying the same request would not help, except
    after a 429, which says when in ``Retry-After``), 503 (busy: retry soon) or 504 (past the
    request's ``X-Deadline-Ms``). ``status`` is the HTTP status, ``detail`` the service's words."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class RobotClient:
    """A robot's connection to the inference service (synchronous, keep-alive).

    Args:
        url: the service, e.g. ``http://127.0.0.1:8000``.
        robot_id: this robot's name in the transition log.
        token: the robot token, if the service has tokens.
        timeout_s: the longest a single call may take; an act that times out raises, so a
            robot's control loop never waits forever (it should then hold still on its own).
        batch_size: transitions per POST of the background sender.
        flush_interval_s: the longest a logged transition waits before it is sent.
        max_queue: transitions held while the service is unreachable; ``log`` blocks beyond.
        retry_max_s: the longest back-off between two retries of a batch.
        body_format: ``"msgpack"`` (float32 vectors, the default) or ``"json"`` for the
            transition batches. Either stores the same float32 values.
    """

    def __init__(
        self,
        url: str,
        robot_id: str,
        token: str | None = None,
        timeout_s: float = 2.0,
        batch_size: int = 64,
        flush_interval_s: float = 0.5,
        max_queue: int = 100_000,
        retry_max_s: float = 2.0,
        body_format: Literal["msgpack", "json"] = "msgpack",
    ) -> None:
        if body_format not in ("msgpack", "json"):
            raise ValueError(f"body_format must be 'msgpack' or 'json', not {body_format!r}")
        self.body_format = body_format
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.robot_id = robot_id
        self.batch_size, self.flush_interval_s = batch_size, flush_interval_s
        self.max_queue, self.retry_max_s = max_queue, retry_max_s
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        # The sender has its own connection: acting never waits behind a large upload.
        self._sender_http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=max(timeout_s, 10.0)
        )
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._in_flight = 0  # transitions taken by the sender, not yet stored
        self._cond = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self.sent = 0
        self.duplicates = 0
        self.retries = 0
        self._sender = threading.Thread(
            target=self._send_loop, name="robot-sac-sender", daemon=True
        )
        self._sender.start()

    # --- acting --------------------------------------------------------------------------------
    def act(
        self, obs: Sequence[float], deterministic: bool = False
    ) -> tuple[list[float], int, bool]:
        """One action for ``obs``: ``(action, policy_version, hold)``.

        Raises ``httpx.TimeoutException`` after ``timeout_s``, ``httpx.TransportError`` if the
        service cannot be reached, :class:`ServiceError` if it refuses the request.
        """
        body = {
            "obs": [float(x) for x in obs],
            "deterministic": deterministic,
            "robot_id": self.robot_id,
        }
        answer = self._checked(self._http.post("/v1/act", json=body))
        return answer["action"], answer["policy_version"], answer["hold"]

    def status(self) -> StatusResponse:
        """``GET /v1/admin/status`` (needs the operator or viewer token when the service has
        tokens)."""
        from robot_sac.admin_schemas import StatusResponse

        return StatusResponse.model_validate(self._checked(self._http.get("/v1/admin/status")))

    @staticmethod
    def _checked(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServiceError(response.status_code, str(detail))
        return response.json()

    # --- logging -------------------------------------------------------------------------------
    def log(
        self,
        episode_id: str,
        step: int,
        obs: Iterable[float],
        action: Iterable[float],
        reward: float,
        next_obs: Iterable[float],
        terminated: bool,
        truncated: bool,
        policy_version: int | None = None,
        source: Literal["policy", "human", "demo"] = "policy",
    ) -> None:
        """Queue one transition for the background sender (see the module docstring).

        ``source`` says who chose the action: ``"policy"`` (the served policy), ``"human"`` (an
        operator's correction) or ``"demo"`` (a demonstration).

        Raises ValueError at once for a value the service would refuse (NaN, infinity, beyond
        float32's range, an unknown source): a bad transition is the robot's bug, best seen
        where it is made.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        if not (math.isfinite(reward) and abs(reward) <= _FLOAT32_MAX):
            raise ValueError(f"reward {reward} is not a finite float32")
        transition = {
            "robot_id": self.robot_id,
            "episode_id": episode_id,
            "step": int(step),
            "obs": self._vector("obs", obs),
            "action": self._vector("action", action),
            "reward": float(reward),
            "next_obs": self._vector("next_obs", next_obs),
            "terminated": bool(terminated),
            "truncated": bool(truncated),
            "policy_version": policy_version,
        }
        if source != "policy":
            # The default is left out of the body: a policy step's body is what a service
            # older than sources accepts, and the smallest.
            transition["source"] = source
        with self._cond:
            self._raise_sender_error()
            warned = False
            while len(self._queue) + self._in_flight >= self.max_queue:
                if not warned:
                    log.warning(
                        "the transition queue is full (%d): the service has been unreachable for "
                        "a while; waiting instead of dropping data",
                        self.max_queue,
                    )
                    warned = True
                self._cond.wait(timeout=1.0)
                self._raise_sender_error()
            self._queue.append(transition)
            if len(self._queue) >= self.batch_size:
                self._cond.notify_all()

    def _vector(self, name: str, values: Iterable[float]) -> list[float] | bytes:
        floats = [float(x) for x in values]
        if not all(math.isfinite(x) and abs(x) <= _FLOAT32_MAX for x in floats):
            raise ValueError(f"{name} holds a value that is not a finite float32: {floats}")
        if self.body_format == "json":
            return floats
        return struct.pack(f"<{len(floats)}f", *floats)

    @property
    def pending(self) -> int:
        """Transitions logged but not yet acknowledged by the service."""
        with self._cond:
            return len(self._queue) + self._in_flight

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every logged transition is stored (or ``timeout_s`` passes: TimeoutError)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify_all()
            while self._queue or self._in_flight:
                self._raise_sender_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._queue) + self._in_flight} transitions not yet stored"
                    )
                self._cond.wait(timeout=0.1 if remaining is None else min(0.1, remaining))
            self._raise_sender_error()

    def close(self, timeout_s: float | None = None) -> None:
        """Send everything still queued, then stop the sender and close the connections."""
        try:
            self.flush(timeout_s)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._sender.join(timeout=5.0)
            self._http.close()
            self._sender_http.close()

    def __enter__(self) -> RobotClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_sender_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("the transition sender stopped") from self._error

    # --- the background sender -------------------------------------------------------------------
    def _send_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._queue and self._closing:
                        return
                    if len(self._queue) < self.batch_size and not self._closing:
                        self._cond.wait(timeout=self.flush_interval_s)
                    if not self._queue:
                        continue
                    batch = [
                        self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
                    ]
                    self._in_flight = len(batch)
                self._send(batch)
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()
        except BaseException as exc:  # a refused batch: make the robot's next call raise
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if self.body_format == "json":
            body, content_type = _json.encode({"transitions": batch}), "application/json"
        else:
            body, content_type = _msgpack.encode({"transitions": batch}), "application/msgpack"
        delay = 0.05
        while True:
            try:
                response = self._sender_http.post(
                    "/v1/transitions", content=body, headers={"content-type": content_type}
                )
            except (
                httpx.TransportError
            ) as exc:  # refused, reset, timed out: the key makes retry safe
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    body = response.json()
                    self.sent += body["accepted"]
                    self.duplicates += body["duplicates"]
                    return
                if response.status_code < 500 and response.status_code != 429:
                    # the service will never take this batch: a bug on the robot's side
                    raise ServiceError(response.status_code, response.text)
                reason = f"HTTP {response.status_code}"
            self.retries += 1
            log.info(
                "logging %d transitions failed (%s); retrying in %.2f s", len(batch), reason, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)
