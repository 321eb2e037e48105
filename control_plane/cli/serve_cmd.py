"""`shepherd serve`: the authenticated HTTP API, alone or beside the scheduled control plane (`--run`).

    shepherd serve --listen 0.0.0.0:8080 --db URL            # the API over the history (reads and actions)
    shepherd serve --run --listen 0.0.0.0:8080 --db URL      # and the control plane, as `shepherd run` does,
                                                             # so /metrics counts its passes

Connection options as `shepherd run`. Logs: `--log-format json` (or SHEPHERD_LOG_FORMAT=json) writes
one JSON object per line on stderr; tokens, Triton's key and passwords are masked in either format.
"""

from __future__ import annotations

from typing import Annotated

import typer

from control_plane.api import logs
from control_plane.cli.rollout_cmd import Config, Db, FleetFile, Grpc, Metrics, Repo, _runtime

Listen = Annotated[
    str,
    typer.Option(
        "--listen",
        envvar="SHEPHERD_LISTEN",
        help="HOST:PORT for the API (0.0.0.0:8080 in a container; port 0 picks a free one).",
    ),
]
LogFormat = Annotated[
    str | None,
    typer.Option("--log-format", envvar=logs.FORMAT_ENV, help="Log lines as `text` (default) or `json`."),
]


def serve(
    listen: Listen = "127.0.0.1:8080",
    run: Annotated[
        bool, typer.Option("--run", help="Also run the scheduled control plane in this process (as `shepherd run`).")
    ] = False,
    log_format: LogFormat = None,
    config: Config = None,
    repo: Repo = None,
    triton_grpc: Grpc = None,
    triton_metrics: Metrics = None,
    db: Db = None,
    fleet: FleetFile = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop after this long.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the HTTP API: status, history, rollouts, evidence, manual actions, /metrics, /healthz, /readyz."""
    from control_plane import scheduler  # FastAPI and uvicorn load only for this command
    from control_plane.api import metrics
    from control_plane.api.app import create_app
    from control_plane.api.server import serve as serve_app
    from control_plane.api.server import wait_for_signal

    logs.configure_logging(log_format, verbose=verbose)
    rt = _runtime(config, repo, triton_grpc, triton_metrics, db, fleet)
    logs.protect(rt.settings)
    app = create_app(rt)
    metrics.set_leader_source(lambda: scheduler.leader_status().role)  # "stopped" without --run

    def main() -> None:
        if run:
            scheduler.run_forever(rt, max_seconds=max_seconds)
        else:
            wait_for_signal(max_seconds)

    def announce(url: str) -> None:
        what = "API and control plane" if run else "API"
        print(f"shepherd serve: {what} listening on {url} (history {rt.store.safe_url})", flush=True)

    try:
        serve_app(app, listen, main=main, announce=announce)
    finally:
        rt.close()
