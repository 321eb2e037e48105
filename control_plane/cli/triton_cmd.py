"""`shepherd triton start|stop|status`: the real local tritonserver for development and demos.

The server binds 127.0.0.1 unless `--host` says otherwise. `--api-key-env NAME` restricts its
model-repository API to requests carrying the key held in the environment variable NAME: the key
itself never appears on shepherd's command line, in its output, in state.json or in an error.
`--tls-cert FILE --tls-key FILE` serve gRPC over TLS (HTTP and metrics stay plaintext; the
readiness check uses HTTP); `--tls-ca FILE` also requires client certificates signed by that CA.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from control_plane import local_triton
from control_plane.cli.output import console, print_json, print_table, waiting
from control_plane.errors import ConfigError

app = typer.Typer(
    help="Run the real tritonserver (from the nvidia-pytriton wheel) on this machine.", no_args_is_help=True
)

GRPC_TLS_WORDS = {"off": "plaintext", "tls": "over TLS", "mutual": "over mutual TLS"}
HttpPort = Annotated[
    int, typer.Option("--http-port", min=1, max=65535, help="HTTP port; also names the server for stop/status.")
]
StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Where the pid, log and backends live (default: per port).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ApiKeyEnv = Annotated[
    str | None,
    typer.Option(
        "--api-key-env",
        metavar="NAME",
        help="Environment variable holding the key of Triton's model-repository API (the key is never shown).",
    ),
]


def server_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> local_triton.ServerTls | None:
    """The TLS files given on the command line; ConfigError when one of a pair is missing."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("--tls-ca: mutual TLS needs the server's own --tls-cert and --tls-key too")
        return None
    if cert is None or key is None:
        raise ConfigError(f"{'--tls-cert' if cert is None else '--tls-key'}: --tls-cert and --tls-key go together")
    return local_triton.ServerTls(cert, key, client_ca)


def key_from_env(name: str | None) -> str | None:
    """The key held in the environment variable `name`; ConfigError when it is not set."""
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"--api-key-env: environment variable {name} is not set")
    return value


@app.command()
def start(
    repo: Annotated[Path, typer.Option("--repo", help="Model repository to serve.")] = Path("model_repository"),
    http_port: HttpPort = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=1, max=65535)] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", min=1, max=65535)] = 8002,
    state_dir: StateDir = None,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Server log (default: in the state dir).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for ready.")] = 120.0,
    host: Annotated[
        str, typer.Option("--host", help="Address every port binds (0.0.0.0: all interfaces; mind the risk).")
    ] = local_triton.DEFAULT_HOST,
    api_key_env: ApiKeyEnv = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", metavar="FILE", help="Serve gRPC over TLS with this PEM certificate.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", metavar="FILE", help="The PEM private key of --tls-cert.")
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca", metavar="FILE", help="Require gRPC client certificates signed by this CA (mutual TLS)."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Start tritonserver in explicit model-control mode and wait until it is ready."""
    with waiting(f"starting tritonserver (HTTP port {http_port}) and waiting until it is ready", enabled=not as_json):
        state = local_triton.start(
            repo,
            ports=local_triton.Ports(http_port, grpc_port, metrics_port),
            state_dir=state_dir,
            log_file=log_file,
            timeout=timeout,
            host=host,
            api_key=key_from_env(api_key_env),
            tls=server_tls(tls_cert, tls_key, tls_ca),
        )
    if as_json:
        print_json(asdict(state))
        return
    console.print(
        f"tritonserver ready (pid {state.pid}) on {state.host}: http {state.http_port}, grpc {state.grpc_port}, "
        f"metrics {state.metrics_port}; repository API {'needs the key' if state.restricted else 'open'}; "
        f"gRPC {GRPC_TLS_WORDS[state.grpc_tls]}; "
        f"repository {state.repo}; log {state.log_file}"
    )


@app.command()
def stop(http_port: HttpPort = 8000, state_dir: StateDir = None, as_json: Json = False) -> None:
    """Stop the server started for this port, with every Python stub it started."""
    with waiting(f"stopping tritonserver (HTTP port {http_port}) and its Python stubs", enabled=not as_json):
        state = local_triton.stop(http_port=http_port, state_dir=state_dir)
    if as_json:
        print_json({"stopped": True, "pid": state.pid, "http_port": state.http_port})
        return
    console.print(f"tritonserver (pid {state.pid}) on http port {state.http_port} stopped")


@app.command()
def status(
    http_port: HttpPort = 8000, state_dir: StateDir = None, api_key_env: ApiKeyEnv = None, as_json: Json = False
) -> None:
    """Say whether the server is ready and which models and versions it has loaded."""
    state, index = local_triton.status(http_port=http_port, state_dir=state_dir, api_key=key_from_env(api_key_env))
    if as_json:
        print_json(
            {
                "ready": True,
                "server": asdict(state) if state else None,
                "models": [asdict(entry) for entry in index],
            }
        )
        return
    where = f"pid {state.pid}, bound to {state.host}, repository {state.repo}" if state else "not started by shepherd"
    console.print(f"tritonserver ready on http port {http_port} ({where})")
    print_table(
        "Models",
        ["model", "version", "state", "reason"],
        [(e.model, e.version, e.state, e.reason) for e in index],
    )
