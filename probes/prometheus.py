"""Prometheus as a metrics source: Triton's figures per replica (`instance`) and version, through PromQL.

Why: with a fleet of Triton replicas, scraping each /metrics page ourselves gives one window per
replica only if every replica is reached at both ends of the window; a Prometheus that scrapes every
replica already holds each series with its history. `PrometheusSource.window` turns that history
into the same `probes.metrics.WindowStats` a pair of scrapes gives, keyed by (instance, version),
so the control plane treats both sources alike.

    source = PrometheusSource("http://127.0.0.1:9090", selector='job="triton"')
    stats = source.window("intent", ["10.0.0.7:8002"], start, end)[("10.0.0.7:8002", "3")]
    source.up(["10.0.0.7:8002", "10.0.0.8:8002"])      # {"10.0.0.7:8002": True, "10.0.0.8:8002": False}
    source.check_query('sum(rate(nv_inference_count[1m]))')   # raises if Prometheus refuses it

One HTTP request per window: `window_query` joins eleven parts with `or`, each tagged by
`label_replace` with a `shepherd_figure` label (successes, failures by reason, request, queue and
compute input/infer/output durations, resets, the latency quantiles, `up` at the end and its
minimum over the window), all evaluated at `time=end`. `up` and `check_query` are one request each.

What a figure means (Prometheus 2.x semantics, seen with 2.42):
- Counts and durations are `increase(counter[end - start])`: the difference between the first
  and the last sample INSIDE the window, with counter resets added back (a reload or restart
  zeroes Triton's counters; Prometheus treats any decrease as a reset), then EXTRAPOLATED to the
  whole window: toward each edge by the gap to it when that gap is under 1.1 sampling intervals
  (else by half an interval), and never to before the counter's zero point (a counter that is 0 at
  the first sample is not extrapolated backward). So a figure is an estimate, not an integer: for N
  requests that fell between two samples inside a window of w seconds scraped every s seconds,
  N <= figure <= N * w / (w - 2.2 s) (seen: 1.007 N for w = 10 s, s = 1 s). Requests between the
  window's start and its first sample are counted only through that extrapolation (seen: a burst
  just before the first sample of a window whose counters were at 0 counted 0), and so are those
  between the last sample and `end`; windows that tile time share the scrape interval at each
  boundary only by estimate. Averages (`avg_*_ms`, per SUCCESSFUL request, as Triton adds
  durations for successes only) and `failure_rate` are ratios of increases over the same samples,
  so the extrapolation mostly cancels out; `request_rate` is Prometheus' `rate()`. Traffic after
  the last scrape before `end` is not yet in Prometheus (only extrapolated): end a window at least
  one scrape interval after the traffic to count it.
- `counter_reset` is True when a counter went down inside the window (`resets()`), or when a scrape
  of the replica failed inside it (`min_over_time(up)` < 1: it may have restarted between two
  scrapes). Prometheus has then added the reset back, but requests between the last sample before
  the reset and the reset itself are lost: the counts are a lower bound.
- The quantiles are Triton's own summaries (`nv_inference_request_summary_us`, about the last 60 s,
  per process) as of `end`; they cannot be summed across replicas. NaN (no request in Triton's
  summary window) or an absurd value is None, as in `probes.metrics`.

MISSING, never zero: an (instance, version) is absent from a window when Prometheus has fewer
than two samples of it inside the window (a window shorter than the scrape interval, a version
loaded too late, a replica never scraped), when its failure counters are missing (errors could not
be counted), or when the replica's last scrape at `end` failed or is unknown (`up` not 1: a dead
replica). A version with no traffic but known counters is present with zero requests and None
averages. Like `probes.metrics`, a version unloaded before the window keeps its frozen series, so
presence does not mean loaded: the repository index says what is.

`selector` (PromQL label matchers such as `job="triton"`) is added to every series selector; it
must pick exactly one scrape job per replica, or counts from two jobs scraping the same target add up.

Errors, all translated here (never a raw `requests` exception), each naming the URL and the query:
- `MetricsUnavailable` (51): no answer (refused, timeout, DNS), HTTP 5xx, or a Prometheus error of a
  kind worth retrying (`timeout`, `canceled`, `unavailable`, `internal`);
- `MetricsMalformed` (53): a query Prometheus refuses (`bad_data`, e.g. a parse error, or
  `execution`, e.g. "vector cannot contain metrics with the same labelset": its text is quoted; the
  same query would fail again), an answer that is not the HTTP API's JSON or not of the expected
  shape, a `status: error` with HTTP 200, a count that is NaN, infinite or negative, an `up` that is
  not 0 or 1. A query longer than 500 characters is cut in messages (`window_query` rebuilds it);
- `BadWindow` (54): a window whose end is before its start, or not finite times;
- `ProbeFailed` (52): a source built with an empty URL, a selector with braces, a timeout <= 0.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from probes.errors import BadWindow, MetricsMalformed, MetricsUnavailable, ProbeFailed
from probes.metrics import WindowStats

FIGURE = "shepherd_figure"  # the label that tells the parts of the one window query apart
QUANTILES = {"0.5": "p50_ms", "0.95": "p95_ms", "0.99": "p99_ms"}
# Prometheus' errorType values worth a retry; bad_data (parsing) and execution (evaluation) would fail again.
_TRANSIENT = {"timeout", "canceled", "unavailable", "internal"}
# As in probes.metrics, the compute time of a request is input + infer + output.
_COMPUTE = ("compute_input_us", "compute_infer_us", "compute_output_us")
_FIGURES = {"success", "failure", "request_us", "queue_us", *_COMPUTE, "resets", "up", "up_min"}  # and "quantile"


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels and its value (may be NaN or infinite)."""

    labels: Mapping[str, str]
    value: float


