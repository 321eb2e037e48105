"""`shepherd run|tick|promote|rollback|pin`: the control plane from the command line.

Connection settings come from `--repo/--triton-grpc/--triton-metrics/--db/--fleet`, else the environment
(SHEPHERD_REPO, SHEPHERD_TRITON_GRPC, SHEPHERD_TRITON_METRICS, SHEPHERD_DB, SHEPHERD_FLEET), else
shepherd.yaml, else embedded defaults (model_repository, 127.0.0.1:8001, 127.0.0.1:8002, sqlite:///shepherd.db).
A fleet (`--fleet FILE`, SHEPHERD_FLEET or `fleet:` in shepherd.yaml) replaces the single Triton.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from control_plane import manual, reconciler, scheduler
from control_plane.api.logs import configure_logging
from control_plane.cli.output import console, print_error, print_json, print_table
from control_plane.leader import LeaderTiming, leading
from control_plane.report import TickReport
from control_plane.runtime import Runtime, open_runtime
from control_plane.settings import load_settings

Config = Annotated[
    Path | None, typer.Option("--config", help="shepherd.yaml (default: SHEPHERD_CONFIG or ./shepherd.yaml).")
]
Repo = Annotated[Path | None, typer.Option("--repo", help="Triton model repository.")]
Grpc = Annotated[str | None, typer.Option("--triton-grpc", help="Triton gRPC HOST:PORT.")]
Metrics = Annotated[str | None, typer.Option("--triton-metrics", help="Triton metrics HOST:PORT.")]
Db = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL of the history database.")]
FleetFile = Annotated[
    Path | None,
    typer.Option("--fleet", help="Fleet file: the Triton replicas (a list or a DNS name) and their metrics source."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Actor = Annotated[str | None, typer.Option("--actor", help="Who asks (default: the login name).")]
Reason = Annotated[str, typer.Option("--reason", help="Why; kept in the audit trail.")]
Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="URL of a `shepherd serve` API to act through (token from SHEPHERD_TOKEN; the token's owner is the actor).",
    ),
]


Connection = tuple[Path | None, Path | None, str | None, str | None, str | None, Path | None]


def _runtime(
    config: Path | None,
    repo: Path | None,
    grpc: str | None,
    metrics: str | None,
    db: str | None,
    fleet: Path | None = None,
) -> Runtime:
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "repo": repo,
            "triton_grpc": grpc,
            "triton_metrics": metrics,
            "db_url": db,
            "fleet": fleet,
        }.items()
        if value is not None
    }
    return open_runtime(load_settings(config, overrides=overrides))


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return os.environ.get("USER", "unknown")


def _act(
    action: Callable[[Runtime], TickReport],
    connection: Connection,
    as_json: bool,
) -> None:
    """Open the runtime, run one action, close it, and print what the action did."""
    rt = _runtime(*connection)
    try:
        report = action(rt)
    finally:
        rt.close()
    _show(report, as_json)


def _remote(
    server: str, action: str, model: str, version: int | None, reason: str, actor: str | None, as_json: bool
) -> None:
    """The action through the API at `server` instead of on the database and Triton directly."""
    if actor:
        raise typer.BadParameter("not used with --server: the API records the token's owner", param_hint="--actor")
    from control_plane.api.client import remote_action  # httpx loads only for --server

    _show(remote_action(server, action, model, version, reason=reason), as_json)


def _show(report: TickReport, as_json: bool) -> None:
    if as_json:
        print_json(report.as_dict())
    else:
        rows = [
            (
                a["action"],
                a["model"],
                a.get("version") or "",
                {k: v for k, v in a.items() if k not in ("action", "model", "version")} or "",
            )
            for a in report.actions
        ]
        print_table("What this pass did", ["action", "model", "version", "details"], rows)
        for error in report.errors:
            print_error(str(error))
    if report.errors:
        raise typer.Exit(report.exit_code)


def tick(
    config: Config = None,
    repo: Repo = None,
    triton_grpc: Grpc = None,
    triton_metrics: Metrics = None,
    db: Db = None,
    fleet: FleetFile = None,
    as_json: Json = False,
) -> None:
    """Run one full cycle (reconcile, probe, judge) and exit: for cron and Kubernetes CronJobs.

    It takes the history's leader lock for the cycle, with one try: while another process leads (a
    `shepherd run`, another tick) it does nothing and exits 23.
    """
    _act(_tick_as_leader, (config, repo, triton_grpc, triton_metrics, db, fleet), as_json)


def _tick_as_leader(rt: Runtime) -> TickReport:
    with leading(rt.settings.db_url, role="tick"):
        return reconciler.tick(rt)


def run(
    config: Config = None,
    repo: Repo = None,
    triton_grpc: Grpc = None,
    triton_metrics: Metrics = None,
    db: Db = None,
    fleet: FleetFile = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop after this long.")] = None,
    leader_retry_seconds: Annotated[
        float, typer.Option("--leader-retry-seconds", help="How often a standby tries to become the leader.")
    ] = LeaderTiming.retry_seconds,
    leader_check_seconds: Annotated[
        float, typer.Option("--leader-check-seconds", help="How often the leader confirms its lock (at most 2).")
    ] = LeaderTiming.check_seconds,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text or json (default: SHEPHERD_LOG_FORMAT, else text).")
    ] = None,
) -> None:
    """Run the scheduled control plane until SIGINT/SIGTERM; it acts only while it leads its history database."""
    configure_logging(log_format, verbose=verbose)
    timing = LeaderTiming(retry_seconds=leader_retry_seconds, check_seconds=leader_check_seconds)
    rt = _runtime(config, repo, triton_grpc, triton_metrics, db, fleet)
    console.print(
        f"shepherd running: repository {rt.settings.repo}, fleet {rt.settings.fleet.describe()}, "
        f"metrics {rt.settings.metrics.source}, history {rt.store.safe_url}"
    )
    try:
        scheduler.run_forever(rt, max_seconds=max_seconds, timing=timing)
    finally:
        rt.close()


def _manual_command(act: Callable[..., TickReport], default_reason: str, doc: str, *, name: str) -> Callable[..., None]:
    """A `promote`/`rollback` command: MODEL VERSION, why, who, and the connection options."""

    def command(
        model: str,
        version: int,
        reason: Reason = default_reason,
        actor: Actor = None,
        config: Config = None,
        repo: Repo = None,
        triton_grpc: Grpc = None,
        triton_metrics: Metrics = None,
        db: Db = None,
        fleet: FleetFile = None,
        as_json: Json = False,
        server: Server = None,
    ) -> None:
        if server:
            _remote(server, name, model, version, reason, actor, as_json)
            return
        _act(
            lambda rt: act(rt, model, version, actor=_actor(actor), reason=reason),
            (config, repo, triton_grpc, triton_metrics, db, fleet),
            as_json,
        )

    command.__doc__ = doc
    return command


promote = _manual_command(
    manual.manual_promote, "manual promotion", "Make VERSION the stable version of MODEL now.", name="promote"
)
rollback = _manual_command(
    manual.manual_rollback,
    "manual rollback",
    "Unload VERSION of MODEL and never load it again automatically.",
    name="rollback",
)


def pin(
    model: str,
    version: Annotated[int | None, typer.Argument()] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the pin.")] = False,
    reason: Reason = "manual pin",
    actor: Actor = None,
    config: Config = None,
    repo: Repo = None,
    triton_grpc: Grpc = None,
    triton_metrics: Metrics = None,
    db: Db = None,
    fleet: FleetFile = None,
    as_json: Json = False,
    server: Server = None,
) -> None:
    """Serve only VERSION of MODEL and pause its rollouts (`--clear` resumes)."""
    if version is None and not clear:
        raise typer.BadParameter("give a VERSION, or --clear to remove the pin")
    if server:
        _remote(server, "unpin" if clear else "pin", model, None if clear else version, reason, actor, as_json)
        return
    _act(
        lambda rt: manual.manual_pin(rt, model, None if clear else version, actor=_actor(actor), reason=reason),
        (config, repo, triton_grpc, triton_metrics, db, fleet),
        as_json,
    )
