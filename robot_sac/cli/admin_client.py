"""The operator's side of ``/v1/admin/*``: one call per route, answers read into the typed models.

Every failure (no service, a refused token, a 404, a 503, an answer that is not the contract)
becomes a :class:`ServiceError` whose message is one line an operator can act on; the commands
print it and exit non-zero. httpx and pydantic only: no torch, so the commands start fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from robot_sac.admin_schemas import (
    HoldRequest,
    PoliciesResponse,
    RobotsResponse,
    StatusResponse,
    UploadResponse,
)

if TYPE_CHECKING:
    import httpx

M = TypeVar("M", bound=BaseModel)

# Long enough for a busy store (the service answers 503 after its own wait), short enough that
# a script does not hang on a dead host.
DEFAULT_TIMEOUT_S = 15.0
# A version file is a few MB at most; a slow link gets more time.
UPLOAD_TIMEOUT_S = 120.0


class ServiceError(Exception):
    """A call that failed, said in one line."""


@dataclass(frozen=True)
class Reply(Generic[M]):
    """An answer: the typed model, and the JSON as the service sent it (for ``--json``)."""

    model: M
    raw: Any


class AdminClient:
    """A synchronous client of one service's operator routes."""

    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        import httpx

        self.url = url.rstrip("/")
        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ServiceError(f"--url {url!r} is not a URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ServiceError(f"--url {url!r} is not an http:// or https:// URL")
        headers = {}
        if token:
            token = token.strip()
            if not token.isascii() or not token.isprintable():
                raise ServiceError("the token has characters an HTTP header cannot carry")
            headers["Authorization"] = f"Bearer {token}"
        self.has_token = bool(token)
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the routes -------------------------------------------------------------------------

    def status(self) -> Reply[StatusResponse]:
        return self._call("GET", "/v1/admin/status", StatusResponse)

    def robots(self) -> Reply[RobotsResponse]:
        return self._call("GET", "/v1/admin/robots", RobotsResponse)

    def policies(self) -> Reply[PoliciesResponse]:
        return self._call("GET", "/v1/admin/policies", PoliciesResponse)

    def pin(self, version: int) -> Reply[StatusResponse]:
        return self._call("POST", "/v1/admin/policy/pin", StatusResponse, json={"version": version})

    def follow(self) -> Reply[StatusResponse]:
        return self._call("POST", "/v1/admin/policy/follow", StatusResponse)

    def hold(self, robot_id: str | None = None) -> Reply[StatusResponse]:
        return self._call("POST", "/v1/admin/hold", StatusResponse, json=_hold_body(robot_id))

    def release(self, robot_id: str | None = None) -> Reply[StatusResponse]:
        return self._call("POST", "/v1/admin/release", StatusResponse, json=_hold_body(robot_id))

    def pause(self) -> Reply[StatusResponse]:
        return self._call("POST", "/v1/admin/learner/pause", StatusResponse)

    def resume(self) -> Reply[StatusResponse]:
        return self._call("POST", "/v1/admin/learner/resume", StatusResponse)

    def upload(self, data: bytes) -> Reply[UploadResponse]:
        return self._call(
            "POST",
            "/v1/admin/policies",
            UploadResponse,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=max(self.timeout, UPLOAD_TIMEOUT_S),
        )

    # -- the machinery ----------------------------------------------------------------------

    def _call(self, method: str, path: str, model: type[M], **kwargs: Any) -> Reply[M]:
        raw = self._request(method, path, **kwargs)
        try:
            return Reply(model.model_validate(raw), raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "the answer"
            raise ServiceError(
                f"{self.url}{path} answered what robot_sac's API does not say ({where}: "
                f"{first.get('msg')}); is --url a robot_sac service of this version?"
            ) from None

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ServiceError(
                f"cannot reach {self.url}: {_reason(exc)} (is the service running?)"
            ) from None
        except httpx.TimeoutException:
            raise ServiceError(
                f"{self.url} did not answer {method} {path} within "
                f"{kwargs.get('timeout', self.timeout):g} s"
            ) from None
        except httpx.HTTPError as exc:  # the connection broke, a protocol error, ...
            raise ServiceError(f"cannot talk to {self.url}: {_reason(exc)}") from None
        if response.status_code >= 400:
            raise self._refusal(response, method, path)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(
                f"{self.url}{path} answered something that is not JSON "
                "(is --url a robot_sac service?)"
            ) from None

    def _refusal(self, response: httpx.Response, method: str, path: str) -> ServiceError:
        code, detail = response.status_code, _detail(response)
        retry = response.headers.get("Retry-After")
        if code in (401, 403):
            hint = "" if self.has_token else " (give --token or set ROBOT_SAC_TOKEN)"
            return ServiceError(f"the token was refused ({code}): {detail}{hint}")
        if code == 404 and detail == "Not Found":  # the framework's, not a route's, 404
            return ServiceError(
                f"{self.url} has no {method} {path} (an older robot_sac, or --url is not a "
                "robot_sac service?)"
            )
        if code == 503:
            when = f"in {retry} s" if retry else "in a moment"
            return ServiceError(
                f"the service's store is unavailable ({code}): {detail}; retry {when}"
            )
        if code == 429:
            return ServiceError(f"too many requests ({code}): {detail}; retry in {retry or 1} s")
        return ServiceError(f"{method} {path} refused ({code}): {detail}")


def _hold_body(robot_id: str | None) -> dict[str, str] | None:
    """The hold/release body: none for every robot, ``{"robot_id": ...}`` for one."""
    if robot_id is None:
        return None
    try:
        return HoldRequest(robot_id=robot_id).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise ServiceError(f"robot id {robot_id!r}: {exc.errors()[0]['msg']}") from None


def _detail(response: httpx.Response) -> str:
    """The ``detail`` of an error answer, in words (FastAPI's validation lists too)."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        return text[:200] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # [{"loc": [...], "msg": ...}, ...]
        return "; ".join(
            ".".join(str(p) for p in item.get("loc", ())[1:]) + ": " + str(item.get("msg"))
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return detail if isinstance(detail, str) else json.dumps(detail)


def _reason(exc: Exception) -> str:
    """Why a connection failed, in words: "connection refused" rather than "[Errno 111] ..."."""
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    if text.startswith("[Errno"):
        text = text.split("]", 1)[-1].strip()
    return text[:1].lower() + text[1:]
