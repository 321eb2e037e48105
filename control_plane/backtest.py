"""Back-testing a policy: replay the stored windows of every past rollout through the judge.

Why: a policy is tuned on what real rollouts showed, before it is changed. Every window a rollout
stored (both versions' probe samples, live counts, per-row quality) is in SQL, and the judge is a
pure function of them, so a replay asks, look by look, what `decide_canary` would have said with
another policy, and when. What happened (the rollout's outcome and its last decision) is printed
beside it.

A replay follows the rollout's own steps: it looks after each stored candidate window of a step
(with stable's windows of the same probes, as the reconciler judged them), with the bake time
counted from the step's start and the time limit from the rollout's. A step the replay passes goes
on to the next stored step; one the rollout never reached is reported as "would widen". Windows the
rollout did not store (it stopped at its own decision) cannot be replayed: a policy slower than the
one that ran is "undecided" where the evidence ends.

    replays = backtest(store, policy_for=lambda model: Policy(), since=..., model="query_intent")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import aliased

from control_plane.judging import PROMOTE, ROLLBACK, Verdict, decide_canary
from control_plane.observe import bluegreen_stable, evidence_from_windows
from control_plane.policy import POLICY_FIELDS, Policy
from control_plane.store.models import ModelRow, RolloutRow, VersionRow
from control_plane.store.records import ProbeWindowRecord, RolloutStepRecord
from control_plane.store.store import Store
from control_plane.store.values import aware

UNDECIDED = "undecided"
WIDEN = "would widen"


@dataclass(frozen=True)
class PastRollout:
    """One rollout as stored: its versions, times and outcome (None while it is open)."""

    id: int
    model: str
    candidate: int
    stable: int | None
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None


@dataclass(frozen=True)
class Replay:
    """What happened in one rollout, and what the replayed policy would have decided, and when."""

    rollout: PastRollout
    happened: str  # the rollout's outcome, or "open"
    happened_seconds: float | None  # from the rollout's start to its end
    happened_reason: str  # the last decision's reason
    would: str  # promote | rollback | would widen | undecided
    would_seconds: float | None  # from the rollout's start to the deciding window's end
    would_step: int | None
    would_reason: str
    looks: int  # windows judged in the replay
    windows: int  # candidate windows stored

    @property
    def agrees(self) -> bool:
        return {"promoted": PROMOTE, "rolled_back": ROLLBACK}.get(self.happened) == self.would

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rollout"]["started_at"] = self.rollout.started_at.isoformat()
        data["rollout"]["ended_at"] = self.rollout.ended_at.isoformat() if self.rollout.ended_at else None
        data["agrees"] = self.agrees
        return data


def past_rollouts(store: Store, *, model: str | None = None, since: datetime | None = None) -> list[PastRollout]:
    """Every rollout (of `model`, started at or after `since`), oldest first."""
    candidate, stable = aliased(VersionRow), aliased(VersionRow)
    query = (
        select(RolloutRow, ModelRow.name, candidate.version, stable.version)
        .join(ModelRow, ModelRow.id == RolloutRow.model_id)
        .join(candidate, candidate.id == RolloutRow.candidate_version_id)
        .outerjoin(stable, stable.id == RolloutRow.stable_version_id)
        .order_by(RolloutRow.started_at, RolloutRow.id)
    )
    if model is not None:
        query = query.where(ModelRow.name == model)
    if since is not None:
        query = query.where(RolloutRow.started_at >= aware(since, where="since"))
    with store.db.tx("read past rollouts") as session:
        return [
            PastRollout(
                id=row.id,
                model=name,
                candidate=int(cand),
                stable=int(base) if base is not None else None,
                started_at=aware(row.started_at, where="started_at"),
                ended_at=aware(row.ended_at, where="ended_at") if row.ended_at is not None else None,
                outcome=row.outcome,
            )
            for row, name, cand, base in session.execute(query)
        ]


def stored_policy(store: Store, rollout: PastRollout) -> Policy:
    """The policy the rollout's last decision was made with (keys it did not have take today's defaults)."""
    decisions = [d for d in store.read.decisions(rollout.model, rollout.candidate) if d.rollout_id == rollout.id]
    data = dict(decisions[-1].policy) if decisions else {}
    return policy_from_dict(data)


def policy_from_dict(data: dict[str, Any]) -> Policy:
    """A stored `Policy.as_dict()` back into a Policy (unknown keys ignored, lists back into tuples)."""
    from control_plane.policy import PromotionWindow

    kept = {k: v for k, v in data.items() if k in POLICY_FIELDS}
    if "promotion_windows" in kept:
        kept["promotion_windows"] = tuple(PromotionWindow(**w) for w in kept["promotion_windows"] or ())
    if "canary_steps" in kept:
        kept["canary_steps"] = tuple(kept["canary_steps"] or ())
    return Policy(**kept)


def replay(store: Store, rollout: PastRollout, policy: Policy) -> Replay:
    """Replay one rollout's stored windows through `policy`."""
    decisions = [d for d in store.read.decisions(rollout.model, rollout.candidate) if d.rollout_id == rollout.id]
    happened_reason = decisions[-1].reason or "" if decisions else ""
    happened_seconds = (rollout.ended_at - rollout.started_at).total_seconds() if rollout.ended_at else None
    steps = store.fleet.steps(rollout.id)
    looks = windows = 0
    verdict: Verdict | None = None
    decided: tuple[str, float | None, int | None, str] = (UNDECIDED, None, None, "no windows stored")
    for index, step in enumerate(steps):
        cand = store.read.probe_windows(
            rollout.model, rollout.candidate, role="candidate", rollout_id=rollout.id, step=step.step
        )
        if not cand or rollout.stable is None:
            continue
        same = store.read.probe_windows(
            rollout.model, rollout.stable, role="stable", rollout_id=rollout.id, step=step.step
        )
        base = (
            store.read.probe_windows(rollout.model, rollout.stable, role="stable", rollout_id=rollout.id, step=0)
            if step.strategy == "bluegreen"
            else same
        )
        windows += len(cand)
        limited = replace(policy, max_canary_seconds=_remaining(policy, rollout, step))
        for i in range(1, len(cand) + 1):
            seen = cand[:i]
            end = aware(seen[-1].ended_at, where="ended_at")
            verdict = decide_canary(
                evidence_from_windows(rollout.candidate, seen),
                _stable_evidence(rollout.stable, step, base, same, seen),
                limited,
                baked_seconds=(end - aware(step.started_at, where="started_at")).total_seconds(),
                now=end,
            )
            looks += 1
            at = (end - rollout.started_at).total_seconds()
            if verdict.outcome == ROLLBACK:
                return _done(
                    rollout,
                    happened_reason,
                    happened_seconds,
                    (ROLLBACK, at, step.step, verdict.reason),
                    looks,
                    windows,
                )
            if verdict.outcome == PROMOTE:
                if index + 1 < len(steps):
                    decided = (WIDEN, at, step.step, f"step {step.step + 1} passed: {verdict.reason}")
                    break  # on to the next stored step
                if step.strategy == "canary" and _more_steps(policy, step):
                    outcome = (WIDEN, at, step.step, f"step {step.step + 1} passed; the rollout stored no later step")
                    return _done(rollout, happened_reason, happened_seconds, outcome, looks, windows)
                return _done(
                    rollout, happened_reason, happened_seconds, (PROMOTE, at, step.step, verdict.reason), looks, windows
                )
        else:
            reason = verdict.reason if verdict is not None else "no look"
            decided = (
                UNDECIDED,
                None,
                step.step,
                f"undecided after the {len(cand)} stored windows of step {step.step + 1}: {reason}",
            )
            if index + 1 < len(steps):
                continue  # the rollout went on; so does the replay, on the windows it stored
    return _done(rollout, happened_reason, happened_seconds, decided, looks, windows)


