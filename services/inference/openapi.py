"""The OpenAPI schema (``/openapi.json``, ``/docs``): what FastAPI cannot see by itself.

- The request bodies of the hot routes, which read their bodies by hand (see fast_path.py).
- The Bearer security scheme, on every route the guard asks a token for (so ``/docs`` has an
  Authorize button), decided by the guard's own table.
- Every error a route can give, each with the one shape every error has: ``{"detail": "..."}``.
- ``/docs`` and ``/redoc`` pages whose assets are shipped in the package (``static/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from robot_sac.admin_schemas import HoldRequest
from robot_sac.schemas import ActBatchRequest, ActRequest, TransitionsRequest
from robot_sac.services.inference.auth import Role
from robot_sac.services.inference.guard import policy_of

# The bodies routes read by hand, added to the components their operations refer to.
REQUEST_BODIES = (ActRequest, ActBatchRequest, TransitionsRequest, HoldRequest)

ERROR = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "What is wrong, in words."}},
    "required": ["detail"],
}
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "The robot token (act, transitions, read the policy), the operator token "
    "(everything) or the viewer token (read status, robots and policies).",
}

# Errors every guarded route can give, every route with a body, and every route on the store.
_GUARDED = {
    "401": "No token, a malformed Authorization header, or a token that is not valid.",
    "403": "A token whose role may not use this route; without tokens, a request from a "
    "foreign Host or Origin.",
    "429": "Too many requests for this token: ask again after Retry-After seconds.",
}
_WITH_BODY = {
    "408": "The body did not arrive in time.",
    "413": "The body is larger than this route takes.",
    "415": "A body of a Content-Type this route does not take.",
    "422": "The body is not what this route needs: detail names the field and why.",
}
_STORE = {"503": "The store is busy or away: ask again after Retry-After seconds."}
# What only some routes give.
_ROUTE = {
    ("POST", "/v1/act"): {
        "503": "The act queue is full: ask again after Retry-After seconds.",
        "504": "The act could not be answered within its X-Deadline-Ms.",
    },
    ("POST", "/v1/act/batch"): {
        "503": "The act queue is full: ask again after Retry-After seconds.",
        "504": "The act could not be answered within its X-Deadline-Ms.",
    },
    ("POST", "/v1/transitions"): {
        "409": "A transition reuses a stored key (robot_id, episode_id, step) with other "
        "content; nothing of the batch is stored.",
    },
    ("GET", "/v1/policy/weights"): {"404": "No such version (or retention deleted it)."},
    ("POST", "/v1/admin/policy/pin"): {"404": "No such version (or retention deleted it)."},
    ("GET", "/readyz"): {"503": "No policy is loaded yet."},
}


def _errors(method: str, path: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    if policy_of(method, path).role > Role.PUBLIC:
        errors |= _GUARDED
    if method == "POST":
        errors |= _WITH_BODY
    if path.startswith(("/v1/admin", "/v1/policy", "/v1/transitions")):
        errors |= _STORE
    if (method, path) == ("POST", "/v1/admin/hold"):
        # The hold answers from memory whatever the store does (a 422 for a body it cannot
        # read comes after every robot is held).
        errors.pop("503", None)
    return errors | _ROUTE.get((method, path), {})


def document(app: FastAPI) -> None:
    """Make ``app.openapi()`` add the bodies, the security scheme and the errors."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for model in REQUEST_BODIES:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
            schemas["Error"] = ERROR
            components.setdefault("securitySchemes", {})["bearer"] = BEARER
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    if policy_of(method.upper(), path).role > Role.PUBLIC:
                        operation["security"] = [{"bearer": []}]
                    responses = operation.setdefault("responses", {})
                    errors = _errors(method.upper(), path)
                    if "422" in responses and "422" not in errors:  # FastAPI's, for a query
                        errors["422"] = "A query parameter is not valid: detail says why."
                    for code, text in errors.items():
                        # Ours replace FastAPI's default 422, whose shape this API never sends.
                        responses[code] = {
                            "description": text,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Error"}
                                }
                            },
                        }
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# /docs and /redoc load their scripts and styles from here: no CDN (labs are often offline).
STATIC = Path(__file__).parent / "static"
ASSETS = "/docs-assets"


def serve_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI, with Authorize), ``/docs/oauth2-redirect`` and ``/redoc``, from
    the assets shipped in the package (create the app with ``docs_url=None, redoc_url=None``)."""
    title = f"{app.title} - API"
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon-32x32.png",
            with_google_fonts=False,
        )

    app.mount(ASSETS, StaticFiles(directory=STATIC), name="docs-assets")
    app.add_route("/docs", swagger, include_in_schema=False)
    app.add_route("/docs/oauth2-redirect", oauth2_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
