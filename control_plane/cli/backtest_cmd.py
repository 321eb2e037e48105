"""`shepherd backtest`: replay the stored windows of past rollouts through a policy (control_plane/backtest.py).

Only reads the history. Without `--policy`, each rollout is replayed with the policy it ran with
(as stored beside its decisions); with `--policy FILE` (a `shepherd.yaml`: its `defaults:` and
`models:`), with the policy that file gives its model. This is how a policy is tuned before it is
changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from control_plane.backtest import backtest as run_backtest
from control_plane.cli.history_cmd import Db, Json, Model, _duration, open_store, parse_since
from control_plane.cli.output import console, print_json, print_table
from control_plane.settings import load_settings
from control_plane.store.database import DEFAULT_URL, mask_url

PolicyFile = Annotated[
    Path | None,
    typer.Option("--policy", help="A shepherd.yaml whose policies to replay (default: each rollout's own)."),
]
Since = Annotated[
    str | None,
    typer.Option("--since", help="Only rollouts started since: 30m, 12h, 7d, 2w, or a date (2026-11-01)."),
]


def backtest(
    db: Db = None, policy: PolicyFile = None, model: Model = None, since: Since = None, as_json: Json = False
) -> None:
    """Per past rollout: what happened, and what the policy would have decided and when."""
    after = parse_since(since) if since else None
    settings = load_settings(policy, env={}) if policy is not None else None
    store = open_store(db)
    try:
        replays = run_backtest(
            store, policy_for=settings.policy_for if settings is not None else None, model=model, since=after
        )
    finally:
        store.close()
    if as_json:
        print_json({"policy": str(policy) if policy else "stored", "rollouts": [r.as_dict() for r in replays]})
        return
    if not replays:
        console.print(f"no rollouts recorded in {mask_url(db or DEFAULT_URL)}")
        return
    print_table(
        f"shepherd backtest ({'policy of ' + str(policy) if policy else 'each rollout with its own stored policy'})",
        ["rollout", "model", "candidate", "happened", "after", "would", "after", "step", "windows", "why (replay)"],
        [
            (
                r.rollout.id,
                r.rollout.model,
                f"v{r.rollout.candidate} vs v{r.rollout.stable}",
                r.happened,
                _duration(r.happened_seconds),
                r.would + ("" if r.agrees or r.happened == "open" else " (differs)"),
                _duration(r.would_seconds),
                "" if r.would_step is None else r.would_step + 1,
                f"{r.looks}/{r.windows}",
                r.would_reason[:160],
            )
            for r in replays
        ],
    )
    same = sum(r.agrees for r in replays)
    console.print(f"{same} of {len(replays)} rollouts decided the same way by the replayed policy")
