"""`shepherd tick` meeting a probe error or a dead endpoint: its documented exit code and one `error:` line.

A canary is put in flight against the real local Triton, then `shepherd tick` runs as a user would
with the metrics endpoint closed, answering something that is not Prometheus text, or Triton itself
unreachable. None of it may move the canary.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builders.repository import ModelRepository
from control_plane.errors import TritonUnreachable
from control_plane.local_triton import LocalTriton
from control_plane.store.models import State
from probes.errors import MetricsMalformed, MetricsUnavailable
from tests.classifier_models import publish
from tests.test_cli_errors import closed_port, fails_with, shepherd
from tests.test_control_plane import (
    FAST_POLICY,
    establish_stable,
    make_runtime,
    state_of,
    tick_until,
)

pytestmark = pytest.mark.triton

SLOW_BAKE = FAST_POLICY.replace("bake_seconds: 6", "bake_seconds: 600")


def test_tick_exit_codes_for_probe_and_endpoint_errors(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path, not_triton: int
) -> None:
    rt = make_runtime(repo, triton, tmp_path, policy=SLOW_BAKE)
    try:
        establish_stable(rt, repo, tmp_path)
        candidate = publish(repo, tmp_path / "build", "clf", "same")
        tick_until(rt, lambda: state_of(rt, "clf", candidate) == State.canary)
        db, grpc = rt.settings.db_url, triton.state.grpc_url
    finally:
        rt.close()
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def tick(grpc_url: str, metrics: str) -> str:
        where = ("--config", str(tmp_path / "shepherd.yaml"), "--repo", str(repo.root), "--db", db)
        return shepherd(cwd, "tick", *where, "--triton-grpc", grpc_url, "--triton-metrics", metrics)

    fails_with(tick(grpc, f"127.0.0.1:{closed_port()}"), MetricsUnavailable, "did not answer")
    fails_with(tick(grpc, f"127.0.0.1:{not_triton}"), MetricsMalformed, "Prometheus")
    fails_with(tick(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{not_triton}"), TritonUnreachable, "127.0.0.1")

    rt = make_runtime(repo, triton, tmp_path, db_url=db, policy=SLOW_BAKE)
    try:
        assert state_of(rt, "clf", candidate) == State.canary  # none of it moved the canary
    finally:
        rt.close()
