"""gRPC over TLS between shepherd and the real local Triton, with certificates made in the test.

A throwaway CA signs a server certificate for 127.0.0.1, localhost and triton.shepherd.test and a
client certificate (the `openssl` command line; nothing is downloaded). Triton serves gRPC over
TLS (`shepherd triton start --tls-cert --tls-key [--tls-ca]`); HTTP and metrics stay plaintext.
Shown: a plaintext client is turned away; shepherd's TritonAdmin, probes and load generator work
with the CA (with the repository API's key too); a wrong CA, a wrong server name or a missing
client certificate is TritonUnreachable (exit code 16) with a sentence saying what TLS refused;
a rollout (preflight, promotion, a canary step's paired probes) runs over TLS from shepherd.yaml,
and `shepherd tick` takes the CA from the environment.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from builders.repository import ModelRepository
from control_plane import local_triton
from control_plane.cli.triton_cmd import server_tls
from control_plane.errors import ConfigError, TritonAccessDenied, TritonUnreachable
from control_plane.local_triton import LocalTriton, ServerTls, group_processes
from control_plane.settings import load_settings
from control_plane.store.models import State
from control_plane.triton_admin import TritonAdmin
from probes.channel import GrpcTls, grpc_client
from probes.golden import send_probe
from probes.load import LoadGenerator
from tests.classifier_models import publish
from tests.conftest import publish_scale
from tests.test_cli_errors import shepherd
from tests.test_control_plane import FAST_POLICY, establish_stable, make_runtime, state_of, tick_until

SERVER_NAMES = ("localhost", "triton.shepherd.test")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing of the server's


def _openssl(*args: str, cwd: Path) -> None:
    run = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed CA, a server and a client certificate signed by it, and an unrelated CA (P-256 keys)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line is needed to make the test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    for name, subject in (("ca", "/CN=shepherd test CA"), ("other-ca", "/CN=some other CA")):
        _openssl(
            "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", subject,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
        )  # fmt: skip
    sans = ",".join([*(f"DNS:{n}" for n in SERVER_NAMES), "IP:127.0.0.1"])
    (d / "server.ext").write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=shepherd {name}", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
        )  # fmt: skip
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key", d / "other-ca.crt")


def scale_input(client: grpcclient.InferenceServerClient, name: str) -> np.ndarray:
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return client.infer(name, [tensor]).as_numpy("y")


def unreachable(admin: TritonAdmin, *words: str) -> str:
    """The admin's index call fails with TritonUnreachable (exit code 16) whose message has `words`."""
    with pytest.raises(TritonUnreachable) as failed:
        admin.index()
    assert failed.value.exit_code == 16
    message = str(failed.value)
    for word in words:
        assert word in message, message
    return message


@pytest.mark.triton
def test_tls_with_the_key(repo: ModelRepository, tmp_path: Path, pki: Pki) -> None:
    """TLS and the restricted repository API together; plaintext and untrusted clients are turned away."""
    key = f"tls-key-{uuid.uuid4().hex}"
    publish_scale(repo, tmp_path, "scale", 2.0)
    trusted = GrpcTls.from_files(ca_file=pki.ca)
    with LocalTriton(
        repo.root, state_dir=tmp_path / "state", api_key=key, tls=ServerTls(pki.server_cert, pki.server_key)
    ) as server:
        state = server.state
        assert state.grpc_tls == "tls" and state.restricted
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--grpc-use-ssl=true" in cmdline and f"--grpc-server-key={pki.server_key}".encode() in cmdline

        plain = grpcclient.InferenceServerClient(state.grpc_url)
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            plain.is_server_live(client_timeout=5)
        with pytest.raises(InferenceServerException):
            plain.load_model("scale", client_timeout=5)
        unreachable(TritonAdmin(state.grpc_url, api_key=key), "plaintext clients", "set triton_tls")
        assert send_probe(state.grpc_url, "scale", 1, {"x": np.ones((4, 4), np.float32)}).errors == 1

        with pytest.raises(TritonAccessDenied):  # TLS alone is no key
            TritonAdmin(state.grpc_url, tls=trusted).load("scale")
        admin = TritonAdmin(state.grpc_url, api_key=key, tls=trusted)
        admin.load_versions("scale", repo.read_config("scale"), [1])
        assert admin.ready_versions("scale") == {1}
        secure = grpc_client(state.grpc_url, trusted)
        np.testing.assert_allclose(scale_input(secure, "scale"), 2.0)
        run = send_probe(state.grpc_url, "scale", 1, {"x": np.ones((16, 4), np.float32)}, batch_size=4, tls=trusted)
        assert (run.requests, run.errors) == (4, 0)
        np.testing.assert_allclose(run.outputs["y"], 2.0)  # type: ignore[index]
        with LoadGenerator(
            state.grpc_url, "scale", {"x": np.ones((2, 4), np.float32)}, max_requests=20, tls=trusted
        ) as load:
            report = load.wait(30)
        assert report.requests == 20 and report.failures == 0, report.failure_messages

        named = GrpcTls.from_files(ca_file=pki.ca, server_name="triton.shepherd.test")
        assert TritonAdmin(state.grpc_url, api_key=key, tls=named).ready_versions("scale") == {1}
        wrong_name = GrpcTls.from_files(ca_file=pki.ca, server_name="not-the-server.test")
        unreachable(TritonAdmin(state.grpc_url, api_key=key, tls=wrong_name), "does not name this host")
        message = unreachable(
            TritonAdmin(state.grpc_url, api_key=key, tls=GrpcTls.from_files(ca_file=pki.other_ca)),
            "not signed by a trusted CA",
            "CERTIFICATE_VERIFY_FAILED",
        )
        assert key not in message
        unreachable(TritonAdmin(state.grpc_url, api_key=key, tls=GrpcTls()), "trusted CA")  # the system's roots

        admin.unload("scale")
        assert admin.wait_gone("scale", [1])
        assert [e.model for e in local_triton.status(state_dir=Path(state.state_dir), api_key=key)[1]] == ["scale"]
        assert "grpc-server-key" not in repr(admin) and "tls=on" in repr(admin)
    with LocalTriton(repo.root, state_dir=tmp_path / "plain") as server:  # a TLS client on a plaintext port
        unreachable(TritonAdmin(server.state.grpc_url, tls=trusted), "does not speak TLS")