def _stable_evidence(
    stable: int,
    step: RolloutStepRecord,
    base: list[ProbeWindowRecord],
    same: list[ProbeWindowRecord],
    seen: list[ProbeWindowRecord],
) -> Any:
    """Stable's windows as the judge had them at the look after `seen`: those ended by then."""
    until = seen[-1].ended_at
    upto = [w for w in same if w.ended_at <= until]
    if step.strategy == "bluegreen":
        return bluegreen_stable(stable, base, upto)
    return evidence_from_windows(stable, upto)


def _remaining(policy: Policy, rollout: PastRollout, step: RolloutStepRecord) -> float | None:
    """The rollout's time limit as seen from the step's start (as `reconciler._remaining_limit`)."""
    if policy.max_canary_seconds is None:
        return None
    spent = (aware(step.started_at, where="started_at") - rollout.started_at).total_seconds()
    return max(policy.bake_seconds, policy.max_canary_seconds - max(0.0, spent))


def _more_steps(policy: Policy, step: RolloutStepRecord) -> bool:
    done = len(step.replicas("canary"))
    return any(k > done for k in policy.canary_sizes(max(len(step.roles), 3)))


def _done(
    rollout: PastRollout,
    happened_reason: str,
    happened_seconds: float | None,
    decided: tuple[str, float | None, int | None, str],
    looks: int,
    windows: int,
) -> Replay:
    would, seconds, step, reason = decided
    return Replay(
        rollout=rollout,
        happened=rollout.outcome or "open",
        happened_seconds=happened_seconds,
        happened_reason=happened_reason,
        would=would,
        would_seconds=seconds,
        would_step=step,
        would_reason=reason,
        looks=looks,
        windows=windows,
    )


def backtest(
    store: Store,
    *,
    policy_for: Callable[[str], Policy] | None = None,
    model: str | None = None,
    since: datetime | None = None,
) -> list[Replay]:
    """Replay every past rollout; `policy_for(model)` gives the policy (default: the one each rollout ran with)."""
    return [
        replay(store, rollout, policy_for(rollout.model) if policy_for else stored_policy(store, rollout))
        for rollout in past_rollouts(store, model=model, since=since)
    ]
