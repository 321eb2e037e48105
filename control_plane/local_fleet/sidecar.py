"""Each replica's readiness check, run beside it as a Kubernetes pod runs a sidecar container.

Why: HAProxy puts a replica in rotation only while `shepherd readiness` says it serves every model
of the serving manifest (control_plane/readiness.py), not merely while Triton runs; so a replica
that restarts empty stays out until shepherd's pass has loaded it. One check per replica, started
by `fleet up` before its server, stopped by `fleet down`. A kill or restart of the server leaves
its check running (it then answers 503: Triton does not answer), as a sidecar outlives a restart of
the Triton container in its pod.

The check runs in the fleet's Python (`python -m control_plane.cli readiness`) with the clean
environment of every part plus, for a fleet whose repository API is keyed, the key in
SHEPHERD_TRITON_API_KEY (the variable shepherd itself reads; never on the command line), and in
the replica's own folder, so no ./shepherd.yaml of the caller's working directory applies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from control_plane.local_fleet.processes import owned, spawn
from control_plane.local_fleet.state import HOST, ReplicaRecord
from control_plane.settings import API_KEY_ENV


def command(record: ReplicaRecord, repo: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "control_plane.cli",
        "readiness",
        "--repo",
        str(repo),
        "--triton-grpc",
        record.replica.grpc,
        "--listen",
        f"{HOST}:{record.readiness_port}",
        "--pid-file",
        str(record.readiness_pid_file),
    ]


def start(record: ReplicaRecord, repo: Path, api_key: str | None) -> subprocess.Popen[bytes]:
    """Start the replica's check (it answers once Python has loaded: about a second here)."""
    Path(record.state_dir).mkdir(parents=True, exist_ok=True)
    return spawn(
        command(record, repo),
        record.readiness_log,
        env={API_KEY_ENV: api_key} if api_key else None,
        cwd=Path(record.state_dir),
    )


def running(record: ReplicaRecord) -> bool:
    """Its check's process is alive and still ours (the pid file's path is on its command line)."""
    return record.readiness_pid > 0 and owned(record.readiness_pid, str(record.readiness_pid_file))


def answer(record: ReplicaRecord, timeout: float = 1.5) -> dict[str, Any] | None:
    """What its check says now ({"ready", "reason", "missing"}); None when it does not answer."""
    try:
        response = requests.get(record.readiness_url, timeout=timeout)
        body = response.json()
    except (requests.RequestException, ValueError):
        return None
    if response.status_code not in (200, 503) or not isinstance(body, dict) or "ready" not in body:
        return None
    return body


def live(record: ReplicaRecord) -> bool:
    try:
        return requests.get(f"http://{HOST}:{record.readiness_port}/live", timeout=1.0).ok
    except requests.RequestException:
        return False
