"""The world as one pass sees it: the repository, the SQL history and each replica's index, each read once.

Why a snapshot: a pass that goes back to the repository, the database and Triton for every
question it asks costs hundreds of statements when there is nothing to do, and is hard to follow.
The reconciler reads the world once, decides from it, acts, and reads it again only after it has
changed something (`refreshed`).

The fleet is resolved at every read (a DNS fleet sees joined and departed replicas within one
pass) and every replica's index is read in parallel. An unreachable replica is a `ReplicaView`
with its error, not a failed pass: the others are converged, and it is when it comes back. Only
when no replica answers does the pass stop (TritonUnreachable), as it did with one Triton.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from builders.errors import BuilderError
from builders.manifest import Manifest
from builders.repository import PREFLIGHT_SUFFIX, ModelRepository
from control_plane.errors import TritonAccessDenied, TritonUnreachable
from control_plane.fleet import Replica
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from control_plane.store.models import State
from control_plane.store.records import StoreSnapshot
from control_plane.triton_admin import LIVE_STATES, IndexEntry

SUPPORT_KINDS = frozenset({"tokenizer", "ensemble"})


@dataclass(frozen=True)
class Catalogue:
    """The model repository's folders: rollable models with their kind, support models, broken ones."""

    kinds: dict[str, str]  # rollable model -> kind
    support: tuple[str, ...]  # tokenizers and ensembles, loaded once their model serves
    versions: dict[str, tuple[int, ...]]  # version folders of each rollable model


@dataclass(frozen=True)
class ReplicaView:
    """One replica as this pass saw it: its repository index, or why it could not be read."""

    replica: Replica
    index: tuple[IndexEntry, ...] | None
    error: TritonUnreachable | None = None

    @property
    def name(self) -> str:
        return self.replica.name

    @property
    def reachable(self) -> bool:
        return self.index is not None

    def ready(self, model: str) -> set[int]:
        return {
            e.version for e in self.index or () if e.model == model and e.state == "READY" and e.version is not None
        }

    def live(self, model: str) -> set[int]:
        return {
            e.version for e in self.index or () if e.model == model and e.state in LIVE_STATES and e.version is not None
        }

    def live_aliases(self) -> list[IndexEntry]:
        """Preflight aliases the replica still holds (READY or LOADING)."""
        return [e for e in self.index or () if e.model.endswith(PREFLIGHT_SUFFIX) and e.state in ("READY", "LOADING")]


@dataclass(frozen=True)
class World:
    catalogue: Catalogue
    store: StoreSnapshot
    replicas: tuple[ReplicaView, ...]

    @property
    def reachable(self) -> tuple[ReplicaView, ...]:
        return tuple(v for v in self.replicas if v.reachable)

    @property
    def unreachable(self) -> tuple[ReplicaView, ...]:
        return tuple(v for v in self.replicas if not v.reachable)

    def view(self, name: str) -> ReplicaView | None:
        return next((v for v in self.replicas if v.name == name), None)

    def ready(self, model: str) -> set[int]:
        """Versions READY on every reachable replica (what the whole fleet serves)."""
        views = self.reachable
        if not views:
            return set()
        return set.intersection(*(v.ready(model) for v in views))

    def ready_anywhere(self, model: str) -> set[int]:
        return set().union(*(v.ready(model) for v in self.reachable))


def model_kind(repo: ModelRepository, model: str) -> str | None:
    """The kind recorded in the newest readable manifest of `model` (None if it has none)."""
    for version in reversed(repo.versions(model)):
        try:
            return repo.read_manifest(model, version).kind
        except BuilderError:
            continue
    return None


def read_catalogue(repo: ModelRepository, known_kinds: dict[str, str]) -> Catalogue:
    """List the repository; a manifest is read only for a model the history does not know yet."""
    kinds: dict[str, str] = {}
    support: list[str] = []
    versions: dict[str, tuple[int, ...]] = {}
    for model in repo.models():
        kind = known_kinds.get(model) or model_kind(repo, model)
        if kind is None:
            continue  # a folder no shepherd build wrote: not ours to roll out
        if kind in SUPPORT_KINDS:
            support.append(model)
        else:
            kinds[model] = kind
            versions[model] = tuple(repo.versions(model))
    return Catalogue(kinds=kinds, support=tuple(support), versions=versions)


