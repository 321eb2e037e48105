"""The fleet: which Triton replicas shepherd drives, from a static list or a DNS name read every pass.

Why shepherd must know every replica: behind a load balancer (a Kubernetes Service) every load,
unload, index read and probe reaches whichever pod the connection sticks to, so the other pods
drift, and a restarted pod in explicit mode serves nothing until someone loads it. So shepherd
talks to each replica by its own address and converges each one; client traffic keeps going
through the load balancer.

Two ways to name the replicas, in `shepherd.yaml` under `fleet:` or in a file given by `--fleet
FILE` / `SHEPHERD_FLEET`:

    replicas:                       # a static list
      - {name: r0, grpc: 10.0.0.5:8001, metrics: 10.0.0.5:8002}
    dns:                            # every A/AAAA record of a name (a Kubernetes headless Service)
      name: triton-headless.models.svc.cluster.local
      grpc_port: 8001
      metrics_port: 8002
      nameserver: 10.96.0.10:53     # optional: the system's resolver otherwise

A DNS fleet is resolved again at every pass, so replicas that join or leave are seen within one
pass. With neither, the fleet is the one Triton of `triton_grpc` / `triton_metrics` (the
degenerate fleet: today's settings keep working). A fleet file may also say where its metrics are
(`metrics: {source: prometheus, url: ...}`) and where clients reach it (`load_balancer:`), which
`shepherd fleet up` writes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dns.exception
import dns.resolver
import yaml

from control_plane.errors import ConfigError, FleetUnresolved
from probes.metrics import metrics_url

FLEET_ENV = "SHEPHERD_FLEET"
SINGLE_REPLICA = "triton"  # the name of the one replica of the degenerate fleet
FLEET_KEYS = frozenset({"replicas", "dns"})
FILE_KEYS = frozenset({*FLEET_KEYS, "metrics", "load_balancer"})
REPLICA_KEYS = frozenset({"name", "grpc", "metrics"})
DNS_KEYS = frozenset({"name", "grpc_port", "metrics_port", "nameserver", "timeout_seconds"})
METRICS_KEYS = frozenset({"source", "url", "selector", "timeout_seconds", "min_window_seconds"})
BALANCER_KEYS = frozenset({"grpc", "http"})


@dataclass(frozen=True, order=True)
class Replica:
    """One Triton server of the fleet, addressed directly (not through the load balancer)."""

    name: str
    grpc: str  # host:port of its gRPC endpoint (the repository API and the probes)
    metrics: str  # host:port or URL of its Prometheus endpoint

    @property
    def metrics_url(self) -> str:
        """Its metrics page, by the rule of `probes.metrics.metrics_url` (host:port or a bare URL gets /metrics)."""
        return metrics_url(self.metrics)

    @property
    def metrics_instance(self) -> str:
        """The `instance` label Prometheus gives this replica's series when it scrapes `metrics` directly."""
        bare = self.metrics.split("://", 1)[-1]
        return bare.split("/", 1)[0]


@dataclass(frozen=True)
class StaticFleet:
    """A fixed list of replicas (a static `replicas:` list, or the one Triton of the plain settings)."""

    replicas: tuple[Replica, ...]

    def resolve(self) -> tuple[Replica, ...]:
        return self.replicas

    def describe(self) -> str:
        return f"{len(self.replicas)} replica(s): {', '.join(r.name for r in self.replicas)}"


