"""probes.prometheus: per-replica, per-version windows from a real Prometheus over two real Tritons.

The live tests start two local `tritonserver`s serving versions 1 and 2 of a model that fails in
its backend for some inputs (so failures are real `nv_inference_request_failure{reason="BACKEND"}`
counts), and Debian's `prometheus` scraping both every second. Known numbers of requests go to
each replica and version; the window's figures are checked against what was sent, within the
extrapolation bound the module documents, and against Triton's own counters read directly.
The error tests use a closed port and a tiny HTTP server that answers what each case needs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from builders.manifest import Manifest
from builders.repository import ModelRepository, parse_config
from control_plane.local_triton import LocalTriton, free_ports
from probes.errors import BadWindow, MetricsMalformed, MetricsUnavailable, ProbeFailed
from probes.metrics import scrape, window
from probes.prometheus import FIGURE, PrometheusSource
from tests.conftest import SCALE_CONFIG, load_versions
from tests.prometheus_server import MISSING, prometheus_binary, running_prometheus

MODEL = "picky"
INTERVAL = 1.0  # the scrape interval of tests.prometheus_server, seconds
WINDOW = 9.0  # seconds: the traffic window's least length
# Sent per (replica, version): (successful requests, requests that fail in the backend).
SENT = {("a", "1"): (6, 0), ("a", "2"): (4, 3), ("b", "1"): (5, 2), ("b", "2"): (0, 0)}


def picky_model(path: Path, factor: float) -> Path:
    """y = x * factor for a batch of 3k rows; any other batch fails INSIDE the backend.

    The reshape to [-1, 3] needs 4 * rows to divide by 3. A wrong input shape would not do: Triton
    refuses it before the model runs and counts no failure for it (seen with 2.51).
    """
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "by3"], ["r3"]),
            helper.make_node("Reshape", ["r3", "by4"], ["r4"]),
            helper.make_node("Mul", ["r4", "k"], ["y"]),
        ],
        "picky",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor("k", TensorProto.FLOAT, [1], [factor]),
            helper.make_tensor("by3", TensorProto.INT64, [2], [-1, 3]),
            helper.make_tensor("by4", TensorProto.INT64, [2], [-1, 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout} s")
        time.sleep(0.1)


def version_state(client: grpcclient.InferenceServerClient, version: str) -> str:
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return next((e.get("state", "") for e in index if e["name"] == MODEL and e.get("version") == version), "")


@dataclass
class Fleet:
    replicas: dict[str, LocalTriton]  # "a", "b"
    instances: dict[str, str]  # "a" -> "127.0.0.1:<metrics port>", Prometheus' instance label
    url: str  # Prometheus
    repo: ModelRepository

    def source(self, selector: str = 'job="triton"') -> PrometheusSource:
        return PrometheusSource(self.url, selector=selector, timeout=5.0)

    def scraped_after(self, moment: float) -> bool:
        """True once Prometheus holds a scrape of every replica taken after `moment`.

        `timestamp()` of a bare selector is the sample's time; of anything computed (`up == 1`) it
        would be the evaluation time.
        """
        stamps = self.source().query('timestamp(up{job="triton"})')
        seen = {s.labels["instance"]: s.value for s in stamps}
        return all(seen.get(i, 0.0) > moment for i in self.instances.values())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if prometheus_binary() is None:
        pytest.skip(MISSING)
    tmp = tmp_path_factory.mktemp("prometheus-source")
    repo = ModelRepository(tmp / "model_repository")
    repo.root.mkdir()
    for factor in (1.0, 2.0):
        repo.publish_version(
            MODEL,
            files={"model.onnx": picky_model(tmp / f"picky-{factor}.onnx", factor)},
            manifest=Manifest(model=MODEL, version=0, kind="custom", format="onnx", builder_version="test"),
            config=parse_config(SCALE_CONFIG.format(name=MODEL)),
        )
    with contextlib.ExitStack() as stack:
        replicas = {n: stack.enter_context(LocalTriton(repo.root, state_dir=tmp / f"triton-{n}")) for n in "ab"}
        for replica in replicas.values():
            load_versions(grpcclient.InferenceServerClient(replica.state.grpc_url), repo, MODEL, [1, 2])
        instances = {n: f"127.0.0.1:{r.ports.metrics}" for n, r in replicas.items()}
        url = stack.enter_context(running_prometheus(list(instances.values())))
        yield Fleet(replicas=replicas, instances=instances, url=url, repo=repo)


def send(replica: LocalTriton, version: str, ok: int, failing: int) -> None:
    client = grpcclient.InferenceServerClient(replica.state.grpc_url)
    for rows, count in ((3, ok), (2, failing)):
        for _ in range(count):
            tensor = grpcclient.InferInput("x", [rows, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((rows, 4), np.float32))
            try:
                client.infer(MODEL, [tensor], model_version=version)
            except Exception as exc:
                assert rows == 2 and "Reshape" in str(exc), exc
            else:
                assert rows == 3


# -- the real Prometheus ---------------------------------------------------------------------------


@pytest.mark.triton
def test_window_counts_what_each_replica_and_version_served(fleet: Fleet) -> None:
    source = fleet.source()
    start = time.time()
    wait_for(lambda: fleet.scraped_after(start), "a scrape inside the window before the traffic")
    before = {n: scrape(i) for n, i in fleet.instances.items()}
    for (name, version), (ok, failing) in SENT.items():
        send(fleet.replicas[name], version, ok, failing)

    def counted(name: str) -> bool:  # Triton counts a request just after the client has its answer
        counters = scrape(fleet.instances[name]).versions
        return all(counters[(MODEL, v)].success + counters[(MODEL, v)].failures == sum(SENT[(name, v)]) for v in "12")

    wait_for(lambda: counted("a") and counted("b"), "Triton counting every request")
    after = {n: scrape(i) for n, i in fleet.instances.items()}
    # A window of about WINDOW seconds keeps the documented extrapolation bound meaningful.
    last = max(time.time(), start + WINDOW)
    wait_for(lambda: fleet.scraped_after(last), "a scrape after the traffic", timeout=WINDOW + 15)
    end = time.time()

    stats = source.window(MODEL, list(fleet.instances.values()), start, end)
    assert set(stats) == {(fleet.instances[n], v) for n, v in SENT}
    seconds = end - start
    bound = seconds / (seconds - 2.2 * INTERVAL)  # the documented extrapolation bound
    for (name, version), (ok, failing) in SENT.items():
        figures = stats[(fleet.instances[name], version)]
        direct = window(before[name], after[name])[(MODEL, version)]  # Triton's own counters
        assert (direct.requests, direct.failures) == (ok, failing)
        assert (figures.model, figures.version, figures.seconds) == (MODEL, version, seconds)
        assert ok <= figures.requests <= ok * bound, (name, version, figures.requests)
        assert failing <= figures.failures <= failing * bound, (name, version, figures.failures)
        assert figures.failures_by_reason.keys() == ({"BACKEND"} if failing else set())
        assert figures.request_rate == pytest.approx((figures.requests + figures.failures) / seconds)
        assert figures.failure_rate == pytest.approx(failing / (ok + failing) if ok + failing else 0.0, rel=1e-6)
        assert not figures.counter_reset
        if ok:  # ratios over the same samples: the extrapolation cancels out
            assert figures.avg_request_ms == pytest.approx(direct.avg_request_ms, rel=1e-6)
            assert figures.avg_queue_ms == pytest.approx(direct.avg_queue_ms, rel=1e-6)
            assert figures.avg_compute_ms == pytest.approx(direct.avg_compute_ms, rel=1e-6)
            assert figures.p50_ms is not None and figures.p95_ms is not None and figures.p99_ms is not None
            assert 0 < figures.p50_ms <= figures.p95_ms <= figures.p99_ms < 10_000
        else:  # no traffic: known zeros, no averages, NaN quantiles read as not measured
            assert figures.requests == 0 and figures.failures == 0
            assert figures.avg_request_ms is None and figures.p95_ms is None

    # Every counter that moved was 0 at the window's first sample and shares its replica's sample
    # times, so Prometheus extrapolated all of them by the same factor: per replica, figure / sent agree.
    for name in fleet.replicas:
        instance = fleet.instances[name]
        factors = [stats[(instance, v)].requests / SENT[(name, v)][0] for v in "12" if SENT[(name, v)][0]]
        factors += [stats[(instance, v)].failures / SENT[(name, v)][1] for v in "12" if SENT[(name, v)][1]]
        assert len(factors) >= 2 and max(factors) == pytest.approx(min(factors), rel=1e-9), factors

    assert source.up(list(fleet.instances.values())) == dict.fromkeys(fleet.instances.values(), True)
    assert source.up(["127.0.0.1:1"]) == {"127.0.0.1:1": False}  # never scraped: not up
    assert set(fleet.source(selector="").window(MODEL, None, start, end)) == set(stats)  # no selector, every instance
    assert fleet.source(selector='job="other"').window(MODEL, None, start, end) == {}  # selector applied


@pytest.mark.triton
def test_windows_without_two_samples_are_missing(fleet: Fleet) -> None:
    source = fleet.source()
    now = time.time()
    assert source.window(MODEL, None, now - 0.5, now) == {}  # shorter than the scrape interval
    assert source.window(MODEL, None, now - 3600, now - 3000) == {}  # before Prometheus ran
    assert source.window(MODEL, [], now - 60, now) == {}
    assert source.window(MODEL, None, now, now) == {}
    assert source.window("no_such_model", None, now - 60, now) == {}


@pytest.mark.triton
def test_queries_are_checked_by_prometheus(fleet: Fleet) -> None:
    source = fleet.source()
    source.check_query("sum by (instance) (rate(nv_inference_request_success[1m]))")
    source.check_query(source.window_query(MODEL, list(fleet.instances.values()), 60.0))
    with pytest.raises(MetricsMalformed, match=r"parse error.*unclosed left parenthesis") as caught:
        source.check_query("sum(")
    assert fleet.url in str(caught.value) and "sum(" in str(caught.value)
    with pytest.raises(MetricsMalformed, match="parse error"):
        fleet.source(selector="job=").window(MODEL, None, time.time() - 10, time.time())


@pytest.mark.triton
def test_reload_inside_the_window_is_a_counter_reset(fleet: Fleet) -> None:
    """A reload zeroes Triton's counters; Prometheus adds the lost count back and the window says so."""
    source, replica, instance = fleet.source(), fleet.replicas["a"], fleet.instances["a"]
    client = grpcclient.InferenceServerClient(replica.state.grpc_url)
    start = time.time()
    wait_for(lambda: fleet.scraped_after(start), "a scrape inside the window")
    send(replica, "1", 3, 0)
    sent_at = time.time()
    wait_for(lambda: fleet.scraped_after(sent_at), "a scrape of the 3 requests")
    client.unload_model(MODEL)
    wait_for(lambda: version_state(client, "1") == "UNAVAILABLE", "picky unloaded")
    load_versions(client, fleet.repo, MODEL, [1, 2])
    send(replica, "1", 2, 0)
    wait_for(lambda: scrape(instance).versions[(MODEL, "1")].success == 2, "2 counted after the reload")
    counted_at = time.time()
    wait_for(lambda: fleet.scraped_after(counted_at), "a scrape after the reload")
    end = time.time()

    stats = source.window(MODEL, [instance], start, end)
    seconds = end - start
    reloaded = stats[(instance, "1")]
    assert reloaded.counter_reset and stats[(instance, "2")].counter_reset  # both versions were reloaded
    assert 3 + 2 <= reloaded.requests <= (3 + 2) * seconds / (seconds - 2.2 * INTERVAL), reloaded.requests
    assert stats[(instance, "2")].requests == 0 and stats[(instance, "2")].failures == 0


