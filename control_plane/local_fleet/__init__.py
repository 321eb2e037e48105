"""A fleet of real local Tritons behind a real load balancer and a real Prometheus, on one machine.

Why: the control plane drives a fleet of replicas (control_plane/fleet.py), and its claims (every
replica converged, a canary on k of N replicas takes k/N of the traffic, a replica that dies and
comes back is repaired) can only be shown against real processes. `shepherd fleet up` starts:

    client ──gRPC (h2) / HTTP──> HAProxy (127.0.0.1, per-request round robin, ready checks, retries)
                                   ├──> r0: tritonserver (http, grpc, metrics ports)
                                   ├──> r1: tritonserver           ...same model repository
                                   └──> r2: tritonserver
    HAProxy's checks ──GET /ready──> each replica's readiness check (`shepherd readiness`, a sidecar:
                                     ready only while its Triton serves the serving manifest's models)
    Prometheus (127.0.0.1) ──scrapes every 1 s──> each replica's metrics port

and writes the fleet file (`control_plane.fleet.fleet_file_text`): the replicas by their own
addresses, `metrics: {source: prometheus, url}` and `load_balancer: {grpc, http}`.

The modules: `state` (the record in `<state dir>/fleet.json` and the port layout), `haproxy` and
`prometheus` (their configurations and what they report), `sidecar` (each replica's readiness
check), `processes` (starting, owning and stopping process groups), `control` (up, down, kill,
restart), `health` (status).
Everything binds 127.0.0.1. HAProxy and Prometheus come from Debian (`make system-deps`).

Example:
    with LocalFleet(repo, replicas=3, state_dir=tmp / "fleet") as fleet:
        client = tritonclient.grpc.InferenceServerClient(fleet.grpc_url)    # through HAProxy
        fleet.kill("r2")                                                     # SIGKILL, as a crash
        fleet.restart("r2")                                                  # same ports, no model loaded
        fleet.readiness("r2")     # {"ready": False, "missing": ["clf"], ...} until shepherd loads it
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from control_plane.errors import FleetNotRunning
from control_plane.fleet import Replica
from control_plane.local_fleet import haproxy, sidecar
from control_plane.local_fleet.control import (
    Progress,
    default_state_dir,
    down,
    kill_replica,
    restart_replica,
    running_state,
    up,
)
from control_plane.local_fleet.health import FleetReport, ReplicaHealth, status
from control_plane.local_fleet.state import FleetPorts, FleetState, PartRecord, ReplicaRecord

__all__ = [
    "FleetPorts",
    "FleetReport",
    "FleetState",
    "LocalFleet",
    "PartRecord",
    "Progress",
    "ReplicaHealth",
    "ReplicaRecord",
    "default_state_dir",
    "down",
    "kill_replica",
    "restart_replica",
    "running_state",
    "status",
    "up",
]


class LocalFleet(contextlib.AbstractContextManager["LocalFleet"]):
    """The local fleet for the length of a `with` block (tests, benchmarks), on free ports by default.

    Without a `state_dir` it lives in a temporary folder, removed again on exit.
    """

    def __init__(
        self,
        repo: Path,
        *,
        replicas: int = 3,
        state_dir: Path | None = None,
        fleet_file: Path | None = None,
        base_port: int | None = None,
        timeout: float = 120.0,
        api_key: str | None = None,
    ) -> None:
        self.repo = Path(repo)
        self.count = replicas
        self._given_dir = Path(state_dir) if state_dir is not None else None
        self._temporary_dir: Path | None = None  # made on entry when no state_dir is given, removed on exit
        self.state_dir = self._given_dir or Path(".shepherd-fleet-not-started")
        self.fleet_file_path = fleet_file
        self.base_port = base_port
        self.timeout = timeout
        self._api_key = api_key  # private and out of repr: never printed
        self._state: FleetState | None = None

    @property
    def state(self) -> FleetState:
        if self._state is None:
            raise FleetNotRunning("LocalFleet is not started")
        return self._state

    @property
    def replicas(self) -> tuple[Replica, ...]:
        """Each replica by its own addresses (what the control plane converges), in order r0, r1, ..."""
        return tuple(r.replica for r in self.state.replicas)

    @property
    def grpc_url(self) -> str:
        """The load balancer's gRPC address (host:port), where clients send their requests."""
        return self.state.balancer_grpc

    @property
    def http_url(self) -> str:
        """The load balancer's HTTP address (host:port)."""
        return self.state.balancer_http

    @property
    def prometheus_url(self) -> str:
        return self.state.prometheus_url

    @property
    def fleet_file(self) -> Path:
        return Path(self.state.fleet_file)

    def replica(self, name: str) -> ReplicaRecord:
        """A replica's record: pid, all three ports (`http` too), its log."""
        return self.state.replica(name)

    def __enter__(self) -> LocalFleet:
        if self._given_dir is None:
            self._temporary_dir = self.state_dir = Path(tempfile.mkdtemp(prefix="shepherd-fleet-"))
        try:
            self._state = up(
                self.repo,
                replicas=self.count,
                state_dir=self.state_dir,
                fleet_file=self.fleet_file_path,
                base_port=self.base_port,
                timeout=self.timeout,
                api_key=self._api_key,
            )
        except BaseException:
            self._remove_own_dir()
            raise
        return self

    def readiness(self, name: str) -> dict[str, Any] | None:
        """What the replica's readiness check answers now ({"ready", "reason", "missing"}); None: no answer."""
        return sidecar.answer(self.state.replica(name))

    def kill(self, name: str) -> None:
        """SIGKILL the replica's process group (server and Python stubs), as a crash would; its
        readiness check runs on (and says Triton does not answer)."""
        kill_replica(self.state_dir, name)

    def restart(self, name: str) -> None:
        """Start the replica again on the same ports; it serves nothing until a model is loaded."""
        record = restart_replica(self.state_dir, name, api_key=self._api_key, timeout=self.timeout)
        self._state = self.state.with_replica(record)

    def balancer_view(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of each replica: {"r0": {"grpc": "UP", "http": "UP"}, ...}."""
        return haproxy.server_states(self.state.stats_url) or {}

    def wait_balancer(self, name: str, *, up: bool, timeout: float = 10.0) -> bool:
        """Wait until HAProxy has `name` in rotation (up) or out of it on both protocols; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.balancer_view().get(name, {})
            sides = [view.get(side, "") for side in ("grpc", "http")]
            if all(s == "UP" for s in sides) if up else all(s.startswith(("DOWN", "MAINT")) for s in sides):
                return True
            time.sleep(0.05)
        return False

    def status(self) -> FleetReport:
        return status(self.state_dir, api_key=self._api_key)

    def __exit__(self, *exc_info: object) -> None:
        if self._state is not None:
            self._state = None
            with contextlib.suppress(FleetNotRunning):
                down(self.state_dir)
        self._remove_own_dir()

    def _remove_own_dir(self) -> None:
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            self._temporary_dir = None
