"""The FastAPI application of `shepherd serve`: its routers, one error shape, health and metrics.

    app = create_app(rt)            # rt: an open Runtime (settings, the history, Triton)

Open routes (no token, for probes and Prometheus): /healthz (the process answers), /readyz (the
history answers with its schema at this shepherd's revision, else 503), /metrics, /openapi.json.
Everything under /api/v1 needs a bearer token (see auth.py).

Every error answers `{"detail", "error", "exit_code"}`: a shepherd error keeps its type and exit
code (so `shepherd promote --server` exits as it would locally), and maps to a status:

    InvalidTransition 409 · ConfigError, InvalidModelName 422 · StoreError 503 · Triton/FleetError 502
    RepositoryError 503 · any other shepherd error 500 · 401/403 ApiAccessDenied (71) · 404 ConfigError (20)
    400 (a body that is not JSON) and 422 (a parameter or body that does not validate) ValidationError (2)
"""

from __future__ import annotations

import functools
import json
import logging
import sys

from alembic.script import ScriptDirectory
from fastapi import APIRouter, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.exceptions import HTTPException

from builders.errors import InvalidModelName, RepositoryError
from control_plane import console
from control_plane.api import actions, admin, metrics, reads
from control_plane.api.context import RuntimeDep, errors
from control_plane.api.schemas import Health, Ready
from control_plane.api.tokens import Tokens
from control_plane.errors import (
    ApiAccessDenied,
    ConfigError,
    FleetError,
    InvalidTransition,
    StoreError,
    TritonError,
)
from control_plane.runtime import Runtime
from control_plane.store.database import alembic_config, cause_of
from shepherd_errors import ShepherdError

log = logging.getLogger("shepherd.api")
VERSION = "1"

STATUS_OF: tuple[tuple[type[ShepherdError], int], ...] = (  # first match wins: subclasses before their parents
    (InvalidTransition, status.HTTP_409_CONFLICT),
    (ConfigError, 422),
    (InvalidModelName, 422),
    (StoreError, status.HTTP_503_SERVICE_UNAVAILABLE),
    (RepositoryError, status.HTTP_503_SERVICE_UNAVAILABLE),
    (TritonError, status.HTTP_502_BAD_GATEWAY),
    (FleetError, status.HTTP_502_BAD_GATEWAY),
)


def error_body(detail: str, error: str, exit_code: int) -> dict[str, object]:
    return {"detail": detail, "error": error, "exit_code": exit_code}


def _shepherd_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ShepherdError)
    code = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), status.HTTP_500_INTERNAL_SERVER_ERROR)
    return JSONResponse(error_body(str(exc), type(exc).__name__, exc.exit_code), status_code=code)


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (401, 403):
        kind, exit_code = ApiAccessDenied.__name__, ApiAccessDenied.exit_code
    elif exc.status_code == 404:
        kind, exit_code = ConfigError.__name__, ConfigError.exit_code
    elif exc.status_code in (400, 422):
        kind, exit_code = "ValidationError", 2
    else:
        kind, exit_code = "HTTPError", 1
    return JSONResponse(error_body(str(exc.detail), kind, exit_code), status_code=exc.status_code, headers=exc.headers)


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()
    ]
    return JSONResponse(error_body("; ".join(problems) or "invalid request", "ValidationError", 2), status_code=422)


def schema_revision(rt: Runtime, head: str) -> str:
    """The history's schema revision when it is `head`; a StoreError otherwise (read quietly, for probes)."""
    try:
        with rt.store.db.engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    except Exception as exc:
        raise StoreError(f"{rt.store.safe_url}: could not read the schema revision: {cause_of(exc)}") from exc
    if current != head:
        raise StoreError(
            f"{rt.store.safe_url}: the schema is at revision {current or 'none'}, this shepherd needs {head}"
        )
    return str(current)


health = APIRouter(tags=["health"])


@functools.cache
def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


@health.get("/healthz", summary="The process answers")
def healthz() -> Health:
    return Health(status="ok")


@health.get(
    "/readyz",
    summary="The history database answers, with its schema at this shepherd's revision",
    responses=errors(503),
)
def readyz(rt: RuntimeDep) -> Ready:
    return Ready(status="ready", schema_revision=schema_revision(rt, head_revision()))


@health.get(
    "/metrics",
    summary="shepherd's own metrics, in Prometheus text format",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def prometheus_metrics(request: Request) -> Response:
    return Response(metrics.render(request.app.state.history_metrics), media_type=metrics.CONTENT_TYPE)


def build_app() -> FastAPI:
    """The application with its routes and error handlers, not yet bound to a runtime (enough for its schema)."""
    app = FastAPI(
        title="shepherd",
        version=VERSION,
        summary="Rollouts of ML models on NVIDIA Triton: status, history, evidence and manual actions.",
        description=(
            "Every route under /api/v1 needs `Authorization: Bearer <token>` (a token from `shepherd token create`): "
            "reads need the viewer role, promote/rollback/pin the operator role, token management the admin role. "
            "Actions are recorded with the token's owner as the actor. /healthz, /readyz and /metrics are open."
        ),
        docs_url=None,  # Swagger UI and ReDoc load their assets from a CDN; /openapi.json is the schema
        redoc_url=None,
    )
    app.add_exception_handler(ShepherdError, _shepherd_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(health)
    app.include_router(reads.router)
    app.include_router(actions.router)
    app.include_router(admin.router)
    return app


def create_app(rt: Runtime) -> FastAPI:
    """The API over `rt`: reads from its history, actions through control_plane.manual on its Triton."""
    app = build_app()
    app.state.runtime = rt
    app.state.tokens = Tokens(rt.store.db)
    app.state.history_metrics = metrics.history_registry(rt.store)
    console.install(app)  # the pages under /console (not in the API's schema)
    return app


def openapi_document() -> str:
    """The OpenAPI schema as committed in docs/openapi.json (`python -m control_plane.api.app > docs/openapi.json`)."""
    return json.dumps(build_app().openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(openapi_document())
