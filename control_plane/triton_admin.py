"""Triton's repository API, as the reconciler needs it: which versions are loaded, load exactly
these versions, unload, and wait until an unload is real.

Facts this is built around (see issue 4 and ../shared/notes/triton-on-cpu.md):
- a load's `config` override replaces config.pbtxt whole and is sticky, so it is always built from
  the parsed config.pbtxt with protobuf `json_format`, never by editing JSON text;
- a load is all-or-nothing: if a listed version fails, the versions loaded before keep serving;
- an unload is asynchronous: a version is gone only once the index no longer says READY/UNLOADING;
- the repository API may be restricted by a key (`tritonserver --grpc-restricted-protocol=
  model-repository,...:shepherd-api-key=<key>`): with `api_key` every repository call (index, load,
  unload) carries the gRPC header `triton-grpc-protocol-shepherd-api-key`, and a refusal for want of
  it is TritonAccessDenied, never a failed load. The key is masked in every message;
- gRPC may run over TLS (`tls`, a probes.channel.GrpcTls read once at start from `triton_tls`):
  a handshake that fails (untrusted certificate, wrong name, a plaintext client on a TLS port) is
  TritonUnreachable with a sentence on what TLS said, never a failed load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.utils import InferenceServerException

from control_plane.errors import TritonAccessDenied, TritonLoadFailed, TritonUnloadFailed, TritonUnreachable
from probes.channel import GrpcTls, grpc_client, tls_hint

LIVE_STATES = frozenset({"READY", "LOADING", "UNLOADING"})
API_KEY_HEADER = "shepherd-api-key"  # HTTP header; Triton's flag names it after `<apis>:`
GRPC_API_KEY_HEADER = f"triton-grpc-protocol-{API_KEY_HEADER}"  # Triton prefixes restricted gRPC headers
MASK = "***"


def mask(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by ***."""
    return text.replace(secret, MASK) if secret else text


def access_denied(exc: InferenceServerException) -> bool:
    """True when Triton refused the call because the restricted API's header was missing or wrong.

    Triton 2.51 answers "This protocol is restricted, expecting header '...'" with gRPC status UNAVAILABLE.
    """
    return "restricted, expecting header" in str(exc).lower()


def could_not_connect(exc: InferenceServerException) -> bool:
    """True when the call never reached a Triton that could answer (refused, no route, name not resolved).

    gRPC reports all of those as UNAVAILABLE; anything else (NOT_FOUND, INVALID_ARGUMENT, INTERNAL,
    a deadline) came from, or at least reached, a running server: that server refused the call.
    """
    if access_denied(exc):  # Triton refuses a restricted call with UNAVAILABLE too; it was reached
        return False
    return "unavailable" in str(exc.status() or "").lower() or "failed to connect" in str(exc).lower()


@dataclass(frozen=True)
class IndexEntry:
    model: str
    version: int | None
    state: str
    reason: str


def index_entries(raw: dict[str, Any]) -> list[IndexEntry]:
    """Triton's repository index as JSON (`get_model_repository_index(as_json=True)`) as entries."""
    return [
        IndexEntry(
            model=entry["name"],
            version=int(entry["version"]) if entry.get("version") else None,
            state=entry.get("state", ""),
            reason=entry.get("reason", ""),
        )
        for entry in raw.get("models", [])
    ]


def override_json(config: ModelConfig, versions: Iterable[int]) -> str:
    """The load override: the parsed config with a `specific` version policy listing `versions`."""
    override = ModelConfig()
    override.CopyFrom(config)
    override.version_policy.specific.versions[:] = sorted(set(int(v) for v in versions))
    return json.dumps(json_format.MessageToDict(override))


