"""probes.load: version-less client traffic against the real Triton while versions are swapped under it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from builders.repository import ModelRepository
from control_plane.local_triton import LocalTriton
from probes.errors import ProbeFailed
from probes.load import LoadGenerator
from tests.conftest import load_versions, publish_scale
from tests.test_probes_metrics import version_state, wait_for

BATCH = {"x": np.ones((2, 4), np.float32)}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalTriton, ModelRepository]]:
    tmp = tmp_path_factory.mktemp("probes-load")
    repo = ModelRepository(tmp / "model_repository")
    repo.root.mkdir()
    publish_scale(repo, tmp, "swap", 1.0)
    publish_scale(repo, tmp, "swap", 2.0)
    publish_scale(repo, tmp, "gone", 1.0)
    with LocalTriton(repo.root, state_dir=tmp / "triton-state") as server:
        yield server, repo


def test_bad_arguments_raise() -> None:
    with pytest.raises(ProbeFailed, match="only to the local Triton"):
        LoadGenerator("10.1.2.3:8001", "swap", BATCH)
    with pytest.raises(ProbeFailed, match="concurrency"):
        LoadGenerator("127.0.0.1:8001", "swap", BATCH, concurrency=0)
    with pytest.raises(ProbeFailed, match="positive bound"):
        LoadGenerator("127.0.0.1:8001", "swap", BATCH, max_seconds=0)
    with pytest.raises(ProbeFailed, match="no inputs"):
        LoadGenerator("localhost:8001", "swap", {})
    with pytest.raises(ProbeFailed, match="complex"):
        LoadGenerator("127.0.0.1:8001", "swap", {"x": np.zeros((2, 4), np.complex64)})


@pytest.mark.triton
def test_hot_swaps_under_load_fail_no_request(live: tuple[LocalTriton, ModelRepository]) -> None:
    server, repo = live
    client = grpcclient.InferenceServerClient(server.state.grpc_url)
    load_versions(client, repo, "swap", [1])
    with LoadGenerator(server.state.grpc_url, "swap", BATCH, concurrency=2, max_seconds=120, pause_s=0.002) as load:
        wait_for(lambda: load.report().requests >= 20, what="traffic on version 1")
        load_versions(client, repo, "swap", [1, 2])  # canary: requests naming no version go to 2
        wait_for(lambda: load.report().served_by.get("2", 0) >= 20, what="traffic moved to version 2")
        load_versions(client, repo, "swap", [1])  # roll back: version 2 leaves, 1 answers
        decided = time.time()
        wait_for(lambda: version_state(client, "swap", "2") == "UNAVAILABLE", what="version 2 unloaded")
        time.sleep(0.2)
        after_unload = load.report()
        wait_for(lambda: load.report().served_by["1"] >= after_unload.served_by["1"] + 20, what="traffic back on 1")
    report = load.report()
    assert not load.running
    assert report.failures == 0, report.failure_messages
    assert report.served_by["2"] == after_unload.served_by["2"], "no request reached version 2 after its unload"
    assert report.served_by["1"] >= 40 and report.served_by["2"] >= 20
    assert sum(report.served_by.values()) == report.requests == len(report.latencies_ms) == len(report.timeline)
    last_to_2 = report.last_sent_to("2")
    assert last_to_2 is not None and last_to_2 - decided < 1.0, "traffic back on version 1 within 1 s of the rollback"
    print(f"last request to version 2 sent {1000 * (last_to_2 - decided):+.1f} ms after the rollback returned")
    assert 0 < report.seconds < 120


@pytest.mark.triton
def test_unloading_the_model_counts_failures(live: tuple[LocalTriton, ModelRepository]) -> None:
    server, repo = live
    client = grpcclient.InferenceServerClient(server.state.grpc_url)
    load_versions(client, repo, "gone", [1])
    with LoadGenerator(server.state.grpc_url, "gone", BATCH, concurrency=2, max_seconds=60, pause_s=0.002) as load:
        wait_for(lambda: load.report().requests >= 10, what="traffic on gone")
        client.unload_model("gone")
        wait_for(lambda: load.report().failures >= 5, what="failures after the unload")
    report = load.report()
    assert report.served_by.get("1", 0) >= 10
    assert report.failures >= 5 and report.failure_rate > 0
    assert report.requests == report.failures + len(report.latencies_ms)
    assert any("gone" in message for message in report.failure_messages), report.failure_messages


@pytest.mark.triton
def test_runs_stop_by_themselves(live: tuple[LocalTriton, ModelRepository]) -> None:
    server, repo = live
    client = grpcclient.InferenceServerClient(server.state.grpc_url)
    load_versions(client, repo, "swap", [1])
    counted = LoadGenerator(server.state.grpc_url, "swap", BATCH, concurrency=3, max_requests=25).start()
    report = counted.wait(timeout=60)
    assert not counted.running and report.requests == 25 and report.failures == 0
    with pytest.raises(ProbeFailed, match="already started"):
        counted.start()

    began = time.monotonic()
    timed = LoadGenerator(server.state.grpc_url, "swap", BATCH, concurrency=1, max_seconds=0.5, pause_s=0.01)
    report = timed.start().wait(timeout=30)
    assert not timed.running and 0.5 <= time.monotonic() - began < 10
    assert report.requests > 0 and 0.5 <= report.seconds < 10
