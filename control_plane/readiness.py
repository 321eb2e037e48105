"""A replica is ready for client traffic only when it serves every model the fleet serves.

Why: Triton answers `/v2/health/ready` true as soon as it runs, with nothing loaded (explicit
model-control mode), so a restarted replica went back into the load balancer's rotation before
shepherd's next pass had loaded its models, and its clients got NOT_FOUND; Triton has no setting
for this (triton-inference-server/server#3471). This check runs beside each replica (a sidecar
container in a pod, a process per replica in the local fleet) and answers the load balancer's or
the kubelet's probe:

    GET /ready  200 {"ready": true,  "reason": "...", "missing": []}
                503 {"ready": false, "reason": "...", "missing": ["clf"]}
    GET /live   200 {"live": true}        (the check itself runs)

The rules (`replica_ready`, a pure function):
- Triton does not answer, or says it is not ready (starting, shutting down): not ready;
- every model named in the serving manifest (control_plane/serving_manifest.py) has at least one
  READY version in Triton's repository index: ready. Any version: a canary replica may serve the
  candidate beside stable, and a pinned model its pinned version;
- FAIL-OPEN, so a control-plane problem never takes a healthy fleet out of rotation: no manifest
  yet, an unreadable or malformed one, or an index Triton refuses to show (the key is wrong):
  ready when Triton itself is ready, and the reason says which of these it was.

Each answer reads the manifest (one small file) and asks Triton twice over gRPC (server ready,
repository index), at most once per `max_age_s` (0.25 s by default): HAProxy checks every replica
twice a second on each of its two backends. The gRPC channel runs with the same TLS and repository
API key as the rest of shepherd (probes.channel.grpc_client, triton_admin's header and error
translation); after a failure the channel is opened afresh, so a restarted Triton is seen at once
rather than after gRPC's reconnect backoff.

Example:
    checker = ReadinessChecker(Path("/models"), "127.0.0.1:8001", api_key=key)
    server = serve(checker, "0.0.0.0", 8003)     # a ThreadingHTTPServer; server.serve_forever()
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from control_plane.errors import ConfigError, PortInUse, ServingManifestError
from control_plane.serving_manifest import ServingManifest, manifest_path, read_manifest
from control_plane.triton_admin import GRPC_API_KEY_HEADER, IndexEntry, access_denied, index_entries, mask
from probes.channel import GrpcTls, grpc_client, tls_hint

TRITON_TIMEOUT_S = 1.0  # each gRPC call; a probe (HAProxy: 1 s, kubelet: timeoutSeconds) must get an answer
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestProblem:
    """The serving manifest exists but cannot be read or is not one (the check then fails open)."""

    reason: str


@dataclass(frozen=True)
class TritonProblem:
    """The index could not be had. `triton_ready`: Triton answered ready but refused the index (a key
    problem: fail open); False: Triton does not answer or is not ready (not ready)."""

    reason: str
    triton_ready: bool = False


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    missing: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["missing"] = list(self.missing)
        return data


def replica_ready(
    manifest: ServingManifest | ManifestProblem | None, index: Sequence[IndexEntry] | TritonProblem
) -> Readiness:
    """Ready iff every model of the manifest has a READY version in `index`; fail-open rules above."""
    if isinstance(index, TritonProblem):
        if not index.triton_ready:
            return Readiness(False, index.reason)
        return Readiness(True, f"Triton is ready; its repository index cannot be read ({index.reason}): fail-open")
    if manifest is None:
        return Readiness(True, "Triton is ready; no serving manifest yet (shepherd has not written one): fail-open")
    if isinstance(manifest, ManifestProblem):
        return Readiness(True, f"Triton is ready; the serving manifest is unusable ({manifest.reason}): fail-open")
    serving = {e.model for e in index if e.state == "READY" and e.version is not None}
    missing = tuple(sorted(m for m in manifest.models if m not in serving))
    if missing:
        return Readiness(False, f"serves no READY version of {', '.join(missing)} yet", missing)
    return Readiness(True, f"serves every model of the fleet ({len(manifest.models)})")


@dataclass
class ReadinessChecker:
    """Reads the manifest and the local Triton, decides with `replica_ready`, caches the answer `max_age_s`."""

    repository: Path
    triton_grpc: str
    api_key: str | None = field(default=None, repr=False)
    tls: GrpcTls | None = None
    max_age_s: float = 0.25
    clock: Callable[[], float] = time.monotonic
    _client: grpcclient.InferenceServerClient | None = field(default=None, init=False, repr=False)
    _last: tuple[float, Readiness] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def check(self) -> Readiness:
        """The current answer; when another check is still waiting on a slow Triton, not ready."""
        if not self._lock.acquire(timeout=2 * TRITON_TIMEOUT_S + 0.5):
            return Readiness(False, "the previous check of Triton has not finished (Triton is slow to answer)")
        try:
            now = self.clock()
            if self._last is not None and now - self._last[0] < self.max_age_s:
                return self._last[1]
            answer = replica_ready(self._manifest(), self._index())
            if self._last is None or (self._last[1].ready, self._last[1].reason) != (answer.ready, answer.reason):
                log.warning("%s: %s", "ready" if answer.ready else "NOT ready", answer.reason)
            self._last = (now, answer)
            return answer
        finally:
            self._lock.release()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _manifest(self) -> ServingManifest | ManifestProblem | None:
        try:
            return read_manifest(manifest_path(self.repository))
        except ServingManifestError as exc:
            return ManifestProblem(str(exc))

    def _index(self) -> tuple[IndexEntry, ...] | TritonProblem:
        """Triton's readiness, then its repository index; a failure opens a fresh channel next time."""
        if self._client is None:
            self._client = grpc_client(self.triton_grpc, self.tls)
        headers = {GRPC_API_KEY_HEADER: self.api_key} if self.api_key else None
        try:
            if not self._client.is_server_ready(client_timeout=TRITON_TIMEOUT_S):
                return TritonProblem(f"Triton at {self.triton_grpc} says it is not ready (starting or stopping)")
            raw = self._client.get_model_repository_index(
                headers=headers, as_json=True, client_timeout=TRITON_TIMEOUT_S
            )
        except InferenceServerException as exc:
            self.close()
            text = mask(str(exc), self.api_key)
            if access_denied(exc):
                given = "the key sent is wrong" if self.api_key else "none was sent"
                return TritonProblem(f"its repository API wants a key and {given}: {text}", triton_ready=True)
            hint = tls_hint(text, self.tls)
            return TritonProblem(f"Triton at {self.triton_grpc} does not answer: {f'{hint}: ' if hint else ''}{text}")
        return tuple(index_entries(raw))


class _Handler(BaseHTTPRequestHandler):
    server: ReadinessServer
    protocol_version = "HTTP/1.1"  # keep-alive for HAProxy's and the kubelet's checks

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ready":
            answer = self.server.checker.check()
            self._send(200 if answer.ready else 503, answer.as_dict())
        elif path == "/live":
            self._send(200, {"live": True})
        else:
            self._send(404, {"error": f"no such path {path}; try /ready or /live"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: probes come twice a second; changes of readiness are logged by the checker."""


class ReadinessServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], checker: ReadinessChecker) -> None:
        self.checker = checker
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A prober that hangs up once it has the status line (HAProxy resets the connection) is no error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def serve(checker: ReadinessChecker, host: str, port: int) -> ReadinessServer:
    """Bind the check's HTTP server (call `serve_forever` on it); PortInUse when the port is taken,
    ConfigError when the address cannot be bound here at all (not an address of this host)."""
    try:
        return ReadinessServer((host, port), checker)
    except OSError as exc:
        error = PortInUse if exc.errno == errno.EADDRINUSE else ConfigError
        raise error(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
