"""Golden-set probes: real gRPC inference requests to one EXPLICIT version of a model.

Why explicit: during a canary two versions are loaded, and a request that names no version goes
to the highest one. A probe that must measure the candidate (or the stable version) names it, and
a response that comes back from any other version counts as an error rather than as evidence.

Why request errors are counted, not raised: a version that fails requests, or a server that is
down, is exactly what the judge must see; only bad arguments (the caller's bug) raise ProbeFailed.

Why paired probes: latency on a shared 2-core box (or a busy GPU) drifts from minute to minute.
The judge compares candidate and stable with a Mann-Whitney test, which is only fair when both
samples come from the same period, so `send_paired_probes` interleaves the versions request by
request (A B, B A, A B ... so neither always goes first).

Example:
    run = send_probe("127.0.0.1:8001", "intent", 3, {"input_ids": ids, "attention_mask": mask})
    run.errors, statistics.median(run.latencies_ms), run.outputs["logits"]
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from probes.channel import GrpcTls, grpc_client
from probes.errors import ProbeFailed

MAX_MESSAGES = 5


@dataclass(frozen=True, eq=False)
class ProbeRun:
    """One version's answers to a golden set.

    `latencies_ms` holds one client-side sample per SUCCESSFUL request (failed ones return early and
    would flatter the latency), with `sent_at[i]` the wall-clock time that request was sent.
    `outputs` is every row's output in input order, or None when any request failed.
    """

    model: str
    version: str
    started_at: float
    latencies_ms: tuple[float, ...]
    requests: int
    errors: int
    error_messages: tuple[str, ...]
    outputs: dict[str, np.ndarray] | None
    sent_at: tuple[float, ...] = field(default=())

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Everything but the output arrays (what goes into history and logs)."""
        return {
            "model": self.model,
            "version": self.version,
            "started_at": self.started_at,
            "latencies_ms": list(self.latencies_ms),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "error_messages": list(self.error_messages),
            "output_names": sorted(self.outputs) if self.outputs is not None else None,
        }


def triton_datatype(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """The Triton datatype for an array (unicode strings become UTF-8 BYTES); ProbeFailed if none fits."""
    if array.dtype.kind == "U":
        array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
    if array.dtype.kind == "S":
        array = array.astype(object)
    try:
        datatype = np_to_triton_dtype(array.dtype)
    except (AttributeError, TypeError):
        datatype = None
    if datatype is None:
        raise ProbeFailed(f"input {name!r} has dtype {array.dtype}, which Triton has no datatype for")
    return datatype, array


def check_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays with a common, non-zero row count (axis 0), converted for Triton; ProbeFailed otherwise."""
    if not inputs:
        raise ProbeFailed("no inputs given: a probe needs at least one input tensor")
    arrays = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.ndim == 0:
            raise ProbeFailed(f"input {name!r} is a scalar; rows go along axis 0")
        arrays[name] = array
    rows = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(rows.values())) != 1:
        raise ProbeFailed(f"inputs have different row counts: {rows}")
    if next(iter(rows.values())) == 0:
        raise ProbeFailed("inputs have zero rows")
    return arrays


def to_infer_inputs(arrays: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    tensors = []
    for name, array in arrays.items():
        datatype, converted = triton_datatype(name, array)
        tensor = grpcclient.InferInput(name, list(converted.shape), datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(converted) if converted.dtype != object else converted)
        tensors.append(tensor)
    return tensors


def _explicit_version(version: int | str) -> str:
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise ProbeFailed(f"version must be an explicit positive number, got {version!r}")
    return str(int(text))


def _chunks(
    inputs: Mapping[str, np.ndarray], batch_size: int, limit_rows: int | None
) -> list[list[grpcclient.InferInput]]:
    if batch_size < 1:
        raise ProbeFailed(f"batch_size must be at least 1, got {batch_size}")
    if limit_rows is not None and limit_rows < 1:
        raise ProbeFailed(f"limit_rows must be at least 1, got {limit_rows}")
    arrays = check_inputs(inputs)
    rows = next(iter(arrays.values())).shape[0]
    if limit_rows is not None:
        rows = min(rows, limit_rows)
    return [
        to_infer_inputs({name: array[start : min(start + batch_size, rows)] for name, array in arrays.items()})
        for start in range(0, rows, batch_size)
    ]


class _Collector:
    """Accumulates one version's results while requests go out."""

    def __init__(self, model: str, version: str) -> None:
        self.model, self.version = model, version
        self.started_at = time.time()
        self.latencies: list[float] = []
        self.sent_at: list[float] = []
        self.requests = 0
        self.errors = 0
        self.messages: list[str] = []
        self.outputs: dict[str, list[np.ndarray]] = {}

    def fail(self, message: str) -> None:
        self.errors += 1
        if message not in self.messages and len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def send(
        self,
        client: grpcclient.InferenceServerClient,
        tensors: list[grpcclient.InferInput],
        output_names: Sequence[str] | None,
        timeout_s: float,
        *,
        keep_outputs: bool,
    ) -> None:
        requested = [grpcclient.InferRequestedOutput(name) for name in output_names] if output_names else None
        self.requests += 1
        sent_at = time.time()
        began = time.perf_counter()
        try:
            result = client.infer(
                self.model, tensors, model_version=self.version, outputs=requested, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            self.fail(str(exc) or repr(exc))
            return
        elapsed_ms = (time.perf_counter() - began) * 1000.0
        response = result.get_response()
        if response.model_version and response.model_version != self.version:
            self.fail(f"asked for version {self.version}, answered by version {response.model_version}")
            return
        names = list(output_names) if output_names else [output.name for output in response.outputs]
        try:
            arrays = {name: result.as_numpy(name) for name in names}
        except (InferenceServerException, ValueError, TypeError) as exc:  # a reply that does not decode: failed
            self.fail(f"response could not be decoded: {type(exc).__name__}: {exc}")
            return
        missing = sorted(name for name, array in arrays.items() if array is None)
        if missing:
            self.fail(f"response has no output {', '.join(missing)}")
            return
        self.latencies.append(elapsed_ms)
        self.sent_at.append(sent_at)
        if keep_outputs:
            for name, array in arrays.items():
                self.outputs.setdefault(name, []).append(array)

    def run(self) -> ProbeRun:
        outputs = None
        if self.errors == 0 and self.outputs:
            outputs = {name: np.concatenate(parts, axis=0) for name, parts in self.outputs.items()}
        return ProbeRun(
            model=self.model,
            version=self.version,
            started_at=self.started_at,
            latencies_ms=tuple(self.latencies),
            requests=self.requests,
            errors=self.errors,
            error_messages=tuple(self.messages),
            outputs=outputs,
            sent_at=tuple(self.sent_at),
        )


def send_probe(
    grpc_url: str,
    model: str,
    version: int | str,
    inputs: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str] | None = None,
    batch_size: int = 8,
    timeout_s: float = 10.0,
    limit_rows: int | None = None,
    tls: GrpcTls | None = None,
) -> ProbeRun:
    """Send the golden rows to `model` version `version`, `batch_size` rows per request.

    Output names default to every output the model returns (those of its metadata); `tls`: gRPC
    over TLS with these certificates (None: plaintext), as for every function here.
    Example: send_probe("127.0.0.1:8001", "scale", 2, {"x": np.ones((16, 4), np.float32)})
    """
    return send_paired_probes(
        grpc_url,
        model,
        [version],
        inputs,
        output_names=output_names,
        batch_size=batch_size,
        timeout_s=timeout_s,
        limit_rows=limit_rows,
        tls=tls,
    )[_explicit_version(version)]


def send_paired_probes(
    grpc_url: str,
    model: str,
    versions: Sequence[int | str],
    inputs: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str] | None = None,
    batch_size: int = 8,
    rounds: int = 1,
    timeout_s: float = 10.0,
    limit_rows: int | None = None,
    tls: GrpcTls | None = None,
) -> dict[str, ProbeRun]:
    """Send the same golden rows to several versions, interleaved request by request.

    Each batch goes to every version before the next batch is sent, and the order rotates from
    batch to batch. With `rounds` > 1 the golden set is sent again (more latency samples); the
    outputs are those of the first round. Returns one ProbeRun per version, keyed by version.
    """
    names = [_explicit_version(v) for v in versions]
    if len(set(names)) != len(names):
        raise ProbeFailed(f"versions repeat: {names}")
    runs = send_interleaved(
        [(grpc_url, name) for name in names],
        model,
        inputs,
        output_names=output_names,
        batch_size=batch_size,
        rounds=rounds,
        timeout_s=timeout_s,
        limit_rows=limit_rows,
        tls=tls,
    )
    return {version: run for (_, version), run in runs.items()}


