"""`shepherd run|tick|promote|rollback|pin`: the control plane from the command line.

Connection settings come from `--repo/--triton-grpc/--triton-metrics/--db/--fleet`, else the environment
(SHEPHERD_REPO, SHEPHERD_TRITON_GRPC, SHEPHERD_TRITON_METRICS, SHEPHERD_DB, SHEPHERD_FLEET), else
shepherd.yaml, else embedded defaults (model_repository, 127.0.0.1:8001, 127.0.0.1:8002, sqlite:///shepherd.db).
A fleet (`--fleet FILE`, SHEPHERD_FLEET or `fleet:` in shepherd.yaml) replaces the single Triton.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from control_plane import manual, reconciler, scheduler
from control_plane.cli.output import console, print_error, print_json, print_table
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
    """Run one full cycle (reconcile, probe, judge) and exit: for cron and Kubernetes CronJobs."""
    _act(reconciler.tick, (config, repo, triton_grpc, triton_metrics, db, fleet), as_json)


def run(
    config: Config = None,
    repo: Repo = None,
    triton_grpc: Grpc = None,
    triton_metrics: Metrics = None,
    db: Db = None,
    fleet: FleetFile = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop after this long.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the scheduled control plane until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rt = _runtime(config, repo, triton_grpc, triton_metrics, db, fleet)
    console.print(
        f"shepherd running: repository {rt.settings.repo}, fleet {rt.settings.fleet.describe()}, "
        f"metrics {rt.settings.metrics.source}, history {rt.store.safe_url}"
    )
    try:
        scheduler.run_forever(rt, max_seconds=max_seconds)
    finally:
        rt.close()


def _manual_command(act: Callable[..., TickReport], default_reason: str, doc: str) -> Callable[..., None]:
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
    ) -> None:
        _act(
            lambda rt: act(rt, model, version, actor=_actor(actor), reason=reason),
            (config, repo, triton_grpc, triton_metrics, db, fleet),
            as_json,
        )

    command.__doc__ = doc
    return command


promote = _manual_command(manual.manual_promote, "manual promotion", "Make VERSION the stable version of MODEL now.")
rollback = _manual_command(
    manual.manual_rollback, "manual rollback", "Unload VERSION of MODEL and never load it again automatically."
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
) -> None:
    """Serve only VERSION of MODEL and pause its rollouts (`--clear` resumes)."""
    if version is None and not clear:
        raise typer.BadParameter("give a VERSION, or --clear to remove the pin")
    _act(
        lambda rt: manual.manual_pin(rt, model, None if clear else version, actor=_actor(actor), reason=reason),
        (config, repo, triton_grpc, triton_metrics, db, fleet),
        as_json,
    )
