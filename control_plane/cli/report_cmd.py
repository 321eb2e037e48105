"""`shepherd report --rollout ID --out FILE.html`: one rollout's evidence as one self-contained HTML file.

The console's rollout page (the plot of latency, errors, quality, agreement and traffic share over
time, the phases, every decision with its checks and figures, the policy), with its CSS, script and
Plotly inlined: it opens from a ticket or an email with no network at all (its Content-Security-Policy
forbids every load). Read-only: the history is opened without migrating, as `shepherd history` does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from control_plane.cli.history_cmd import Db, Json, open_store
from control_plane.cli.output import console, print_json
from control_plane.errors import ConfigError

PublicUrl = Annotated[
    str | None,
    typer.Option(
        "--public-url",
        envvar="SHEPHERD_PUBLIC_URL",
        help="Where `shepherd serve` is reached (https://shepherd.example.com): the report links to the live page.",
    ),
]


def report(
    rollout: Annotated[
        int, typer.Option("--rollout", min=1, help="The rollout's id (`shepherd status`, the console).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write (replaced if it exists).")],
    db: Db = None,
    public_url: PublicUrl = None,
    as_json: Json = False,
) -> None:
    """Write one rollout's evidence as a self-contained HTML file (plots included, no network needed)."""
    from control_plane.console.render import live_url, report_html  # Jinja2 and the templates: only here
    from control_plane.console.views import rollout_data

    store = open_store(db)
    try:
        data = rollout_data(store, rollout)
        if data is None:
            raise ConfigError(f"no rollout {rollout} in {store.safe_url}")
        html = report_html(data, source=store.safe_url, live_url=live_url(public_url, rollout))
    finally:
        store.close()
    _write(out, html)
    size = out.stat().st_size
    summary: dict[str, Any] = {
        "rollout": rollout,
        "model": data.rollout.model,
        "candidate": data.rollout.candidate,
        "stable": data.rollout.stable,
        "outcome": data.rollout.outcome or "running",
        "out": str(out),
        "bytes": size,
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"rollout {rollout} ({data.rollout.model} v{data.rollout.candidate}, {summary['outcome']}): "
        f"wrote {out} ({size / 1e6:.1f} MB, opens offline)",
        highlight=False,
    )


def _write(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a report."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--out {path}: the folder {folder} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
