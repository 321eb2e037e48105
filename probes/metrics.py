"""Triton's Prometheus metrics: one scrape is a `Snapshot`, two scrapes make a `WindowStats` per version.

Why windows of deltas: Triton's per-version counters are cumulative since the version was loaded,
so a rate, a failure ratio or an average latency only means something between two scrapes. The
latency quantiles are different: Triton computes them itself over a sliding window of about 60 s,
so a window reads them from its END snapshot only.

Triton (2.51, seen) keeps exporting an unloaded version's series with frozen values, so a
version in a Snapshot is not necessarily loaded: the repository index says what is.

A version's series restart from zero when it is reloaded (and all of them when Triton restarts).
`window` sees that as a counter going down and restarts the window from zero (the deltas are the
end values) instead of reporting negative traffic.

Parsing goes through `prometheus_client`'s parser, never by hand. That parser renames counter
samples to `<name>_total`, so everything here keys on the FAMILY name, which keeps Triton's name.

What is absurd, and what happens to it (nothing non-finite or negative ever reaches a `Snapshot`'s
figures or a `WindowStats`, so nothing of the kind can be stored as evidence):

- Counters (`_COUNTERS`, `nv_inference_request_failure`): NaN, +Inf, -Inf or a negative value makes
  the WHOLE scrape `MetricsMalformed` (exit 53), naming the series. Triton keeps them as uint64 in
  its core, so such a value is not a measurement but a broken exporter (or something in between),
  and the rest of that page cannot be trusted either. Refusing the page is loud (the tick reports
  exit 53) and safe: the control plane handles it like an unanswered scrape, judging on the probes'
  own counts and keeping its last good snapshot as the next window's start. Dropping only the bad
  version's counters instead would make the next window count that version from zero (the rule
  for a version absent from the start), overcounting its traffic and failures.
- Summary quantiles: NaN is "no value", never an error. Triton writes NaN for a version that had
  no request in its ~60 s summary window (always so before the first request). +Inf, -Inf and
  negative quantiles are dropped the same way: that quantile is missing (`p95_ms` None: "not
  measured"), the version's counts and averages still count. The quantiles are Triton's own
  estimate, a secondary figure, not worth losing the counters of the whole page for.
- Gauges (`nv_inference_pending_request_count`, host CPU and GPU utilization and memory): a
  non-finite or negative value is dropped (None, or no entry for that GPU). They are recorded for
  the history, never judged, and utilization can read NaN while Triton has no sample yet.
- A counter that went DOWN between two scrapes is read as a restart (`counter_reset`, the deltas
  are the end values), whichever counter it is: a reload zeroes all of a version's counters, and
  after one whose new traffic already passed the old count only SOME of them are lower, so asking
  for all of them to go down would turn real restarts into negative deltas. There is no other
  cause of a decrease in a Triton process, so no negative delta is ever produced.
- `window` checks its snapshots again (they can be built by hand, bypassing `parse_metrics`):
  a non-finite or negative counter, or a non-finite `taken_at`, is `BadWindow` (exit 54), and
  `WindowStats` itself refuses any non-finite or negative figure (and a failure rate above 1).

Example:
    start = scrape("127.0.0.1:8002")
    ...                                          # traffic
    stats = window(start, scrape("127.0.0.1:8002"))[("intent", "3")]
    stats.failure_rate, stats.p95_ms
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from probes.errors import BadWindow, MetricsMalformed, MetricsUnavailable

# Cumulative per-version counters: Triton family name -> VersionCounters field.
_COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_count": "inference_count",
    "nv_inference_exec_count": "exec_count",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
_FAILURE = "nv_inference_request_failure"
_PENDING = "nv_inference_pending_request_count"
# Latency summaries (only with --metrics-config summary_latencies=true): family -> field.
_SUMMARIES = {
    "nv_inference_request_summary_us": "request_quantiles_us",
    "nv_inference_queue_summary_us": "queue_quantiles_us",
    "nv_inference_compute_infer_summary_us": "compute_infer_quantiles_us",
}
_HOST = {
    "nv_cpu_utilization": "cpu_utilization",
    "nv_cpu_memory_used_bytes": "cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes": "cpu_memory_total_bytes",
}
_GPU = {
    "nv_gpu_utilization": "gpu_utilization",
    "nv_gpu_memory_used_bytes": "gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes": "gpu_memory_total_bytes",
}


@dataclass(frozen=True)
class VersionCounters:
    """Cumulative values for one (model, version) at one scrape; durations in microseconds."""

    success: float = 0.0
    failure_by_reason: dict[str, float] = field(default_factory=dict)
    inference_count: float = 0.0
    exec_count: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_input_us: float = 0.0
    compute_infer_us: float = 0.0
    compute_output_us: float = 0.0
    pending: float | None = None
    request_quantiles_us: dict[float, float] = field(default_factory=dict)
    queue_quantiles_us: dict[float, float] = field(default_factory=dict)
    compute_infer_quantiles_us: dict[float, float] = field(default_factory=dict)

    @property
    def failures(self) -> float:
        return sum(self.failure_by_reason.values())

    def cumulative(self) -> dict[str, float]:
        """Every value that only grows while the version stays loaded (used to spot a reset)."""
        values = {name: getattr(self, name) for name in _COUNTERS.values()}
        values.update({f"failure:{reason}": value for reason, value in self.failure_by_reason.items()})
        return values


@dataclass(frozen=True)
class HostStats:
    """The machine Triton runs on; GPU values are keyed by gpu_uuid and empty on CPU machines.

    Recorded in every window because users report host memory growing over load/unload cycles
    (Triton server issues 4528, 4966, 7727): the history should show such a leak.
    """

    cpu_utilization: float | None = None
    cpu_memory_used_bytes: float | None = None
    cpu_memory_total_bytes: float | None = None
    gpu_utilization: dict[str, float] = field(default_factory=dict)
    gpu_memory_used_bytes: dict[str, float] = field(default_factory=dict)
    gpu_memory_total_bytes: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    versions: dict[tuple[str, str], VersionCounters]
    host: HostStats


@dataclass(frozen=True)
class WindowStats:
    """One version's traffic between two scrapes.

    `requests` counts successful requests and `failures` failed ones; `request_rate` is both
    together per second (the traffic the version took) and `failure_rate` their ratio. Averages
    are per SUCCESSFUL request in ms, because Triton adds durations for successes only.
    """

    model: str
    version: str
    seconds: float
    requests: float
    failures: float
    failures_by_reason: dict[str, float]
    request_rate: float
    failure_rate: float
    avg_request_ms: float | None
    avg_queue_ms: float | None
    avg_compute_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    counter_reset: bool

    def __post_init__(self) -> None:
        where = f"window of {self.model} v{self.version}"
        for name in _WINDOW_FIGURES:
            value = getattr(self, name)
            if value is not None and not _measured(value):
                raise BadWindow(f"{where}: {name} is {value!r}, not a finite number >= 0")
        for reason, value in self.failures_by_reason.items():
            if not _measured(value):
                raise BadWindow(f"{where}: failures_by_reason[{reason}] is {value!r}, not a finite number >= 0")
        if self.failure_rate > 1:
            raise BadWindow(f"{where}: failure_rate is {self.failure_rate!r}, above 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_WINDOW_FIGURES = (
    "seconds",
    "requests",
    "failures",
    "request_rate",
    "failure_rate",
    "avg_request_ms",
    "avg_queue_ms",
    "avg_compute_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
)


def _measured(value: float) -> bool:
    """A figure a window may hold: a finite number >= 0 (NaN, infinities and negatives are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _series(family: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{family}{{{inner}}}"


def parse_metrics(text: str, *, taken_at: float | None = None) -> Snapshot:
    """Parse the text of Triton's /metrics endpoint into a Snapshot.

    Raises MetricsMalformed when the text is not Prometheus exposition format (for example an
    HTML page from a wrong port), or when a counter is NaN, infinite or negative (see the module
    docstring: absurd quantiles and gauges are dropped instead). Series with extra labels are
    summed per (model, version).
    """
    taken_at = time.time() if taken_at is None else taken_at
    if not math.isfinite(taken_at):
        raise BadWindow(f"a snapshot's taken_at must be a finite time, got {taken_at!r}")
    malformed: list[str] = []
    counters: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    failures: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    pending: dict[tuple[str, str], float] = {}
    quantiles: dict[tuple[str, str], dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    host: dict[str, float] = {}
    gpus: dict[str, dict[str, float]] = defaultdict(dict)
    seen: set[tuple[str, str]] = set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                key = (labels.get("model", ""), labels.get("version", ""))
                per_version = "model" in labels and "version" in labels
                if per_version and family.name.startswith("nv_inference_"):
                    seen.add(key)
                value = float(sample.value)
                ok = _measured(value)
                if per_version and family.name in (*_COUNTERS, _FAILURE) and not ok:
                    malformed.append(f"{_series(family.name, labels)} {value!r}")
                elif per_version and family.name in _COUNTERS:
                    counters[key][_COUNTERS[family.name]] += value
                elif per_version and family.name == _FAILURE:
                    failures[key][labels.get("reason", "UNKNOWN")] += value
                elif per_version and family.name == _PENDING and ok:
                    pending[key] = pending.get(key, 0.0) + value
                elif per_version and family.name in _SUMMARIES and "quantile" in labels and ok:
                    quantiles[key][_SUMMARIES[family.name]][float(labels["quantile"])] = value
                elif family.name in _HOST and not labels and ok:
                    host[_HOST[family.name]] = value
                elif family.name in _GPU and "gpu_uuid" in labels and ok:
                    gpus[_GPU[family.name]][labels["gpu_uuid"]] = value
    except ValueError as exc:
        raise MetricsMalformed(f"metrics text is not Prometheus exposition format: {exc}") from exc
    if malformed:
        more = f" (and {len(malformed) - 3} more)" if len(malformed) > 3 else ""
        raise MetricsMalformed(f"Triton counters must be finite numbers >= 0; got {'; '.join(malformed[:3])}{more}")
    versions = {
        key: _counters(
            counters.get(key, {}),
            failure_by_reason=dict(failures.get(key, {})),
            pending=pending.get(key),
            quantiles=quantiles.get(key, {}),
        )
        for key in sorted(seen)
    }
    host_stats = HostStats(
        cpu_utilization=host.get("cpu_utilization"),
        cpu_memory_used_bytes=host.get("cpu_memory_used_bytes"),
        cpu_memory_total_bytes=host.get("cpu_memory_total_bytes"),
        gpu_utilization=dict(gpus.get("gpu_utilization", {})),
        gpu_memory_used_bytes=dict(gpus.get("gpu_memory_used_bytes", {})),
        gpu_memory_total_bytes=dict(gpus.get("gpu_memory_total_bytes", {})),
    )
    return Snapshot(taken_at=taken_at, versions=versions, host=host_stats)


def _counters(
    values: Mapping[str, float],
    *,
    failure_by_reason: dict[str, float],
    pending: float | None = None,
    quantiles: Mapping[str, dict[float, float]] | None = None,
) -> VersionCounters:
    quantiles = quantiles or {}
    return VersionCounters(
        success=values.get("success", 0.0),
        failure_by_reason=failure_by_reason,
        inference_count=values.get("inference_count", 0.0),
        exec_count=values.get("exec_count", 0.0),
        request_us=values.get("request_us", 0.0),
        queue_us=values.get("queue_us", 0.0),
        compute_input_us=values.get("compute_input_us", 0.0),
        compute_infer_us=values.get("compute_infer_us", 0.0),
        compute_output_us=values.get("compute_output_us", 0.0),
        pending=pending,
        request_quantiles_us=dict(quantiles.get("request_quantiles_us", {})),
        queue_quantiles_us=dict(quantiles.get("queue_quantiles_us", {})),
        compute_infer_quantiles_us=dict(quantiles.get("compute_infer_quantiles_us", {})),
    )


def metrics_url(url: str) -> str:
    """Accept "127.0.0.1:8002", "http://host:8002" or a full ".../metrics" url."""
    if "://" not in url:
        url = f"http://{url}"
    scheme, rest = url.split("://", 1)
    if "/" not in rest:
        rest = f"{rest}/metrics"
    return f"{scheme}://{rest}"


def scrape(url: str, *, timeout: float = 5.0) -> Snapshot:
    """GET the metrics endpoint and parse it; MetricsUnavailable names the url when it fails."""
    full = metrics_url(url)
    try:
        response = requests.get(full, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise MetricsUnavailable(f"Triton metrics at {full} did not answer: {exc}") from exc
    taken_at = time.time()
    try:
        snapshot = parse_metrics(response.text, taken_at=taken_at)
    except MetricsMalformed as exc:
        raise MetricsMalformed(f"{full}: {exc}") from exc
    # Triton always exports some nv_* series (at least its pinned-memory pool): a page without
    # any is some other endpoint that happens to answer 200, not an idle Triton.
    if not any(line.startswith(("nv_", "# TYPE nv_")) for line in response.text.splitlines()):
        raise MetricsMalformed(f"{full} answered without any Triton (nv_*) metrics: is it Triton's metrics port?")
    return snapshot


def _quantile_ms(quantiles: dict[float, float], q: float) -> float | None:
    """The quantile in ms; None when Triton has none (NaN, or missing, or absurd: not measured)."""
    value = quantiles.get(q)
    return value / 1000.0 if value is not None and _measured(value) else None


def _check_counters(key: tuple[str, str], counters: VersionCounters, side: str) -> None:
    """BadWindow when a snapshot built without `parse_metrics` holds a counter no window can use."""
    for name, value in counters.cumulative().items():
        if not _measured(value):
            raise BadWindow(f"{side} snapshot of {key[0]} v{key[1]}: {name} is {value!r}, not a finite number >= 0")


def _per_request_ms(total_us: float, requests: float) -> float | None:
    return total_us / requests / 1000.0 if requests > 0 else None


def _delta(start: VersionCounters | None, end: VersionCounters) -> tuple[VersionCounters, bool]:
    """End minus start; when a counter went down the version restarted, so the end values are the delta."""
    if start is None:
        return end, False  # loaded during the window: its counters started at zero inside it
    before, after = start.cumulative(), end.cumulative()
    if any(after.get(name, 0.0) < value for name, value in before.items()):
        return end, True
    reasons = set(end.failure_by_reason) | set(start.failure_by_reason)
    return (
        _counters(
            {name: after[name] - before[name] for name in _COUNTERS.values()},
            failure_by_reason={
                r: end.failure_by_reason.get(r, 0.0) - start.failure_by_reason.get(r, 0.0) for r in reasons
            },
        ),
        False,
    )


def window(start: Snapshot, end: Snapshot) -> dict[tuple[str, str], WindowStats]:
    """Per-version traffic between two snapshots, for the versions present in `end`.

    A version absent from `start` was loaded during the window; its deltas are its end values.
    With `counter_reset` the traffic counted is only what came after the reset, while `seconds`
    stays the whole window, so the rates are a lower bound.
    """
    seconds = end.taken_at - start.taken_at
    if not math.isfinite(seconds):
        raise BadWindow(f"snapshots taken at {start.taken_at!r} and {end.taken_at!r} do not make a window")
    if seconds < 0:
        raise BadWindow(f"end snapshot ({end.taken_at:.3f}) is older than the start ({start.taken_at:.3f})")
    result = {}
    for key, counters in end.versions.items():
        before = start.versions.get(key)
        _check_counters(key, counters, "end")
        if before is not None:
            _check_counters(key, before, "start")
        delta, reset = _delta(before, counters)
        failures = delta.failures
        requests = delta.success
        attempts = requests + failures
        result[key] = WindowStats(
            model=key[0],
            version=key[1],
            seconds=seconds,
            requests=requests,
            failures=failures,
            failures_by_reason={r: v for r, v in delta.failure_by_reason.items() if v},
            request_rate=attempts / seconds if seconds > 0 else 0.0,
            failure_rate=failures / attempts if attempts > 0 else 0.0,
            avg_request_ms=_per_request_ms(delta.request_us, requests),
            avg_queue_ms=_per_request_ms(delta.queue_us, requests),
            avg_compute_ms=_per_request_ms(
                delta.compute_input_us + delta.compute_infer_us + delta.compute_output_us, requests
            ),
            p50_ms=_quantile_ms(counters.request_quantiles_us, 0.5),
            p95_ms=_quantile_ms(counters.request_quantiles_us, 0.95),
            p99_ms=_quantile_ms(counters.request_quantiles_us, 0.99),
            counter_reset=reset,
        )
    return result


# -- marks: a snapshot's counters for one model, kept between processes -------------------------
def counters_of(snapshot: Snapshot, model: str) -> dict[str, Any]:
    """The cumulative counters of `model`'s versions as plain JSON (no quantiles: a window reads those
    from its end), for storing the start of the next window outside this process."""
    return {
        version: {
            **{name: getattr(c, name) for name in _COUNTERS.values()},
            "failure_by_reason": dict(c.failure_by_reason),
        }
        for (name, version), c in snapshot.versions.items()
        if name == model
    }


def snapshot_of(model: str, taken_at: float, counters: Mapping[str, Any]) -> Snapshot:
    """A Snapshot of one model back from `counters_of`; anything malformed is BadWindow (exit 54)."""
    versions: dict[tuple[str, str], VersionCounters] = {}
    try:
        for version, values in counters.items():
            reasons = {str(r): float(v) for r, v in dict(values.get("failure_by_reason") or {}).items()}
            versions[(model, str(version))] = _counters(
                {name: float(values.get(name, 0.0)) for name in _COUNTERS.values()}, failure_by_reason=reasons
            )
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadWindow(f"stored counters of {model} are malformed: {exc}") from exc
    return Snapshot(taken_at=taken_at, versions=versions, host=HostStats())


def combined(stats: list[WindowStats]) -> WindowStats | None:
    """One version's windows on several replicas as one: counts summed, averages and Triton's
    quantiles weighted by each replica's requests (a quantile of the union cannot be had from
    per-process summaries; with one replica per side, as on a fleet of three, it is exact)."""
    if not stats:
        return None
    first = stats[0]
    requests = sum(s.requests for s in stats)
    failures = sum(s.failures for s in stats)
    reasons: dict[str, float] = defaultdict(float)
    for s in stats:
        for reason, value in s.failures_by_reason.items():
            reasons[reason] += value

    def weighted(name: str) -> float | None:
        pairs = [(getattr(s, name), s.requests) for s in stats if getattr(s, name) is not None]
        total = sum(w for _, w in pairs)
        if not pairs:
            return None
        if total <= 0:
            return max(v for v, _ in pairs)
        return sum(v * w for v, w in pairs) / total

    attempts = requests + failures
    return WindowStats(
        model=first.model,
        version=first.version,
        seconds=max(s.seconds for s in stats),
        requests=requests,
        failures=failures,
        failures_by_reason=dict(reasons),
        request_rate=sum(s.request_rate for s in stats),
        failure_rate=failures / attempts if attempts > 0 else 0.0,
        avg_request_ms=weighted("avg_request_ms"),
        avg_queue_ms=weighted("avg_queue_ms"),
        avg_compute_ms=weighted("avg_compute_ms"),
        p50_ms=weighted("p50_ms"),
        p95_ms=weighted("p95_ms"),
        p99_ms=weighted("p99_ms"),
        counter_reset=any(s.counter_reset for s in stats),
    )
