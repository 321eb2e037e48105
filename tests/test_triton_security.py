"""The local Triton is not a door into the host: loopback only, a clean environment, a keyed repository API.

Each test starts the real tritonserver (about 2 to 4 s here) and reads what the kernel says about
it: the listening sockets in /proc/net/tcp, the environment in /proc/<pid>/environ of the server and
of its Python stubs. The settings tests at the end start nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from builders.repository import ModelRepository
from control_plane import local_triton
from control_plane.errors import ConfigError, TritonAccessDenied
from control_plane.local_triton import LocalTriton, group_processes
from control_plane.settings import load_settings
from control_plane.store.models import State
from control_plane.triton_admin import TritonAdmin
from tests.classifier_models import publish
from tests.conftest import load_versions, publish_scale
from tests.test_cli_errors import fails_with
from tests.test_cli_errors import shepherd as shepherd_in
from tests.test_control_plane import establish_stable, make_runtime

ROOT = Path(__file__).resolve().parent.parent

# What shepherd's own process may hold and Triton must never see: names and values.
SECRETS = {
    "SHEPHERD_DB": "postgresql+psycopg://shepherd:pg-secret-4711@db.internal/shepherd",
    "SHEPHERD_SMTP_PASSWORD": "smtp-secret-0815",
    "DATABASE_URL": "postgresql://app:db-secret-1234@db.internal/app",
    "SLACK_WEBHOOK_TOKEN": "xoxb-secret-token-42",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-key-99",
    "MY_SERVICE_PASSWORD_FILE_CONTENT": "hunter2-secret",
}


def listening_addresses(ports: tuple[int, ...]) -> dict[int, set[str]]:
    """The local addresses that LISTEN on each of `ports`, from /proc/net/tcp and tcp6."""
    found: dict[int, set[str]] = {port: set() for port in ports}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) not in found:  # 0A: TCP_LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            text = socket.inet_ntop(family, raw)
            # gRPC listens on a dual-stack socket: ::ffff:127.0.0.1 is IPv4 loopback, :: is every address
            text = text.removeprefix("::ffff:") if text.startswith("::ffff:") else text
            found[int(port_hex, 16)].add("0.0.0.0" if text == "::" else text)
    return found


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


def infer(client: grpcclient.InferenceServerClient, name: str) -> np.ndarray:
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return client.infer(name, [tensor]).as_numpy("y")


@pytest.mark.triton
def test_binds_loopback_only_by_default(repo: ModelRepository, tmp_path: Path) -> None:
    """Read from the kernel's socket tables: no packet goes to any address but loopback."""
    with LocalTriton(repo.root, state_dir=tmp_path / "state") as server:
        bound = listening_addresses(server.ports.as_tuple())
        state = server.state
    assert bound == {port: {"127.0.0.1"} for port in server.ports.as_tuple()}, bound
    assert state.host == "127.0.0.1"


@pytest.mark.triton
def test_host_option_binds_where_asked(repo: ModelRepository, tmp_path: Path) -> None:
    with LocalTriton(repo.root, state_dir=tmp_path / "state", host="0.0.0.0") as server:
        bound = listening_addresses(server.ports.as_tuple())
        assert requests.get(f"http://127.0.0.1:{server.ports.http}/v2/health/ready", timeout=5).ok
    assert bound == {port: {"0.0.0.0"} for port in server.ports.as_tuple()}, bound


def _assert_clean(pid: int, what: str) -> dict[str, str]:
    env = environ(pid)
    text = "\0".join(f"{k}={v}" for k, v in env.items())
    for name, value in SECRETS.items():
        assert name not in env, f"{what} (pid {pid}) inherited {name}"
        assert value not in text, f"{what} (pid {pid}) holds the value of {name}"
    for name in env:
        upper = name.upper()
        assert not any(word in upper for word in ("TOKEN", "PASSWORD", "SECRET", "_KEY")), f"{what}: {name}"
        assert not name.startswith("SHEPHERD_") or name in local_triton.PASSED_ENV, f"{what}: {name}"
    return env


