"""Manual `promote`, `rollback` and `pin`, recorded with who asked and why.

A person's action goes through the same funnel as the reconciler's (`events.enter`: the decision,
the transition, Triton, one log line, the alert), with the actor recorded. Triton is converged
right away when it can be reached, and otherwise on the next pass (the action is already in SQL).
"""

from __future__ import annotations

from control_plane import reconciler
from control_plane.errors import ConfigError, TritonUnreachable
from control_plane.judging import PROMOTE, ROLLBACK, Verdict
from control_plane.report import TickReport
from control_plane.runtime import Runtime
from control_plane.store.models import State
from control_plane.world import read_world


def _known(rt: Runtime, model: str, version: int, report: TickReport) -> None:
    """Record the version first if its folder is there but no pass has seen it yet."""
    if rt.store.read.get_version(model, version) is None and model in rt.repo.models():
        world = read_world(rt)
        if model in world.catalogue.kinds:
            reconciler.discover(rt, report, world, model)
    if rt.store.read.get_version(model, version) is None:
        raise ConfigError(f"{model} version {version} is not known (no such version folder with a manifest)")


def manual_promote(rt: Runtime, model: str, version: int, *, actor: str, reason: str) -> TickReport:
    report = TickReport()
    with rt.lock:
        _known(rt, model, version, report)
        rt.store.evidence.add_manual_action(model=model, version=version, action="promote", actor=actor, reason=reason)
        reconciler.promote(rt, report, model, version, verdict=Verdict(PROMOTE, f"manual: {reason}"), actor=actor)
    return report


def manual_rollback(rt: Runtime, model: str, version: int, *, actor: str, reason: str) -> TickReport:
    """Roll back a canary, or the stable version itself (the previous promoted version serves again)."""
    report = TickReport()
    with rt.lock:
        _known(rt, model, version, report)
        rt.store.evidence.add_manual_action(model=model, version=version, action="rollback", actor=actor, reason=reason)
        record = rt.store.read.get_version(model, version)
        if record is not None and record.is_stable:
            previous = [
                r
                for r in rt.store.read.versions(model=model, states=[State.promoted])
                if r.version != version and not r.is_stable
            ]
            if previous:
                back = max(previous, key=lambda r: r.retired_at or r.state_changed_at)
                rt.store.lifecycle.set_stable(
                    model, back.version, reason=f"manual rollback of v{version}: {reason}", actor=actor
                )
        verdict = Verdict(ROLLBACK, f"manual: {reason}")
        reconciler.roll_back(rt, report, model, version, verdict=verdict, actor=actor)
    return report


def manual_pin(rt: Runtime, model: str, version: int | None, *, actor: str, reason: str) -> TickReport:
    """Serve only `version` and pause automation for the model (None clears the pin)."""
    report = TickReport()
    with rt.lock:
        if version is not None:
            _known(rt, model, version, report)
        rt.store.evidence.add_manual_action(
            model=model, version=version or 0, action="pin" if version else "unpin", actor=actor, reason=reason
        )
        rt.store.lifecycle.set_pin(model, version)
        report.add("pinned" if version else "unpinned", model, version, actor=actor, reason=reason)
        try:
            reconciler.serve_now(rt, report, model)
        except TritonUnreachable as exc:
            report.fail(TritonUnreachable(f"recorded; Triton unreachable, the next tick converges: {exc}"))
    return report
