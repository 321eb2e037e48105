"""One funnel for every state change: `enter` records it, acts on Triton, logs once and alerts.

Why one funnel (Flagger's `events.go`): a rollback, a failure, a rejection or a promotion must be
recorded and visible the same way wherever it came from (the reconciler, the judge, a person):

1. the transition and the decision that caused it are written in one transaction, with the
   lifecycle's consequences (entering `promoted` makes the version the stable one, leaving
   `canary` closes its rollout): what is stored is what was decided, and a crash cannot leave
   one without the other;
2. `then`, the Triton action (converge, unload) runs after the record, so a crash after it is
   repaired by the next pass, which reads the desired state from SQL;
3. one log line, one report action;
4. the alert, by the event's severity, after the Triton action, so a slow or failing channel
   never delays taking a bad version down. Deliveries are recorded, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from control_plane.alerts.dispatch import dispatch
from control_plane.alerts.events import EVENT_SEVERITY, AlertEvent
from control_plane.errors import TritonUnreachable
from control_plane.judging import Verdict
from control_plane.report import TickReport
from control_plane.runtime import Runtime
from control_plane.store.lifecycle import SYSTEM_ACTOR
from control_plane.store.models import State
from control_plane.store.records import Decision
from shepherd_errors import ShepherdError

log = logging.getLogger("shepherd")

# The alert event each state raises (states not listed are logged, not alerted).
EVENT_OF_STATE = {
    State.rolled_back: "rollback",
    State.failed: "failure",
    State.rejected: "rejection",
    State.promoted: "promotion",
}


def enter(
    rt: Runtime,
    report: TickReport,
    model: str,
    version: int,
    state: State,
    *,
    verdict: Verdict | None,
    actor: str = SYSTEM_ACTOR,
    then: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Move `model` `version` to `state` because of `verdict`, then act, log and alert.

    `verdict` is stored as the decision row (None only for moves no judge made, such as picking
    the next candidate). `then` is the Triton action; what it returns (timings) goes into the
    report and the alert. An unreachable Triton during `then` is reported, not raised: the record
    is already written and the next pass converges.
    """
    policy = rt.settings.policy_for(model)
    rollout = rt.store.read.open_rollout(model, version)
    decision = (
        Decision(
            outcome=verdict.outcome,
            reason=verdict.reason,
            checks=verdict.as_dict(),
            policy=policy.as_dict(),
            rollout_id=rollout.id if rollout is not None else None,
        )
        if verdict is not None
        else None
    )
    reason = verdict.reason if verdict is not None else "next candidate"
    rt.store.lifecycle.transition(
        model,
        version,
        state,
        reason=reason,
        actor=actor,
        evidence=verdict.as_dict() if verdict is not None else None,
        decision=decision,
    )
    details: dict[str, Any] = {}
    if then is not None:
        try:
            details = then()
        except TritonUnreachable as exc:
            report.fail(
                TritonUnreachable(f"{model} v{version} {state} recorded; the next pass converges Triton: {exc}")
            )
        except ShepherdError as exc:  # the fleet cannot be resolved, a store read failed: recorded, alerted
            report.fail(exc)
    event = EVENT_OF_STATE.get(state)
    severity = EVENT_SEVERITY[event] if event is not None else "info"
    log.log(logging.WARNING if severity != "info" else logging.INFO, "%s %s v%s: %s", state, model, version, reason)
    report.add(str(state), model, version, reason=reason, actor=actor, **details)
    if event is not None:
        evidence = {**(verdict.as_dict() if verdict is not None else {}), "actor": actor, **details}
        link = console_link(rt, model, rollout.id if rollout is not None else None)
        alert(rt, event=event, model=model, version=version, reason=reason, evidence=evidence, link=link)


def console_link(rt: Runtime, model: str, rollout_id: int | None) -> str | None:
    """The console page of the rollout (else of the model) under `public_url`, when one is set."""
    base = rt.settings.public_url
    if not base:
        return None
    return (
        f"{base}/console/rollouts/{rollout_id}"
        if rollout_id is not None
        else f"{base}/console/models/{quote(model, safe='')}"
    )


def alert(
    rt: Runtime,
    *,
    event: str,
    model: str,
    version: int,
    reason: str,
    evidence: dict[str, Any],
    link: str | None = None,
) -> None:
    """Deliver the event to every configured channel and record each delivery; never raises."""
    severity = EVENT_SEVERITY[event]
    try:
        deliveries = dispatch(
            AlertEvent(
                event=event,
                model=model,
                version=version,
                reason=reason,
                at=rt.now(),
                evidence=evidence,
                severity=severity,
                link=link,
            ),
            rt.settings.alerts,
        )
    except Exception:  # the dispatcher never raises by contract; this guards the rollback anyway
        log.exception("alert dispatch crashed for %s %s v%s", event, model, version)
        return
    for delivery in deliveries:
        try:
            alert_id = rt.store.evidence.add_alert(
                event=event,
                model=model,
                version=version,
                channel=delivery.channel,
                payload={"reason": reason, "severity": severity},
            )
            rt.store.evidence.update_alert(
                alert_id,
                status="sent" if delivery.ok else "failed",
                attempts=delivery.attempts,
                last_error=delivery.error,
            )
        except Exception:
            log.exception("could not record the %s alert delivery to %s", event, delivery.channel)