@pytest.mark.triton
def test_server_and_stubs_start_with_a_clean_environment(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    publish_scale(repo, tmp_path, "scale", 3.0)
    with LocalTriton(repo.root, state_dir=tmp_path / "state") as server:
        client = grpcclient.InferenceServerClient(server.state.grpc_url)
        load_versions(client, repo, "scale", [1])
        np.testing.assert_allclose(infer(client, "scale"), 3.0)  # the stub still finds onnxruntime
        pid = server.state.pid
        stubs = [p for p in group_processes(pid) if p != pid]
        assert stubs, "the onnxruntime (Python-based) backend should run a stub process"
        server_env = _assert_clean(pid, "tritonserver")
        for stub in stubs:
            _assert_clean(stub, "Python backend stub")
        assert "PATH" in server_env and "LD_LIBRARY_PATH" in server_env


@pytest.mark.triton
def test_repository_api_needs_the_key(repo: ModelRepository, tmp_path: Path) -> None:
    key = f"key-{uuid.uuid4().hex}"
    publish_scale(repo, tmp_path, "scale", 2.0)
    with LocalTriton(repo.root, state_dir=tmp_path / "state", api_key=key) as server:
        state = server.state
        raw = grpcclient.InferenceServerClient(state.grpc_url)
        with pytest.raises(InferenceServerException):
            raw.load_model("scale")  # an upload of model code through this call would run on the host
        refused = requests.post(f"http://{state.http_url}/v2/repository/models/scale/load", timeout=10)
        assert refused.status_code >= 400
        assert not raw.is_model_ready("scale")

        with pytest.raises(TritonAccessDenied) as denied:
            TritonAdmin(state.grpc_url).load("scale")
        assert denied.value.exit_code == TritonAccessDenied.exit_code
        assert key not in str(denied.value)
        with pytest.raises(TritonAccessDenied) as wrong:
            TritonAdmin(state.grpc_url, api_key="not-the-key").index()
        assert "not-the-key" not in str(wrong.value) and key not in str(wrong.value)

        admin = TritonAdmin(state.grpc_url, api_key=key)
        admin.load_versions("scale", repo.read_config("scale"), [1])
        assert admin.ready_versions("scale") == {1}
        np.testing.assert_allclose(infer(raw, "scale"), 2.0)  # inference stays open
        admin.unload("scale")
        assert admin.wait_gone("scale", [1])

        _, index = local_triton.status(state_dir=Path(state.state_dir), api_key=key)
        assert [e.model for e in index] == ["scale"]
        with pytest.raises(TritonAccessDenied):
            local_triton.status(state_dir=Path(state.state_dir))

        assert key not in (Path(state.state_dir) / "state.json").read_text()
        assert key not in Path(state.log_file).read_text(errors="replace")
        assert key not in repr(state) and key not in repr(server)
        assert state.restricted


def shepherd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control_plane.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, **env},
    )


@pytest.mark.triton
def test_cli_key_from_environment_never_shown(repo: ModelRepository, tmp_path: Path) -> None:
    key = f"cli-key-{uuid.uuid4().hex}"
    publish_scale(repo, tmp_path, "scale", 1.0)
    http, grpc, metrics = local_triton.free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    state_dir = ["--state-dir", str(tmp_path / "cli-state")]
    env = {"LOCAL_TRITON_KEY": key}
    keyed = ["--api-key-env", "LOCAL_TRITON_KEY"]
    started = shepherd("triton", "start", "--repo", str(repo.root), *ports, *state_dir, *keyed, "--json", env=env)
    assert started.returncode == 0, started.stderr
    assert key not in started.stdout + started.stderr
    pid = json.loads(started.stdout)["pid"]
    try:
        assert listening_addresses((http, grpc, metrics)) == {p: {"127.0.0.1"} for p in (http, grpc, metrics)}
        # Documented, not hidden: Triton takes the key only on its command line, readable in /proc.
        assert b"--http-restricted-api=model-repository," in Path(f"/proc/{pid}/cmdline").read_bytes()
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}").load_model("scale")

        denied = shepherd("triton", "status", "--http-port", str(http), *state_dir, "--json", env=env)
        assert denied.returncode == TritonAccessDenied.exit_code, denied.stderr
        assert "error:" in denied.stderr and key not in denied.stderr + denied.stdout

        TritonAdmin(f"127.0.0.1:{grpc}", api_key=key).load("scale")
        status = shepherd("triton", "status", "--http-port", str(http), *state_dir, *keyed, "--json", env=env)
        assert status.returncode == 0, status.stderr
        assert key not in status.stdout + status.stderr
        shown = json.loads(status.stdout)
        assert {"model": "scale", "version": "1", "state": "READY", "reason": ""} in shown["models"]
        assert shown["server"]["host"] == "127.0.0.1" and shown["server"]["restricted"] is True
        assert key not in (tmp_path / "cli-state" / "state.json").read_text()

        unset = shepherd("triton", "status", "--http-port", str(http), *state_dir, "--api-key-env", "NOT_SET_X", env={})
        assert unset.returncode == ConfigError.exit_code and "NOT_SET_X" in unset.stderr
    finally:
        stopped = shepherd("triton", "stop", "--http-port", str(http), *state_dir, env={})
    assert stopped.returncode == 0, stopped.stderr
    assert group_processes(pid) == []


