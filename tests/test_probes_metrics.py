"""probes.metrics: parsing and windows on text recorded from the real Triton, then against the live server."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from builders.repository import ModelRepository
from control_plane.local_triton import LocalTriton, free_ports
from probes.errors import BadWindow, MetricsMalformed, MetricsUnavailable, ProbeError
from probes.metrics import metrics_url, parse_metrics, scrape, window
from tests.conftest import load_versions, publish_scale

# Recorded from tritonserver 2.51 (nvidia-pytriton 0.7.0, CPU, summary_latencies=true) with
# model "scale" version 1 loaded: before any request, and after 5 gRPC requests of 2 rows each.
# Only the "# HELP" lines and the pinned-memory gauges were cut.
RECORDED_IDLE = """\
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="scale",version="1"} 0
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="scale",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="scale",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="scale",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="scale",reason="REJECTED",version="1"} 0
# TYPE nv_inference_count counter
nv_inference_count{model="scale",version="1"} 0
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="scale",version="1"} 0
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="scale",version="1"} 0
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="scale",version="1"} 0
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="scale",version="1"} 0
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="scale",version="1"} 0
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{model="scale",version="1"} 0
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="scale",version="1"} 0
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.07537688442211055
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 25276502016
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 737992704
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="scale",version="1"} 0
nv_inference_request_summary_us_sum{model="scale",version="1"} 0
nv_inference_request_summary_us{model="scale",version="1",quantile="0.5"} Nan
nv_inference_request_summary_us{model="scale",version="1",quantile="0.9"} Nan
nv_inference_request_summary_us{model="scale",version="1",quantile="0.95"} Nan
nv_inference_request_summary_us{model="scale",version="1",quantile="0.99"} Nan
nv_inference_request_summary_us{model="scale",version="1",quantile="0.999"} Nan
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us_count{model="scale",version="1"} 0
nv_inference_queue_summary_us_sum{model="scale",version="1"} 0
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.5"} Nan
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.9"} Nan
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.95"} Nan
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.99"} Nan
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.999"} Nan
# TYPE nv_inference_compute_input_summary_us summary
nv_inference_compute_input_summary_us_count{model="scale",version="1"} 0
nv_inference_compute_input_summary_us_sum{model="scale",version="1"} 0
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.5"} Nan
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.9"} Nan
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.95"} Nan
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.99"} Nan
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.999"} Nan
# TYPE nv_inference_compute_infer_summary_us summary
nv_inference_compute_infer_summary_us_count{model="scale",version="1"} 0
nv_inference_compute_infer_summary_us_sum{model="scale",version="1"} 0
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.5"} Nan
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.9"} Nan
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.95"} Nan
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.99"} Nan
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.999"} Nan
# TYPE nv_inference_compute_output_summary_us summary
nv_inference_compute_output_summary_us_count{model="scale",version="1"} 0
nv_inference_compute_output_summary_us_sum{model="scale",version="1"} 0
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.5"} Nan
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.9"} Nan
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.95"} Nan
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.99"} Nan
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.999"} Nan
"""

RECORDED_AFTER_5 = """\
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="scale",version="1"} 5
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="scale",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="scale",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="scale",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="scale",reason="REJECTED",version="1"} 0
# TYPE nv_inference_count counter
nv_inference_count{model="scale",version="1"} 10
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="scale",version="1"} 5
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="scale",version="1"} 53656
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="scale",version="1"} 231
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="scale",version="1"} 230
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="scale",version="1"} 51729
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{model="scale",version="1"} 1443
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="scale",version="1"} 0
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.235
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 25276502016
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 783339520
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="scale",version="1"} 5
nv_inference_request_summary_us_sum{model="scale",version="1"} 53656
nv_inference_request_summary_us{model="scale",version="1",quantile="0.5"} 532
nv_inference_request_summary_us{model="scale",version="1",quantile="0.9"} 661
nv_inference_request_summary_us{model="scale",version="1",quantile="0.95"} 661
nv_inference_request_summary_us{model="scale",version="1",quantile="0.99"} 661
nv_inference_request_summary_us{model="scale",version="1",quantile="0.999"} 661
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us_count{model="scale",version="1"} 5
nv_inference_queue_summary_us_sum{model="scale",version="1"} 231
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.5"} 34
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.9"} 48
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.95"} 48
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.99"} 48
nv_inference_queue_summary_us{model="scale",version="1",quantile="0.999"} 48
# TYPE nv_inference_compute_input_summary_us summary
nv_inference_compute_input_summary_us_count{model="scale",version="1"} 5
nv_inference_compute_input_summary_us_sum{model="scale",version="1"} 230
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.5"} 18
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.9"} 26
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.95"} 26
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.99"} 26
nv_inference_compute_input_summary_us{model="scale",version="1",quantile="0.999"} 26
# TYPE nv_inference_compute_infer_summary_us summary
nv_inference_compute_infer_summary_us_count{model="scale",version="1"} 5
nv_inference_compute_infer_summary_us_sum{model="scale",version="1"} 51729
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.5"} 374
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.9"} 458
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.95"} 458
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.99"} 458
nv_inference_compute_infer_summary_us{model="scale",version="1",quantile="0.999"} 458
# TYPE nv_inference_compute_output_summary_us summary
nv_inference_compute_output_summary_us_count{model="scale",version="1"} 5
nv_inference_compute_output_summary_us_sum{model="scale",version="1"} 1443
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.5"} 79
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.9"} 97
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.95"} 97
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.99"} 97
nv_inference_compute_output_summary_us{model="scale",version="1",quantile="0.999"} 97
"""

# GPU gauges in the format of Triton's metrics documentation (this machine has no GPU to record them).
GPU_LINES = """\
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-0a1b"} 0.25
nv_gpu_utilization{gpu_uuid="GPU-9f8e"} 0.75
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-0a1b"} 85899345920
nv_gpu_memory_total_bytes{gpu_uuid="GPU-9f8e"} 85899345920
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-0a1b"} 1073741824
nv_gpu_memory_used_bytes{gpu_uuid="GPU-9f8e"} 2147483648
"""


def with_value(text: str, series: str, value: float) -> str:
    """The recorded text with one series' value replaced (the line must exist)."""
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.startswith(series + " ")]
    assert len(hits) == 1, series
    lines[hits[0]] = f"{series} {value}"
    return "\n".join(lines) + "\n"


