"""Strategies: which replica takes which role in each step of a rollout. Pure functions, no I/O.

Why apart from the reconciler: where a candidate meets client traffic is a decision of its own,
with its own rules (a canary needs three reachable replicas, as many baseline as canary replicas,
steps capped at half the fleet), and it is easiest to check when nothing but the policy and the
replica names go in. The reconciler records the `StepPlan` (store.fleet.add_step) and converges
the replicas to it; docs/fleet.md draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.policy import Policy

BASELINE_REASON = "stable observed under all traffic before the cut-over"


@dataclass(frozen=True)
class StepPlan:
    """One step: the strategy, the share of client traffic the candidate takes, each replica's role, why."""

    strategy: str  # "canary" | "bluegreen"
    share: float
    roles: dict[str, str]
    reason: str


def first_step(policy: Policy, replicas: Sequence[str]) -> StepPlan:
    """The first step of a rollout on the replicas reachable now, in fleet order.

    canary: the first k replicas (in fleet order: the list's, or DNS addresses sorted) take the
    candidate, the next k reload stable as the baseline, the rest serve stable. bluegreen: step 0
    only observes stable under all traffic (the cut-over is step 1). `auto` picks canary from 3
    reachable replicas on; `canary` with fewer falls back to bluegreen and says so.
    """
    names = list(replicas)
    wanted = policy.strategy
    if wanted in ("auto", "canary") and len(names) < 3:
        reason = (
            f"{wanted}: {len(names)} reachable replica(s), a canary needs 3 reachable: blue-green, {BASELINE_REASON}"
        )
        return StepPlan("bluegreen", 0.0, dict.fromkeys(names, "stable"), reason)
    if wanted == "bluegreen":
        return StepPlan("bluegreen", 0.0, dict.fromkeys(names, "stable"), BASELINE_REASON)
    return canary_step(policy, names, 0)


def canary_step(policy: Policy, names: Sequence[str], index: int) -> StepPlan:
    """Step `index` of a canary: k canary replicas, k baseline replicas, the rest stable."""
    sizes = policy.canary_sizes(len(names))
    k = sizes[min(index, len(sizes) - 1)]
    roles = {name: ("canary" if i < k else "baseline" if i < 2 * k else "stable") for i, name in enumerate(names)}
    reason = f"step {index + 1} of {len(sizes)}: candidate on {k} of {len(names)} replicas, {k} fresh baseline"
    return StepPlan("canary", k / len(names), roles, reason)


def cut_over(replicas: Sequence[str]) -> StepPlan:
    """Bluegreen's step 1: the candidate on every replica, stable kept loaded beside it."""
    return StepPlan("bluegreen", 1.0, dict.fromkeys(replicas, "bluegreen"), "cut-over")


def next_size(policy: Policy, fleet_size: int, done: int) -> int | None:
    """The index of the next canary step after one with `done` canary replicas, or None after the last."""
    sizes = policy.canary_sizes(max(fleet_size, 3))
    return next((i for i, k in enumerate(sizes) if k > done), None)
