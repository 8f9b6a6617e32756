"""The OpenAPI schema declares the Bearer scheme where the guard asks for a token, and every
error a route can give, in the one shape the service sends (``{"detail": "..."}``); the docs
pages load nothing from outside the service."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import ThreadService
from tests.test_roles import CONTRACT, PUBLIC

ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.servers import start_thread_service

    svc: ThreadService = start_thread_service(tmp_path_factory.mktemp("openapi") / "data")
    try:
        with svc.client() as client:
            return client.get("/openapi.json").json()
    finally:
        svc.stop()


def operation(schema: Any, method: str, path: str) -> Any:
    return schema["paths"][path][method.lower()]


def error_codes(op: Any) -> set[str]:
    codes = set()
    for code, response in op["responses"].items():
        if code.startswith(("4", "5")):
            assert response["content"]["application/json"]["schema"] == ERROR_REF, code
            codes.add(code)
    return codes


def test_the_bearer_scheme_is_declared_with_the_error_shape(schema: Any) -> None:
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"] and error["properties"]["detail"]["type"] == "string"
    # FastAPI's own validation error shape is never sent, so it is not documented either.
    assert "HTTPValidationError" not in str(schema)


# The API's routes: the contract less the pages (documentation, the dashboard and its files).
PAGES = ("/docs", "/redoc", "/openapi", "/dashboard")
API_ROUTES = sorted(k for k in CONTRACT if k[1] != "/" and not k[1].startswith(PAGES))


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
def test_routes_that_need_a_token_say_so_and_document_401_403_429(
    schema: Any, method: str, path: str
) -> None:
    op = operation(schema, method, path)
    if CONTRACT[(method, path)] == PUBLIC:
        assert "security" not in op
        assert not {"401", "403", "429"} & error_codes(op)
    else:
        assert op["security"] == [{"bearer": []}]
        assert {"401", "403", "429"} <= error_codes(op)


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("POST", "/v1/act", {"408", "413", "415", "422", "503", "504"}),
        ("POST", "/v1/transitions", {"408", "409", "413", "415", "422", "503"}),
        ("POST", "/v1/admin/policies", {"413", "415", "422", "503"}),
        ("POST", "/v1/admin/policy/pin", {"404", "422", "503"}),
        ("GET", "/v1/policy/weights", {"404", "422", "503"}),
        ("POST", "/v1/admin/release", {"503"}),
    ],
)
def test_each_route_documents_the_errors_it_gives(
    schema: Any, method: str, path: str, codes: set[str]
) -> None:
    assert codes <= error_codes(operation(schema, method, path))


def test_the_hold_documents_no_store_error(schema: Any) -> None:
    # It answers from memory whatever the store is doing.
    assert "503" not in error_codes(operation(schema, "POST", "/v1/admin/hold"))


@pytest.fixture(scope="module")
def docs_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadService]:
    from tests.servers import start_thread_service

    svc = start_thread_service(tmp_path_factory.mktemp("docs") / "data")
    yield svc
    svc.stop()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_asset_from_the_service(
    docs_service: ThreadService, page: str
) -> None:
    # An air-gapped lab has no CDN: every script, style and icon the page names is ours.
    with docs_service.client() as client:
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html.text)
        assets += re.findall(r"""(?:url|Url)\s*:\s*['"]([^'"]+)['"]""", html.text)
        assert assets, html.text
        assert "://" not in html.text.replace("http://127.0.0.1", ""), html.text
        for asset in assets:
            if asset.startswith("/docs-assets/"):
                r = client.get(asset)
                assert r.status_code == 200 and len(r.content) > 500, asset
        if page == "/docs":
            assert "/openapi.json" in html.text and "/docs-assets/swagger-ui-bundle.js" in html.text
        else:
            assert "/docs-assets/redoc.standalone.js" in html.text


def test_the_vendored_assets_ship_with_their_licences() -> None:
    from robot_sac.services.inference.openapi import STATIC

    names = {p.name for p in STATIC.iterdir()}
    assert {"swagger-ui.LICENSE", "redoc.LICENSE", "swagger-ui.NOTICE"} <= names
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= names


@pytest.mark.parametrize("model", ["ActRequest", "ActBatchRequest", "Transition"])
def test_every_field_a_robot_sends_is_described_and_the_examples_are_valid(
    schema: Any, model: str
) -> None:
    from robot_sac import schemas

    component = schema["components"]["schemas"][model]
    for name, field in component["properties"].items():
        assert field.get("description"), f"{model}.{name} has no description"
    examples = component["examples"]
    assert examples
    for example in examples:  # an example a robot copies must be accepted
        getattr(schemas, model).model_validate(example)


def test_a_transitions_source_is_documented_with_its_choices_and_default(schema: Any) -> None:
    transition = schema["components"]["schemas"]["Transition"]
    source = transition["properties"]["source"]
    assert source["enum"] == ["policy", "human", "demo"] and source["default"] == "policy"
    assert "source" not in transition.get("required", [])
    # an example shows a robot how to log an operator's correction
    assert any(e.get("source") == "human" for e in transition["examples"])
    status = schema["components"]["schemas"]["StatusResponse"]["properties"]
    assert status["transitions_by_source"].get("description")