class TritonAdmin:
    """Repository-API calls over gRPC with errors translated into shepherd's tree.

    `api_key`: sent as a header on every repository call when Triton restricts that API; kept
    private (not in repr, masked in every error). `tls`: the channel runs over TLS with these
    certificates (None: plaintext).
    """

    def __init__(
        self, grpc_url: str, *, timeout_s: float = 60.0, api_key: str | None = None, tls: GrpcTls | None = None
    ) -> None:
        self.grpc_url = grpc_url
        self.timeout_s = timeout_s
        self.tls = tls
        self._api_key = api_key or None
        self._headers = {GRPC_API_KEY_HEADER: api_key} if api_key else None
        self._client = grpc_client(grpc_url, tls)

    def __repr__(self) -> str:
        return (
            f"TritonAdmin({self.grpc_url!r}, key={'set' if self._api_key else 'none'}, "
            f"tls={'mutual' if self.tls and self.tls.mutual else 'on' if self.tls else 'off'})"
        )

    def close(self) -> None:
        self._client.close()

    def index(self) -> list[IndexEntry]:
        try:
            raw = self._client.get_model_repository_index(headers=self._headers, as_json=True, client_timeout=10)
        except InferenceServerException as exc:
            self._denied_or(exc, "the repository index")
            raise TritonUnreachable(
                f"Triton at {self.grpc_url} did not answer the repository index: {self._masked(exc)}"
            ) from exc
        return index_entries(raw)

    def ready_versions(self, model: str, index: list[IndexEntry] | None = None) -> set[int]:
        entries = self.index() if index is None else index
        return {e.version for e in entries if e.model == model and e.state == "READY" and e.version is not None}

    def live_versions(self, model: str, index: list[IndexEntry] | None = None) -> set[int]:
        entries = self.index() if index is None else index
        return {e.version for e in entries if e.model == model and e.state in LIVE_STATES and e.version is not None}

    def load_versions(self, model: str, config: ModelConfig, versions: Iterable[int]) -> None:
        """Serve exactly `versions` of `model` (one atomic swap for request routing)."""
        wanted = sorted(set(versions))
        if not wanted:
            self.unload(model)
            return
        self._load(model, f"versions {wanted}", config=override_json(config, wanted))

    def load(self, model: str) -> None:
        """A plain load with the model's own config.pbtxt (tokenizers, ensembles)."""
        self._load(model, "", config=None)

    def _load(self, model: str, what: str, *, config: str | None) -> None:
        try:
            self._client.load_model(model, headers=self._headers, config=config, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            self._denied_or(exc, f"loading {model}")
            self._unreachable_or(exc)
            raise TritonLoadFailed(
                f"loading {' '.join(filter(None, (model, what)))} failed: {mask(exc.message() or '', self._api_key)}"
            ) from exc

    def unload(self, model: str) -> None:
        try:
            self._client.unload_model(model, headers=self._headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            self._denied_or(exc, f"unloading {model}")
            self._unreachable_or(exc)
            raise TritonUnloadFailed(
                f"Triton refused to unload {model}: {mask(exc.message() or '', self._api_key)}"
            ) from exc

    def _masked(self, exc: InferenceServerException) -> str:
        """The error's text, key masked, with what it says about TLS in front when it says something."""
        text = mask(str(exc), self._api_key)
        hint = tls_hint(text, self.tls)
        return f"{hint}: {text}" if hint else text

    def _unreachable_or(self, exc: InferenceServerException) -> None:
        """Raise TritonUnreachable when `exc` is a connection failure; return so the caller names the refusal."""
        if could_not_connect(exc):
            raise TritonUnreachable(f"Triton at {self.grpc_url} is unreachable: {self._masked(exc)}") from exc

    def _denied_or(self, exc: InferenceServerException, what: str) -> None:
        """Raise TritonAccessDenied when Triton refused for want of the key; return otherwise."""
        if access_denied(exc):
            given = "the key shepherd sent is wrong" if self._api_key else "shepherd sent none"
            raise TritonAccessDenied(
                f"Triton at {self.grpc_url} refused {what}: its repository API wants a key ({given}; set "
                f"SHEPHERD_TRITON_API_KEY or triton_api_key_env in shepherd.yaml): {self._masked(exc)}"
            ) from exc

    def wait_gone(self, model: str, versions: Iterable[int], *, timeout_s: float = 30.0) -> bool:
        """Poll the index until none of `versions` is READY or UNLOADING; True when they are gone."""
        pending = set(versions)
        deadline = time.monotonic() + timeout_s
        while True:
            if not (self.live_versions(model) & pending):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