@pytest.mark.triton
def test_mutual_tls_from_the_command_line(repo: ModelRepository, tmp_path: Path, pki: Pki) -> None:
    """`shepherd triton start --tls-cert --tls-key --tls-ca`: only clients with a certificate of that CA get in."""
    publish_scale(repo, tmp_path, "scale", 3.0)
    http, grpc, metrics = local_triton.free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-ca", str(pki.ca)]
    state_dir = ["--state-dir", str(tmp_path / "cli-state")]
    started = shepherd(tmp_path, "triton", "start", "--repo", str(repo.root), *ports, *state_dir, *tls, "--json")
    assert started.returncode == 0, started.stderr
    shown = json.loads(started.stdout)
    pid = shown["pid"]
    try:
        assert shown["grpc_tls"] == "mutual"
        url = f"127.0.0.1:{grpc}"
        unreachable(TritonAdmin(url, tls=GrpcTls.from_files(ca_file=pki.ca)), "client certificate")
        config = tmp_path / "shepherd.yaml"
        config.write_text(f"triton_tls:\n  ca_file: {pki.ca}\n  cert_file: client.crt\n  key_file: client.key\n")
        shutil.copy(pki.client_cert, tmp_path / "client.crt")  # relative paths: beside shepherd.yaml
        shutil.copy(pki.client_key, tmp_path / "client.key")
        settings = load_settings(config, env={})
        assert settings.triton_tls is not None and settings.triton_tls.mutual
        assert pki.client_key.read_bytes().decode() not in repr(settings)
        admin = TritonAdmin(url, tls=settings.triton_tls)
        admin.load("scale")
        assert admin.ready_versions("scale") == {1}
        np.testing.assert_allclose(scale_input(grpc_client(url, settings.triton_tls), "scale"), 3.0)
        _, index = local_triton.status(state_dir=tmp_path / "cli-state")  # over HTTP, which stays plaintext
        assert [(e.model, e.version, e.state) for e in index] == [("scale", "1", "READY")]
    finally:
        local_triton.stop(state_dir=tmp_path / "cli-state")
    assert group_processes(pid) == []

    with pytest.raises(ConfigError, match="--tls-key: --tls-cert and --tls-key go together"):
        server_tls(pki.server_cert, None, None)
    with pytest.raises(ConfigError, match="--tls-ca"):
        server_tls(None, None, pki.ca)
    with pytest.raises(ConfigError, match="--tls-key: .* is not an unencrypted PEM private key"):
        local_triton.start(repo.root, tls=ServerTls(pki.server_cert, pki.server_cert))


