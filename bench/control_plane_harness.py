"""A real control plane for the issue-4 benchmarks: scratch repository, LocalTriton, Runtime, tick driver.

Why here and not in tests: the benchmarks drive the same reconciler the tests do, but with the policy
DEFAULTS of shepherd.yaml (default probe rate) and wall-clock timing, and they watch Triton's index from
the side to see when a version really went away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.common import ROOT
from builders.repository import ModelRepository
from control_plane import reconciler
from control_plane.local_triton import LocalTriton
from control_plane.runtime import Runtime, open_runtime
from control_plane.settings import load_settings
from control_plane.store.models import State, TransitionRow, VersionRow
from control_plane.triton_admin import TritonAdmin

SETTINGS_FILE = ROOT / "shepherd.yaml"


def runtime_for(config: Path, repo: ModelRepository, triton: LocalTriton, db_url: str) -> Runtime:
    """A Runtime with `config`'s policies, pointed at `repo`, the local `triton` and `db_url`."""
    settings = load_settings(
        config,
        overrides={
            "repo": repo.root,
            "triton_grpc": triton.state.grpc_url,
            "triton_metrics": f"127.0.0.1:{triton.state.metrics_port}",
            "db_url": db_url,
        },
    )
    return open_runtime(settings)


@contextmanager
def control_plane(
    scratch: Path, *, db_url: str | None = None
) -> Iterator[tuple[ModelRepository, LocalTriton, Runtime]]:
    """A fresh repository, a real Triton on free ports and a Runtime with shepherd.yaml's policies."""
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    with LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton:
        rt = runtime_for(SETTINGS_FILE, repo, triton, db_url or f"sqlite:///{scratch / 'history.db'}")
        try:
            yield repo, triton, rt
        finally:
            rt.close()


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def transition_time(rt: Runtime, model: str, version: int, state: State) -> datetime | None:
    """When the store recorded `model` `version` entering `state` (the first time)."""
    with rt.store.db.engine.connect() as conn:
        row = conn.execute(
            select(TransitionRow.at)
            .join(VersionRow, VersionRow.id == TransitionRow.version_id)
            .where(VersionRow.version == version, TransitionRow.to_state == state.value)
            .where(VersionRow.model_id.in_(_model_ids(rt, model)))
            .order_by(TransitionRow.id)
        ).first()
    return as_utc(row[0]) if row else None


def _model_ids(rt: Runtime, model: str) -> list[int]:
    from control_plane.store.models import ModelRow

    with rt.store.db.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(ModelRow.id).where(ModelRow.name == model))]


def state_of(rt: Runtime, model: str, version: int) -> State | None:
    record = rt.store.read.get_version(model, version)
    return State(record.state) if record is not None else None


@dataclass
class TickLoop:
    """`reconciler.tick` every `interval` seconds (the policy's probe interval) until `done()` or timeout."""

    rt: Runtime
    interval: float
    actions: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self, done: Callable[[], bool], *, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            began = time.monotonic()
            report = reconciler.tick(self.rt)
            stamp = time.time()
            self.actions += [(stamp, action) for action in report.actions]
            self.errors += [str(error) for error in report.errors]
            if done():
                return True
            time.sleep(max(0.0, self.interval - (time.monotonic() - began)))
        return False

    def action(self, name: str, model: str, version: int | None = None) -> dict[str, Any] | None:
        for _, action in self.actions:
            if (
                action["action"] == name
                and action["model"] == model
                and (version is None or action["version"] == version)
            ):
                return action
        return None


class IndexWatcher:
    """Polls Triton's repository index every `every` s from its own client: when did a version come and go."""

    def __init__(self, grpc_url: str, model: str, *, every: float = 0.05) -> None:
        self.admin = TritonAdmin(grpc_url)
        self.model = model
        self.every = every
        self.samples: list[tuple[float, frozenset[int], frozenset[int]]] = []  # (wall time, ready, live)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"index-{model}", daemon=True)

    def __enter__(self) -> IndexWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.admin.close()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                index = self.admin.index()
                ready = frozenset(self.admin.ready_versions(self.model, index))
                live = frozenset(self.admin.live_versions(self.model, index))
                self.samples.append((time.time(), ready, live))
            except Exception:  # a slow or failed poll is a gap in the samples, never a dead thread
                pass
            self._stop.wait(self.every)

    def first_ready(self, version: int) -> float | None:
        return next((t for t, ready, _ in self.samples if version in ready), None)

    def gone_after(self, version: int, since: float) -> float | None:
        """First sample at or after `since` where `version` is neither READY nor UNLOADING."""
        return next((t for t, _, live in self.samples if t >= since and version not in live), None)
