"""Turning page values into HTML: the Jinja2 templates, the static assets, and the one-file report.

    render("fleet.html", view=..., who=...)        # a page (autoescaped)
    asset("console.css")                             # (bytes, media type) of a static file
    report_html(store, 7, source="sqlite:///...")    # the rollout page as one file: CSS, JS and Plotly inlined

Plotly comes from the `plotly` package's own copy (`plotly/package_data/plotly.min.js`): served by
shepherd for pages, inlined in reports; nothing is fetched from a CDN.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from control_plane.console import charts
from control_plane.console.views import RolloutData, rollout_view, when

PREFIX = "/console"
ASSETS = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "plotly.min.js": "text/javascript; charset=utf-8",
}


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("control_plane.console", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["when"] = when
    return env


def render(template: str, **context: Any) -> str:
    context.setdefault("prefix", PREFIX)
    return environment().get_template(template).render(**context)


def asset_path(name: str) -> Path:
    """Where a static asset lies on disk (the console's own, or Plotly's from its package)."""
    if name == "plotly.min.js":
        return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    return Path(str(resources.files("control_plane.console") / "static" / name))


@functools.cache
def asset_text(name: str) -> str:
    return asset_path(name).read_text(encoding="utf-8")


def rollout_context(data: RolloutData) -> dict[str, Any]:
    return {"view": rollout_view(data), "figure": charts.figure(data)}


def report_html(data: RolloutData, *, source: str, live_url: str | None = None) -> str:
    """The rollout page as one self-contained HTML file: it loads nothing (its CSP forbids it)."""
    return render(
        "report.html",
        **rollout_context(data),
        css=asset_text("console.css"),
        console_js=asset_text("console.js"),
        plotly_js=asset_text("plotly.min.js"),
        written=when(datetime.now(UTC)),
        source=source,
        live_url=live_url,
    )


def live_url(public_url: str | None, rollout_id: int) -> str | None:
    """The rollout's page under shepherd's public URL (settings `public_url`), if one is set."""
    return f"{public_url.rstrip('/')}{PREFIX}/rollouts/{rollout_id}" if public_url else None
