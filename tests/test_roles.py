"""Every route against every role: none, the viewer token, the robot token, the operator token.

The table below is the contract (ARCHITECTURE.md's HTTP API), written out here rather than read
from the guard, and every route the app serves must be in it: a new route fails this test until
someone decides who may use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Route

from robot_sac.settings import Settings
from tests.servers import OPERATOR_TOKEN, ROBOT_TOKEN, ThreadService, start_thread_service

VIEWER_TOKEN = "viewer-secret-token"
TOKENS = {"viewer": VIEWER_TOKEN, "robot": ROBOT_TOKEN, "operator": OPERATOR_TOKEN}

PUBLIC = {"none", "viewer", "robot", "operator"}
ROBOT = {"robot", "operator"}
VIEWER = {"viewer", "operator"}
OPERATOR = {"operator"}

# (method, path) -> who may use it.
CONTRACT: dict[tuple[str, str], set[str]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    # The dashboard page and its own files hold no data (their script asks for a token).
    ("GET", "/"): PUBLIC,
    ("GET", "/dashboard/{asset}"): PUBLIC,
    ("POST", "/v1/act"): ROBOT,
    ("POST", "/v1/act/batch"): ROBOT,
    ("POST", "/v1/transitions"): ROBOT,
    ("GET", "/v1/policy"): ROBOT,
    ("GET", "/v1/policy/weights"): ROBOT,
    ("GET", "/v1/admin/status"): VIEWER,
    ("GET", "/v1/admin/policies"): VIEWER,
    ("GET", "/v1/admin/robots"): VIEWER,
    ("POST", "/v1/admin/policies"): OPERATOR,
    ("POST", "/v1/admin/learner/pause"): OPERATOR,
    ("POST", "/v1/admin/learner/resume"): OPERATOR,
    ("POST", "/v1/admin/policy/pin"): OPERATOR,
    ("POST", "/v1/admin/policy/follow"): OPERATOR,
    ("POST", "/v1/admin/hold"): OPERATOR,
    ("POST", "/v1/admin/release"): OPERATOR,
}
# Bodies that a role allowed to call the route may send harmlessly (a 4xx is fine: the point is
# whether the token got past the guard).
CONTENT_TYPES = {"/v1/admin/policies": "application/octet-stream"}


@pytest.fixture(scope="module")
def three_roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadService]:
    svc = start_thread_service(
        tmp_path_factory.mktemp("roles") / "data",
        robot_token=ROBOT_TOKEN,
        operator_token=OPERATOR_TOKEN,
        viewer_token=VIEWER_TOKEN,
    )
    yield svc
    svc.stop()


def served_routes(svc: ThreadService) -> set[tuple[str, str]]:
    """The API's routes (from its OpenAPI schema) and the documentation pages."""
    routes = {
        (method.upper(), path)
        for path, operations in svc.app.openapi()["paths"].items()
        for method in operations
    }
    for route in svc.app.routes:
        if isinstance(route, Route) and not isinstance(route, APIRoute):
            routes |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return routes


def test_every_route_the_app_serves_is_in_the_contract(three_roles: ThreadService) -> None:
    assert served_routes(three_roles) == set(CONTRACT)


@pytest.mark.parametrize("who", ["none", "viewer", "robot", "operator"])
@pytest.mark.parametrize(("method", "path"), sorted(CONTRACT))
def test_each_role_may_use_exactly_its_routes(
    three_roles: ThreadService, method: str, path: str, who: str
) -> None:
    headers = {} if who == "none" else {"Authorization": f"Bearer {TOKENS[who]}"}
    content = None
    if method == "POST":
        headers["Content-Type"] = CONTENT_TYPES.get(path, "application/json")
        content = b"" if path == "/v1/admin/policies" else b"{}"
    with httpx.Client(base_url=three_roles.url, timeout=30) as client:
        r = client.request(method, path, headers=headers, content=content)
    if who in CONTRACT[(method, path)]:
        assert r.status_code not in (401, 403), (who, method, path, r.text)
    elif who == "none":
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    else:
        assert r.status_code == 403, (who, method, path, r.text)
        assert "token" in r.json()["detail"]


def test_a_viewer_reads_status_and_policies_but_changes_nothing(
    three_roles: ThreadService,
) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"}
    with httpx.Client(base_url=three_roles.url, timeout=30, headers=operator) as client:
        assert client.post("/v1/admin/release").json()["hold"] is False
    viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    with httpx.Client(base_url=three_roles.url, timeout=30, headers=viewer) as client:
        status = client.get("/v1/admin/status")
        assert status.status_code == 200 and "served_version" in status.json()
        assert client.get("/v1/admin/policies").json()["policies"]
        refused = client.post("/v1/admin/hold", headers={"Content-Type": "application/json"})
        assert refused.status_code == 403
        assert "viewer token may only read status, robots and policies" in refused.json()["detail"]
        assert client.get("/v1/admin/status").json()["hold"] is False


@pytest.mark.parametrize(
    ("tokens", "words"),
    [
        ({"viewer_token": "short"}, "shorter than"),
        ({"viewer_token": ROBOT_TOKEN}, "same as another token"),
        ({"viewer_token": OPERATOR_TOKEN}, "same as another token"),
    ],
)
def test_bad_viewer_tokens_are_refused(tokens: dict[str, str], words: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=words):
        Settings(robot_token=ROBOT_TOKEN, operator_token=OPERATOR_TOKEN, **tokens)


def test_a_viewer_token_alone_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs an operator_token"):
        Settings(viewer_token=VIEWER_TOKEN)