@dataclass(frozen=True)
class DnsFleet:
    """Every A and AAAA record of `name` is a replica (a Kubernetes headless Service), resolved each pass."""

    name: str
    grpc_port: int = 8001
    metrics_port: int = 8002
    nameserver: str | None = None  # "host:port" or "host"; None: the system's resolver
    timeout_s: float = 2.0

    def resolve(self) -> tuple[Replica, ...]:
        """The replicas the name has now, sorted by address; FleetUnresolved when it has none or DNS fails."""
        if self.nameserver is not None:
            host, port = _nameserver(self.nameserver, "the fleet's DNS nameserver")
        try:  # without a nameserver, reading /etc/resolv.conf may fail too (NoResolverConfiguration)
            resolver = dns.resolver.Resolver(configure=self.nameserver is None)
        except dns.exception.DNSException as exc:
            raise FleetUnresolved(f"fleet DNS name {self.name!r}: no system resolver: {exc}") from exc
        if self.nameserver is not None:
            resolver.nameservers = [host]
            resolver.port = port
        resolver.lifetime = self.timeout_s
        addresses: set[str] = set()
        problems: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = resolver.resolve(self.name, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                problems.append(f"{rdtype}: {type(exc).__name__}")
                continue
            except dns.exception.DNSException as exc:  # timeout, no nameserver answered, a bad name
                raise FleetUnresolved(f"fleet DNS name {self.name!r}: {rdtype} lookup failed: {exc}") from exc
            addresses.update(record.to_text() for record in answer)
        if not addresses:
            raise FleetUnresolved(f"fleet DNS name {self.name!r} has no A or AAAA record ({'; '.join(problems)})")
        return tuple(
            Replica(
                name=address,
                grpc=join_host_port(address, self.grpc_port),
                metrics=join_host_port(address, self.metrics_port),
            )
            for address in sorted(addresses, key=_address_order)
        )

    def describe(self) -> str:
        return f"DNS {self.name} (gRPC :{self.grpc_port}, metrics :{self.metrics_port})"


Fleet = StaticFleet | DnsFleet


@dataclass(frozen=True)
class MetricsSource:
    """Where live per-replica, per-version figures come from.

    `direct` scrapes each replica's metrics endpoint (its counter windows are stored in SQL, so a
    `shepherd tick` run from a CronJob covers all traffic since the last pass); `prometheus`
    reads them through PromQL from a Prometheus that scrapes every replica.
    """

    source: Literal["direct", "prometheus"] = "direct"
    url: str | None = None  # the Prometheus base URL (http://host:9090), for source prometheus
    selector: str = ""  # extra PromQL label matchers for Triton's series, e.g. 'job="triton"'
    timeout_s: float = 5.0
    # Prometheus only: a window shorter than this (a few scrape intervals) has too few samples for
    # increase(); its figures are deferred to the next window, which then starts where the last
    # counted one ended, so no traffic is counted twice or lost.
    min_window_s: float = 5.0


@dataclass(frozen=True)
class FleetFile:
    """What a fleet file holds: the fleet, optionally its metrics source and its load balancer."""

    fleet: Fleet
    metrics: MetricsSource | None = None
    load_balancer: dict[str, str] = field(default_factory=dict)  # {"grpc": host:port, "http": host:port}


def single(grpc: str, metrics: str) -> StaticFleet:
    """The degenerate fleet of the plain `triton_grpc` / `triton_metrics` settings."""
    return StaticFleet((Replica(SINGLE_REPLICA, grpc, metrics),))


# -- addresses ----------------------------------------------------------------------------------
def split_host_port(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port' or (with a default port) a bare host, as (host, port)."""
    text = text.strip()
    host, port = text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"{text!r}: expected [address]:port")
        port = rest.removeprefix(":") or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address
    if not host:
        raise ConfigError(f"{text!r}: the host is empty")
    if port is None:
        if default_port is None:
            raise ConfigError(f"{text!r}: expected host:port")
        return host, default_port
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _nameserver(text: str, where: str) -> tuple[str, int]:
    """A DNS server as (IP address, port): dnspython takes addresses only, not host names."""
    try:
        host, port = split_host_port(text, default_port=53)
        ipaddress.ip_address(host)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{where}: expected an IP address with an optional port, got {text!r} ({exc})") from None
    return host, port


def _address_order(address: str) -> tuple[int, int]:
    parsed = ipaddress.ip_address(address)
    return parsed.version, int(parsed)


# -- reading ------------------------------------------------------------------------------------
def _mapping(value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{where}: expected a port number from 1 to 65535, got {value!r}")
    return value


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        raise ConfigError(f"{where}: expected a number of seconds in (0, 300], got {value!r}")
    return float(value)


def _address(value: Any, where: str) -> str:
    text = _text(value, where)
    default_port = {"http": 80, "https": 443}.get(text.split("://", 1)[0]) if "://" in text else None
    try:
        split_host_port(text.split("://", 1)[-1].split("/", 1)[0], default_port=default_port)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return text


def parse_fleet(data: Any, where: str = "fleet") -> Fleet:
    """A `fleet:` mapping (static `replicas:` or `dns:`) as a Fleet; ConfigError naming the key otherwise."""
    data = _mapping(data, where, FLEET_KEYS)
    if ("replicas" in data) == ("dns" in data):
        raise ConfigError(f"{where}: give exactly one of `replicas` (a list) or `dns` (a name)")
    if "dns" in data:
        dns_data = _mapping(data["dns"], f"{where}.dns", DNS_KEYS)
        if "name" not in dns_data:
            raise ConfigError(f"{where}.dns.name: required")
        nameserver = dns_data.get("nameserver")
        if nameserver is not None:
            nameserver = _text(nameserver, f"{where}.dns.nameserver")
            _nameserver(nameserver, f"{where}.dns.nameserver")
        return DnsFleet(
            name=_text(dns_data["name"], f"{where}.dns.name"),
            grpc_port=_port(dns_data.get("grpc_port", 8001), f"{where}.dns.grpc_port"),
            metrics_port=_port(dns_data.get("metrics_port", 8002), f"{where}.dns.metrics_port"),
            nameserver=nameserver,
            timeout_s=_seconds(dns_data.get("timeout_seconds", 2.0), f"{where}.dns.timeout_seconds"),
        )
    items = data["replicas"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}.replicas: expected a non-empty list of {{name, grpc, metrics}}")
    replicas: list[Replica] = []
    for i, item in enumerate(items):
        at = f"{where}.replicas[{i}]"
        item = _mapping(item, at, REPLICA_KEYS)
        missing = sorted(REPLICA_KEYS - set(item))
        if missing:
            raise ConfigError(f"{at}.{missing[0]}: required")
        replicas.append(
            Replica(
                name=_text(item["name"], f"{at}.name"),
                grpc=_address(item["grpc"], f"{at}.grpc"),
                metrics=_address(item["metrics"], f"{at}.metrics"),
            )
        )
    names = [r.name for r in replicas]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{where}.replicas: the name {duplicated[0]!r} is given twice")
    return StaticFleet(tuple(replicas))


def parse_metrics(data: Any, where: str = "metrics") -> MetricsSource:
    """A `metrics:` mapping: `{source: direct}` or `{source: prometheus, url: ..., selector: ...}`."""
    data = _mapping(data, where, METRICS_KEYS)
    source = data.get("source", "direct")
    if source not in ("direct", "prometheus"):
        raise ConfigError(f"{where}.source: expected direct or prometheus, got {source!r}")
    url = data.get("url")
    if source == "prometheus":
        url = _text(url, f"{where}.url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: expected an http(s) URL, got {url!r}")
    elif url is not None:
        raise ConfigError(f"{where}.url: only for source prometheus")
    selector = data.get("selector", "")
    if not isinstance(selector, str):
        raise ConfigError(f"{where}.selector: expected PromQL label matchers as a string, got {selector!r}")
    return MetricsSource(
        source=source,
        url=url.rstrip("/") if url else None,
        selector=selector.strip(),
        timeout_s=_seconds(data.get("timeout_seconds", 5.0), f"{where}.timeout_seconds"),
        min_window_s=_seconds(data.get("min_window_seconds", 5.0), f"{where}.min_window_seconds"),
    )


def read_fleet_file(path: Path) -> FleetFile:
    """Read a fleet file (YAML): the fleet, and optionally `metrics` and `load_balancer`."""
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the fleet file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: the fleet file is not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    data = _mapping(data, where, FILE_KEYS)
    fleet = parse_fleet({k: v for k, v in data.items() if k in FLEET_KEYS}, where)
    metrics = parse_metrics(data["metrics"], f"{where}: metrics") if "metrics" in data else None
    balancer = _mapping(data.get("load_balancer", {}), f"{where}: load_balancer", BALANCER_KEYS)
    return FleetFile(
        fleet=fleet,
        metrics=metrics,
        load_balancer={k: _address(v, f"{where}: load_balancer.{k}") for k, v in balancer.items()},
    )


def fleet_file_text(
    replicas: list[Replica], *, metrics: MetricsSource | None = None, load_balancer: dict[str, str] | None = None
) -> str:
    """The YAML of a static fleet file (what `shepherd fleet up` writes); `read_fleet_file` reads it back."""
    data: dict[str, Any] = {"replicas": [{"name": r.name, "grpc": r.grpc, "metrics": r.metrics} for r in replicas]}
    if metrics is not None:
        data["metrics"] = {"source": metrics.source, **({"url": metrics.url} if metrics.url else {})}
        if metrics.selector:
            data["metrics"]["selector"] = metrics.selector
        if metrics.timeout_s != MetricsSource.timeout_s:
            data["metrics"]["timeout_seconds"] = metrics.timeout_s
        if metrics.min_window_s != MetricsSource.min_window_s:
            data["metrics"]["min_window_seconds"] = metrics.min_window_s
    if load_balancer:
        data["load_balancer"] = dict(load_balancer)
    return yaml.safe_dump(data, sort_keys=False)