@pytest.mark.triton
def test_rollout_over_tls(repo: ModelRepository, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Preflight, promotion and a canary step's paired probes over TLS (with the key); `shepherd tick` too."""
    key = f"rollout-key-{uuid.uuid4().hex}"
    monkeypatch.setenv("SHEPHERD_TRITON_API_KEY", key)
    policy = FAST_POLICY.replace("bake_seconds: 6", "bake_seconds: 600")
    tls = ServerTls(pki.server_cert, pki.server_key)
    with LocalTriton(repo.root, state_dir=tmp_path / "state", api_key=key, tls=tls) as server:
        rt = make_runtime(repo, server, tmp_path, policy=f"{policy}triton_tls:\n  ca_file: {pki.ca}\n")
        try:
            assert rt.grpc_tls is not None and rt.admin.tls is rt.grpc_tls
            first = establish_stable(rt, repo, tmp_path)  # preflight probes, loads, index: all over TLS
            preflight = rt.store.read.probe_windows("clf", first, role="preflight")
            assert preflight and preflight[-1].quality is not None, preflight
            candidate = publish(repo, tmp_path / "build", "clf", "same")
            tick_until(rt, lambda: state_of(rt, "clf", candidate) == State.canary)
            tick_until(rt, lambda: bool(rt.store.read.probe_windows("clf", candidate, role="candidate")))
            window = rt.store.read.probe_windows("clf", candidate, role="candidate")[-1]
            assert window.agreement is not None and window.client_p50_ms is not None  # paired probes answered
            db = rt.settings.db_url
        finally:
            rt.close()

        cwd = tmp_path / "cwd"
        cwd.mkdir()
        where = ("--repo", str(repo.root), "--db", db, "--triton-grpc", server.state.grpc_url)
        where += ("--triton-metrics", f"127.0.0.1:{server.state.metrics_port}")
        (cwd / "plain.yaml").write_text(policy)
        keyed = {"SHEPHERD_TRITON_API_KEY": key}

        def tick(config: Path, env: dict[str, str], code: int, *words: str) -> None:
            run = shepherd(cwd, "tick", "--config", str(config), *where, env={**keyed, **env})
            assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
            assert "Traceback" not in run.stdout + run.stderr and key not in run.stdout + run.stderr
            if code:
                line = run.stderr.strip().splitlines()[-1]  # grpc may log the failed handshake above it
                assert line.startswith("error: ") and all(w in line for w in words), run.stderr

        tick(cwd / "plain.yaml", {}, TritonUnreachable.exit_code, "plaintext clients", "set triton_tls")
        other = {"SHEPHERD_TRITON_TLS_CA": str(pki.other_ca)}  # the variable wins over shepherd.yaml's ca_file
        tick(tmp_path / "shepherd.yaml", other, TritonUnreachable.exit_code, "not signed by a trusted CA")
        tick(cwd / "plain.yaml", {"SHEPHERD_TRITON_TLS_CA": str(pki.ca)}, 0)


# -- settings: no server -------------------------------------------------------------------------------
def test_settings_tls_files_read_once_and_checked(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "shepherd.yaml"
    assert load_settings(None, env={}).triton_tls is None
    config.write_text("triton_tls: {}\n")
    assert load_settings(config, env={}).triton_tls == GrpcTls()  # TLS with the system's trust store
    (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
    config.write_text("triton_tls:\n  ca_file: ca.pem\n  server_name: triton.shepherd.test\n")
    settings = load_settings(config, env={})
    (tmp_path / "ca.pem").unlink()  # read once, at start: later channels need no file
    assert settings.triton_tls == GrpcTls(root_certificates=pki.ca.read_bytes(), server_name="triton.shepherd.test")
    env = {"SHEPHERD_TRITON_TLS_SERVER_NAME": "other.test", "SHEPHERD_TRITON_TLS_CA": str(pki.other_ca)}
    config.write_text(f"triton_tls:\n  ca_file: {pki.ca}\n  server_name: triton.shepherd.test\n")
    overridden = load_settings(config, env=env).triton_tls
    assert overridden is not None and overridden.server_name == "other.test"
    assert overridden.root_certificates == pki.other_ca.read_bytes()
    assert load_settings(None, env={"SHEPHERD_TRITON_TLS_CA": str(pki.ca)}).triton_tls is not None

    secret = pki.client_key.read_bytes().decode()
    cases = {
        "triton_tls:\n  ca_file: nowhere.pem\n": "triton_tls.ca_file: cannot read",
        f"triton_tls:\n  ca_file: {pki.client_key}\n": "triton_tls.ca_file: ",
        f"triton_tls:\n  cert_file: {pki.client_cert}\n": "triton_tls.key_file: a client certificate and its key",
        f"triton_tls:\n  cert_file: {pki.client_cert}\n  key_file: {pki.client_cert}\n": "holds no PEM private key",
        "triton_tls:\n  cafile: x\n": "triton_tls.cafile: unknown key",
        "triton_tls: true\n": "triton_tls: expected a mapping",
    }
    for text, words in cases.items():
        config.write_text(text)
        with pytest.raises(ConfigError) as failed:
            load_settings(config, env={})
        assert words in str(failed.value) and str(config) in str(failed.value), failed.value
        assert secret not in str(failed.value)
    with pytest.raises(ConfigError, match="environment SHEPHERD_TRITON_TLS_KEY: triton_tls.key_file"):
        load_settings(None, env={"SHEPHERD_TRITON_TLS_CERT": str(pki.client_cert), "SHEPHERD_TRITON_TLS_KEY": "/no"})
    mutual = load_settings(
        None, env={"SHEPHERD_TRITON_TLS_CERT": str(pki.client_cert), "SHEPHERD_TRITON_TLS_KEY": str(pki.client_key)}
    )
    assert mutual.triton_tls is not None and mutual.triton_tls.mutual
    assert secret not in repr(mutual) and "PRIVATE" not in repr(mutual.triton_tls)