def _string(value: str) -> str:
    """A PromQL double-quoted string (Go escapes; JSON's, without \\u for non-ASCII, are a subset)."""
    return json.dumps(value, ensure_ascii=False)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


@dataclass(frozen=True)
class PrometheusSource:
    """A Prometheus HTTP API (`url`, e.g. "http://127.0.0.1:9090" or "host:9090"), read with instant queries.

    `selector`: extra label matchers for every series, e.g. 'job="triton"' (empty: none).
    `timeout`: seconds for each HTTP request, also sent as Prometheus' own evaluation timeout.
    """

    url: str
    selector: str = ""
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.url.strip() or any(c.isspace() for c in self.url.strip()):
            raise ProbeFailed(f"not a Prometheus URL: {self.url!r}")
        if "{" in self.selector or "}" in self.selector:
            raise ProbeFailed(
                f"selector must be label matchers without braces, like 'job=\"triton\"': {self.selector!r}"
            )
        if not (isinstance(self.timeout, int | float) and math.isfinite(self.timeout) and self.timeout > 0):
            raise ProbeFailed(f"timeout must be a number of seconds > 0, got {self.timeout!r}")

    @property
    def endpoint(self) -> str:
        base = self.url.strip().rstrip("/")
        return f"{base if '://' in base else 'http://' + base}/api/v1/query"

    # -- PromQL text ------------------------------------------------------------------------------

    def _matchers(self, instances: Collection[str] | None, model: str | None = None) -> str:
        if isinstance(instances, str):  # a str is a Collection[str] of characters
            raise ProbeFailed(f"instances must be a collection of host:port strings, got the string {instances!r}")
        parts = [f"model={_string(model)}"] if model is not None else []
        if instances is not None:
            parts.append(f"instance=~{_string('|'.join(re.escape(i) for i in sorted(instances)))}")
        if self.selector.strip(" ,"):
            parts.append(self.selector.strip(" ,"))
        return ",".join(parts)

    def window_query(self, model: str, instances: Collection[str] | None, seconds: float) -> str:
        """The one PromQL expression of a window of `seconds` ending at the evaluation time."""
        r = f"{max(1, round(seconds * 1000))}ms"
        m = self._matchers(instances, model)
        s = self._matchers(instances)
        by_version = "sum by (instance, version)"
        parts = {
            "success": f"{by_version} (increase(nv_inference_request_success{{{m}}}[{r}]))",
            "failure": f"sum by (instance, version, reason) (increase(nv_inference_request_failure{{{m}}}[{r}]))",
            "request_us": f"{by_version} (increase(nv_inference_request_duration_us{{{m}}}[{r}]))",
            "queue_us": f"{by_version} (increase(nv_inference_queue_duration_us{{{m}}}[{r}]))",
            "compute_input_us": f"{by_version} (increase(nv_inference_compute_input_duration_us{{{m}}}[{r}]))",
            "compute_infer_us": f"{by_version} (increase(nv_inference_compute_infer_duration_us{{{m}}}[{r}]))",
            "compute_output_us": f"{by_version} (increase(nv_inference_compute_output_duration_us{{{m}}}[{r}]))",
            # One family per function call: a range function drops the metric name, and series of two
            # families with the same labels make "vector cannot contain metrics with the same labelset".
            "resets": " + ".join(
                f"{by_version} (resets({family}{{{m}}}[{r}]))"
                for family in (
                    "nv_inference_request_success",
                    "nv_inference_request_failure",
                    "nv_inference_request_duration_us",
                )
            ),
            "quantile": "max by (instance, version, quantile) "
            f"(nv_inference_request_summary_us{{quantile=~{_string('|'.join(map(re.escape, QUANTILES)))},{m}}})",
            "up": f"min by (instance) (up{{{s}}})",
            "up_min": f"min by (instance) (min_over_time(up{{{s}}}[{r}]))",
        }
        return " or ".join(f'label_replace({expr}, "{FIGURE}", "{name}", "", "")' for name, expr in parts.items())

    # -- HTTP ---------------------------------------------------------------------------------------

    def _where(self, expr: str) -> str:
        return f"Prometheus at {self.endpoint}, query {_one_line(expr, 500)}"

    def _data(self, expr: str, at: float | None) -> tuple[dict[str, Any], str]:
        """POST one instant query; the API's `data` object, or the error of the tree that says why not."""
        where = self._where(expr)
        form = {"query": expr, "timeout": f"{self.timeout:g}"}
        if at is not None:
            form["time"] = f"{at:.3f}"
        try:
            response = requests.post(self.endpoint, data=form, timeout=self.timeout)
            text = response.text
        except requests.RequestException as exc:
            raise MetricsUnavailable(f"{where}: no answer: {_one_line(str(exc))}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        code = response.status_code
        if isinstance(body, dict) and body.get("status") == "error":
            kind, error = body.get("errorType"), _one_line(str(body.get("error")), 500)
            transient = kind in _TRANSIENT and code >= 400
            raise (MetricsUnavailable if transient else MetricsMalformed)(f"{where}: HTTP {code}, {kind}: {error}")
        if code >= 500:
            raise MetricsUnavailable(f"{where}: HTTP {code}: {_one_line(text)}")
        if code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise MetricsMalformed(f"{where}: not an answer of Prometheus' HTTP API (HTTP {code}): {_one_line(text)}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise MetricsMalformed(f"{where}: the answer has no data object: {_one_line(text)}")
        return data, where

    def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
        """Evaluate `expr` as an instant vector at `at` (unix seconds; None: Prometheus' now)."""
        data, where = self._data(expr, at)
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise MetricsMalformed(f"{where}: expected a vector, got {_one_line(json.dumps(data))}")
        samples = []
        for item in result:
            try:
                labels, (_, raw) = item["metric"], item["value"]
                ok = isinstance(raw, str) and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
                value = float(raw) if ok else None
            except (KeyError, TypeError, ValueError, AttributeError):
                value = None
            if value is None:
                raise MetricsMalformed(f"{where}: not a vector element: {_one_line(json.dumps(item))}")
            samples.append(Sample(labels=dict(labels), value=value))
        return samples

    def check_query(self, expr: str) -> None:
        """Have Prometheus parse and evaluate `expr` now; MetricsMalformed quotes its refusal."""
        self._data(expr, None)

    # -- the figures --------------------------------------------------------------------------------

    def up(self, instances: Collection[str] | None = None, *, at: float | None = None) -> dict[str, bool]:
        """Whether Prometheus' last scrape of each instance (as of `at`, default now) succeeded.

        A requested instance Prometheus has no `up` for (never scraped, removed) is False: nothing
        says it serves. With `instances` None, every instance the selector matches.
        """
        expr = f"min by (instance) (up{{{self._matchers(instances)}}})"
        if instances is not None and not instances:
            return {}
        seen = {}
        for sample in self.query(expr, at=at):
            if sample.value not in (0.0, 1.0):
                raise MetricsMalformed(f"{self._where(expr)}: up is {sample.value!r}, not 0 or 1")
            seen[sample.labels.get("instance", "")] = sample.value == 1.0
        return seen if instances is None else {i: seen.get(i, False) for i in instances}

    def window(
        self, model: str, instances: Collection[str] | None, start: float, end: float
    ) -> dict[tuple[str, str], WindowStats]:
        """`model`'s traffic in [start, end] (unix seconds) per (instance, version); see the module docstring.

        `instances` None: every instance the selector matches. Absent keys are MISSING figures.
        """
        if not (math.isfinite(start) and math.isfinite(end)):
            raise BadWindow(f"window times must be finite, got {start!r} and {end!r}")
        if end < start:
            raise BadWindow(f"window end ({end:.3f}) is before its start ({start:.3f})")
        seconds = end - start
        expr = self.window_query(model, instances, seconds)
        if seconds < 0.001 or (instances is not None and not instances):
            return {}  # no range holds two samples (PromQL ranges are whole milliseconds)
        figures: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        failures: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        quantiles: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for sample in self.query(expr, at=end):
            labels, value = sample.labels, sample.value
            figure = labels.get(FIGURE, "")
            key = (labels.get("instance", ""), labels.get("version", ""))
            if figure == "quantile":
                if _measured(value) and labels.get("quantile") in QUANTILES:
                    quantiles[key][QUANTILES[labels["quantile"]]] = value / 1000.0
                continue
            wrong = not _measured(value) or (figure in ("up", "up_min") and value not in (0.0, 1.0))
            if wrong or figure not in _FIGURES:
                raise MetricsMalformed(
                    f"{self._where(expr)}: {figure or 'unlabelled'} of "
                    f"{json.dumps(dict(labels), sort_keys=True)} is {value!r}, not a count >= 0"
                )
            if figure == "failure":
                failures[key][labels.get("reason") or "UNKNOWN"] = value
            else:
                figures[figure][key] = value
        result = {}
        for key, successes in figures["success"].items():
            instance, version = key
            if figures["up"].get((instance, "")) != 1.0 or key not in failures:
                continue  # a dead or unknown replica, or errors that cannot be counted: missing
            by_reason = failures[key]
            failed = sum(by_reason.values())
            attempts = successes + failed
            result[key] = WindowStats(
                model=model,
                version=version,
                seconds=seconds,
                requests=successes,
                failures=failed,
                failures_by_reason={reason: v for reason, v in by_reason.items() if v},
                request_rate=attempts / seconds,
                failure_rate=min(1.0, failed / attempts) if attempts > 0 else 0.0,
                avg_request_ms=_per_request_ms(figures["request_us"].get(key), successes),
                avg_queue_ms=_per_request_ms(figures["queue_us"].get(key), successes),
                avg_compute_ms=_per_request_ms(_total(figures[name].get(key) for name in _COMPUTE), successes),
                p50_ms=quantiles[key].get("p50_ms"),
                p95_ms=quantiles[key].get("p95_ms"),
                p99_ms=quantiles[key].get("p99_ms"),
                counter_reset=figures["resets"].get(key, 0.0) > 0 or figures["up_min"].get((instance, ""), 0.0) < 1,
            )
        return result


def _measured(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _total(values: Iterable[float | None]) -> float | None:
    """The sum, or None when any part is missing (a partial sum would read as a shorter time)."""
    parts = list(values)
    return None if any(v is None for v in parts) else sum(v for v in parts if v is not None)


def _per_request_ms(total_us: float | None, requests: float) -> float | None:
    return total_us / requests / 1000.0 if total_us is not None and requests > 0 else None