# -- parsing recorded text ---------------------------------------------------------------------


def test_idle_text_has_zero_counters_and_drops_nan_quantiles() -> None:
    snapshot = parse_metrics(RECORDED_IDLE, taken_at=100.0)
    assert snapshot.taken_at == 100.0
    assert list(snapshot.versions) == [("scale", "1")]
    counters = snapshot.versions[("scale", "1")]
    assert counters.success == 0 and counters.exec_count == 0 and counters.pending == 0
    assert counters.failure_by_reason == {"OTHER": 0, "BACKEND": 0, "CANCELED": 0, "REJECTED": 0}
    assert "Nan" in RECORDED_IDLE  # Triton writes NaN quantiles before any request ...
    assert counters.request_quantiles_us == {} and counters.queue_quantiles_us == {}  # ... and they are dropped
    assert counters.compute_infer_quantiles_us == {}
    assert snapshot.host.cpu_memory_used_bytes == 737992704
    assert snapshot.host.cpu_memory_total_bytes == 25276502016
    assert snapshot.host.cpu_utilization is not None and 0 < snapshot.host.cpu_utilization < 1
    assert snapshot.host.gpu_utilization == {} and snapshot.host.gpu_memory_used_bytes == {}


def test_text_after_requests_has_counters_and_quantiles() -> None:
    counters = parse_metrics(RECORDED_AFTER_5).versions[("scale", "1")]
    assert counters.success == 5 and counters.inference_count == 10 and counters.exec_count == 5
    assert counters.request_us == 53656 and counters.queue_us == 231
    assert (counters.compute_input_us, counters.compute_infer_us, counters.compute_output_us) == (230, 51729, 1443)
    assert counters.request_quantiles_us == {0.5: 532, 0.9: 661, 0.95: 661, 0.99: 661, 0.999: 661}
    assert counters.queue_quantiles_us[0.5] == 34 and counters.compute_infer_quantiles_us[0.99] == 458
    assert all(isinstance(v, float) for v in counters.request_quantiles_us.values())


def test_gpu_gauges_are_keyed_by_uuid() -> None:
    host = parse_metrics(RECORDED_AFTER_5 + GPU_LINES).host
    assert host.gpu_utilization == {"GPU-0a1b": 0.25, "GPU-9f8e": 0.75}
    assert host.gpu_memory_used_bytes["GPU-9f8e"] == 2147483648
    assert host.gpu_memory_total_bytes == {"GPU-0a1b": 85899345920, "GPU-9f8e": 85899345920}
    assert host.as_dict()["gpu_utilization"]["GPU-0a1b"] == 0.25


def test_not_prometheus_text_is_refused() -> None:
    with pytest.raises(MetricsMalformed, match="not Prometheus"):
        parse_metrics("<html><body>404 Not Found</body></html>")
    with pytest.raises(MetricsUnavailable):  # MetricsMalformed is a MetricsUnavailable for callers
        parse_metrics('nv_inference_count{model="a" version="1"} 1\n')


