"""What `fleet up` records in `<state dir>/fleet.json` so that `status`, `down`, `kill` and `restart`
(from another process, the CLI) find every part again.

The record holds pids, ports and paths, never the API key (only `restricted: true`). Ports are
laid out by `FleetPorts`: free ports by default, or a block from `--base-port` that a person can
remember (replica i: http B+3i, grpc B+3i+1, metrics B+3i+2; then the load balancer's gRPC, HTTP
and stats ports, then Prometheus, then each replica's readiness check: B+3N+4+i).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from control_plane.fleet import Replica
from control_plane.local_triton import Ports, free_ports

HOST = "127.0.0.1"  # every part of the local fleet binds loopback only
STATE_FILE = "fleet.json"


@dataclass(frozen=True)
class FleetPorts:
    replicas: tuple[Ports, ...]
    balancer_grpc: int
    balancer_http: int
    balancer_stats: int
    prometheus: int
    readiness: tuple[int, ...] = ()  # each replica's readiness check (its sidecar), in replica order

    @staticmethod
    def count_for(replicas: int) -> int:
        """How many ports a fleet of `replicas` takes: 3 per replica, 4 shared, 1 per readiness check."""
        return 4 * replicas + 4

    @classmethod
    def free(cls, count: int) -> FleetPorts:
        """Ports the kernel says are free now (as `LocalTriton` picks them)."""
        return cls.layout(free_ports(cls.count_for(count)), count)

    @classmethod
    def from_base(cls, base: int, count: int) -> FleetPorts:
        """The block base .. base + 4*count + 3: replica i at base+3i (http, grpc, metrics), then the rest."""
        return cls.layout(list(range(base, base + cls.count_for(count))), count)

    @classmethod
    def layout(cls, ports: list[int], count: int) -> FleetPorts:
        replicas = tuple(Ports(*ports[3 * i : 3 * i + 3]) for i in range(count))
        grpc, http, stats, scraper = ports[3 * count : 3 * count + 4]
        return cls(replicas, grpc, http, stats, scraper, readiness=tuple(ports[3 * count + 4 : 4 * count + 4]))

    def all(self) -> list[int]:
        return (
            [p for ports in self.replicas for p in ports.as_tuple()]
            + [self.balancer_grpc, self.balancer_http, self.balancer_stats, self.prometheus]
            + list(self.readiness)
        )


@dataclass(frozen=True)
class ReplicaRecord:
    """One tritonserver of the fleet; `state_dir` is its own `local_triton` state directory.

    Beside it runs its readiness check (`shepherd readiness`, as a pod's sidecar would): pid
    `readiness_pid`, answering on `readiness_port`, which HAProxy's health checks ask. It outlives a
    kill and restart of the server, as a sidecar container outlives a restart of Triton's container.
    """

    name: str
    pid: int
    http_port: int
    grpc_port: int
    metrics_port: int
    state_dir: str
    log_file: str
    readiness_pid: int = 0  # 0: none recorded (a record from before readiness checks)
    readiness_port: int = 0

    @property
    def ports(self) -> Ports:
        return Ports(self.http_port, self.grpc_port, self.metrics_port)

    @property
    def http(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def replica(self) -> Replica:
        """The replica as the control plane addresses it: directly, not through the load balancer."""
        return Replica(name=self.name, grpc=f"{HOST}:{self.grpc_port}", metrics=f"{HOST}:{self.metrics_port}")

    @property
    def marker(self) -> str:
        """What its command line holds (`--backend-directory=<state_dir>/backends`): ours, not a recycled pid."""
        return str(Path(self.state_dir) / "backends")

    @property
    def readiness_url(self) -> str:
        """Its readiness check's `/ready` (200 in rotation, 503 out, JSON with the reason)."""
        return f"http://{HOST}:{self.readiness_port}/ready"

    @property
    def readiness_pid_file(self) -> Path:
        """The check's `--pid-file`: on its command line, so also its marker (ours, not a recycled pid)."""
        return Path(self.state_dir) / "readiness.pid"

    @property
    def readiness_log(self) -> Path:
        return Path(self.state_dir) / "readiness.log"


@dataclass(frozen=True)
class PartRecord:
    """HAProxy or Prometheus: its pid, config file (also the marker on its command line), log and ports."""

    name: str
    pid: int
    config: str
    log_file: str
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def marker(self) -> str:
        return self.config


@dataclass(frozen=True)
class FleetState:
    state_dir: str
    repo: str
    fleet_file: str
    replicas: tuple[ReplicaRecord, ...]
    haproxy: PartRecord
    prometheus: PartRecord
    restricted: bool = False  # the replicas' repository API wants the key (never recorded itself)
    started_at: float = field(default_factory=time.time)

    @property
    def balancer_grpc(self) -> str:
        return f"{HOST}:{self.haproxy.ports['grpc']}"

    @property
    def balancer_http(self) -> str:
        return f"{HOST}:{self.haproxy.ports['http']}"

    @property
    def stats_url(self) -> str:
        return f"http://{HOST}:{self.haproxy.ports['stats']}/stats"

    @property
    def prometheus_url(self) -> str:
        return f"http://{HOST}:{self.prometheus.ports['web']}"

    def replica(self, name: str) -> ReplicaRecord:
        for record in self.replicas:
            if record.name == name:
                return record
        raise KeyError(f"no replica {name!r} in this fleet ({', '.join(r.name for r in self.replicas)})")

    def with_replica(self, record: ReplicaRecord) -> FleetState:
        return replace(self, replicas=tuple(record if r.name == record.name else r for r in self.replicas))

    def summary(self) -> dict[str, Any]:
        """What `fleet up --json` prints: every endpoint, the fleet file, no key."""
        return {
            "state_dir": self.state_dir,
            "repo": self.repo,
            "fleet_file": self.fleet_file,
            "restricted": self.restricted,
            "load_balancer": {"grpc": self.balancer_grpc, "http": self.balancer_http, "stats": self.stats_url},
            "prometheus": self.prometheus_url,
            "replicas": [
                {
                    "name": r.name,
                    "grpc": r.replica.grpc,
                    "http": r.http,
                    "metrics": r.replica.metrics,
                    "pid": r.pid,
                    "readiness": r.readiness_url,
                    "readiness_pid": r.readiness_pid,
                }
                for r in self.replicas
            ],
            "haproxy_pid": self.haproxy.pid,
            "prometheus_pid": self.prometheus.pid,
        }

    def for_storage(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_storage(cls, data: dict[str, Any]) -> FleetState:
        return cls(
            state_dir=data["state_dir"],
            repo=data["repo"],
            fleet_file=data["fleet_file"],
            replicas=tuple(ReplicaRecord(**r) for r in data["replicas"]),
            haproxy=PartRecord(**data["haproxy"]),
            prometheus=PartRecord(**data["prometheus"]),
            restricted=bool(data.get("restricted", False)),
            started_at=float(data.get("started_at", 0.0)),
        )


def read_state(state_dir: Path) -> FleetState | None:
    """The recorded fleet, or None when there is no record (or one this version cannot read)."""
    try:
        return FleetState.from_storage(json.loads((state_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_state(state: FleetState) -> None:
    """Write the record atomically (a reader never sees half a file)."""
    path = Path(state.state_dir) / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state.for_storage(), indent=2))
    os.replace(temporary, path)


def forget_state(state_dir: Path) -> None:
    (state_dir / STATE_FILE).unlink(missing_ok=True)