@pytest.mark.triton
def test_tick_without_the_key_fails_no_version(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control plane with the key rolls out; without it `shepherd tick` exits 19 and marks nothing failed."""
    key = f"tick-key-{uuid.uuid4().hex}"
    with LocalTriton(repo.root, state_dir=tmp_path / "state", api_key=key) as server:
        monkeypatch.setenv("SHEPHERD_TRITON_API_KEY", key)
        rt = make_runtime(repo, server, tmp_path)
        try:
            establish_stable(rt, repo, tmp_path)  # every load, index and unload of a rollout, with the key
            candidate = publish(repo, tmp_path / "build", "clf", "same")
            db = rt.settings.db_url
        finally:
            rt.close()
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        where = ("--config", str(tmp_path / "shepherd.yaml"), "--repo", str(repo.root), "--db", db)
        urls = ("--triton-grpc", server.state.grpc_url, "--triton-metrics", f"127.0.0.1:{server.state.metrics_port}")
        line = fails_with(shepherd_in(cwd, "tick", *where, *urls), TritonAccessDenied, "wants a key")
        assert key not in line
        rt = make_runtime(repo, server, tmp_path, db_url=db)
        try:
            record = rt.store.read.get_version("clf", candidate)  # not failed for want of a key
            assert record is None or State(record.state) == State.discovered
        finally:
            rt.close()
        keyed = shepherd_in(cwd, "tick", *where, *urls, env={"SHEPHERD_TRITON_API_KEY": key})
        assert keyed.returncode != TritonAccessDenied.exit_code and key not in keyed.stdout + keyed.stderr


# -- settings: where the control plane finds the key ------------------------------------------------
def test_settings_key_from_named_variable(tmp_path: Path) -> None:
    config = tmp_path / "shepherd.yaml"
    config.write_text("triton_api_key_env: MY_TRITON_KEY\n")
    settings = load_settings(config, env={"MY_TRITON_KEY": "from-named-variable"})
    assert settings.triton_api_key == "from-named-variable"
    assert "from-named-variable" not in repr(settings)


def test_settings_direct_variable_wins(tmp_path: Path) -> None:
    config = tmp_path / "shepherd.yaml"
    config.write_text("triton_api_key_env: MY_TRITON_KEY\n")
    env = {"MY_TRITON_KEY": "named", "SHEPHERD_TRITON_API_KEY": "direct"}
    assert load_settings(config, env=env).triton_api_key == "direct"
    assert load_settings(None, env={"SHEPHERD_TRITON_API_KEY": "direct"}).triton_api_key == "direct"
    assert load_settings(None, env={}).triton_api_key is None


def test_settings_named_variable_unset_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "shepherd.yaml"
    config.write_text("triton_api_key_env: MY_TRITON_KEY\n")
    with pytest.raises(ConfigError, match="MY_TRITON_KEY"):
        load_settings(config, env={})