def test_error_tree_and_exit_codes() -> None:
    assert issubclass(MetricsUnavailable, ProbeError) and issubclass(BadWindow, ProbeError)
    assert (ProbeError.exit_code, MetricsUnavailable.exit_code) == (50, 51)


def test_metrics_url_forms() -> None:
    assert metrics_url("127.0.0.1:8002") == "http://127.0.0.1:8002/metrics"
    assert metrics_url("http://triton:8002") == "http://triton:8002/metrics"
    assert metrics_url("https://triton/custom/metrics") == "https://triton/custom/metrics"


# -- windows on recorded text ------------------------------------------------------------------


def test_window_deltas() -> None:
    start, end = parse_metrics(RECORDED_IDLE, taken_at=10.0), parse_metrics(RECORDED_AFTER_5, taken_at=20.0)
    stats = window(start, end)[("scale", "1")]
    assert (stats.model, stats.version, stats.seconds) == ("scale", "1", 10.0)
    assert stats.requests == 5 and stats.failures == 0 and stats.failure_rate == 0
    assert stats.request_rate == pytest.approx(0.5)
    assert stats.avg_request_ms == pytest.approx(53656 / 5 / 1000)
    assert stats.avg_queue_ms == pytest.approx(231 / 5 / 1000)
    assert stats.avg_compute_ms == pytest.approx((230 + 51729 + 1443) / 5 / 1000)
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == (0.532, 0.661, 0.661)
    assert not stats.counter_reset
    assert json.loads(json.dumps(stats.as_dict()))["requests"] == 5


def test_window_counts_failures_by_reason() -> None:
    start = parse_metrics(RECORDED_AFTER_5, taken_at=0.0)
    failing = with_value(
        RECORDED_AFTER_5, 'nv_inference_request_failure{model="scale",reason="BACKEND",version="1"}', 3
    )
    failing = with_value(failing, 'nv_inference_request_failure{model="scale",reason="REJECTED",version="1"}', 1)
    failing = with_value(failing, 'nv_inference_request_success{model="scale",version="1"}', 17)
    stats = window(start, parse_metrics(failing, taken_at=4.0))[("scale", "1")]
    assert stats.requests == 12 and stats.failures == 4
    assert stats.failures_by_reason == {"BACKEND": 3, "REJECTED": 1}
    assert stats.failure_rate == pytest.approx(4 / 16) and stats.request_rate == pytest.approx(16 / 4)


def test_no_traffic_gives_no_averages() -> None:
    snapshot = parse_metrics(RECORDED_AFTER_5, taken_at=0.0)
    stats = window(snapshot, parse_metrics(RECORDED_AFTER_5, taken_at=30.0))[("scale", "1")]
    assert stats.requests == 0 and stats.request_rate == 0 and stats.failure_rate == 0
    assert stats.avg_request_ms is None and stats.avg_queue_ms is None and stats.avg_compute_ms is None
    assert stats.p95_ms == 0.661  # Triton's own ~60 s window still holds the earlier requests


def test_counter_going_down_restarts_the_window() -> None:
    start = parse_metrics(RECORDED_AFTER_5, taken_at=0.0)
    reloaded = with_value(RECORDED_IDLE, 'nv_inference_request_success{model="scale",version="1"}', 2)
    reloaded = with_value(reloaded, 'nv_inference_request_duration_us{model="scale",version="1"}', 1000)
    stats = window(start, parse_metrics(reloaded, taken_at=5.0))[("scale", "1")]
    assert stats.counter_reset
    assert stats.requests == 2 and stats.avg_request_ms == pytest.approx(0.5)  # the end values, never negative
    assert stats.p95_ms is None  # the reloaded version's summaries are NaN again


def test_version_absent_from_start_counts_from_zero() -> None:
    start = parse_metrics("", taken_at=0.0)
    stats = window(start, parse_metrics(RECORDED_AFTER_5, taken_at=2.0))
    assert stats[("scale", "1")].requests == 5 and not stats[("scale", "1")].counter_reset


def test_missing_quantile_gives_none() -> None:
    text = "\n".join(line for line in RECORDED_AFTER_5.splitlines() if 'quantile="0.95"' not in line)
    stats = window(parse_metrics(RECORDED_IDLE, taken_at=0.0), parse_metrics(text, taken_at=1.0))[("scale", "1")]
    assert stats.p95_ms is None and stats.p50_ms == 0.532 and stats.p99_ms == 0.661


def test_end_older_than_start_is_refused() -> None:
    with pytest.raises(BadWindow, match="older"):
        window(parse_metrics(RECORDED_IDLE, taken_at=10.0), parse_metrics(RECORDED_AFTER_5, taken_at=5.0))


# -- the real server ---------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached after {timeout} s")


