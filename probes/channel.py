"""How shepherd's gRPC clients reach Triton: plaintext, or TLS (and mutual TLS) with certificates of one's own.

Why a frozen value holding bytes, not file paths: the control plane reads the files once at start
(`triton_tls` in shepherd.yaml, see control_plane.settings) and opens many channels afterwards
(one per replica for the repository API, one per probe run, one per load thread); none of them
reads a file again, so a file moved or half-rewritten later cannot break a running pass. A
certificate rotated on disk is used from the next start.

Facts this is built around (seen with tritonserver 2.51 and grpcio 1.8x on this machine):
- Triton serves gRPC over TLS with `--grpc-use-ssl=true --grpc-server-cert --grpc-server-key`, and
  asks for a client certificate signed by `--grpc-root-cert` with `--grpc-use-ssl-mutual=true`;
- a plaintext client on a TLS port, and a client without an accepted certificate on a mutual-TLS
  port, see UNAVAILABLE "Socket closed"; an untrusted server certificate is UNAVAILABLE "Tls
  handshake failed ... CERTIFICATE_VERIFY_FAILED"; a certificate that does not name the host is
  "Hostname Verification Check failed"; a TLS client on a plaintext port gets "WRONG_VERSION_NUMBER".
  `tls_hint` turns those into one plain sentence.

The private key is never in repr; neither are the certificates (public, but long).

Example:
    tls = GrpcTls.from_files(ca_file="ca.pem", server_name="triton.models.svc")
    client = grpc_client("10.0.0.5:8001", tls)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import tritonclient.grpc as grpcclient

from probes.errors import ProbeFailed

SERVER_NAME_OPTION = "grpc.ssl_target_name_override"


@dataclass(frozen=True)
class GrpcTls:
    """TLS for a gRPC channel to Triton.

    `root_certificates`: PEM of the CA(s) that signed the server's certificate (None: the system's
    trust store). `certificate_chain` and `private_key`: the client's certificate for mutual TLS
    (both or neither). `server_name`: the name to check the server's certificate against when it
    differs from the host in the address (a pod IP of a headless Service, say).
    """

    root_certificates: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ProbeFailed("a client certificate needs its private key, and a private key its certificate")
        if self.server_name is not None and (
            not self.server_name.strip() or any(c.isspace() for c in self.server_name)
        ):
            raise ProbeFailed(f"not a server name: {self.server_name!r}")

    def __repr__(self) -> str:
        return (
            f"GrpcTls(ca={'given' if self.root_certificates else 'system'}, "
            f"client_cert={'set' if self.certificate_chain else 'none'}, server_name={self.server_name!r})"
        )

    @property
    def mutual(self) -> bool:
        return self.certificate_chain is not None

    @classmethod
    def from_files(
        cls,
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> GrpcTls:
        """Read the PEM files now (ProbeFailed naming the file when one cannot be read)."""

        def read(path: str | Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ProbeFailed(f"cannot read the {what} file {path}: {exc.strerror or exc}") from exc

        return cls(
            root_certificates=read(ca_file, "CA certificate"),
            certificate_chain=read(cert_file, "client certificate"),
            private_key=read(key_file, "private key"),
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_args(self) -> list[tuple[str, Any]] | None:
        """tritonclient's default channel options plus the server-name override; None: the defaults alone."""
        if self.server_name is None:
            return None
        keepalive = grpcclient.KeepAliveOptions()
        return [  # the list tritonclient builds when given none (a list given replaces it whole)
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            (SERVER_NAME_OPTION, self.server_name),
        ]


def grpc_client(url: str, tls: GrpcTls | None = None) -> grpcclient.InferenceServerClient:
    """A Triton gRPC client for `url`: plaintext without `tls`, else TLS with its certificates."""
    if tls is None:
        return grpcclient.InferenceServerClient(url)
    return grpcclient.InferenceServerClient(url, creds=tls.credentials(), channel_args=tls.channel_args())


def tls_hint(message: str, tls: GrpcTls | None) -> str:
    """One sentence on what a gRPC connection error says about TLS, or "" when it says nothing about it."""
    text = message.lower()
    if "wrong_version_number" in text:
        return "TLS: the server does not speak TLS on this port (is --grpc-use-ssl off?)"
    if "hostname verification" in text:
        return "TLS: the server's certificate does not name this host (set triton_tls.server_name to a name it holds)"
    if "certificate_verify_failed" in text or "handshake failed" in text:
        return "TLS: the server's certificate is not signed by a trusted CA (check triton_tls.ca_file)"
    if "socket closed" in text:
        if tls is None:
            return "the server closed the connection, as a Triton with TLS on gRPC does to plaintext clients (set triton_tls if it uses TLS)"
        if not tls.mutual:
            return "the server closed the TLS connection: does it want a client certificate (mutual TLS; set triton_tls.cert_file and key_file)?"
        return "the server closed the TLS connection: it may not accept this client certificate"
    return ""
