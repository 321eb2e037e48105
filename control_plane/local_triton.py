"""Run the real `tritonserver` from the `nvidia-pytriton` wheel on this machine.

Why: every test of loading, probing and unloading, and `make demo`, needs a real Triton in
explicit model-control mode. The wheel ships the binary and the Python backend but not the
onnxruntime backend, so `assemble_backends` builds a backend directory with the Python backend
(and the stub for the running Python) plus a Python-based `onnxruntime` backend. In NVIDIA's
container the same model repository is served by the native backends instead.

`start` detaches the server in its own process group and records it in a state directory, so a
later `stop` from another process (the CLI) ends the server and every stub it started.

Security (anyone who reaches the repository API can upload a model, i.e. run code on this host;
see Triton's "Secure Deployment Considerations"):
- every port binds 127.0.0.1 unless a `host` is given (`--http-address`, `--grpc-address`,
  `--metrics-address`);
- the server, and the Python stubs it forks, start with a clean environment: PATH,
  LD_LIBRARY_PATH, OMP_NUM_THREADS and the few harmless variables of `PASSED_ENV`, never the
  database URL, SMTP password or any other variable of shepherd's;
- with an `api_key`, the model-repository API (with shared-memory, trace and logging, which
  shepherd never calls) answers only requests that carry the header `shepherd-api-key` (gRPC:
  `triton-grpc-protocol-shepherd-api-key`): `--http-restricted-api` and `--grpc-restricted-protocol`.
  Triton 2.51 takes the key only on its command line, so any local user who can read
  /proc/<pid>/cmdline of the server can read the key; it never goes to state.json, logs or errors;
- with `tls` (ServerTls), gRPC runs over TLS (`--grpc-use-ssl=true --grpc-server-cert
  --grpc-server-key`), and with a client CA over mutual TLS (`--grpc-use-ssl-mutual=true
  --grpc-root-cert`): plaintext gRPC clients are then turned away. HTTP and metrics stay plaintext
  on their ports (the readiness check uses HTTP); Triton 2.51 has no TLS for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import requests

from control_plane.errors import (
    ConfigError,
    PortInUse,
    RepositoryMissing,
    TritonAccessDenied,
    TritonBinaryMissing,
    TritonNotRunning,
    TritonStartFailed,
    TritonUnreachable,
)
from control_plane.triton_admin import API_KEY_HEADER, mask

STUB_NAME = "triton_python_backend_stub"
DEFAULT_HOST = "127.0.0.1"
# The APIs the key guards. model-repository is the one that matters (load with uploaded files runs
# code); shared-memory, trace and logging are admin APIs shepherd never calls. Inference, health,
# metadata, model-config and statistics stay open: probes and load generators need no key.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
# What the server inherits from the parent besides PATH and LD_LIBRARY_PATH (which are built):
# locale, time zone, temp folder and thread counts (passed only when they are digits). Nothing
# that can hold a secret; SHEPHERD_ORT_INTRA_OP_THREADS is read by the onnxruntime backend's model.py.
PASSED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "OMP_NUM_THREADS", "SHEPHERD_ORT_INTRA_OP_THREADS")
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
_KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")


@dataclass(frozen=True)
class TritonInstallation:
    """Where the wheel put the server, its libraries and the Python backend."""

    binary: Path
    lib_dir: Path
    python_backend: Path
    stub: Path


@dataclass(frozen=True)
class ServerTls:
    """gRPC over TLS for the local server: its certificate and key (PEM files, paths only: the server
    reads them), and `client_ca_file` to require client certificates signed by that CA (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mode(self) -> str:
        return "mutual" if self.client_ca_file is not None else "tls"

    def checked(self) -> ServerTls:
        """The same files as absolute paths, each readable PEM of its kind; ConfigError naming the option."""
        found = {}
        for option, path, marker in (
            ("--tls-cert", self.cert_file, b"-----BEGIN CERTIFICATE-----"),
            ("--tls-key", self.key_file, b"PRIVATE KEY-----"),
            ("--tls-ca", self.client_ca_file, b"-----BEGIN CERTIFICATE-----"),
        ):
            if path is None:
                continue
            try:
                raw = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"{option}: cannot read {path} ({exc.strerror or exc})") from exc
            if marker not in raw or b"ENCRYPTED" in raw:
                what = "an unencrypted PEM private key" if option == "--tls-key" else "a PEM certificate"
                raise ConfigError(f"{option}: {path} is not {what}")
            found[option] = Path(path).resolve()
        return ServerTls(found["--tls-cert"], found["--tls-key"], found.get("--tls-ca"))

    def args(self) -> list[str]:
        """tritonserver's flags (2.51: `tritonserver --help`)."""
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert_file}", f"--grpc-server-key={self.key_file}"]
        if self.client_ca_file is not None:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca_file}"]
        return args


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.http, self.grpc, self.metrics)


