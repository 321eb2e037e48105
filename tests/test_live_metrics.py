"""Direct live figures across a restart of the control plane: the window's start is stored in SQL.

Why this matters: `shepherd tick` run from a CronJob, or a `shepherd run` that crashed and came
back, is a new process. If the start of the current counter window lived in memory, the first
window after the restart would have no start, and the traffic in between (the requests that
failed while the control plane was away included) would never be judged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from builders.repository import ModelRepository
from control_plane.fleet import Replica
from control_plane.live_metrics import DirectMetrics
from control_plane.local_triton import LocalTriton
from control_plane.store.store import Store
from tests.classifier_models import golden_set, publish
from tests.conftest import load_versions

pytestmark = pytest.mark.triton


def send(triton: LocalTriton, count: int, version: int = 1) -> None:
    client = grpcclient.InferenceServerClient(triton.state.grpc_url)
    x, _ = golden_set()
    tensor = grpcclient.InferInput("x", [4, 16], "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(x[:4]))
    for _ in range(count):
        client.infer("clf", [tensor], model_version=str(version))
    client.close()


def test_first_window_after_a_restart_covers_the_traffic_before_it(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    version = publish(repo, tmp_path / "build", "clf", "good")
    load_versions(grpcclient.InferenceServerClient(triton.state.grpc_url), repo, "clf", [version])
    replica = Replica("triton", triton.state.grpc_url, f"127.0.0.1:{triton.state.metrics_port}")
    url = f"sqlite:///{tmp_path / 'history.db'}"
    started = datetime.now(UTC)

    before = Store.open(url)
    try:
        assert DirectMetrics(before).mark("clf", [replica]) == ()
        send(triton, 7)  # a first window of the process that is about to go away
        first = DirectMetrics(before).window("clf", [replica], started)
        assert first.missing == () and first.of("triton", version) is not None
        assert first.of("triton", version).requests == 7  # type: ignore[union-attr]
        send(triton, 23)  # traffic after its last window: the process dies before reading it
    finally:
        before.close()

    after = Store.open(url)  # a new process: nothing in memory, the same history
    try:
        window = DirectMetrics(after).window("clf", [replica], started)
        stats = window.of("triton", version)
        assert window.missing == () and stats is not None, window
        assert stats.requests == 23 and stats.failures == 0  # every request since the last window, none twice
        assert window.started_at <= first.ended_at
    finally:
        after.close()


def test_a_replica_never_marked_is_missing_once_then_counted(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    """Without a stored start (its metrics were down when the rollout marked it, or it just joined)
    a window cannot be read: missing, never a window of no traffic; but it starts then, so the next
    window counts it (it was missing for good before, and the canary rolled back for it)."""
    version = publish(repo, tmp_path / "build", "clf", "good")
    load_versions(grpcclient.InferenceServerClient(triton.state.grpc_url), repo, "clf", [version])
    replica = Replica("triton", triton.state.grpc_url, f"127.0.0.1:{triton.state.metrics_port}")
    store = Store.open(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        send(triton, 3)
        window = DirectMetrics(store).window("clf", [replica], datetime.now(UTC))
        assert window.missing == ("triton",) and window.of("triton", version) is None
        send(triton, 5)
        again = DirectMetrics(store).window("clf", [replica], datetime.now(UTC))  # the first one stored the start
        assert again.missing == () and again.of("triton", version).requests == 5  # type: ignore[union-attr]
    finally:
        store.close()
