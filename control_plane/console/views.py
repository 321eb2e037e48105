"""What each console page shows, read from the SQL history only (never from Triton): plain values for templates.

    fleet_view(rt)               models x replicas: each version's state and role, replica health, last decisions
    model_view(store, "intent")  the version timeline, each change with its reason and actor; the rollouts
    rollout_view(store, 7)       steps, probe windows of both sides, decisions with their checks, the policy

Why from SQL: a page must open while Triton or a replica is down, and show what shepherd decided and
why; what each replica serves is the history's desired state (`world.desired_versions`), which every
pass converges the replicas to (`shepherd fleet status` asks the replicas themselves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control_plane.api import queries
from control_plane.runtime import Runtime
from control_plane.store.models import State
from control_plane.store.records import DecisionRecord, ProbeWindowRecord, RolloutRecord, RolloutStepRecord
from control_plane.store.store import Store
from control_plane.world import desired_versions, role_of

TERMINAL = (State.rolled_back.value, State.failed.value, State.rejected.value)


def when(value: datetime | str | None) -> str:
    """A time as `YYYY-MM-DD HH:MM:SS` UTC (what every page and the CLI show)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def checks_of(decision: DecisionRecord) -> list[dict[str, Any]]:
    """The judge's checks of a decision, whatever shape it was stored in (a verdict, a list, nothing)."""
    checks = decision.checks
    if isinstance(checks, dict):
        checks = checks.get("checks", [])
    return [c for c in checks if isinstance(c, dict)] if isinstance(checks, list) else []


def decision_view(d: DecisionRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "at": when(d.at),
        "at_iso": d.at.isoformat(),
        "outcome": d.outcome,
        "reason": d.reason or "",
        "version": d.version,
        "rollout_id": d.rollout_id,
        "checks": [
            {
                "name": str(c.get("name", "")),
                "status": str(c.get("status", "")),
                "message": str(c.get("message", "")),
                "figures": {str(k): v for k, v in (c.get("figures") or {}).items() if not isinstance(v, list | dict)},
            }
            for c in checks_of(d)
        ],
        "policy": d.policy,
    }


# -- fleet overview ---------------------------------------------------------------------------
def fleet_view(rt: Runtime) -> dict[str, Any]:
    store = rt.store
    snapshot = store.read.snapshot()
    replicas = sorted(snapshot.replicas.values(), key=lambda r: r.name)
    names = [r.name for r in replicas]
    history = store.read.history()
    status = {row["model"]: row for row in store.read.status()}
    models = []
    for model in sorted(status):
        row = status[model]
        versions = [v for v in history if v["model"] == model]
        decisions = [v["last_decision"] | {"version": v["version"]} for v in versions if v["last_decision"]]
        last = max(decisions, key=lambda d: d["at"]) if decisions else None
        serving = {name: desired_versions(snapshot, model, rt.settings, snapshot.taken_at, name) for name in names}
        shown = [
            v
            for v in versions
            if v["is_stable"]
            or v["state"] in ("preflight", "canary")
            or any(v["version"] in s for s in serving.values())
        ]
        terminal = [v for v in versions if v["state"] in TERMINAL]
        if terminal:  # the latest failed, rejected or rolled-back version stays in view, with its reason
            latest = max(terminal, key=lambda v: v["state_changed_at"])
            if latest not in shown:
                shown.append(latest)
        rows = []
        for v in sorted(shown, key=lambda v: -v["version"]):
            cells = []
            for name in names:
                role = role_of(snapshot, model, name) if v["state"] == "canary" or v["is_stable"] else None
                cells.append({"serves": v["version"] in serving[name], "role": role or ""})
            rows.append(
                {
                    "version": v["version"],
                    "state": v["state"],
                    "stable": v["is_stable"],
                    "role": "stable"
                    if v["is_stable"]
                    else ("candidate" if v["state"] in ("preflight", "canary") else ""),
                    "since": when(v["state_changed_at"]),
                    "reason": v["reason"] or "",
                    "cells": cells,
                }
            )
        models.append(
            {
                "name": model,
                "kind": row["kind"],
                "phase": row["phase"],
                "rollout_id": row["rollout_id"],
                "pinned": row["pinned"],
                "rows": rows,
                "last_decision": ({**last, "at": when(last["at"])} if last is not None else None),
            }
        )
    return {
        "replicas": [
            {
                "name": r.name,
                "grpc": r.grpc,
                "reachable": r.reachable,
                "changed_at": when(r.changed_at),
                "last_error": r.last_error or "",
            }
            for r in replicas
        ],
        "models": models,
        "taken_at": when(snapshot.taken_at),
    }


