"""The fleet specification (static list, DNS name, fleet file, `metrics:`) and DNS discovery.

Parsing is pure and tested directly: every wrong input must be a ConfigError (exit 20) that names
the key at fault. DNS discovery is tested through a real DNS server (`tests/dns_server.py`, dnslib
on 127.0.0.1 over UDP and TCP) answering several loopback addresses, whose records change between
two passes; a DNS server that never answers must give FleetUnresolved (exit 61) quickly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from control_plane.errors import ConfigError, FleetUnresolved
from control_plane.fleet import (
    SINGLE_REPLICA,
    DnsFleet,
    FleetFile,
    MetricsSource,
    Replica,
    StaticFleet,
    fleet_file_text,
    join_host_port,
    parse_fleet,
    parse_metrics,
    read_fleet_file,
    single,
    split_host_port,
)
from tests.dns_server import DnsTestServer, closed_udp_port, silent_udp_port

NAME = "triton.fleet.test"
R0 = {"name": "r0", "grpc": "127.0.0.1:8001", "metrics": "127.0.0.1:8002"}
R1 = {"name": "r1", "grpc": "[::1]:9001", "metrics": "http://[::1]:9002/metrics"}


def config_error(call: Any, *args: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args)
    assert caught.value.exit_code == 20
    return str(caught.value)


# -- parsing ------------------------------------------------------------------------------------
def test_a_static_list_is_parsed_in_order() -> None:
    fleet = parse_fleet({"replicas": [R0, R1]})
    assert fleet == StaticFleet(
        (Replica("r0", "127.0.0.1:8001", "127.0.0.1:8002"), Replica("r1", "[::1]:9001", "http://[::1]:9002/metrics"))
    )
    assert fleet.resolve() == fleet.replicas
    assert fleet.describe() == "2 replica(s): r0, r1"


def test_a_dns_spec_takes_its_defaults() -> None:
    assert parse_fleet({"dns": {"name": f"  {NAME} "}}) == DnsFleet(NAME, 8001, 8002, None, 2.0)


def test_a_dns_spec_with_every_key() -> None:
    fleet = parse_fleet(
        {
            "dns": {
                "name": NAME,
                "grpc_port": 18001,
                "metrics_port": 18002,
                "nameserver": "[::1]:5353",
                "timeout_seconds": 1,
            }
        }
    )
    assert fleet == DnsFleet(NAME, 18001, 18002, "[::1]:5353", 1.0)
    assert isinstance(fleet, DnsFleet) and isinstance(fleet.timeout_s, float)
    assert fleet.describe() == f"DNS {NAME} (gRPC :18001, metrics :18002)"


def test_the_degenerate_fleet_is_the_one_triton_of_the_settings() -> None:
    fleet = single("127.0.0.1:8001", "127.0.0.1:8002")
    assert fleet.resolve() == (Replica(SINGLE_REPLICA, "127.0.0.1:8001", "127.0.0.1:8002"),)


def test_metrics_defaults_and_prometheus() -> None:
    assert parse_metrics({}) == MetricsSource("direct", None, "", 5.0)
    assert parse_metrics({"source": "direct", "timeout_seconds": 2}) == MetricsSource("direct", None, "", 2.0)
    assert parse_metrics(
        {"source": "prometheus", "url": "http://127.0.0.1:9090/", "selector": ' job="triton" '}
    ) == MetricsSource("prometheus", "http://127.0.0.1:9090", 'job="triton"', 5.0)


BAD_FLEETS: list[tuple[Any, str]] = [
    (["r0"], "fleet: expected a mapping"),
    ({"replica": [R0]}, "fleet.replica: unknown key"),
    ({}, "fleet: give exactly one of `replicas`"),
    ({"replicas": [R0], "dns": {"name": NAME}}, "fleet: give exactly one of `replicas`"),
    ({"replicas": []}, "fleet.replicas: expected a non-empty list"),
    ({"replicas": "r0"}, "fleet.replicas: expected a non-empty list"),
    ({"replicas": ["r0"]}, "fleet.replicas[0]: expected a mapping"),
    ({"replicas": [{"name": "r0", "grpc": "127.0.0.1:8001"}]}, "fleet.replicas[0].metrics: required"),
    ({"replicas": [{**R0, "port": 1}]}, "fleet.replicas[0].port: unknown key"),
    ({"replicas": [{**R0, "name": " "}]}, "fleet.replicas[0].name: expected a non-empty string"),
    ({"replicas": [R0, {**R1, "name": "r0"}]}, "fleet.replicas: the name 'r0' is given twice"),
    ({"replicas": [R0, {**R0, "grpc": "h:0"}]}, "fleet.replicas[1].grpc: 'h:0': the port must be"),
    ({"replicas": [{**R0, "grpc": "h:65536"}]}, "fleet.replicas[0].grpc: 'h:65536': the port must be"),
    ({"replicas": [{**R0, "grpc": "h:grpc"}]}, "fleet.replicas[0].grpc: 'h:grpc': the port must be"),
    ({"replicas": [{**R0, "grpc": "h:"}]}, "fleet.replicas[0].grpc: 'h:': the port must be"),
    ({"replicas": [{**R0, "grpc": 8001}]}, "fleet.replicas[0].grpc: expected a non-empty string"),
    ({"replicas": [{**R0, "grpc": "10.0.0.5"}]}, "fleet.replicas[0].grpc: '10.0.0.5': expected host:port"),
    ({"replicas": [{**R0, "grpc": "::1"}]}, "fleet.replicas[0].grpc: '::1': expected host:port"),
    ({"replicas": [{**R0, "grpc": ":8001"}]}, "fleet.replicas[0].grpc: ':8001': the host is empty"),
    ({"replicas": [{**R0, "grpc": "[::1]8001"}]}, "fleet.replicas[0].grpc: '[::1]8001': expected [address]:port"),
    ({"replicas": [{**R0, "grpc": "[::1:8001"}]}, "fleet.replicas[0].grpc: '[::1:8001': expected [address]:port"),
    ({"replicas": [{**R0, "metrics": "h:99999"}]}, "fleet.replicas[0].metrics: 'h:99999': the port must be"),
    ({"replicas": [{**R0, "metrics": "http://:8002/metrics"}]}, "fleet.replicas[0].metrics: ':8002': the host"),
    ({"dns": NAME}, "fleet.dns: expected a mapping"),
    ({"dns": {"grpc_port": 8001}}, "fleet.dns.name: required"),
    ({"dns": {"name": ""}}, "fleet.dns.name: expected a non-empty string"),
    ({"dns": {"name": NAME, "port": 8001}}, "fleet.dns.port: unknown key"),
    ({"dns": {"name": NAME, "grpc_port": 0}}, "fleet.dns.grpc_port: expected a port number"),
    ({"dns": {"name": NAME, "grpc_port": 65536}}, "fleet.dns.grpc_port: expected a port number"),
    ({"dns": {"name": NAME, "grpc_port": "8001"}}, "fleet.dns.grpc_port: expected a port number"),
    ({"dns": {"name": NAME, "grpc_port": True}}, "fleet.dns.grpc_port: expected a port number"),
    ({"dns": {"name": NAME, "metrics_port": -1}}, "fleet.dns.metrics_port: expected a port number"),
    ({"dns": {"name": NAME, "nameserver": "kube-dns.kube-system"}}, "fleet.dns.nameserver: expected an IP address"),
    ({"dns": {"name": NAME, "nameserver": "10.96.0.10:0"}}, "fleet.dns.nameserver: expected an IP address"),
    ({"dns": {"name": NAME, "nameserver": "10.96.0.10:dns"}}, "fleet.dns.nameserver: expected an IP address"),
    ({"dns": {"name": NAME, "nameserver": 53}}, "fleet.dns.nameserver: expected a non-empty string"),
    ({"dns": {"name": NAME, "timeout_seconds": 0}}, "fleet.dns.timeout_seconds: expected a number of seconds"),
    ({"dns": {"name": NAME, "timeout_seconds": 301}}, "fleet.dns.timeout_seconds: expected a number of seconds"),
    ({"dns": {"name": NAME, "timeout_seconds": "2"}}, "fleet.dns.timeout_seconds: expected a number of seconds"),
    ({"dns": {"name": NAME, "timeout_seconds": float("nan")}}, "fleet.dns.timeout_seconds: expected a number"),
]


@pytest.mark.parametrize(("data", "message"), BAD_FLEETS, ids=[m for _, m in BAD_FLEETS])
def test_a_wrong_fleet_is_a_config_error_naming_the_key(data: Any, message: str) -> None:
    assert config_error(parse_fleet, data).startswith(message)


BAD_METRICS: list[tuple[Any, str]] = [
    ("prometheus", "metrics: expected a mapping"),
    ({"sourc": "direct"}, "metrics.sourc: unknown key"),
    ({"source": "graphite"}, "metrics.source: expected direct or prometheus"),
    ({"source": "prometheus"}, "metrics.url: expected a non-empty string"),
    ({"source": "prometheus", "url": "127.0.0.1:9090"}, "metrics.url: expected an http(s) URL"),
    ({"url": "http://127.0.0.1:9090"}, "metrics.url: only for source prometheus"),
    ({"source": "direct", "url": "http://127.0.0.1:9090"}, "metrics.url: only for source prometheus"),
    ({"source": "prometheus", "url": "http://p:9090", "selector": 3}, "metrics.selector: expected PromQL"),
    ({"timeout_seconds": 0}, "metrics.timeout_seconds: expected a number of seconds"),
    ({"timeout_seconds": False}, "metrics.timeout_seconds: expected a number of seconds"),
]


@pytest.mark.parametrize(("data", "message"), BAD_METRICS, ids=[m for _, m in BAD_METRICS])
def test_a_wrong_metrics_source_is_a_config_error_naming_the_key(data: Any, message: str) -> None:
    assert config_error(parse_metrics, data).startswith(message)


# -- addresses ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("127.0.0.1:8001", None, ("127.0.0.1", 8001)),
        (" triton-0.models.svc:65535 ", None, ("triton-0.models.svc", 65535)),
        ("[::1]:8001", None, ("::1", 8001)),
        ("[2001:db8::5]:1", None, ("2001:db8::5", 1)),
        ("10.96.0.10", 53, ("10.96.0.10", 53)),
        ("::1", 53, ("::1", 53)),
        ("[::1]", 53, ("::1", 53)),
        ("[::1]:5353", 53, ("::1", 5353)),
    ],
)
def test_split_host_port(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert split_host_port(text, default_port=default) == expected


@pytest.mark.parametrize(
    "text", ["host", "::1", "[::1]", ":8001", "[]:8001", "[::1]8001", "[::1", "h:0", "h:65536", "h:-1", "h:", "h:٣"]
)
def test_split_host_port_refuses(text: str) -> None:
    config_error(split_host_port, text)


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("127.0.0.1", 8001, "127.0.0.1:8001"),
        ("::1", 8001, "[::1]:8001"),
        ("fd00::a:1", 2, "[fd00::a:1]:2"),
        ("h", 9, "h:9"),
    ],
)
def test_join_host_port_brackets_ipv6_and_round_trips(host: str, port: int, text: str) -> None:
    assert join_host_port(host, port) == text
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize(
    ("metrics", "url", "instance"),
    [
        ("127.0.0.1:8002", "http://127.0.0.1:8002/metrics", "127.0.0.1:8002"),
        ("[::1]:8002", "http://[::1]:8002/metrics", "[::1]:8002"),
        ("https://t0.example:9/m", "https://t0.example:9/m", "t0.example:9"),
        ("httpbin:8002", "http://httpbin:8002/metrics", "httpbin:8002"),  # a host named http... is no URL
        ("http://t0.example:8002", "http://t0.example:8002/metrics", "t0.example:8002"),  # as probes.metrics reads it
    ],
)
def test_replica_metrics_url_and_instance(metrics: str, url: str, instance: str) -> None:
    replica = Replica("r", "127.0.0.1:8001", metrics)
    assert (replica.metrics_url, replica.metrics_instance) == (url, instance)


def test_a_metrics_url_may_leave_out_its_port() -> None:
    fleet = parse_fleet({"replicas": [{**R0, "metrics": "https://triton-0.example/metrics"}]})
    assert isinstance(fleet, StaticFleet) and fleet.replicas[0].metrics_url == "https://triton-0.example/metrics"


# -- fleet files --------------------------------------------------------------------------------
def test_fleet_file_text_round_trips(tmp_path: Path) -> None:
    replicas = [
        Replica("r0", "127.0.0.1:18001", "127.0.0.1:18002"),
        Replica("r1", "[::1]:18011", "[::1]:18012"),
        Replica("r2", "127.0.0.3:18021", "http://127.0.0.3:18022/metrics"),
    ]
    metrics = MetricsSource("prometheus", "http://127.0.0.1:9090", 'job="triton"', 7.5)
    balancer = {"grpc": "127.0.0.1:18500", "http": "[::1]:18501"}
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_file_text(replicas, metrics=metrics, load_balancer=balancer), encoding="utf-8")
    assert read_fleet_file(path) == FleetFile(StaticFleet(tuple(replicas)), metrics, balancer)

    path.write_text(fleet_file_text(replicas[:1]), encoding="utf-8")
    assert read_fleet_file(path) == FleetFile(StaticFleet(tuple(replicas[:1])), None, {})

    path.write_text(fleet_file_text(replicas[:1], metrics=MetricsSource()), encoding="utf-8")
    assert read_fleet_file(path).metrics == MetricsSource()


def test_a_dns_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"dns: {{name: {NAME}, grpc_port: 18001, nameserver: 127.0.0.1}}\n"
        "metrics: {source: prometheus, url: 'http://127.0.0.1:9090'}\n"
        "load_balancer: {grpc: '127.0.0.1:18500'}\n",
        encoding="utf-8",
    )
    assert read_fleet_file(path) == FleetFile(
        DnsFleet(NAME, 18001, 8002, "127.0.0.1"),
        MetricsSource("prometheus", "http://127.0.0.1:9090"),
        {"grpc": "127.0.0.1:18500"},
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the fleet file"),
        ("replicas: [\n", "not valid YAML"),
        (b"replicas: \xff\xfe\n", "not UTF-8 text"),
        ("", "expected a mapping, got NoneType"),
        ("- r0\n", "expected a mapping, got list"),
        ("replicas: []\nprometheus: {}\n", ".prometheus: unknown key"),
        ("metrics: {source: direct}\n", ": give exactly one of `replicas`"),
        ("replicas: [{name: r0, grpc: '127.0.0.1:8001', metrics: 'h:0'}]\n", ".replicas[0].metrics: 'h:0'"),
        (f"dns: {{name: {NAME}, nameserver: dns.example}}\n", ".dns.nameserver: expected an IP address"),
        (f"dns: {{name: {NAME}}}\nmetrics: {{source: prometheus}}\n", ": metrics.url: expected a non-empty string"),
        (f"dns: {{name: {NAME}}}\nmetrics: {{url: 'http://p:9090'}}\n", ": metrics.url: only for source prometheus"),
        (f"dns: {{name: {NAME}}}\nload_balancer: {{https: 'h:1'}}\n", ": load_balancer.https: unknown key"),
        (f"dns: {{name: {NAME}}}\nload_balancer: {{grpc: 'h'}}\n", ": load_balancer.grpc: 'h': expected host:port"),
        (f"dns: {{name: {NAME}}}\nload_balancer: [h]\n", ": load_balancer: expected a mapping"),
    ],
)
def test_a_wrong_fleet_file_is_a_config_error_naming_the_file_and_key(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "fleet.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    text = config_error(read_fleet_file, path)
    assert text.startswith(str(path)) and message in text


def test_a_folder_is_no_fleet_file(tmp_path: Path) -> None:
    assert "cannot read the fleet file" in config_error(read_fleet_file, tmp_path)


# -- DNS through a real DNS server ---------------------------------------------------------------
@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


def dns_fleet(server: DnsTestServer, name: str = NAME) -> DnsFleet:
    fleet = parse_fleet(
        {
            "dns": {
                "name": name,
                "grpc_port": 18001,
                "metrics_port": 18002,
                "nameserver": server.nameserver,
                "timeout_seconds": 2,
            }
        }
    )
    assert isinstance(fleet, DnsFleet)
    return fleet


def replicas_at(*addresses: str) -> tuple[Replica, ...]:
    return tuple(Replica(a, join_host_port(a, 18001), join_host_port(a, 18002)) for a in addresses)


def test_every_a_and_aaaa_record_is_a_replica_sorted_by_address(dns_server: DnsTestServer) -> None:
    dns_server.set(NAME, ["127.0.0.13", "::1", "127.0.0.11", "127.0.0.12"])
    replicas = dns_fleet(dns_server).resolve()
    assert replicas == replicas_at("127.0.0.11", "127.0.0.12", "127.0.0.13", "::1")
    assert replicas[-1].grpc == "[::1]:18001" and replicas[-1].metrics_url == "http://[::1]:18002/metrics"
    asked = {(q.protocol, q.name, q.type) for q in dns_server.queries}
    assert asked == {("udp", NAME, "A"), ("udp", NAME, "AAAA")}


def test_the_name_is_matched_without_case_or_trailing_dot(dns_server: DnsTestServer) -> None:
    dns_server.set(NAME, ["127.0.0.11"])
    assert dns_fleet(dns_server, "Triton.FLEET.test.").resolve() == replicas_at("127.0.0.11")


def test_an_ipv6_only_fleet(dns_server: DnsTestServer) -> None:
    dns_server.set(NAME, ["fd00::12", "::1", "fd00::2"])
    replicas = dns_fleet(dns_server).resolve()
    assert replicas == replicas_at("::1", "fd00::2", "fd00::12")
    assert [r.grpc for r in replicas] == ["[::1]:18001", "[fd00::2]:18001", "[fd00::12]:18001"]


def test_records_changed_between_passes_are_seen(dns_server: DnsTestServer) -> None:
    fleet = dns_fleet(dns_server)
    dns_server.set(NAME, ["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    assert fleet.resolve() == replicas_at("127.0.0.11", "127.0.0.12", "127.0.0.13")
    dns_server.set(NAME, ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"])  # a replica joins
    assert fleet.resolve() == replicas_at("127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14")
    dns_server.set(NAME, ["127.0.0.12", "127.0.0.13", "127.0.0.14"])  # one leaves
    assert fleet.resolve() == replicas_at("127.0.0.12", "127.0.0.13", "127.0.0.14")
    dns_server.remove(NAME)  # the Service is gone
    with pytest.raises(FleetUnresolved):
        fleet.resolve()


def test_a_large_fleet_comes_over_tcp_after_a_truncated_udp_answer(dns_server: DnsTestServer) -> None:
    addresses = [f"127.0.1.{i}" for i in range(1, 61)]  # 60 A records: more than 512 bytes
    dns_server.set(NAME, addresses)
    assert dns_fleet(dns_server).resolve() == replicas_at(*addresses)
    assert ("tcp", NAME, "A") in {(q.protocol, q.name, q.type) for q in dns_server.queries}


@pytest.mark.parametrize(("known", "reason"), [(False, "NXDOMAIN"), (True, "NoAnswer")])
def test_a_name_without_records_is_unresolved(dns_server: DnsTestServer, known: bool, reason: str) -> None:
    if known:
        dns_server.set(NAME, [])
    dns_server.set("other.fleet.test", ["127.0.0.11"])
    with pytest.raises(FleetUnresolved) as caught:
        dns_fleet(dns_server).resolve()
    assert caught.value.exit_code == 61
    assert str(caught.value) == f"fleet DNS name {NAME!r} has no A or AAAA record (A: {reason}; AAAA: {reason})"


def test_a_malformed_name_is_unresolved_not_a_crash(dns_server: DnsTestServer) -> None:
    with pytest.raises(FleetUnresolved, match="lookup failed"):
        dns_fleet(dns_server, "bad..name").resolve()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["silent", "closed"])
def test_a_dns_server_that_does_not_answer_is_unresolved_quickly(kind: str) -> None:
    with silent_udp_port() as silent:
        port = silent if kind == "silent" else closed_udp_port()
        fleet = DnsFleet(NAME, nameserver=f"127.0.0.1:{port}", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(FleetUnresolved) as caught:
            fleet.resolve()
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"took {elapsed:.2f} s with a 0.3 s timeout"
    assert caught.value.exit_code == 61
    assert isinstance(caught.value.__cause__, dns.exception.Timeout)
    assert str(caught.value).startswith(f"fleet DNS name {NAME!r}: A lookup failed: ")
    assert "timed out" in str(caught.value)


def test_a_fleet_built_with_a_host_name_as_nameserver_is_a_config_error() -> None:
    fleet = DnsFleet(NAME, nameserver="kube-dns.kube-system:53")
    assert "expected an IP address" in config_error(fleet.resolve)


# -- the test DNS server itself (others reuse it) ------------------------------------------------
def test_the_dns_server_answers_udp_and_tcp(dns_server: DnsTestServer) -> None:
    dns_server.set(NAME, ["127.0.0.11", "::1"])
    dns_server.set("empty.fleet.test", [])
    for query in (dns.query.udp, dns.query.tcp):
        answer = query(dns.message.make_query(NAME, "AAAA"), "127.0.0.1", timeout=2, port=dns_server.port)
        assert answer.rcode() == dns.rcode.NOERROR and [r.to_text() for rrset in answer.answer for r in rrset] == [
            "::1"
        ]
        nodata = query(dns.message.make_query("empty.fleet.test", "A"), "127.0.0.1", timeout=2, port=dns_server.port)
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        unknown = query(dns.message.make_query("nope.fleet.test", "A"), "127.0.0.1", timeout=2, port=dns_server.port)
        assert unknown.rcode() == dns.rcode.NXDOMAIN
    assert [q.protocol for q in dns_server.queries] == ["udp"] * 3 + ["tcp"] * 3
    with pytest.raises(ValueError):
        dns_server.set(NAME, ["triton-0"])
