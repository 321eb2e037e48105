"""`shepherd triton start|stop|status`: the real local tritonserver for development and demos."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from control_plane import local_triton
from control_plane.cli.output import console, print_json, print_table

app = typer.Typer(
    help="Run the real tritonserver (from the nvidia-pytriton wheel) on this machine.", no_args_is_help=True
)

HttpPort = Annotated[
    int, typer.Option("--http-port", min=1, max=65535, help="HTTP port; also names the server for stop/status.")
]
StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Where the pid, log and backends live (default: per port).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def start(
    repo: Annotated[Path, typer.Option("--repo", help="Model repository to serve.")] = Path("model_repository"),
    http_port: HttpPort = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=1, max=65535)] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", min=1, max=65535)] = 8002,
    state_dir: StateDir = None,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Server log (default: in the state dir).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for ready.")] = 120.0,
    as_json: Json = False,
) -> None:
    """Start tritonserver in explicit model-control mode and wait until it is ready."""
    state = local_triton.start(
        repo,
        ports=local_triton.Ports(http_port, grpc_port, metrics_port),
        state_dir=state_dir,
        log_file=log_file,
        timeout=timeout,
    )
    if as_json:
        print_json(asdict(state))
        return
    console.print(
        f"tritonserver ready (pid {state.pid}): http {state.http_port}, grpc {state.grpc_port}, "
        f"metrics {state.metrics_port}; repository {state.repo}; log {state.log_file}"
    )


@app.command()
def stop(http_port: HttpPort = 8000, state_dir: StateDir = None, as_json: Json = False) -> None:
    """Stop the server started for this port, with every Python stub it started."""
    state = local_triton.stop(http_port=http_port, state_dir=state_dir)
    if as_json:
        print_json({"stopped": True, "pid": state.pid, "http_port": state.http_port})
        return
    console.print(f"tritonserver (pid {state.pid}) on http port {state.http_port} stopped")


@app.command()
def status(http_port: HttpPort = 8000, state_dir: StateDir = None, as_json: Json = False) -> None:
    """Say whether the server is ready and which models and versions it has loaded."""
    state, index = local_triton.status(http_port=http_port, state_dir=state_dir)
    if as_json:
        print_json(
            {
                "ready": True,
                "server": asdict(state) if state else None,
                "models": [asdict(entry) for entry in index],
            }
        )
        return
    where = f"pid {state.pid}, repository {state.repo}" if state else "not started by shepherd"
    console.print(f"tritonserver ready on http port {http_port} ({where})")
    print_table(
        "Models",
        ["model", "version", "state", "reason"],
        [(e.model, e.version, e.state, e.reason) for e in index],
    )
