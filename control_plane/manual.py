"""Manual `promote`, `rollback` and `pin`, recorded with who asked and why.

A person's action goes through the same transitions and the same event funnel as the
reconciler's, with the actor recorded; Triton is converged right away when it can be reached, and
otherwise on the next tick (the action is already in SQL).
"""

from __future__ import annotations

from control_plane import reconciler
from control_plane.errors import ConfigError, TritonUnreachable
from control_plane.judging import Verdict
from control_plane.runtime import Runtime
from control_plane.store.models import State


def _known(rt: Runtime, model: str, version: int) -> None:
    if rt.store.get_version(model, version) is None:
        reconciler.discover(rt, model, reconciler.model_kind(rt, model) or "custom", reconciler.TickReport())
    if rt.store.get_version(model, version) is None:
        raise ConfigError(f"{model} version {version} is not known (no such version folder with a manifest)")


def manual_promote(rt: Runtime, model: str, version: int, *, actor: str, reason: str) -> reconciler.TickReport:
    report = reconciler.TickReport()
    with rt.lock:
        _known(rt, model, version)
        rt.store.add_manual_action(model=model, version=version, action="promote", actor=actor, reason=reason)
        try:
            reconciler.promote(rt, model, version, reason=f"manual: {reason}", report=report, actor=actor)
        except TritonUnreachable as exc:
            report.errors.append(f"recorded; Triton unreachable, the next tick converges: {exc}")
    return report


def manual_rollback(rt: Runtime, model: str, version: int, *, actor: str, reason: str) -> reconciler.TickReport:
    """Roll back a canary, or the stable version itself (the previous promoted version serves again)."""
    report = reconciler.TickReport()
    with rt.lock:
        _known(rt, model, version)
        rt.store.add_manual_action(model=model, version=version, action="rollback", actor=actor, reason=reason)
        record = rt.store.get_version(model, version)
        assert record is not None
        if record.is_stable:
            previous = [
                r
                for r in rt.store.versions(model=model, states=[State.promoted])
                if r.version != version and not r.is_stable
            ]
            if previous:
                back = max(previous, key=lambda r: r.retired_at or r.state_changed_at)
                rt.store.set_stable(model, back.version, reason=f"manual rollback of v{version}: {reason}", actor=actor)
        verdict = Verdict(outcome="rollback", reason=f"manual: {reason}", checks=())
        reconciler.roll_back(rt, model, version, verdict=verdict, report=report, actor=actor)
    return report


def manual_pin(rt: Runtime, model: str, version: int | None, *, actor: str, reason: str) -> reconciler.TickReport:
    """Serve only `version` and pause automation for the model (None clears the pin)."""
    report = reconciler.TickReport()
    with rt.lock:
        if version is not None:
            _known(rt, model, version)
        rt.store.add_manual_action(
            model=model, version=version or 0, action="pin" if version else "unpin", actor=actor, reason=reason
        )
        rt.store.set_pin(model, version)
        report.add("pinned" if version else "unpinned", model, version, actor=actor, reason=reason)
        try:
            reconciler.converge(rt, model, report)
        except TritonUnreachable as exc:
            report.errors.append(f"recorded; Triton unreachable, the next tick converges: {exc}")
    return report