@pytest.mark.triton
def test_dead_replica_is_down_and_missing(fleet: Fleet) -> None:
    """Runs last: it kills replica b of the module's fleet."""
    source = fleet.source()
    a, b = fleet.instances["a"], fleet.instances["b"]
    start = time.time() - 5
    wait_for(lambda: {(a, "1"), (b, "1")} <= set(source.window(MODEL, None, start, time.time())), "b in a window")
    killed = fleet.replicas["b"]
    os.killpg(killed.state.pid, signal.SIGKILL)  # the server and its Python stubs, no goodbye
    killed.__exit__(None, None, None)  # forgets its state; nothing of it is left running
    wait_for(lambda: source.up([a, b]) == {a: True, b: False}, "Prometheus seeing b down")
    stats = source.window(MODEL, None, start, time.time())
    assert {(a, "1"), (a, "2")} <= set(stats)
    assert not any(instance == b for instance, _ in stats), "a dead replica's figures are missing, never zeros"


# -- errors at the boundary -------------------------------------------------------------------------


class _Canned(BaseHTTPRequestHandler):
    """Answers every request with the server's `answer`: (HTTP status, body, seconds to wait first)."""

    def _reply(self) -> None:
        status, body, delay = self.server.answer  # type: ignore[attr-defined]
        time.sleep(delay)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[Callable[[int, str, float], str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def answer(status: int, body: str, delay: float = 0.0) -> str:
        server.answer = (status, body, delay)  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield answer
    finally:
        server.shutdown()
        server.server_close()


def vector(*elements: tuple[dict[str, str], str]) -> str:
    result = [{"metric": labels, "value": [1700000000.0, value]} for labels, value in elements]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


SUCCESS = {"instance": "10.0.0.7:8002", "version": "1", FIGURE: "success"}
UP = {"instance": "10.0.0.7:8002", FIGURE: "up"}


def test_closed_port_is_unavailable() -> None:
    port = free_ports(1)[0]
    source = PrometheusSource(f"127.0.0.1:{port}", timeout=2.0)
    for call in (
        lambda: source.window(MODEL, None, time.time() - 60, time.time()),
        lambda: source.up(["10.0.0.7:8002"]),
        lambda: source.check_query("up"),
    ):
        with pytest.raises(MetricsUnavailable, match=f"127.0.0.1:{port}/api/v1/query.*no answer") as caught:
            call()
        assert type(caught.value) is MetricsUnavailable  # not "malformed": nothing answered


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, "<html>a login page</html>", "not an answer of Prometheus' HTTP API"),
        (404, "404 page not found", "HTTP 404"),
        (200, '{"status": "error", "errorType": "bad_data", "error": "boom"}', "bad_data: boom"),
        (200, '{"status": "error", "errorType": "timeout", "error": "late"}', "timeout: late"),  # 200 + error
        (400, '{"status": "error", "errorType": "bad_data", "error": "parse error: x"}', "parse error: x"),
        (422, '{"status": "error", "errorType": "execution", "error": "same labelset"}', "execution: same labelset"),
        (200, '{"status": "success", "data": {"resultType": "matrix", "result": []}}', "expected a vector"),
        (200, '{"status": "success", "data": [1, 2]}', "no data object"),
        (200, vector(({"instance": "x"}, "not a number")), "not a vector element"),
        (200, vector(({"instance": "x"}, 3)), "not a vector element"),  # type: ignore[arg-type]
        (200, vector((SUCCESS, "NaN"), (UP, "1")), "success of .* is nan"),
        (200, vector((SUCCESS, "-3"), (UP, "1")), "success of .* is -3"),
        (200, vector((SUCCESS, "+Inf"), (UP, "1")), "success of .* is inf"),
        (200, vector((SUCCESS, "4"), (UP, "0.5")), "up of .* is 0.5"),
        (200, vector(({"instance": "x", FIGURE: "mystery"}, "1")), "mystery"),
    ],
)
def test_garbage_is_malformed(canned: Callable[..., str], status: int, body: str, expected: str) -> None:
    url = canned(status, body)
    with pytest.raises(MetricsMalformed, match=expected) as caught:
        PrometheusSource(url).window(MODEL, ["10.0.0.7:8002"], time.time() - 60, time.time())
    message = str(caught.value)
    assert f"{url}/api/v1/query" in message and "query label_replace(" in message


