"""The console's routes under /console: sign-in, the four pages, the report download, the two actions.

    GET  /console/login            paste a token; POST checks it and sets the session cookie
    POST /console/logout
    GET  /console/                 fleet overview            (viewer)
    GET  /console/models/{m}       version timeline          (viewer; operators also get the buttons)
    GET  /console/rollouts/{id}    evidence over time        (viewer)
    GET  /console/rollouts/{id}/report   the same page as one HTML file (viewer)
    GET  /console/history          search with its SQL       (viewer)
    POST /console/models/{m}/versions/{v}/promote|rollback   (operator, CSRF-checked)
    GET  /console/static/{asset}   CSS, JS, Plotly (open: no data in them)

Pages without a valid session or bearer token redirect to the sign-in page. Every page is sent with a
Content-Security-Policy that allows nothing but shepherd itself (scripts only from /console/static;
Plotly's inline styles are the one exception), no framing, no referrer to other sites, no caching.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from control_plane.api import actions
from control_plane.api.auth import Principal
from control_plane.api.schemas import ActionIn
from control_plane.api.tokens import Tokens, digest
from control_plane.console import search as history_search
from control_plane.console import views
from control_plane.console.access import may, principal
from control_plane.console.render import ASSETS, PREFIX, asset_path, live_url, render, report_html, rollout_context
from control_plane.console.session import COOKIE, Sessions
from control_plane.runtime import Runtime
from control_plane.store.models import State
from shepherd_errors import ShepherdError

router = APIRouter(prefix=PREFIX, include_in_schema=False)
FLASH = "shepherd_flash"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # so forms carry their Origin (no-referrer sends "null")
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
VERBS = {"promote": actions.promote, "rollback": actions.rollback}


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.console_sessions
    return sessions


def _safe_next(value: str | None) -> str:
    """Only a path of the console itself (never another site, never `//host`)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


def _page(request: Request, who: Principal, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    cookie = request.cookies.get(COOKIE, "")
    flash = unquote(request.cookies.get(FLASH, ""))
    kind, _, message = flash.partition(":")
    html = render(
        template,
        who=who,
        session=bool(cookie),
        csrf=_sessions(request).csrf(cookie) if cookie else "",
        can_act=may(who, "operator"),
        back=request.url.path,
        message=message or context.pop("message", None),
        message_kind=kind if message else context.pop("message_kind", None),
        **context,
    )
    response = HTMLResponse(html, status_code=status, headers=HEADERS)
    if flash:
        response.delete_cookie(FLASH, path=PREFIX)
    return response


def _signed_in(request: Request) -> Principal | RedirectResponse:
    who = principal(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)
    return who


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the only kind these forms send), first value per field."""
    body = (await request.body())[:65536].decode("utf-8", errors="replace")
    return {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}


def _same_origin(request: Request) -> bool:
    """No Origin (an old browser, curl), or one naming this host. The scheme is not compared: behind a
    proxy that ends TLS the browser says https while this process sees http."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", request.url.netloc)


