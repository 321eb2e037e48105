"""The web console of `shepherd serve` and the one-file rollout report (`shepherd report`).

session.py   signed session cookies made from a pasted token; CSRF values for forms
access.py    who is asking: a session cookie or a bearer token, and what that role may do
views.py     what each page shows, read from the SQL history only
charts.py    the rollout page's Plotly figure (latency, errors, quality, share, decisions, phases)
search.py    the history search and the SQL it ran
render.py    Jinja2 templates, static assets (Plotly from its package), the self-contained report
routes.py    the routes under /console

install(app)           # done by control_plane.api.app.create_app
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from control_plane.console.session import Sessions


def install(app: FastAPI, sessions: Sessions | None = None) -> None:
    """Mount the console on `app` (created by create_app, whose state holds the runtime and the tokens)."""
    from control_plane.console.routes import PREFIX, router

    app.state.console_sessions = sessions or Sessions.from_env()
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)