# -- model page -------------------------------------------------------------------------------
def model_view(store: Store, model: str) -> dict[str, Any] | None:
    versions = store.read.history(model=model)
    if not versions:
        return None
    timeline = []
    for v in sorted(versions, key=lambda v: -v["version"]):
        changes = queries.transitions(store.db, model, v["version"])
        timeline.append(
            {
                "version": v["version"],
                "state": v["state"],
                "stable": v["is_stable"],
                "quality": (
                    f"{v['quality_metric']} {v['quality_value']:.4g}" if v["quality_value"] is not None else ""
                ),
                "reason": v["reason"] or "",
                "changes": [
                    {
                        "from": t["from_state"] or "",
                        "to": t["to_state"],
                        "at": when(t["at"]),
                        "actor": t["actor"],
                        "reason": t["reason"] or "",
                        "became_stable": t["from_state"] == t["to_state"] == "promoted",
                    }
                    for t in changes
                ],
            }
        )
    rollouts = [
        {
            "id": r.id,
            "candidate": r.candidate,
            "stable": r.stable,
            "started_at": when(r.started_at),
            "ended_at": when(r.ended_at),
            "outcome": r.outcome or "running",
        }
        for r in queries.rollouts(store.db, model=model, limit=50)
    ]
    for entry in timeline:
        entry["rollouts"] = [r["id"] for r in rollouts if r["candidate"] == entry["version"]]
    status = next((row for row in store.read.status() if row["model"] == model), {})
    return {"name": model, "versions": timeline, "rollouts": rollouts, "status": status}


# -- rollout page -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutData:
    """Everything the rollout page (and its static report) shows."""

    rollout: RolloutRecord
    steps: list[RolloutStepRecord]
    windows: list[ProbeWindowRecord]
    decisions: list[DecisionRecord]
    preflight_at: datetime | None  # when the candidate entered preflight (the first phase band starts there)
    canary_at: datetime | None
    transitions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def policy(self) -> dict[str, Any]:
        judged = [d for d in self.decisions if d.policy]
        return judged[-1].policy if judged else {}


def rollout_data(store: Store, rollout_id: int) -> RolloutData | None:
    rollout = queries.rollout(store.db, rollout_id)
    if rollout is None:
        return None
    model, candidate = rollout.model, rollout.candidate
    windows = list(store.read.probe_windows(model, candidate, rollout_id=rollout_id))
    if rollout.stable is not None and rollout.stable != candidate:
        windows += store.read.probe_windows(model, rollout.stable, rollout_id=rollout_id)
    windows.sort(key=lambda w: (w.started_at, w.id))
    changes = queries.transitions(store.db, model, candidate)
    preflight_at = _last_entry(changes, "preflight", before=rollout.started_at)
    canary_at = _last_entry(changes, "canary", before=rollout.started_at) or rollout.started_at
    start = preflight_at or rollout.started_at
    end = rollout.ended_at
    decisions = [
        d
        for d in store.read.decisions(model, candidate)
        if d.rollout_id == rollout_id or (d.rollout_id is None and start <= d.at and (end is None or d.at <= end))
    ]
    transitions = [t for t in changes if t["at"] >= start and (end is None or t["at"] <= end)]
    return RolloutData(
        rollout=rollout,
        steps=store.fleet.steps(rollout_id),
        windows=windows,
        decisions=decisions,
        preflight_at=preflight_at,
        canary_at=canary_at,
        transitions=transitions,
    )


def _last_entry(changes: list[dict[str, Any]], state: str, *, before: datetime) -> datetime | None:
    entries = [t["at"] for t in changes if t["to_state"] == state and t["at"] <= before]
    return entries[-1] if entries else None


def rollout_view(data: RolloutData) -> dict[str, Any]:
    r = data.rollout
    candidate = [w for w in data.windows if w.version == r.candidate]
    stable = [w for w in data.windows if w.version != r.candidate]
    return {
        "id": r.id,
        "model": r.model,
        "candidate": r.candidate,
        "stable": r.stable,
        "started_at": when(r.started_at),
        "ended_at": when(r.ended_at),
        "outcome": r.outcome or "running",
        "steps": [
            {
                "step": s.step,
                "strategy": s.strategy,
                "started_at": when(s.started_at),
                "share": s.share,
                "roles": dict(sorted(s.roles.items())),
                "reason": s.reason or "",
            }
            for s in data.steps
        ],
        "decisions": [decision_view(d) for d in data.decisions],
        "transitions": [
            {
                "from": t["from_state"] or "",
                "to": t["to_state"],
                "at": when(t["at"]),
                "actor": t["actor"],
                "reason": t["reason"] or "",
            }
            for t in data.transitions
        ],
        "policy": data.policy,
        "summary": {
            "candidate": _side(candidate),
            "stable": _side(stable),
        },
    }


def _side(windows: list[ProbeWindowRecord]) -> dict[str, Any]:
    """Totals of one side over the rollout: requests, errors, the last quality and agreement seen."""
    requests = sum(w.requests or 0 for w in windows)
    errors = sum(w.errors or 0 for w in windows)
    quality = next((w.quality for w in reversed(windows) if w.quality is not None), None)
    agreement = next((w.agreement for w in reversed(windows) if w.agreement is not None), None)
    return {
        "windows": len(windows),
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "quality": quality,
        "agreement": agreement,
    }