def version_state(client: grpcclient.InferenceServerClient, name: str, version: str) -> str:
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return next((e.get("state", "") for e in index if e["name"] == name and e.get("version") == version), "")


def infer(client: grpcclient.InferenceServerClient, name: str, rows: int = 2, version: str = "") -> np.ndarray:
    tensor = grpcclient.InferInput("x", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 4), np.float32))
    return client.infer(name, [tensor], model_version=version).as_numpy("y")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalTriton, ModelRepository]]:
    """One real server for the module's live tests (each test uses its own model name)."""
    tmp = tmp_path_factory.mktemp("probes-metrics")
    repo = ModelRepository(tmp / "model_repository")
    repo.root.mkdir()
    with LocalTriton(repo.root, state_dir=tmp / "triton-state") as server:
        yield server, repo


@pytest.mark.triton
def test_real_counts_match_what_was_sent(live: tuple[LocalTriton, ModelRepository], tmp_path: Path) -> None:
    server, repo = live
    publish_scale(repo, tmp_path, "counted", 1.0)
    client = grpcclient.InferenceServerClient(server.state.grpc_url)
    load_versions(client, repo, "counted", [1])

    before = scrape(server.state.metrics_url)
    assert before.versions[("counted", "1")].request_quantiles_us == {}  # NaN before any request
    assert "Nan" in requests.get(server.state.metrics_url, timeout=5).text
    for _ in range(7):
        infer(client, "counted", rows=3)
    # Triton counts a request when it is released, just after the client has its response.
    url = f"127.0.0.1:{server.ports.metrics}"  # host:port form
    wait_for(lambda: scrape(url).versions[("counted", "1")].success == 7, timeout=5, what="7 successes counted")
    after = scrape(url)
    counters = after.versions[("counted", "1")]
    assert counters.success == 7 and counters.inference_count == 21 and counters.exec_count == 7
    assert counters.failures == 0 and counters.request_us > 0 and counters.compute_infer_us > 0
    assert {0.5, 0.9, 0.95, 0.99} <= set(counters.request_quantiles_us)
    assert all(value > 0 and not math.isnan(value) for value in counters.request_quantiles_us.values())
    assert after.host.cpu_memory_used_bytes and after.host.cpu_memory_total_bytes

    stats = window(before, after)[("counted", "1")]
    assert stats.requests == 7 and stats.failures == 0 and not stats.counter_reset
    assert stats.p95_ms is not None and stats.p50_ms is not None and stats.p50_ms <= stats.p95_ms
    assert stats.avg_request_ms is not None and stats.avg_request_ms > 0
    assert 0 < stats.seconds < 60


@pytest.mark.triton
def test_real_reload_resets_counters(live: tuple[LocalTriton, ModelRepository], tmp_path: Path) -> None:
    server, repo = live
    publish_scale(repo, tmp_path, "reloaded", 1.0)
    client = grpcclient.InferenceServerClient(server.state.grpc_url)
    load_versions(client, repo, "reloaded", [1])
    for _ in range(4):
        infer(client, "reloaded")
    wait_for(
        lambda: scrape(server.state.metrics_url).versions[("reloaded", "1")].success == 4, timeout=5, what="4 counted"
    )
    start = scrape(server.state.metrics_url)
    assert start.versions[("reloaded", "1")].success == 4

    client.unload_model("reloaded")
    wait_for(lambda: version_state(client, "reloaded", "1") == "UNAVAILABLE", what="reloaded v1 unloaded")
    load_versions(client, repo, "reloaded", [1])
    infer(client, "reloaded")
    wait_for(
        lambda: scrape(server.state.metrics_url).versions[("reloaded", "1")].success == 1, timeout=5, what="1 counted"
    )
    stats = window(start, scrape(server.state.metrics_url))[("reloaded", "1")]
    assert stats.counter_reset, "the reloaded version's counters restart from zero"
    assert stats.requests == 1 and stats.failures == 0


@pytest.mark.triton
def test_closed_port_is_metrics_unavailable() -> None:
    (port,) = free_ports(1)
    with pytest.raises(MetricsUnavailable, match=f"127.0.0.1:{port}/metrics"):
        scrape(f"127.0.0.1:{port}", timeout=2)


@pytest.mark.triton
def test_wrong_endpoint_is_named(live: tuple[LocalTriton, ModelRepository]) -> None:
    server, _ = live
    url = f"http://127.0.0.1:{server.ports.http}/v2/health/ready"  # answers, but is no metrics page
    with pytest.raises(MetricsMalformed, match="health/ready answered without any Triton"):
        scrape(url)
    with pytest.raises(MetricsMalformed, match="not Prometheus"):
        scrape(f"127.0.0.1:{server.ports.http}/v2")  # JSON server metadata