@dataclass(frozen=True)
class ServerState:
    """What `start` records so that `stop` and `status` can find the server again."""

    pid: int
    repo: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_file: str
    state_dir: str
    started_at: float = field(default_factory=time.time)
    host: str = DEFAULT_HOST  # the address every port binds
    restricted: bool = False  # the repository API wants the key (the key itself is never recorded)
    grpc_tls: str = "off"  # gRPC over TLS: "off", "tls", or "mutual" (client certificates required)

    @property
    def ports(self) -> Ports:
        return Ports(self.http_port, self.grpc_port, self.metrics_port)

    @property
    def http_url(self) -> str:
        return f"{connect_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{connect_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.metrics_port}/metrics"


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host` (a wildcard: loopback)."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_api_key(api_key: str) -> str:
    """The key, if it can travel in a header and in Triton's `<apis>:<header>=<key>` flag; the error never shows it."""
    if not _KEY_PATTERN.fullmatch(api_key):
        raise ConfigError(
            "the Triton API key must be 16 to 256 characters of letters, digits and . _ ~ + / - "
            "(no spaces, ':', ',' or '='); the value is not shown"
        )
    return api_key


def find_installation() -> TritonInstallation:
    """Locate `tritonserver` inside the installed `nvidia-pytriton` wheel."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonBinaryMissing(
            "tritonserver not found: install the `nvidia-pytriton` wheel (it ships the binary)"
        ) from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonInstallation(
        binary=root / "bin" / "tritonserver",
        lib_dir=root.parent.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / STUB_NAME,
    )
    for path in (found.binary, found.python_backend / "libtriton_python.so", found.stub):
        if not path.exists():
            raise TritonBinaryMissing(f"tritonserver installation incomplete: {path} is missing")
    return found


def assemble_backends(installation: TritonInstallation, dest: Path) -> Path:
    """Build a backend directory: the Python backend with this Python's stub, and `onnxruntime`."""
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(installation.python_backend / name, python_dir / name)
    shutil.copy2(installation.stub, python_dir / STUB_NAME)
    ort_dir = dest / "onnxruntime"
    ort_dir.mkdir(parents=True, exist_ok=True)
    source = resources.files("control_plane") / "triton_backends" / "onnxruntime" / "model.py"
    (ort_dir / "model.py").write_text(source.read_text())
    return dest


def default_state_dir(http_port: int) -> Path:
    root = Path(os.environ.get("SHEPHERD_STATE_DIR", Path.home() / ".cache" / "shepherd"))
    return root / f"triton-{http_port}"


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """True when nothing listens on `port` (TIME_WAIT leftovers do not count, as for Triton)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int = 3) -> list[int]:
    """Ports that are free now, for tests and side-by-side servers."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def _server_env(installation: TritonInstallation) -> dict[str, str]:
    """A clean environment: what the server and the Python stub need, nothing of shepherd's.

    Built from nothing, not filtered from os.environ, so a secret under a name nobody thought of
    (a database URL, an SMTP password, a token) cannot leak into the server or a model's code.
    """
    env = {name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)}
    for name in ("OMP_NUM_THREADS", "SHEPHERD_ORT_INTRA_OP_THREADS"):  # thread counts: digits or nothing
        if not env.get(name, "0").isdigit():
            del env[name]
    libdirs = [str(installation.lib_dir)]
    libpython_dir = sysconfig.get_config_var("LIBDIR")
    if libpython_dir and any(Path(libpython_dir).glob("libpython3*.so*")):
        libdirs.insert(0, libpython_dir)
    # The parent's library path is kept (a container's CUDA libraries live there); it holds folders, not secrets.
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libdirs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    # The stub embeds Python in isolated mode (PYTHONPATH is ignored) and finds its prefix by
    # looking up `python3` on PATH: putting this interpreter's folder first makes it use this
    # environment (a virtualenv's site-packages included). The rest is the system's folders.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), *SYSTEM_PATH])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def _start_failed(what: str, log_file: Path, secret: str | None = None) -> TritonStartFailed:
    """One line that says what happened, quotes the log's last error line and names the log; its tail below."""
    tail = mask(_tail(log_file), secret)
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    # Triton logs errors glog-style ("E1127 09:14:02.123 ..."); otherwise the last line says the most.
    errors = [line for line in lines if (line[:1] == "E" and line[1:5].isdigit()) or "error" in line.lower()]
    last = (errors or lines or ["(empty log)"])[-1]
    return TritonStartFailed(
        f"{what}: {last} (log: {log_file})" + (f"\nlast lines of the log:\n{tail}" if lines else "")
    )


def _is_ready(http_port: int, timeout: float = 1.0, host: str = DEFAULT_HOST) -> bool:
    try:
        return requests.get(f"http://{connect_host(host)}:{http_port}/v2/health/ready", timeout=timeout).ok
    except requests.RequestException:
        return False


def start(
    repo: Path,
    *,
    ports: Ports = Ports(),
    state_dir: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 120.0,
    extra_args: Sequence[str] = (),
    host: str = DEFAULT_HOST,
    api_key: str | None = None,
    tls: ServerTls | None = None,
) -> ServerState:
    """Start tritonserver in explicit mode on `repo` and return once it answers ready.

    Every port binds `host` (loopback unless told otherwise); with `api_key`, the repository API
    answers only requests with the header `shepherd-api-key` (gRPC: `triton-grpc-protocol-` before it);
    with `tls`, gRPC runs over TLS (mutual TLS with its client CA).
    """
    if api_key is not None:
        check_api_key(api_key)
    if tls is not None:
        tls = tls.checked()
    if not host.strip() or any(c.isspace() for c in host):
        raise ConfigError(f"not a host to bind: {host!r}")
    repo = Path(repo).resolve()
    if not repo.is_dir():
        raise RepositoryMissing(f"model repository not found: {repo}")
    # Replicas on other loopback addresses (a DNS fleet in the tests) share port numbers: check that address.
    check_on = "0.0.0.0" if host == DEFAULT_HOST else host
    busy = [p for p in ports.as_tuple() if not port_is_free(p, check_on)]
    if busy:
        raise PortInUse(f"port(s) already in use: {', '.join(map(str, busy))}")
    installation = find_installation()
    state_dir = Path(state_dir or default_state_dir(ports.http)).resolve()
    existing = _read_state(state_dir)
    if existing and _alive(existing.pid):
        raise PortInUse(f"a tritonserver started by shepherd already runs from {state_dir} (pid {existing.pid})")
    log_file = Path(log_file or state_dir / "tritonserver.log").resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        backends = assemble_backends(installation, state_dir / "backends")
        log = open(log_file, "ab")  # noqa: SIM115 - closed below, once the server holds its own copy
    except OSError as exc:
        raise TritonStartFailed(f"cannot prepare the server's files in {state_dir}: {exc}") from exc
    command = [
        str(installation.binary),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--http-address={host}",
        f"--http-port={ports.http}",
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-address={host}",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=true",
        "--metrics-config=summary_latencies=true",
        "--exit-timeout-secs=10",
        *extra_args,
    ]
    if api_key is not None:
        guarded = f"{','.join(RESTRICTED_APIS)}:{API_KEY_HEADER}={api_key}"
        command += [f"--http-restricted-api={guarded}", f"--grpc-restricted-protocol={guarded}"]
    if tls is not None:
        command += tls.args()
    with log:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(installation),
                start_new_session=True,  # its own process group: stop() ends the stubs too
            )
        except OSError as exc:
            raise TritonStartFailed(mask(f"cannot run {installation.binary}: {exc}", api_key)) from exc
    state = ServerState(
        pid=process.pid,
        repo=str(repo),
        http_port=ports.http,
        grpc_port=ports.grpc,
        metrics_port=ports.metrics,
        log_file=str(log_file),
        state_dir=str(state_dir),
        host=host,
        restricted=api_key is not None,
        grpc_tls=tls.mode if tls is not None else "off",
    )
    (state_dir / "state.json").write_text(json.dumps(asdict(state), indent=2))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _forget(state_dir)
            raise _start_failed(f"tritonserver exited with code {process.returncode} during start", log_file, api_key)
        if _is_ready(ports.http, host=host):
            return state
        time.sleep(0.2)
    _terminate(state)
    raise _start_failed(f"tritonserver not ready after {timeout:.0f} s", log_file, api_key)


def _read_state(state_dir: Path) -> ServerState | None:
    try:
        return ServerState(**json.loads((state_dir / "state.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _forget(state_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (state_dir / "state.json").unlink()


def _alive(pid: int) -> bool:
    """True for a live (not zombie) tritonserver with this pid; a reused pid does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"tritonserver" in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_processes(pgid: int) -> list[int]:
    """Pids of every process still in the server's process group (server and stubs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _terminate(state: ServerState, timeout: float = 20.0) -> None:
    """SIGTERM the process group (graceful unload), then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and group_processes(state.pid):
        _reap(state.pid)
        time.sleep(0.1)
    if group_processes(state.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(state.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and group_processes(state.pid):
            _reap(state.pid)
            time.sleep(0.05)
    _reap(state.pid)


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(*, http_port: int = 8000, state_dir: Path | None = None, timeout: float = 20.0) -> ServerState:
    """Stop the server that `start` recorded for this port (or state directory), stubs included."""
    state_dir = Path(state_dir or default_state_dir(http_port))
    state = _read_state(state_dir)
    if state is None:
        raise TritonNotRunning(f"no tritonserver recorded in {state_dir}; was it started with shepherd?")
    _terminate(state, timeout)
    _forget(state_dir)
    return state


@dataclass(frozen=True)
class LoadedVersion:
    model: str
    version: str
    state: str
    reason: str


def repository_index(http_url: str, timeout: float = 5.0, *, api_key: str | None = None) -> list[LoadedVersion]:
    """Triton's repository index: every model and version it knows, with its state."""
    headers = {API_KEY_HEADER: api_key} if api_key else {}
    try:
        response = requests.post(f"http://{http_url}/v2/repository/index", json={}, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise TritonUnreachable(mask(f"Triton at {http_url} did not answer: {exc}", api_key)) from exc
    if response.status_code == 403 and "restricted" in response.text[:500].lower():  # "This API is restricted, ..."
        raise TritonAccessDenied(
            f"Triton at {http_url} refused the repository index: its repository API wants a key "
            f"({'the key given is wrong' if api_key else 'none given'}; header {API_KEY_HEADER}): "
            + mask(_error_text(response), api_key)
        )
    try:
        response.raise_for_status()
    except requests.RequestException as exc:
        raise TritonUnreachable(mask(f"Triton at {http_url} did not answer: {exc}", api_key)) from exc
    try:
        return [
            LoadedVersion(
                model=entry["name"],
                version=str(entry.get("version", "")),
                state=entry.get("state", ""),
                reason=entry.get("reason", ""),
            )
            for entry in response.json()
        ]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not JSON, or not a list of models
        raise TritonUnreachable(
            f"{http_url} answered, but not with Triton's repository index ({type(exc).__name__}: {exc}): "
            "is it Triton's HTTP port?"
        ) from exc


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def status(
    *, http_port: int = 8000, state_dir: Path | None = None, api_key: str | None = None
) -> tuple[ServerState | None, list[LoadedVersion]]:
    """The recorded server (if shepherd started it) and what Triton reports as loaded."""
    state_dir = Path(state_dir or default_state_dir(http_port))
    state = _read_state(state_dir)
    port = state.http_port if state else http_port
    host = connect_host(state.host) if state else DEFAULT_HOST
    if not _is_ready(port, host=host):
        raise TritonNotRunning(f"no Triton answers ready on {host}:{port}")
    return state, repository_index(f"{host}:{port}", api_key=api_key)


class LocalTriton(contextlib.AbstractContextManager["LocalTriton"]):
    """A real tritonserver for the length of a `with` block, on free ports by default.

    Example:
        with LocalTriton(repo) as triton:
            client = tritonclient.grpc.InferenceServerClient(triton.state.grpc_url)
        with LocalTriton(repo, api_key=key) as triton:       # repository API needs the key
            admin = TritonAdmin(triton.state.grpc_url, api_key=key)
        with LocalTriton(repo, tls=ServerTls(cert, key_file)) as triton:   # gRPC over TLS
            admin = TritonAdmin(triton.state.grpc_url, tls=GrpcTls.from_files(ca_file=ca))
    """

    def __init__(
        self,
        repo: Path,
        *,
        ports: Ports | None = None,
        state_dir: Path | None = None,
        timeout: float = 120.0,
        extra_args: Sequence[str] = (),
        host: str = DEFAULT_HOST,
        api_key: str | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.repo = Path(repo)
        self.ports = ports or Ports(*free_ports(3))
        self.state_dir = state_dir
        self.timeout = timeout
        self.extra_args = extra_args
        self.host = host
        self._api_key = api_key  # private and out of repr: never printed
        self.tls = tls
        self._state: ServerState | None = None

    @property
    def state(self) -> ServerState:
        if self._state is None:
            raise TritonNotRunning("LocalTriton is not started")
        return self._state

    def __enter__(self) -> LocalTriton:
        state_dir = self.state_dir or default_state_dir(self.ports.http)
        self._state = start(
            self.repo,
            ports=self.ports,
            state_dir=state_dir,
            timeout=self.timeout,
            extra_args=self.extra_args,
            host=self.host,
            api_key=self._api_key,
            tls=self.tls,
        )
        return self

    def restart(self) -> None:
        """Stop and start again on the same ports (tests of a Triton restart)."""
        self.__exit__(None, None, None)
        self.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        if self._state is not None:
            stop(state_dir=Path(self._state.state_dir))
            self._state = None