@pytest.mark.parametrize("value", ["NaN", "0.5", "-1"])
def test_absurd_up_is_malformed(canned: Callable[..., str], value: str) -> None:
    url = canned(200, vector(({"instance": "10.0.0.7:8002"}, value)))
    with pytest.raises(MetricsMalformed, match=r"query min by \(instance\).*not 0 or 1"):
        PrometheusSource(url).up(["10.0.0.7:8002"])


@pytest.mark.parametrize(
    ("status", "body", "delay", "expected"),
    [
        (503, "Service Unavailable", 0.0, "HTTP 503: Service Unavailable"),
        (502, "<html>bad gateway</html>", 0.0, "HTTP 502"),
        (503, '{"status": "error", "errorType": "timeout", "error": "query timed out"}', 0.0, "query timed out"),
        (200, vector(), 2.0, "no answer"),  # slower than the timeout
    ],
)
def test_prometheus_not_answering_is_unavailable(
    canned: Callable[..., str], status: int, body: str, delay: float, expected: str
) -> None:
    url = canned(status, body, delay)
    with pytest.raises(MetricsUnavailable, match=expected) as caught:
        PrometheusSource(url, timeout=0.5).up(["10.0.0.7:8002"])
    assert type(caught.value) is MetricsUnavailable and url in str(caught.value) and "query min by" in str(caught.value)


