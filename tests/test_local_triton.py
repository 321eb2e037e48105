"""The real tritonserver from the nvidia-pytriton wheel: start, hot-load versions, infer, stop."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from builders.repository import ModelRepository
from control_plane import local_triton
from control_plane.errors import PortInUse, RepositoryMissing, TritonBinaryMissing, TritonStartFailed
from control_plane.local_triton import LocalTriton, Ports, free_ports, group_processes
from control_plane.triton_admin import TritonAdmin
from tests.conftest import load_versions, publish_scale

pytestmark = pytest.mark.triton


def infer_grpc(client: grpcclient.InferenceServerClient, name: str, version: str = "") -> np.ndarray:
    tensor = grpcclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 4), np.float32))
    return client.infer(name, [tensor], model_version=version).as_numpy("y")


def test_versions_hot_load_infer_and_unload(repo: ModelRepository, triton: LocalTriton, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    publish_scale(repo, tmp_path, "scale", 2.0)
    state = triton.state
    assert requests.get(f"http://{state.http_url}/v2/health/ready", timeout=5).ok
    client = grpcclient.InferenceServerClient(state.grpc_url)

    load_versions(client, repo, "scale", [1])
    assert client.is_model_ready("scale", "1") and not client.is_model_ready("scale", "2")
    np.testing.assert_allclose(infer_grpc(client, "scale"), 1.0)

    load_versions(client, repo, "scale", [1, 2])
    np.testing.assert_allclose(infer_grpc(client, "scale"), 2.0)  # no version named: the highest loaded
    np.testing.assert_allclose(infer_grpc(client, "scale", "1"), 1.0)

    http = httpclient.InferenceServerClient(state.http_url)
    tensor = httpclient.InferInput("x", [3, 4], "FP32")
    tensor.set_data_from_numpy(np.full((3, 4), 3.0, np.float32))
    np.testing.assert_allclose(http.infer("scale", [tensor], model_version="2").as_numpy("y"), 6.0)

    def successes() -> dict[tuple[str, str], float]:
        metrics = requests.get(state.metrics_url, timeout=5).text
        return {
            (s.labels["model"], s.labels["version"]): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
            if family.name == "nv_inference_request_success"
        }

    deadline = time.monotonic() + 5  # Triton counts a request when it is released, just after the response
    while successes().get(("scale", "2")) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    success = successes()
    assert success[("scale", "1")] == 2 and success[("scale", "2")] == 2
    metrics = requests.get(state.metrics_url, timeout=5).text
    assert "nv_inference_request_summary_us" in metrics  # latency summaries are enabled

    load_versions(client, repo, "scale", [1])  # roll back: version 2 leaves, version 1 answers at once
    np.testing.assert_allclose(infer_grpc(client, "scale"), 1.0)
    assert TritonAdmin(state.grpc_url).wait_gone("scale", [2]), "version 2 still loaded"
    index = {(e.model, e.version): e.state for e in local_triton.repository_index(state.http_url)}
    assert index[("scale", "1")] == "READY" and index.get(("scale", "2")) != "READY"

    client.unload_model("scale")
    assert TritonAdmin(state.grpc_url).wait_gone("scale", [1]), "version 1 still loaded"


def test_stop_leaves_no_process(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    with LocalTriton(repo.root, state_dir=tmp_path / "state") as server:
        client = grpcclient.InferenceServerClient(server.state.grpc_url)
        load_versions(client, repo, "scale", [1])
        pid = server.state.pid
        stubs = [p for p in group_processes(pid) if p != pid]
        assert stubs, "the Python stub of the loaded model should run in the server's process group"
    assert group_processes(pid) == []
    assert not Path(f"/proc/{pid}").exists() or b"tritonserver" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    for port in server.ports.as_tuple():
        assert local_triton.port_is_free(port)


def test_busy_port_is_refused(repo: ModelRepository, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        http, metrics = free_ports(2)
        with pytest.raises(PortInUse, match=str(busy)):
            local_triton.start(repo.root, ports=Ports(http, busy, metrics), state_dir=tmp_path / "s")


def test_missing_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryMissing, match="nowhere"):
        local_triton.start(tmp_path / "nowhere", ports=Ports(*free_ports(3)), state_dir=tmp_path / "s")


def test_server_dying_during_start_shows_its_log(repo: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(TritonStartFailed, match="exited with code") as raised:
        local_triton.start(
            repo.root, ports=Ports(*free_ports(3)), state_dir=tmp_path / "s", extra_args=["--model-control-mode=bogus"]
        )
    assert "invalid argument for --model-control-mode" in str(raised.value)  # the server's own log


def test_binary_missing_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytriton", None)  # as if nvidia-pytriton were not installed
    with pytest.raises(TritonBinaryMissing, match="nvidia-pytriton"):
        local_triton.find_installation()


def shepherd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control_plane.cli", *args], capture_output=True, text=True, timeout=180
    )


def test_cli_start_status_stop(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    http, grpc, metrics = free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    state_dir = ["--state-dir", str(tmp_path / "cli-state")]
    started = shepherd("triton", "start", "--repo", str(repo.root), *ports, *state_dir, "--json")
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)["pid"]
    try:
        again = shepherd("triton", "start", "--repo", str(repo.root), *ports, *state_dir)
        assert again.returncode == PortInUse.exit_code and "already in use" in again.stderr
        grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}").load_model("scale")
        status = shepherd("triton", "status", "--http-port", str(http), *state_dir, "--json")
        assert status.returncode == 0, status.stderr
        models = json.loads(status.stdout)["models"]
        assert {"model": "scale", "version": "1", "state": "READY", "reason": ""} in models
    finally:
        stopped = shepherd("triton", "stop", "--http-port", str(http), *state_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert group_processes(pid) == []
    gone = shepherd("triton", "status", "--http-port", str(http), *state_dir)
    assert gone.returncode != 0 and "no Triton" in gone.stderr
    missing = shepherd("triton", "start", "--repo", str(tmp_path / "absent"), *ports, *state_dir)
    assert missing.returncode == RepositoryMissing.exit_code and "not found" in missing.stderr
