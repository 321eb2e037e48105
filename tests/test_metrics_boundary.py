"""Non-finite and absurd metric values stop at the boundary (probes.metrics), and stored windows with
missing server figures never stall the judge (control_plane.observe).

The reliability issue: one NaN or +Inf in Triton's metrics was stored as null, the evidence code then
called float(None), and every later tick of that rollout failed, so max_canary_seconds never applied.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from builders.repository import ModelRepository
from control_plane import reconciler
from control_plane.audit import history_mismatches
from control_plane.judging import Evidence
from control_plane.local_triton import LocalTriton
from control_plane.observe import evidence_from_windows, probe_figures
from control_plane.runtime import open_runtime
from control_plane.settings import load_settings
from control_plane.store import Store
from control_plane.store.models import State
from control_plane.store.records import ProbeWindowRecord
from probes.errors import BadWindow, MetricsMalformed
from probes.golden import ProbeRun
from probes.metrics import Snapshot, WindowStats, parse_metrics, window
from tests.classifier_models import publish
from tests.test_probes_metrics import GPU_LINES, RECORDED_AFTER_5, RECORDED_IDLE, with_value

SCALE = ("scale", "1")
SUCCESS = 'nv_inference_request_success{model="scale",version="1"}'
BACKEND = 'nv_inference_request_failure{model="scale",reason="BACKEND",version="1"}'
REQUEST_US = 'nv_inference_request_duration_us{model="scale",version="1"}'
QUEUE_US = 'nv_inference_queue_duration_us{model="scale",version="1"}'
EXEC = 'nv_inference_exec_count{model="scale",version="1"}'
P95 = 'nv_inference_request_summary_us{model="scale",version="1",quantile="0.95"}'
P50 = 'nv_inference_request_summary_us{model="scale",version="1",quantile="0.5"}'
QUEUE_P99 = 'nv_inference_queue_summary_us{model="scale",version="1",quantile="0.99"}'
PENDING = 'nv_inference_pending_request_count{model="scale",version="1"}'

NON_FINITE = [math.nan, math.inf, -math.inf]
ABSURD = [*NON_FINITE, -1.0]


def all_finite(stats: WindowStats) -> bool:
    """Every number of a WindowStats is finite and >= 0 (None where not measured)."""
    for f in fields(stats):
        value = getattr(stats, f.name)
        if isinstance(value, dict):
            if not all(math.isfinite(v) and v >= 0 for v in value.values()):
                return False
        elif (
            isinstance(value, float | int) and not isinstance(value, bool) and not (math.isfinite(value) and value >= 0)
        ):
            return False
    return True


# -- (a) parse: counters are malformed pages ---------------------------------------------------


@pytest.mark.parametrize("series", [SUCCESS, BACKEND, REQUEST_US, QUEUE_US, EXEC])
@pytest.mark.parametrize("value", ABSURD, ids=["nan", "+inf", "-inf", "negative"])
def test_absurd_counter_makes_the_scrape_malformed(series: str, value: float) -> None:
    text = with_value(RECORDED_AFTER_5, series, value)
    with pytest.raises(MetricsMalformed) as caught:
        parse_metrics(text, taken_at=1.0)
    message = str(caught.value)
    assert series.split("{")[0] in message and "scale" in message  # names the family and the version
    assert caught.value.exit_code == 53


def test_triton_style_nan_spelling_in_a_counter_is_malformed() -> None:
    text = RECORDED_AFTER_5.replace(f"{SUCCESS} 5", f"{SUCCESS} Nan")
    assert f"{SUCCESS} Nan" in text
    with pytest.raises(MetricsMalformed, match="nv_inference_request_success"):
        parse_metrics(text)


# -- (a) parse: quantiles, gauges are dropped -------------------------------------------------


def test_nan_quantiles_are_no_value_not_an_error() -> None:
    counters = parse_metrics(RECORDED_IDLE, taken_at=0.0).versions[SCALE]
    assert counters.request_quantiles_us == {} and counters.queue_quantiles_us == {}
    text = with_value(RECORDED_AFTER_5, P95, math.nan)  # one version idle in Triton's summary window
    stats = window(parse_metrics(RECORDED_IDLE, taken_at=0.0), parse_metrics(text, taken_at=1.0))[SCALE]
    assert stats.p95_ms is None and stats.p50_ms == 0.532 and stats.requests == 5
    assert all_finite(stats)


@pytest.mark.parametrize("value", [math.inf, -math.inf, -3.0], ids=["+inf", "-inf", "negative"])
def test_absurd_quantile_is_dropped_and_the_window_misses_only_that_figure(value: float) -> None:
    text = with_value(RECORDED_AFTER_5, P95, value)
    text = with_value(text, QUEUE_P99, value)
    counters = parse_metrics(text, taken_at=1.0).versions[SCALE]
    assert 0.95 not in counters.request_quantiles_us and 0.5 in counters.request_quantiles_us
    assert 0.99 not in counters.queue_quantiles_us
    stats = window(parse_metrics(RECORDED_IDLE, taken_at=0.0), parse_metrics(text, taken_at=1.0))[SCALE]
    assert stats.p95_ms is None and stats.p50_ms == 0.532 and stats.p99_ms == 0.661
    assert stats.requests == 5 and stats.avg_request_ms == pytest.approx(53656 / 5 / 1000)
    assert all_finite(stats)


@pytest.mark.parametrize("value", ABSURD, ids=["nan", "+inf", "-inf", "negative"])
def test_absurd_gauges_are_dropped(value: float) -> None:
    text = with_value(RECORDED_AFTER_5 + GPU_LINES, PENDING, value)
    text = with_value(text, "nv_cpu_memory_used_bytes", value)
    text = with_value(text, "nv_cpu_utilization", value)
    text = with_value(text, 'nv_gpu_memory_used_bytes{gpu_uuid="GPU-9f8e"}', value)
    text = with_value(text, 'nv_gpu_utilization{gpu_uuid="GPU-0a1b"}', value)
    snapshot = parse_metrics(text, taken_at=1.0)
    assert snapshot.versions[SCALE].pending is None
    assert snapshot.host.cpu_memory_used_bytes is None and snapshot.host.cpu_utilization is None
    assert snapshot.host.cpu_memory_total_bytes == 25276502016
    assert snapshot.host.gpu_memory_used_bytes == {"GPU-0a1b": 1073741824}
    assert snapshot.host.gpu_utilization == {"GPU-9f8e": 0.75}


def test_non_finite_taken_at_is_refused() -> None:
    with pytest.raises(BadWindow, match="taken_at"):
        parse_metrics(RECORDED_AFTER_5, taken_at=math.nan)


# -- (a) window: nothing non-finite or negative reaches WindowStats ---------------------------


def doctored(snapshot: Snapshot, **changes: Any) -> Snapshot:
    """A snapshot whose scale v1 counters were built by hand (bypassing parse_metrics' checks)."""
    counters = replace(snapshot.versions[SCALE], **changes)
    return replace(snapshot, versions={SCALE: counters})


@pytest.mark.parametrize("value", ABSURD, ids=["nan", "+inf", "-inf", "negative"])
@pytest.mark.parametrize("side", ["start", "end"])
@pytest.mark.parametrize("name", ["success", "request_us", "queue_us"])
def test_window_refuses_hand_built_absurd_counters(name: str, side: str, value: float) -> None:
    start, end = parse_metrics(RECORDED_IDLE, taken_at=0.0), parse_metrics(RECORDED_AFTER_5, taken_at=10.0)
    if side == "start":
        start = doctored(start, **{name: value})
    else:
        end = doctored(end, **{name: value})
    with pytest.raises(BadWindow, match=name):
        window(start, end)


@pytest.mark.parametrize("value", ABSURD, ids=["nan", "+inf", "-inf", "negative"])
def test_window_refuses_hand_built_absurd_failures_and_quantiles(value: float) -> None:
    start, end = parse_metrics(RECORDED_IDLE, taken_at=0.0), parse_metrics(RECORDED_AFTER_5, taken_at=10.0)
    bad_failure = doctored(end, failure_by_reason={"BACKEND": value})
    with pytest.raises(BadWindow, match="BACKEND"):
        window(start, bad_failure)
    # quantiles are no value rather than an error, whatever their spelling
    bad_quantile = doctored(end, request_quantiles_us={0.5: value, 0.95: 661.0})
    stats = window(start, bad_quantile)[SCALE]
    assert stats.p50_ms is None and stats.p95_ms == 0.661 and all_finite(stats)


@pytest.mark.parametrize("taken_at", [math.nan, math.inf])
def test_window_refuses_a_non_finite_duration(taken_at: float) -> None:
    start = parse_metrics(RECORDED_IDLE, taken_at=0.0)
    end = replace(parse_metrics(RECORDED_AFTER_5, taken_at=1.0), taken_at=taken_at)
    with pytest.raises(BadWindow):
        window(start, end)


def test_counter_going_down_never_gives_a_negative_delta() -> None:
    start = parse_metrics(RECORDED_AFTER_5, taken_at=0.0)
    # only the duration went down while the request count grew: a reload whose new traffic already
    # passed the old count; the end values are the traffic since it
    end_text = with_value(RECORDED_AFTER_5, SUCCESS, 9)
    end_text = with_value(end_text, REQUEST_US, 100)
    stats = window(start, parse_metrics(end_text, taken_at=2.0))[SCALE]
    assert stats.counter_reset and stats.requests == 9 and stats.avg_request_ms == pytest.approx(100 / 9 / 1000)
    assert all_finite(stats)
    # one failure reason went down, the others up
    failing = with_value(RECORDED_AFTER_5, BACKEND, 4)
    fewer = with_value(with_value(RECORDED_AFTER_5, BACKEND, 1), SUCCESS, 8)
    stats = window(parse_metrics(failing, taken_at=0.0), parse_metrics(fewer, taken_at=1.0))[SCALE]
    assert stats.counter_reset and stats.failures == 1 and stats.requests == 8 and all_finite(stats)


def test_window_stats_refuses_non_finite_values_directly() -> None:
    stats = window(parse_metrics(RECORDED_IDLE, taken_at=0.0), parse_metrics(RECORDED_AFTER_5, taken_at=1.0))[SCALE]
    changes: list[tuple[str, float]] = [
        ("requests", math.nan), ("request_rate", math.inf), ("p95_ms", -1.0), ("seconds", math.nan),
    ]  # fmt: skip
    for name, value in changes:
        with pytest.raises(BadWindow, match=name):
            replace(stats, **{name: value})  # type: ignore[arg-type]
    with pytest.raises(BadWindow, match="failure_rate"):
        replace(stats, failure_rate=1.5)


# -- (b) evidence from stored windows with missing server figures ------------------------------


def record(raw: dict[str, Any], *, requests: int | None = 8, errors: int | None = 1, **extra: Any) -> ProbeWindowRecord:
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": 1, "model": "intent", "version": 2, "role": "candidate", "rollout_id": 1,
        "started_at": at, "ended_at": at + timedelta(seconds=5), "requests": requests, "errors": errors,
        "failure_by_reason": None, "p50_ms": None, "p95_ms": None, "p99_ms": None, "avg_queue_ms": None,
        "avg_compute_ms": None, "client_p50_ms": None, "client_p95_ms": None, "quality": 0.9,
        "agreement": None, "triton_cpu_memory_bytes": None, "gpu_memory_bytes": None,
        "samples": (1.0, 2.0), "raw": raw,
    }  # fmt: skip
    values.update(extra)
    return ProbeWindowRecord(**values)


