"""A small real DNS server for tests: A/AAAA records on 127.0.0.1, over UDP and TCP, changeable live.

    from tests.dns_server import DnsTestServer

    with DnsTestServer() as server:                     # binds 127.0.0.1 on a free port, UDP and TCP
        server.set("triton.fleet.test", ["127.0.0.11", "127.0.0.12", "::1"])   # A and AAAA records
        fleet = DnsFleet("triton.fleet.test", nameserver=server.nameserver)  # "127.0.0.1:<port>"
        ...
        server.set("triton.fleet.test", ["127.0.0.11"])  # seen by the next lookup (TTL 0)
        server.set("empty.fleet.test", [])               # a known name with no record: NOERROR, no answer
        server.remove("triton.fleet.test")               # unknown again: NXDOMAIN

What it answers (built on `dnslib.server.DNSServer` with its own resolver):
- a name given to `set`: NOERROR, with one record per address of the asked type (A for IPv4, AAAA
  for IPv6; an empty answer when it has none of that type, i.e. NODATA);
- any other name: NXDOMAIN;
- over UDP, an answer longer than 512 bytes (the classic limit; dnspython sends no EDNS by default)
  comes back truncated (TC flag, the question, no records): the client retries over TCP, as with a real server.

Names are matched without case and without a trailing dot. Every question is recorded in `queries`
(protocol, name, type), so a test can show that a lookup really reached this server.

`silent_udp_port()` gives a UDP port that receives but never answers (a DNS server that hangs);
a port from `closed_udp_port()` has nothing bound to it.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

HOST = "127.0.0.1"
UDP_LIMIT = 512  # bytes of a UDP answer before it is truncated (RFC 1035 without EDNS)


@dataclass(frozen=True)
class Query:
    """One question the server received."""

    protocol: str  # "udp" or "tcp"
    name: str  # lower case, no trailing dot
    type: str  # "A", "AAAA", ...


def _normal(name: str) -> str:
    return name.rstrip(".").lower()


class _Records(BaseResolver):  # type: ignore[misc]
    """The resolver dnslib calls from its handler threads: a locked name -> addresses table."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.lock = threading.Lock()
        self.names: dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]] = {}
        self.queries: list[Query] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        name, qtype = _normal(str(qname)), QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append(Query(handler.protocol, name, qtype))
            addresses = self.names.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for address in addresses:
            if qtype == "A" and address.version == 4:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(str(address)), ttl=self.ttl))
            elif qtype == "AAAA" and address.version == 6:
                reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(str(address)), ttl=self.ttl))
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]
    """dnslib's handler, but a truncated UDP answer keeps its question, as real servers do.

    (dnslib's own `DNSRecord.truncate` drops the question, and dnspython then ignores the answer
    as not matching its query, so the client would time out instead of retrying over TCP.)
    """

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        packed: bytes = reply.pack()
        if self.protocol == "udp" and len(packed) > UDP_LIMIT:
            header = copy.copy(reply.header)
            header.tc = 1
            packed = DNSRecord(header, q=request.q).pack()
        return packed


class DnsTestServer:
    """A DNS server on 127.0.0.1 (UDP and TCP on the same free port) whose records a test sets.

    Use it as a context manager; `set` and `remove` may be called at any time, also while it runs.
    `ttl` is the TTL of every record (0: nothing is worth caching).
    """

    def __init__(self, *, ttl: int = 0) -> None:
        self._records = _Records(ttl)
        self._servers: list[DNSServer] = []
        self.port = 0

    # -- records ------------------------------------------------------------------------------
    def set(self, name: str, addresses: Iterable[str]) -> None:
        """Make `name` known with exactly these addresses (IPv4 ones are A records, IPv6 ones AAAA)."""
        parsed = tuple(ipaddress.ip_address(a) for a in addresses)  # ValueError on a non-address
        with self._records.lock:
            self._records.names[_normal(name)] = parsed

    def remove(self, name: str) -> None:
        """Forget `name`: it is answered with NXDOMAIN from now on."""
        with self._records.lock:
            self._records.names.pop(_normal(name), None)

    @property
    def queries(self) -> list[Query]:
        """A copy of every question received so far, in order."""
        with self._records.lock:
            return list(self._records.queries)

    @property
    def nameserver(self) -> str:
        """`127.0.0.1:<port>`, what a fleet's `dns.nameserver` takes."""
        return f"{HOST}:{self.port}"

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> DnsTestServer:
        quiet = DNSLogger(log="error", prefix=False)  # only undecodable packets are printed
        for _ in range(50):
            udp = DNSServer(self._records, address=HOST, port=0, logger=quiet, handler=_Handler)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(self._records, address=HOST, port=port, tcp=True, logger=quiet, handler=_Handler)
            except OSError:  # that port is taken for TCP: try another one
                udp.server.server_close()
                continue
            self._servers = [udp, tcp]
            self.port = port
            for server in self._servers:  # a short poll interval: stop() returns at once
                server.thread = threading.Thread(
                    target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
                )
                server.thread.start()
            return self
        raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def silent_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 bound by a socket that never reads: questions sent there get no answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