def send_interleaved(
    targets: Sequence[tuple[str, int | str]],
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str] | None = None,
    batch_size: int = 8,
    rounds: int = 1,
    timeout_s: float = 10.0,
    limit_rows: int | None = None,
    tls: GrpcTls | None = None,
) -> dict[tuple[str, str], ProbeRun]:
    """Send the same golden rows to several (gRPC address, version) targets, interleaved request by request.

    The targets may be different replicas of a fleet (a candidate on a canary replica, stable on a
    baseline replica): every batch reaches every target before the next one, so both sides are
    probed over the same seconds, under the same load. Keyed by (address, version).
    """
    keys = [(url, _explicit_version(v)) for url, v in targets]
    if not keys:
        raise ProbeFailed("no versions given to probe")
    if len(set(keys)) != len(keys):
        raise ProbeFailed(f"targets repeat: {keys}")
    if rounds < 1:
        raise ProbeFailed(f"rounds must be at least 1, got {rounds}")
    if timeout_s <= 0:
        raise ProbeFailed(f"timeout_s must be positive, got {timeout_s}")
    chunks = _chunks(inputs, batch_size, limit_rows)
    collectors = {key: _Collector(model, key[1]) for key in keys}
    clients = {url: grpc_client(url, tls) for url in dict.fromkeys(url for url, _ in keys)}
    try:
        turn = 0
        for round_index in range(rounds):
            for tensors in chunks:
                order = keys[turn % len(keys) :] + keys[: turn % len(keys)]
                turn += 1
                for key in order:
                    collectors[key].send(
                        clients[key[0]], tensors, output_names, timeout_s, keep_outputs=round_index == 0
                    )
    finally:
        for client in clients.values():
            client.close()
    return {key: collector.run() for key, collector in collectors.items()}


def merged(runs: Sequence[ProbeRun]) -> ProbeRun:
    """Several runs of one version (on several replicas) as one: samples pooled, counts summed.

    The outputs are those of the first run that has them: the same golden rows went to every
    replica, and the same version answers the same on each.
    """
    if not runs:
        raise ProbeFailed("no probe runs to merge")
    first = runs[0]
    return ProbeRun(
        model=first.model,
        version=first.version,
        started_at=min(r.started_at for r in runs),
        latencies_ms=tuple(x for r in runs for x in r.latencies_ms),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
        error_messages=tuple(dict.fromkeys(m for r in runs for m in r.error_messages))[:MAX_MESSAGES],
        outputs=next((r.outputs for r in runs if r.outputs is not None), None)
        if all(r.errors == 0 for r in runs)
        else None,
        sent_at=tuple(x for r in runs for x in r.sent_at),
    )
