"""Which state changes a version may make, and who may make them.

Why a table and not if-statements spread over the reconciler: the store refuses a wrong move at the
one place every move passes through, so a bug in a caller cannot write a history that never happened
(a rejected version suddenly promoted by the scheduler, say).
"""

from __future__ import annotations

from control_plane.store.models import State

SYSTEM_ACTOR = "shepherd"

AUTOMATIC: dict[State, frozenset[State]] = {
    State.discovered: frozenset({State.preflight, State.failed, State.rejected}),
    # promoted straight from preflight: the first version of a model has no stable one to canary against
    State.preflight: frozenset({State.canary, State.promoted, State.rejected, State.failed}),
    State.canary: frozenset({State.promoted, State.rolled_back, State.failed}),
    State.promoted: frozenset({State.rolled_back}),
    State.rolled_back: frozenset(),
    State.failed: frozenset(),
    State.rejected: frozenset(),
}

# Terminal for automation; a person may still pin or promote such a version.
MANUAL_EXTRA: dict[State, frozenset[State]] = {
    State.rolled_back: frozenset({State.canary, State.promoted}),
    State.failed: frozenset({State.canary, State.promoted}),
    State.rejected: frozenset({State.canary, State.promoted}),
}

TERMINAL = frozenset({State.rolled_back, State.failed, State.rejected})


def is_manual(actor: str) -> bool:
    return actor != SYSTEM_ACTOR


def allowed(source: State, target: State, *, actor: str) -> bool:
    """True when `actor` may move a version from `source` to `target`."""
    if target in AUTOMATIC[source]:
        return True
    return is_manual(actor) and target in MANUAL_EXTRA.get(source, frozenset())


def allowed_targets(source: State, *, actor: str) -> list[str]:
    """The states reachable from `source` by `actor`, sorted, for error messages."""
    targets = set(AUTOMATIC[source])
    if is_manual(actor):
        targets |= MANUAL_EXTRA.get(source, frozenset())
    return sorted(t.value for t in targets)