def test_parsed_window_from_a_canned_answer(canned: Callable[..., str]) -> None:
    """The assembly alone: figures per (instance, version), NaN quantile None, dead replica dropped."""
    dead = "10.0.0.8:8002"
    url = canned(
        200,
        vector(
            (SUCCESS, "8"),
            ({**SUCCESS, FIGURE: "failure", "reason": "BACKEND"}, "2"),
            ({**SUCCESS, FIGURE: "failure", "reason": "REJECTED"}, "0"),
            ({**SUCCESS, FIGURE: "request_us"}, "16000"),
            ({**SUCCESS, FIGURE: "resets"}, "1"),
            ({**SUCCESS, FIGURE: "quantile", "quantile": "0.95"}, "2500"),
            ({**SUCCESS, FIGURE: "quantile", "quantile": "0.99"}, "NaN"),
            (UP, "1"),
            ({**UP, FIGURE: "up_min"}, "1"),
            ({**SUCCESS, "version": "2"}, "3"),  # no failure counters: missing
            ({**SUCCESS, "instance": dead}, "5"),
            ({**SUCCESS, "instance": dead, FIGURE: "failure", "reason": "BACKEND"}, "0"),
            ({**UP, "instance": dead}, "0"),
        ),
    )
    stats = PrometheusSource(url).window(MODEL, None, 100.0, 110.0)
    assert list(stats) == [("10.0.0.7:8002", "1")]
    figures = stats[("10.0.0.7:8002", "1")]
    assert (figures.requests, figures.failures, figures.failures_by_reason) == (8, 2, {"BACKEND": 2})
    assert figures.request_rate == 1.0 and figures.failure_rate == 0.2 and figures.avg_request_ms == 2.0
    assert figures.avg_queue_ms is None and figures.avg_compute_ms is None  # not in the answer: not measured
    assert (figures.p50_ms, figures.p95_ms, figures.p99_ms) == (None, 2.5, None)
    assert figures.counter_reset


def test_bad_arguments() -> None:
    for kwargs in ({"url": ""}, {"url": "a b"}, {"url": "x", "selector": "{job='t'}"}, {"url": "x", "timeout": 0}):
        with pytest.raises(ProbeFailed):
            PrometheusSource(**kwargs)  # type: ignore[arg-type]
    source = PrometheusSource("127.0.0.1:9")
    with pytest.raises(ProbeFailed, match="collection"):
        source.up("127.0.0.1:8002")
    with pytest.raises(ProbeFailed, match="collection"):
        source.window(MODEL, "127.0.0.1:8002", 0.0, 10.0)
    with pytest.raises(BadWindow, match="before its start"):
        source.window(MODEL, None, 10.0, 5.0)
    with pytest.raises(BadWindow, match="finite"):
        source.window(MODEL, None, math.nan, 5.0)
    assert source.endpoint == "http://127.0.0.1:9/api/v1/query"
    assert (
        PrometheusSource("https://prom.example/prometheus/").endpoint == "https://prom.example/prometheus/api/v1/query"
    )
