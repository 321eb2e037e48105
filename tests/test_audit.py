"""The history audit finds a version whose last decision disagrees with its state, and passes a true one."""

from __future__ import annotations

from pathlib import Path

from control_plane.audit import history_mismatches
from control_plane.store import Store
from control_plane.store.models import State
from control_plane.store.records import Decision


def _decision(outcome: str) -> Decision:
    return Decision(outcome=outcome, reason=f"{outcome} for the test", checks=[], policy={})


def test_audit_flags_a_state_changed_behind_the_judge(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'h.db'}") as store:
        store.lifecycle.record_version("m", 1, manifest={}, kind="custom")
        store.lifecycle.transition("m", 1, State.preflight, reason="next candidate")
        assert history_mismatches(store) == []
        store.evidence.add_decision("m", 1, _decision("wait"))
        store.lifecycle.transition("m", 1, State.rejected, reason="rejected with no decision")
        problems = history_mismatches(store)
        assert problems == ["m v1 is rejected but its last decision is 'wait': wait for the test"]


def test_audit_accepts_decisions_stored_with_their_transition(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'h.db'}") as store:
        store.lifecycle.record_version("m", 1, manifest={}, kind="custom")
        store.lifecycle.transition("m", 1, State.preflight, reason="next candidate")
        store.lifecycle.transition("m", 1, State.promoted, reason="first version", decision=_decision("promote"))
        store.lifecycle.record_version("m", 2, manifest={}, kind="custom")
        store.lifecycle.transition("m", 2, State.failed, reason="could not load", decision=_decision("fail"))
        assert history_mismatches(store) == []