def read_world(rt: Runtime) -> World:
    """One read of each source: the history first (it says which manifests need reading), then the rest.

    FleetUnresolved when the fleet's DNS name has no replica; TritonUnreachable when no replica
    answers; TritonAccessDenied when one refuses shepherd's key (a setting, not a fault to wait out).
    """
    store = rt.store.read.snapshot()
    known = {name: record.kind for name, record in store.models.items()}
    replicas = rt.settings.fleet.resolve()
    rt.forget({r.grpc for r in replicas})
    return World(catalogue=read_catalogue(rt.repo, known), store=store, replicas=read_indexes(rt, replicas))


def refreshed(rt: Runtime, world: World) -> World:
    """The same catalogue and fleet with the history and every replica's index read again (after a change)."""
    return replace(
        world, store=rt.store.read.snapshot(), replicas=read_indexes(rt, tuple(v.replica for v in world.replicas))
    )


def read_indexes(rt: Runtime, replicas: tuple[Replica, ...]) -> tuple[ReplicaView, ...]:
    """Every replica's repository index, read in parallel; an unreachable one keeps its error."""

    def read(replica: Replica) -> ReplicaView:
        try:
            return ReplicaView(replica, tuple(rt.admin_for(replica).index()))
        except TritonAccessDenied:
            raise
        except TritonUnreachable as exc:
            # A fresh channel next time: gRPC's reconnect backoff on the old one can keep a
            # restarted replica "unreachable" for several passes after it came back.
            stale = rt.admins.pop(replica.grpc, None)
            if stale is not None:
                stale.close()
            return ReplicaView(replica, None, exc)

    views: tuple[ReplicaView, ...]
    if len(replicas) == 1:
        views = (read(replicas[0]),)
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(replicas))) as pool:
            views = tuple(pool.map(read, replicas))
    if not any(v.reachable for v in views):
        first = views[0].error
        raise (
            first
            if len(views) == 1 and first is not None
            else TritonUnreachable(f"no replica of the fleet answered: {'; '.join(str(v.error) for v in views)}")
        )
    return views


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    return dict(json.loads(manifest.to_json()))


def role_of(store: StoreSnapshot, model: str, replica: str) -> str | None:
    """The replica's role in the model's open rollout now ("canary", "baseline", "stable",
    "bluegreen"), or None when the model has no rollout with a recorded step."""
    for record in store.versions_of(model, State.canary):
        rollout = store.open_rollout(model, record.version)
        step = store.step(rollout.id) if rollout is not None else None
        if step is not None:
            return step.role_of(replica)
    return None


def desired_versions(store: StoreSnapshot, model: str, settings: Settings, now: datetime, replica: str) -> set[int]:
    """Versions that should serve under the model's own name on `replica` right now.

    The pinned version alone when pinned; else the stable version, the canary where the replica's
    role in the rollout's current step takes candidate traffic ("canary", "bluegreen"), and a
    former stable version still within its drain period (it finishes in-flight requests). The
    candidate is loaded beside stable there, so a rollback only unloads it: traffic is back at once.
    """
    pinned = store.pinned(model)
    if pinned is not None:
        return {pinned}
    wanted: set[int] = set()
    if role_of(store, model, replica) in ("canary", "bluegreen"):
        wanted = {record.version for record in store.versions_of(model, State.canary)}
    stable = store.stable(model)
    if stable is not None:
        wanted.add(stable.version)
    drain = timedelta(seconds=settings.policy_for(model).drain_seconds)
    for record in store.versions_of(model, State.promoted):
        if not record.is_stable and record.retired_at is not None and now - record.retired_at < drain:
            wanted.add(record.version)
    return wanted