@pytest.mark.parametrize(
    "server",
    [
        {"requests": None, "failures": None, "p95_ms": None},  # what a NaN window was stored as
        {"requests": None, "failures": 0},
        {"requests": 40, "failures": None},
        {"requests": "40", "failures": 0},
        {"requests": -5.0, "failures": 0},
        {"requests": 40, "failures": -1},
        {"failures": 3},
    ],
)
def test_missing_server_counts_fall_back_to_the_probe_counts(server: dict[str, Any]) -> None:
    evidence = evidence_from_windows(2, [record({"server": server})])
    assert isinstance(evidence, Evidence)
    assert (evidence.requests, evidence.errors) == (8, 1)  # the probe's own counts, as with no metrics


def test_good_windows_still_count_server_traffic_next_to_a_null_one() -> None:
    windows = [
        record({"server": {"requests": 38.0, "failures": 2.0}}),  # 40 attempts seen by Triton
        record({"server": {"requests": None, "failures": None}}),
        record({}, requests=None, errors=None, samples=(3.0,)),
    ]
    evidence = evidence_from_windows(2, windows)
    assert (evidence.requests, evidence.errors) == (40 + 8 + 0, 2 + 1 + 0)
    assert evidence.latencies_ms == (1.0, 2.0, 1.0, 2.0, 3.0)


