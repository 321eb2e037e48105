"""`shepherd fleet up|status|down`: N real local Tritons behind HAProxy, scraped by Prometheus.

Everything binds 127.0.0.1. `up` prints the endpoints and writes the fleet file that `--fleet`
reads; every replica gets a readiness check beside it (`shepherd readiness`), which HAProxy's health
checks ask; `status` asks each replica and its check directly; `down` stops every process of the fleet. The key of
the replicas' repository API comes from `--api-key-env NAME`, never from the command line.
Exit codes: 62 HAProxy or Prometheus missing, 63 a part failed to start (its log's last lines with
SHEPHERD_DEBUG=1), 64 no fleet runs at the state directory; the Triton codes (11-14) as for
`shepherd triton start`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from control_plane import local_fleet
from control_plane.cli.output import console, error_console, print_json, print_table
from control_plane.cli.triton_cmd import ApiKeyEnv, Json, key_from_env

app = typer.Typer(
    help="A local fleet: N real tritonservers behind HAProxy, with Prometheus scraping each one.",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path,
    typer.Option("--state-dir", help="Where the fleet's record, configs and logs live (one fleet per folder)."),
]
DEFAULT_STATE_DIR = local_fleet.default_state_dir()


class _PartProgress:
    """One spinner line per part on stderr, turned into its note when the part is ready."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, object] = {}

    def __call__(self, part: str, note: str | None) -> None:
        self.progress.start()  # idempotent; only once something starts, so an early error stays one line
        if note is None:
            self.tasks[part] = self.progress.add_task(f"{part}: starting", total=1)
        elif part in self.tasks:
            self.progress.update(self.tasks[part], completed=1, description=f"{part}: [green]{note}[/]")  # type: ignore[arg-type]


@app.command()
def up(
    repo: Annotated[Path, typer.Option("--repo", help="Model repository every replica serves.")] = Path(
        "model_repository"
    ),
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=16, help="How many tritonservers.")] = 3,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    fleet_file: Annotated[
        Path | None, typer.Option("--fleet-file", help="Where to write the fleet file (default: STATE_DIR/fleet.yaml).")
    ] = None,
    base_port: Annotated[
        int | None,
        typer.Option(
            "--base-port",
            min=1,
            max=65535,
            help="Use the block of 4N+4 ports from here (replica i: http B+3i, grpc B+3i+1, metrics B+3i+2; "
            "then the load balancer's grpc, http and stats ports, Prometheus, and replica i's readiness "
            "check at B+3N+4+i). Default: free ports.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds each part may take to become ready.")] = 120.0,
    api_key_env: ApiKeyEnv = None,
    as_json: Json = False,
) -> None:
    """Start N tritonservers over one repository, HAProxy in front and Prometheus; wait until all are ready."""
    key = key_from_env(api_key_env)
    if as_json:
        state = local_fleet.up(
            repo,
            replicas=replicas,
            state_dir=state_dir,
            fleet_file=fleet_file,
            base_port=base_port,
            api_key=key,
            timeout=timeout,
        )
        print_json(state.summary())
        return
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=error_console, transient=False)
    try:
        state = local_fleet.up(
            repo,
            replicas=replicas,
            state_dir=state_dir,
            fleet_file=fleet_file,
            base_port=base_port,
            api_key=key,
            timeout=timeout,
            progress=_PartProgress(progress),
        )
    finally:
        if progress.live.is_started:
            progress.stop()
    rows = [(r.name, r.replica.grpc, r.http, r.replica.metrics, r.pid) for r in state.replicas]
    rows += [(f"{r.name} readiness", "", r.readiness_url, "", r.readiness_pid) for r in state.replicas]
    rows.append(
        ("load balancer (haproxy)", state.balancer_grpc, state.balancer_http, state.stats_url, state.haproxy.pid)
    )
    rows.append(("prometheus", "", "", state.prometheus_url, state.prometheus.pid))
    print_table("Fleet", ["part", "grpc", "http", "metrics / url", "pid"], rows)
    console.print(
        f"fleet file {state.fleet_file}; repository {state.repo}; "
        f"repository API {'needs the key' if state.restricted else 'open'}; logs in {state.state_dir}"
    )


@app.command()
def status(state_dir: StateDir = DEFAULT_STATE_DIR, api_key_env: ApiKeyEnv = None, as_json: Json = False) -> None:
    """Each replica's health and READY versions (asked directly), and whether HAProxy and Prometheus are up."""
    report = local_fleet.status(state_dir, api_key=key_from_env(api_key_env))
    if as_json:
        print_json(report.as_dict())
        return
    print_table(
        "Replicas",
        ["replica", "grpc", "live", "ready", "readiness check", "haproxy grpc/http", "versions (READY)"],
        [
            (
                r.name,
                r.grpc,
                _yes(r.live),
                _yes(r.ready),
                _gate(r.readiness),
                "/".join(r.balancer.get(side, "?") for side in ("grpc", "http")),
                "; ".join(f"{model}: {', '.join(versions)}" for model, versions in r.models.items())
                or (r.error or "none"),
            )
            for r in report.replicas
        ],
    )
    targets = sum(report.targets_up.values())
    console.print(
        f"haproxy {'up' if report.haproxy_up else 'DOWN'} (grpc {report.load_balancer['grpc']}, "
        f"http {report.load_balancer['http']}); prometheus {'up' if report.prometheus_up else 'DOWN'} "
        f"({report.prometheus_url}, {targets}/{len(report.replicas)} replicas scraped); fleet file {report.fleet_file}"
    )


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE_DIR, as_json: Json = False) -> None:
    """Stop every process of the fleet: the tritonservers with their Python stubs, HAProxy, Prometheus."""
    state = local_fleet.down(state_dir)
    pids = (
        {r.name: r.pid for r in state.replicas}
        | {f"{r.name} readiness": r.readiness_pid for r in state.replicas}
        | {"haproxy": state.haproxy.pid, "prometheus": state.prometheus.pid}
    )
    if as_json:
        print_json({"stopped": True, "state_dir": state.state_dir, "pids": pids})
        return
    console.print(
        f"fleet in {state.state_dir} stopped: " + ", ".join(f"{name} (pid {pid})" for name, pid in pids.items())
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _gate(readiness: dict[str, object]) -> str:
    """The check's answer in a cell: "ready", or "NOT ready: <reason>"."""
    if readiness.get("ready") is None:
        return f"NO ANSWER ({readiness.get('reason', '')})"
    return "ready" if readiness["ready"] else f"NOT ready: {readiness.get('reason', '')}"
