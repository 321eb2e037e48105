"""Everything one reconciler process talks to, opened once: settings, SQL store, Triton, clock.

Why a separate object: the reconcile, probe and judge jobs share it, tests build it against a real
local Triton and a real database, and the clock is injectable so time-dependent logic (bake time,
drain, promotion windows) can be driven without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from builders.repository import ModelRepository
from control_plane.clock import utc_now
from control_plane.settings import Settings
from control_plane.store.store import Store
from control_plane.triton_admin import TritonAdmin
from probes.metrics import Snapshot


@dataclass
class Runtime:
    settings: Settings
    store: Store
    admin: TritonAdmin
    repo: ModelRepository
    now: Callable[[], datetime] = utc_now
    lock: threading.RLock = field(default_factory=threading.RLock)  # jobs never run over each other
    # The metrics snapshot each canary's last probe window ended with, keyed by (model, rollout id).
    # Lost on restart, which only makes the next window start later: nothing depends on it.
    snapshots: dict[tuple[str, int], Snapshot] = field(default_factory=dict)

    @property
    def grpc_url(self) -> str:
        return self.settings.triton_grpc

    @property
    def metrics_url(self) -> str:
        url = self.settings.triton_metrics
        return url if url.startswith("http") else f"http://{url}/metrics"

    def close(self) -> None:
        self.admin.close()
        self.store.close()


def open_runtime(settings: Settings, *, now: Callable[[], datetime] = utc_now) -> Runtime:
    store = Store.open(settings.db_url, clock=now)
    repo = ModelRepository(Path(settings.repo))
    if repo.root.is_dir():
        repo.remove_leftover_staging()  # what a crashed publisher left; a live one holds the lock
    return Runtime(
        settings=settings,
        store=store,
        admin=TritonAdmin(settings.triton_grpc, api_key=settings.triton_api_key),
        repo=repo,
        now=now,
    )