def test_absurd_stored_latencies_are_not_evidence() -> None:
    windows = [record({}, p95_ms=math.nan, samples=(1.0, math.nan, -2.0, math.inf)), record({}, p95_ms=-1.0)]
    evidence = evidence_from_windows(2, windows)
    assert evidence.latencies_ms == (1.0, 1.0, 2.0) and evidence.server_p95_ms is None


def test_stored_null_server_window_is_read_back_as_valid_evidence(tmp_path: Path) -> None:
    """The issue's chain through a real store: a window written with a null server figure."""
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    with Store.open(f"sqlite:///{tmp_path / 'history.db'}", clock=lambda: at) as store:
        for v in (1, 2):
            store.lifecycle.record_version("intent", v, manifest={"model": "intent", "version": v}, kind="intent")
        rollout = store.lifecycle.start_rollout("intent", 2, 1)
        for n, server in enumerate(
            [{"requests": float("nan"), "failures": float("inf")}, {"requests": None, "failures": None}]
        ):
            store.evidence.add_probe_window(
                "intent", 2, role="candidate", rollout_id=rollout,
                started_at=at + timedelta(seconds=n), ended_at=at + timedelta(seconds=n + 1),
                figures={"requests": 8, "errors": 0, "samples": [1.0, 2.0], "raw": {"server": server}},
            )  # fmt: skip
        windows = store.read.probe_windows("intent", 2, role="candidate", rollout_id=rollout)
        assert len(windows) == 2
        evidence = evidence_from_windows(2, windows)
    assert (evidence.requests, evidence.errors) == (16, 0) and len(evidence.latencies_ms) == 4