# -- assets and sign-in ---------------------------------------------------------------------------
@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, detail=f"no asset {name!r}")
    return FileResponse(
        asset_path(name),
        media_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/login")
def login_page(next: str = "") -> HTMLResponse:
    html = render("login.html", who=None, next=_safe_next(next), hours=Sessions.lifetime_s // 3600, error=None)
    return HTMLResponse(html, headers=HEADERS)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    target = _safe_next(form.get("next"))
    if not _same_origin(request):
        raise HTTPException(403, detail="sign-in from another site")
    tokens: Tokens = request.app.state.tokens
    token = form.get("token", "").strip()
    record = await run_in_threadpool(tokens.verify, token)
    if record is None:
        html = render(
            "login.html",
            who=None,
            next=target,
            hours=Sessions.lifetime_s // 3600,
            error="That token is not valid (unknown, malformed or revoked).",
        )
        return HTMLResponse(html, status_code=401, headers=HEADERS)
    cookie = _sessions(request).issue(token_id=record.id, digest=digest(token))
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=_sessions(request).lifetime_s,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    cookie = request.cookies.get(COOKIE, "")
    if not _same_origin(request) or not _sessions(request).csrf_ok(cookie, form.get("csrf", "")):
        raise HTTPException(403, detail="sign-out without this session's form")
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=_secure(request))
    return response


# -- pages ----------------------------------------------------------------------------------------
@router.get("/")
def fleet(request: Request) -> Response:
    who = _signed_in(request)
    if not isinstance(who, Principal):
        return who
    return _page(request, who, "fleet.html", nav="fleet", view=views.fleet_view(_rt(request)))


@router.get("/models/{model}")
def model(request: Request, model: str) -> Response:
    who = _signed_in(request)
    if not isinstance(who, Principal):
        return who
    view = views.model_view(_rt(request).store, model)
    if view is None:
        raise HTTPException(404, detail=f"no model {model!r} in the history")
    return _page(request, who, "model.html", nav="fleet", view=view)


@router.get("/rollouts/{rollout_id}")
def rollout(request: Request, rollout_id: int) -> Response:
    who = _signed_in(request)
    if not isinstance(who, Principal):
        return who
    data = views.rollout_data(_rt(request).store, rollout_id)
    if data is None:
        raise HTTPException(404, detail=f"no rollout {rollout_id}")
    return _page(request, who, "rollout.html", nav="fleet", **rollout_context(data))


@router.get("/rollouts/{rollout_id}/report")
def rollout_report(request: Request, rollout_id: int) -> Response:
    who = _signed_in(request)
    if not isinstance(who, Principal):
        return who
    rt = _rt(request)
    data = views.rollout_data(rt.store, rollout_id)
    if data is None:
        raise HTTPException(404, detail=f"no rollout {rollout_id}")
    html = report_html(data, source=rt.store.safe_url, live_url=live_url(public_url(rt), rollout_id))
    name = f"shepherd-rollout-{rollout_id}-{data.rollout.model}-v{data.rollout.candidate}.html"
    return HTMLResponse(html, headers={"Content-Disposition": f'attachment; filename="{name}"', **HEADERS})


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {value!r} is not a date and time") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@router.get("/history")
def history(
    request: Request,
    model: str = "",
    state: list[str] = Query(default=[]),  # noqa: B008 - FastAPI's way to declare a repeated parameter
    since: str = "",
    until: str = "",
) -> Response:
    who = _signed_in(request)
    if not isinstance(who, Principal):
        return who
    rt = _rt(request)
    known = [s.value for s in State]
    error, found = None, None
    try:
        filters = history_search.Filters(
            model=model or None,
            states=tuple(s for s in state if s in known),
            since=_time(since, "since"),
            until=_time(until, "until"),
        )
        found = history_search.search(rt.store.db, filters)
    except ValueError as exc:
        error = str(exc)
        filters = history_search.Filters(model=model or None)
    models = sorted({row["model"] for row in rt.store.read.status()})
    return _page(
        request,
        who,
        "history.html",
        nav="history",
        models=models,
        states=known,
        filters=filters,
        found=found,
        error=error,
        since=since,
        until=until,
        dialect=rt.store.db.engine.dialect.name,
    )


# -- actions --------------------------------------------------------------------------------------
@router.post("/models/{model}/versions/{version}/{verb}")
async def act(request: Request, model: str, version: int, verb: str) -> Response:
    if verb not in VERBS:
        raise HTTPException(404, detail=f"no action {verb!r}")
    form = await _form(request)
    who = await run_in_threadpool(principal, request)
    if who is None:
        raise HTTPException(401, detail="sign in first")
    bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
    if not bearer and (
        not _same_origin(request)
        or not _sessions(request).csrf_ok(request.cookies.get(COOKIE, ""), form.get("csrf", ""))
    ):
        raise HTTPException(403, detail="this action needs the form of a signed-in page (CSRF check failed)")
    if not may(who, "operator"):
        raise HTTPException(403, detail=f"{verb} needs the operator role; {who.name} is {who.role}")
    back = _safe_next(form.get("back"))
    try:
        body = ActionIn(reason=form.get("reason", "").strip())
        result = await run_in_threadpool(VERBS[verb], _rt(request), who, model, version, body)
        problems = [e.message for e in result.errors]
        flash = (
            f"error:{verb} v{version}: {'; '.join(problems)}"
            if problems
            else f"ok:{verb} of {model} v{version} done by {who.name}"
        )
    except ValidationError:
        flash = f"error:{verb} v{version}: a reason is needed"
    except (ShepherdError, HTTPException) as exc:
        flash = f"error:{verb} v{version}: {getattr(exc, 'detail', None) or exc}"
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(
        FLASH,
        quote(flash[:500], safe=""),
        max_age=60,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


def public_url(rt: Runtime) -> str | None:
    return rt.settings.public_url
