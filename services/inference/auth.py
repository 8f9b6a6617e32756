"""Who may do what: the token scopes, and what no-token mode refuses.

Robot token: act, transitions, read the policy. Operator token: everything, ``/v1/admin/*`` too.
Viewer token (optional): read the operator's status, robots and policies, nothing else.
Tokens are compared in constant time, with both secrets every time, so the time an answer takes
does not tell which one matched. With no tokens configured the service is for this machine only:
it refuses a ``Host`` that is not a loopback name (a DNS-rebinding page) and an ``Origin`` other
than its own (any web page the operator's browser has open).
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from urllib.parse import urlsplit

from pydantic import SecretStr

from robot_sac.settings import Settings


class Role(enum.IntEnum):
    """Who a token is, and what a route needs (see :data:`ALLOWED`)."""

    PUBLIC = 0
    VIEWER = 1  # reads the operator's views: status, robots, policies
    ROBOT = 2
    OPERATOR = 3


# The roles that may use a route needing the key. Not a ladder: a viewer may read the
# operator's status but not act, a robot may act but not read the operator's status.
ALLOWED: dict[Role, frozenset[Role]] = {
    Role.PUBLIC: frozenset(Role),
    Role.VIEWER: frozenset({Role.VIEWER, Role.OPERATOR}),
    Role.ROBOT: frozenset({Role.ROBOT, Role.OPERATOR}),
    Role.OPERATOR: frozenset({Role.OPERATOR}),
}

_NEEDS = {
    Role.VIEWER: "the viewer or operator token",
    Role.ROBOT: "the robot or operator token",
    Role.OPERATOR: "the operator token",
}
_CAN = {
    Role.VIEWER: "the viewer token may only read status, robots and policies",
    Role.ROBOT: "a robot token may not use it",
}


class Refusal(Exception):
    """An answer the service gives instead of running the route: status, detail and headers.

    ``close``: also close the connection, for a request whose body is left unread (the client
    has no business sending the rest).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.close = status, detail, headers or {}, close


BEARER = {"WWW-Authenticate": "Bearer"}


def _matches(token: bytes, secret: SecretStr | None) -> bool:
    if secret is None:
        return False
    return hmac.compare_digest(token, secret.get_secret_value().encode())


def authenticate(settings: Settings, authorization: bytes | None, need: Role) -> Role:
    """The role of ``authorization`` (the raw header), or a :class:`Refusal` (401 or 403).

    Only called when tokens are configured.
    """
    if authorization is None:
        raise Refusal(
            401, "missing bearer token: send 'Authorization: Bearer <token>'", BEARER, close=True
        )
    scheme, _, token = authorization.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        raise Refusal(
            401,
            "malformed Authorization header: send 'Authorization: Bearer <token>'",
            BEARER,
            close=True,
        )
    # Every secret is compared every time: how long this takes says nothing about which matched.
    robot = _matches(token, settings.robot_token)
    operator = _matches(token, settings.operator_token)
    viewer = _matches(token, settings.viewer_token)
    if operator:
        role = Role.OPERATOR
    elif robot:
        role = Role.ROBOT
    elif viewer:
        role = Role.VIEWER
    else:
        raise Refusal(401, "invalid token", BEARER, close=True)
    if role not in ALLOWED[need]:
        raise Refusal(403, f"this route needs {_NEEDS[need]}; {_CAN[role]}", close=True)
    return role


def _hostname(authority: str) -> str:
    """The host of ``host[:port]`` (IPv6 in brackets), lower case."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def is_loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_local(host: bytes | None, origin: bytes | None) -> None:
    """No-token mode: refuse a foreign ``Origin`` or a ``Host`` that is not this machine (403)."""
    if host is not None and not is_loopback_name(_hostname(host.decode("latin-1"))):
        raise Refusal(
            403,
            f"Host {host.decode('latin-1')!r} is not a loopback name: without tokens this service "
            "answers only requests addressed to this machine",
            close=True,
        )
    if origin is None:
        return
    text = origin.decode("latin-1").strip().lower()
    parts = urlsplit(text)
    own = host is not None and parts.netloc == host.decode("latin-1").strip().lower()
    if not (
        parts.scheme in ("http", "https") and own and is_loopback_name(_hostname(parts.netloc))
    ):
        raise Refusal(
            403,
            f"requests from web pages of another origin ({text}) are refused: without tokens a "
            "page in the operator's browser could otherwise steer the robots",
            close=True,
        )
