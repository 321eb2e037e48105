"""The world as one pass sees it: the repository, the SQL history and Triton's index, each read once.

Why a snapshot: a pass that goes back to the repository, the database and Triton for every
question it asks costs hundreds of statements when there is nothing to do, and is hard to follow.
The reconciler reads the world once, decides from it, acts, and reads it again only after it has
changed something (`refreshed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from builders.errors import BuilderError
from builders.manifest import Manifest
from builders.repository import PREFLIGHT_SUFFIX, ModelRepository
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
class World:
    catalogue: Catalogue
    store: StoreSnapshot
    index: tuple[IndexEntry, ...]

    def ready(self, model: str) -> set[int]:
        return {e.version for e in self.index if e.model == model and e.state == "READY" and e.version is not None}

    def live_aliases(self) -> list[IndexEntry]:
        """Preflight aliases Triton still holds (READY or LOADING)."""
        return [e for e in self.index if e.model.endswith(PREFLIGHT_SUFFIX) and e.state in ("READY", "LOADING")]

    def live(self, model: str) -> set[int]:
        return {e.version for e in self.index if e.model == model and e.state in LIVE_STATES and e.version is not None}


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
    """One read of each source: the history first (it says which manifests need reading), then the rest."""
    store = rt.store.read.snapshot()
    known = {name: record.kind for name, record in store.models.items()}
    return World(catalogue=read_catalogue(rt.repo, known), store=store, index=tuple(rt.admin.index()))


def refreshed(rt: Runtime, world: World) -> World:
    """The same catalogue with the history and Triton's index read again (after this pass changed them)."""
    return replace(world, store=rt.store.read.snapshot(), index=tuple(rt.admin.index()))


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    return dict(json.loads(manifest.to_json()))


def desired_versions(store: StoreSnapshot, model: str, settings: Settings, now: datetime) -> set[int]:
    """Versions that should serve under the model's own name right now.

    The pinned version alone when pinned; else the stable version, every canary, and a former
    stable version still within its drain period (it finishes in-flight requests).
    """
    pinned = store.pinned(model)
    if pinned is not None:
        return {pinned}
    wanted = {record.version for record in store.versions_of(model, State.canary)}
    stable = store.stable(model)
    if stable is not None:
        wanted.add(stable.version)
    drain = timedelta(seconds=settings.policy_for(model).drain_seconds)
    for record in store.versions_of(model, State.promoted):
        if not record.is_stable and record.retired_at is not None and now - record.retired_at < drain:
            wanted.add(record.version)
    return wanted
