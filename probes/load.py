"""Client traffic that names NO version, the way production clients call Triton.

Why: the control plane's promise is that hot-loading and unloading versions never fails a client
request. Only traffic that leaves the version choice to Triton shows that, so the demo, the tests
and the benchmarks run a `LoadGenerator` while versions are swapped under it and count failures.

Bounded by design: every run stops by itself after `max_seconds` or `max_requests`, and traffic
goes only to the local Triton (a loopback address) unless `allow_remote=True` says otherwise.
Each thread has its own gRPC client. `served_by` counts the version that answered each request
(Triton puts it in every response), which shows when traffic moved from one version to another.

Example:
    with LoadGenerator("127.0.0.1:8001", "scale", {"x": np.ones((2, 4), np.float32)}, concurrency=2) as load:
        swap_versions()
    report = load.report()       # report.failures == 0, report.served_by == {"1": 310, "2": 295}
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from probes.channel import GrpcTls, grpc_client
from probes.errors import ProbeFailed
from probes.golden import MAX_MESSAGES, check_inputs, to_infer_inputs

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class LoadReport:
    """Traffic so far: `latencies_ms` of successful requests, `served_by` version -> answered count.

    `timeline` holds (wall-clock time the request was sent, version that answered or "" when it
    failed) for every request in the order they completed: it shows when traffic moved, for
    example the last request sent to a rolled-back version after the decision.
    """

    requests: int
    failures: int
    failure_messages: tuple[str, ...]
    latencies_ms: tuple[float, ...]
    seconds: float
    served_by: dict[str, int]
    timeline: tuple[tuple[float, str], ...] = ()

    def last_sent_to(self, version: str) -> float | None:
        """Wall-clock send time of the last request `version` answered (None if it answered none)."""
        return max((sent for sent, served in self.timeline if served == version), default=None)

    @property
    def failure_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest


class LoadGenerator:
    """Threads that send the same request again and again until stopped, out of time or out of count.

    `inputs` is sent whole as each request (its rows are one batch). `pause_s` puts a pause
    between one thread's requests to keep the load gentle on a small machine. `tls`: gRPC over
    TLS with these certificates (None: plaintext).
    """

    def __init__(
        self,
        grpc_url: str,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        concurrency: int = 4,
        max_seconds: float = 300.0,
        max_requests: int = 1_000_000,
        model_version: str = "",
        pause_s: float = 0.0,
        timeout_s: float = 10.0,
        allow_remote: bool = False,
        tls: GrpcTls | None = None,
    ) -> None:
        if concurrency < 1:
            raise ProbeFailed(f"concurrency must be at least 1, got {concurrency}")
        if max_seconds <= 0 or max_requests < 1:
            raise ProbeFailed(f"a load needs a positive bound: max_seconds={max_seconds}, max_requests={max_requests}")
        if pause_s < 0 or timeout_s <= 0:
            raise ProbeFailed(f"pause_s must be >= 0 and timeout_s > 0, got {pause_s} and {timeout_s}")
        if not allow_remote and _host(grpc_url) not in LOOPBACK_HOSTS:
            raise ProbeFailed(f"load goes only to the local Triton (127.0.0.1), not to {grpc_url!r}")
        self.grpc_url = grpc_url
        self.model = model
        self.model_version = str(model_version)
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.tls = tls
        self._arrays = check_inputs(inputs)
        to_infer_inputs(self._arrays)  # a dtype Triton cannot take fails here, not in a thread
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent = 0
        self._failures = 0
        self._messages: list[str] = []
        self._latencies: list[float] = []
        self._served_by: Counter[str] = Counter()
        self._timeline: list[tuple[float, str]] = []
        self._started: float | None = None
        self._ended: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> LoadGenerator:
        if self._started is not None:
            raise ProbeFailed("this LoadGenerator was already started; make a new one")
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._worker, name=f"load-{self.model}-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float | None = None) -> LoadReport:
        """Ask every thread to stop after its current request, wait for them, return the report."""
        self._stop.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> LoadReport:
        """Wait until the threads end by themselves (time or count reached) or `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in self._threads) and self._ended is None:
            self._ended = time.monotonic()
        return self.report()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    # -- results -------------------------------------------------------------------------------
    def report(self) -> LoadReport:
        """Traffic so far (safe to call while it runs)."""
        now = self._ended if self._ended is not None else time.monotonic()
        with self._lock:
            return LoadReport(
                requests=self._sent,
                failures=self._failures,
                failure_messages=tuple(self._messages),
                latencies_ms=tuple(self._latencies),
                seconds=(now - self._started) if self._started is not None else 0.0,
                served_by=dict(self._served_by),
                timeline=tuple(self._timeline),
            )

    # -- the threads ---------------------------------------------------------------------------
    def _claim(self) -> bool:
        """Take one request out of the budget; False when the run is over."""
        assert self._started is not None
        if self._stop.is_set() or time.monotonic() - self._started >= self.max_seconds:
            return False
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _record(self, sent_at: float, latency_ms: float | None, served_by: str, message: str = "") -> None:
        with self._lock:
            self._timeline.append((sent_at, served_by if latency_ms is not None else ""))
            if latency_ms is None:
                self._failures += 1
                if message not in self._messages and len(self._messages) < MAX_MESSAGES:
                    self._messages.append(message)
            else:
                self._latencies.append(latency_ms)
                if served_by:
                    self._served_by[served_by] += 1

    def _worker(self) -> None:
        client = grpc_client(self.grpc_url, self.tls)
        tensors = to_infer_inputs(self._arrays)
        try:
            while self._claim():
                sent_at = time.time()
                began = time.perf_counter()
                try:
                    result = client.infer(
                        self.model, tensors, model_version=self.model_version, client_timeout=self.timeout_s
                    )
                except InferenceServerException as exc:
                    self._record(sent_at, None, "", str(exc) or repr(exc))
                except Exception as exc:  # any other client error is a failed request too, never a dead thread
                    self._record(sent_at, None, "", f"{type(exc).__name__}: {exc}")
                else:
                    self._record(sent_at, (time.perf_counter() - began) * 1000.0, result.get_response().model_version)
                if self.pause_s:
                    self._stop.wait(self.pause_s)
        finally:
            client.close()
