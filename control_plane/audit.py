"""Does the history tell the truth? Each version's last decision must match the state it is in.

Why: the decision path stores the judge's final decision in the same transaction as the state
change it causes (`events.enter`), so a history where a rejected version's last decision reads
"wait" means a state was changed behind the judge's back. The demo ends with this check and the
rollout tests run it on every database they leave.
"""

from __future__ import annotations

from control_plane.store import Store
from control_plane.store.models import State

# The last decision each state may follow (None: no decision yet).
EXPECTED: dict[State, frozenset[str | None]] = {
    State.discovered: frozenset({None}),
    State.preflight: frozenset({None, "wait"}),
    State.canary: frozenset({"promote", "wait"}),  # preflight passed, then the canary's own looks
    State.promoted: frozenset({"promote"}),
    State.rolled_back: frozenset({"rollback"}),
    State.rejected: frozenset({"reject"}),
    State.failed: frozenset({"fail"}),
}


def history_mismatches(store: Store) -> list[str]:
    """One line per version whose last decision does not match its state; empty when the history is consistent."""
    problems = []
    for row in store.read.history():
        state = State(row["state"])
        last = row["last_decision"]
        outcome = last["outcome"] if last else None
        if outcome not in EXPECTED[state]:
            problems.append(
                f"{row['model']} v{row['version']} is {state} but its last decision is {outcome!r}"
                f"{': ' + last['reason'] if last else ''}"
            )
    return problems