def test_a_bad_quantile_scrape_stores_a_window_the_judge_can_read() -> None:
    """parse -> window -> probe_figures: an +Inf p95 never becomes a stored figure."""
    text = with_value(RECORDED_AFTER_5, P95, math.inf)
    stats = window(parse_metrics(RECORDED_IDLE, taken_at=0.0), parse_metrics(text, taken_at=1.0))[SCALE]
    run = ProbeRun(
        model="scale", version="1", started_at=0.0, latencies_ms=(1.0, 2.0), requests=2, errors=0,
        error_messages=(), outputs=None,
    )  # fmt: skip
    figures = probe_figures(run, quality=None, agreement=None, server=stats)
    assert figures["p95_ms"] is None and figures["raw"]["server"]["requests"] == 5
    stored = record(figures["raw"], requests=figures["requests"], errors=figures["errors"], p95_ms=figures["p95_ms"])
    evidence = evidence_from_windows(2, [stored])
    assert (evidence.requests, evidence.errors, evidence.server_p95_ms) == (5, 0, None)


# -- (c) end to end: a doctored metrics page during a canary, against the real Triton -------------


class DoctoredMetrics:
    """An HTTP server on 127.0.0.1 serving the real Triton's /metrics, with every success counter
    replaced by `poison` while it is set (None: the page passes through unchanged)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.poison: str | None = None
        self.served_poison = 0
        doctor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                text = requests.get(doctor.upstream, timeout=5).text
                if doctor.poison is not None:
                    text = re.sub(
                        r"^(nv_inference_request_success\{[^}]*\}) \S+$",
                        rf"\1 {doctor.poison}",
                        text,
                        flags=re.MULTILINE,
                    )
                    doctor.served_poison += 1
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> DoctoredMetrics:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.triton
@pytest.mark.parametrize("poison", ["NaN", "+Inf"])
def test_canary_reaches_a_decision_through_a_bad_metrics_page(
    poison: str, repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    from tests.test_control_plane import FAST_POLICY, establish_stable, state_of, tick_until

    config = tmp_path / "shepherd.yaml"
    config.write_text(FAST_POLICY + "  max_canary_seconds: 30\n")
    with DoctoredMetrics(f"http://127.0.0.1:{triton.state.metrics_port}/metrics") as doctor:
        settings = load_settings(
            config,
            overrides={
                "repo": repo.root,
                "triton_grpc": triton.state.grpc_url,
                "triton_metrics": doctor.address,
                "db_url": f"sqlite:///{tmp_path / 'history.db'}",
            },
        )
        rt = open_runtime(settings)
        try:
            establish_stable(rt, repo, tmp_path)
            same = publish(repo, tmp_path / "build", "clf", "same")
            tick_until(rt, lambda: state_of(rt, "clf", same) == State.canary)
            doctor.poison = poison
            reports = []
            deadline = time.monotonic() + 20
            while doctor.served_poison < 4 and time.monotonic() < deadline:
                reports.append(reconciler.tick(rt))  # must not raise
                time.sleep(0.3)
            assert doctor.served_poison >= 4
            assert state_of(rt, "clf", same) == State.canary
            codes = {e.exit_code for r in reports for e in r.errors}
            assert codes == {53}, [str(e) for r in reports for e in r.errors]  # the page was refused, loudly
            doctor.poison = None  # the metrics are fixed: the rollout goes on to a decision
            tick_until(rt, lambda: state_of(rt, "clf", same) in (State.promoted, State.rolled_back), timeout=90)
            rollout_windows = rt.store.read.probe_windows("clf", same, role="candidate")
            assert rollout_windows
            for w in rollout_windows:
                server = w.raw.get("server")
                if server is not None:
                    assert all(
                        v is not None for k, v in server.items() if not k.startswith("p") and k != "failures_by_reason"
                    ), server
            assert any(w.raw.get("server") for w in rollout_windows)  # Triton's counts came back after the fix
            assert history_mismatches(rt.store) == []
        finally:
            rt.close()
