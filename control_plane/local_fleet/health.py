"""`fleet status`: how each replica is doing, as each replica itself says, and as HAProxy and Prometheus see it.

Each replica is asked directly (live, ready, its repository index), never through the load
balancer, which would answer for whichever replica it picked, and so is its readiness check (what
HAProxy's health checks ask: in rotation only while it serves the serving manifest's models). A replica that does not answer, or
whose repository API wants a key that was not given, is reported as such in its row: one sick
replica never hides the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from control_plane import local_triton
from control_plane.errors import TritonAccessDenied, TritonUnreachable
from control_plane.local_fleet import haproxy, prometheus, sidecar
from control_plane.local_fleet.control import running_state
from control_plane.local_fleet.processes import owned
from control_plane.local_fleet.state import ReplicaRecord


@dataclass(frozen=True)
class ReplicaHealth:
    name: str
    grpc: str
    http: str
    metrics: str
    pid: int
    running: bool  # its process is alive
    live: bool
    ready: bool
    balancer: dict[str, str]  # HAProxy's view per protocol: {"grpc": "UP", "http": "DOWN"}
    models: dict[str, list[str]] = field(default_factory=dict)  # model -> its READY versions
    error: str | None = None  # why the versions could not be read
    # Its readiness check: {"url", "pid", "running", "ready", "reason", "missing"}; ready None when it does not answer.
    readiness: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetReport:
    state_dir: str
    fleet_file: str
    load_balancer: dict[str, str]
    haproxy_up: bool
    prometheus_url: str
    prometheus_up: bool
    targets_up: dict[str, bool]  # Prometheus's view: instance -> last scrape worked
    replicas: tuple[ReplicaHealth, ...]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["replicas"] = [asdict(r) for r in self.replicas]
        return data


def status(state_dir: Path, *, api_key: str | None = None) -> FleetReport:
    """The health of every part of the fleet recorded at `state_dir`; FleetNotRunning when none runs."""
    state = running_state(state_dir)
    haproxy_up = owned(state.haproxy.pid, state.haproxy.marker) and haproxy.is_up(state.stats_url)
    servers = (haproxy.server_states(state.stats_url) if haproxy_up else None) or {}
    prometheus_up = owned(state.prometheus.pid, state.prometheus.marker) and prometheus.is_ready(state.prometheus_url)
    return FleetReport(
        state_dir=state.state_dir,
        fleet_file=state.fleet_file,
        load_balancer={"grpc": state.balancer_grpc, "http": state.balancer_http, "stats": state.stats_url},
        haproxy_up=haproxy_up,
        prometheus_url=state.prometheus_url,
        prometheus_up=prometheus_up,
        targets_up=(prometheus.targets_up(state.prometheus_url) or {}) if prometheus_up else {},
        replicas=tuple(_replica_health(r, servers.get(r.name, {}), api_key) for r in state.replicas),
    )


def _health(url: str) -> bool:
    try:
        return requests.get(url, timeout=1.0).ok
    except requests.RequestException:
        return False


def _replica_health(record: ReplicaRecord, balancer: dict[str, str], api_key: str | None) -> ReplicaHealth:
    running = owned(record.pid, record.marker)
    live = running and _health(f"http://{record.http}/v2/health/live")
    ready = live and _health(f"http://{record.http}/v2/health/ready")
    models: dict[str, list[str]] = {}
    error = None if live else "not running" if not running else "does not answer"
    if live:
        try:
            for entry in local_triton.repository_index(record.http, timeout=2.0, api_key=api_key):
                if entry.state == "READY":
                    models.setdefault(entry.model, []).append(entry.version)
        except (TritonUnreachable, TritonAccessDenied) as exc:
            error = str(exc)
    return ReplicaHealth(
        name=record.name,
        grpc=record.replica.grpc,
        http=record.http,
        metrics=record.replica.metrics,
        pid=record.pid,
        running=running,
        live=live,
        ready=ready,
        balancer=dict(balancer),
        models={m: sorted(v, key=lambda x: (len(x), x)) for m, v in sorted(models.items())},
        error=error,
        readiness=_readiness(record),
    )


def _readiness(record: ReplicaRecord) -> dict[str, Any]:
    running = sidecar.running(record)
    said = sidecar.answer(record) if running else None
    return {
        "url": record.readiness_url,
        "pid": record.readiness_pid,
        "running": running,
        "ready": said["ready"] if said is not None else None,
        "reason": said.get("reason", "") if said is not None else ("does not answer" if running else "not running"),
        "missing": list(said.get("missing", [])) if said is not None else [],
    }
