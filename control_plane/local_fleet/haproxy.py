"""HAProxy in front of the replicas: its configuration, its check, and what its stats page says.

Why HAProxy and these settings (see ../shared/notes/fleet-on-one-machine.md, verified here):
- gRPC is HTTP/2: the frontend binds with `proto h2` and talks h2 to each Triton (`proto h2` on
  the server lines), so every call is balanced on its own even when a client keeps one channel
  open (round robin per request, not per connection: a canary on k of N replicas gets k/N of the
  unversioned calls);
- a replica is in rotation only while its readiness check says it is *ready* (`GET /ready` on
  the check's own port, `check port`, every 500 ms while up and every second while down, HTTP/1
  even for the gRPC backend: `check-proto h1`): Triton answers and serves every model of the
  serving manifest (control_plane/readiness.py, local_fleet/sidecar.py). Triton's own
  `/v2/health/ready` says yes with nothing loaded, which put a restarted replica back in rotation
  before shepherd had loaded it (docs/benchmarks.md: 85 to 597 failed requests per restart). A
  connection error seen on live traffic takes a replica out at once (`observe layer4` ... `mark-down`).
  The replicas run with `--strict-readiness=false` (see `control.REPLICA_ARGS`): with Triton's
  default, a replica is "not ready" while it loads any model, and a canary load would take it out;
- a request that could not reach its replica, or got no answer because the replica died, is sent
  again to another one (`retry-on conn-failure empty-response junk-response`, `option redispatch 1`,
  and `option http-buffer-request` so the whole request is still in HAProxy's buffer to resend).
  An inference is idempotent, so resending it is safe; a replica killed mid-request then costs the
  client nothing or nearly nothing.
Logs go to stdout (the log file), only abnormal requests and health changes (`dontlog-normal`).
"""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Sequence
from pathlib import Path

import requests

from control_plane.errors import FleetStartFailed
from control_plane.local_fleet.state import HOST, ReplicaRecord

GRPC_BACKEND = "tritons_grpc"
HTTP_BACKEND = "tritons_http"
BACKENDS = {GRPC_BACKEND: "grpc", HTTP_BACKEND: "http"}


def config_text(replicas: Sequence[ReplicaRecord], *, grpc_port: int, http_port: int, stats_port: int) -> str:
    """The whole configuration; a pure function of the ports, so it can be checked without a fleet."""
    grpc_servers = "\n".join(
        f"    server {r.name} {HOST}:{r.grpc_port} proto h2 check port {r.readiness_port} check-proto h1"
        for r in replicas
    )
    http_servers = "\n".join(
        f"    server {r.name} {HOST}:{r.http_port} check port {r.readiness_port}" for r in replicas
    )
    return f"""\
# Written by `shepherd fleet up`; rewritten at every start.
global
    log stdout format raw local0 info
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response
    option http-buffer-request
    option httpchk
    http-check send meth GET uri /ready
    default-server inter 500ms fastinter 250ms downinter 1s rise 2 fall 2 observe layer4 error-limit 1 on-error mark-down

frontend grpc_in
    bind {HOST}:{grpc_port} proto h2
    default_backend {GRPC_BACKEND}

backend {GRPC_BACKEND}
    balance roundrobin
{grpc_servers}

frontend http_in
    bind {HOST}:{http_port}
    default_backend {HTTP_BACKEND}

backend {HTTP_BACKEND}
    balance roundrobin
{http_servers}

frontend stats
    bind {HOST}:{stats_port}
    stats enable
    stats uri /stats
    monitor-uri /ready
"""


def check_config(binary: Path, config: Path) -> None:
    """`haproxy -c`: refuse a configuration this HAProxy cannot run, with its own words."""
    try:
        result = subprocess.run(
            [str(binary), "-c", "-q", "-f", str(config)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FleetStartFailed(f"cannot run {binary} -c: {exc}") from exc
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip()
        first = next((line for line in said.splitlines() if "ALERT" in line), said.splitlines()[0] if said else "")
        raise FleetStartFailed(f"haproxy refused its configuration {config}: {first}\n{said}")


def command(binary: Path, config: Path) -> list[str]:
    """HAProxy in the foreground (`-db`), so its pid is the one we started and its group ends with it."""
    return [str(binary), "-db", "-f", str(config)]


def server_states(stats_url: str, timeout: float = 1.0) -> dict[str, dict[str, str]] | None:
    """What HAProxy thinks of each replica: {"r0": {"grpc": "UP", "http": "UP"}, ...}; None if it does not answer.

    Read from the stats page's CSV (`pxname`, `svname`, `status`: UP, DOWN, "UP 1/2" while rising,
    NOLB, MAINT, no check).
    """
    try:
        response = requests.get(f"{stats_url};csv", timeout=timeout)
        response.raise_for_status()
    except requests.RequestException:
        return None
    found: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(response.text.removeprefix("# "))):
        side = BACKENDS.get(row.get("pxname", ""))
        name = row.get("svname", "")
        if side and name not in ("FRONTEND", "BACKEND"):
            found.setdefault(name, {})[side] = row.get("status", "")
    return found


def is_up(stats_url: str) -> bool:
    """HAProxy answers on its stats port (its monitor URI)."""
    try:
        return requests.get(stats_url.removesuffix("/stats") + "/ready", timeout=1.0).ok
    except requests.RequestException:
        return False
