"""Everything one reconciler process talks to, opened once: settings, SQL store, the fleet, clock.

Why a separate object: the reconcile, probe and judge jobs share it, tests build it against real
local Tritons and a real database, and the clock is injectable so time-dependent logic (bake time,
drain, promotion windows) can be driven without sleeping.

Each replica of the fleet gets its own `TritonAdmin` (its own gRPC channel), opened the first time
the replica is seen and kept while it stays in the fleet: behind a load balancer a shared channel
would reach whichever replica the connection sticks to. Every channel, the probes' included, runs
over TLS when the settings say so (`grpc_tls`, read once at start).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from builders.repository import ModelRepository
from control_plane.clock import utc_now
from control_plane.fleet import Replica
from control_plane.settings import Settings
from control_plane.store.store import Store
from control_plane.triton_admin import TritonAdmin
from probes.channel import GrpcTls


@dataclass
class Runtime:
    settings: Settings
    store: Store
    repo: ModelRepository
    now: Callable[[], datetime] = utc_now
    lock: threading.RLock = field(default_factory=threading.RLock)  # jobs never run over each other
    admins: dict[str, TritonAdmin] = field(default_factory=dict)  # by replica gRPC address

    def admin_for(self, replica: Replica) -> TritonAdmin:
        """The replica's own repository-API client (one gRPC channel per replica address)."""
        admin = self.admins.get(replica.grpc)
        if admin is None:
            admin = TritonAdmin(replica.grpc, api_key=self.settings.triton_api_key, tls=self.grpc_tls)
            self.admins[replica.grpc] = admin
        return admin

    def forget(self, keep: set[str]) -> None:
        """Close the clients of replicas that left the fleet (addresses not in `keep`)."""
        for address in [a for a in self.admins if a not in keep]:
            self.admins.pop(address).close()

    @property
    def first_replica(self) -> Replica:
        return self.settings.fleet.resolve()[0]

    @property
    def admin(self) -> TritonAdmin:
        """The first replica's client: what single-Triton callers (manual actions, the demo) use."""
        return self.admin_for(self.first_replica)

    @property
    def grpc_tls(self) -> GrpcTls | None:
        """TLS for every gRPC channel to the fleet (repository API and probes); None: plaintext."""
        return self.settings.triton_tls

    @property
    def grpc_url(self) -> str:
        return self.first_replica.grpc

    @property
    def metrics_url(self) -> str:
        return self.first_replica.metrics_url

    def reconnect(self) -> None:
        """Drop every replica client (a restarted Triton gets a fresh channel on next use)."""
        self.forget(set())

    def close(self) -> None:
        self.reconnect()
        self.store.close()


def open_runtime(settings: Settings, *, now: Callable[[], datetime] = utc_now) -> Runtime:
    store = Store.open(settings.db_url, clock=now)
    repo = ModelRepository(Path(settings.repo))
    if repo.root.is_dir():
        repo.remove_leftover_staging()  # what a crashed publisher left; a live one holds the lock
    return Runtime(settings=settings, store=store, repo=repo, now=now)
