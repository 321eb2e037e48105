"""`shepherd tick` meeting a probe error or a dead endpoint: its documented exit code and one line per error.

A canary is put in flight against the real local Triton, then `shepherd tick` runs as a user would
with the metrics endpoint closed, answering garbage, or Triton itself unreachable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from builders.repository import ModelRepository
from control_plane.local_triton import LocalTriton
from control_plane.store.models import State
from tests.classifier_models import publish
from tests.test_control_plane import FAST_POLICY, establish_stable, make_runtime, state_of, tick_until

pytestmark = pytest.mark.triton

SLOW_BAKE = FAST_POLICY.replace("bake_seconds: 6", "bake_seconds: 600")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Garbage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"this is { not prometheus text\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def garbage_metrics() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tick(tmp_path: Path, repo: Path, grpc: str, metrics: str, db: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHEPHERD_")}
    command = [
        sys.executable, "-m", "control_plane.cli", "tick", "--config", str(tmp_path / "shepherd.yaml"),
        "--repo", str(repo), "--triton-grpc", grpc, "--triton-metrics", metrics, "--db", db,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)


def _one_error_line(done: subprocess.CompletedProcess[str], needle: str) -> None:
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and all(line.startswith("error: ") for line in lines), done.stderr
    assert any(needle in line for line in lines), done.stderr


def test_tick_exit_codes_for_probe_and_endpoint_errors(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path, garbage_metrics: str
) -> None:
    rt = make_runtime(repo, triton, tmp_path, policy=SLOW_BAKE)
    try:
        establish_stable(rt, repo, tmp_path)
        candidate = publish(repo, tmp_path / "build", "clf", "same")
        tick_until(rt, lambda: state_of(rt, "clf", candidate) == State.canary)
        db, grpc = rt.settings.db_url, triton.state.grpc_url
    finally:
        rt.close()

    closed = _tick(tmp_path, repo.root, grpc, f"127.0.0.1:{_closed_port()}", db)
    assert closed.returncode == 51, closed.stdout + closed.stderr  # MetricsUnavailable
    _one_error_line(closed, "metrics")

    garbage = _tick(tmp_path, repo.root, grpc, garbage_metrics, db)
    assert garbage.returncode == 53, garbage.stdout + garbage.stderr  # MetricsMalformed, a probe error
    _one_error_line(garbage, "Prometheus")

    no_triton = _tick(tmp_path, repo.root, f"127.0.0.1:{_closed_port()}", garbage_metrics, db)
    assert no_triton.returncode == 16, no_triton.stdout + no_triton.stderr  # TritonUnreachable
    _one_error_line(no_triton, "127.0.0.1")

    rt = make_runtime(repo, triton, tmp_path, db_url=db, policy=SLOW_BAKE)
    try:
        assert state_of(rt, "clf", candidate) == State.canary  # none of it moved the canary
    finally:
        rt.close()
