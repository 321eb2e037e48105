"""`shepherd backtest`: past rollouts replayed through a policy, on stored windows.

The first tests write rollouts into a real SQLite store by hand (fast, every branch); the last one
replays the database a real rollout on the local Triton filled (the flow of
tests/test_control_plane.py), through the CLI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from builders.repository import ModelRepository
from control_plane.backtest import PROMOTE, ROLLBACK, UNDECIDED, backtest
from control_plane.local_triton import LocalTriton
from control_plane.policy import Policy
from control_plane.store import Store
from control_plane.store.models import State
from control_plane.store.records import Decision
from tests.classifier_models import publish
from tests.test_cli_errors import shepherd
from tests.test_control_plane import establish_stable, make_runtime, state_of, tick_until

START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


def _store_rollout(store: Store, clock: Clock, candidate: int, *, slower: float, windows: int, seed: int) -> int:
    """A canary of `candidate` against v1 on r0/r1 with `windows` probe windows of 16 samples each."""
    rng = np.random.default_rng(seed)
    store.lifecycle.record_version("m", candidate, manifest={"model": "m", "version": candidate}, kind="classifier")
    rollout = store.lifecycle.start_rollout("m", candidate, 1)
    store.fleet.add_step(
        rollout,
        0,
        strategy="canary",
        share=1 / 3,
        roles={"r0": "canary", "r1": "baseline", "r2": "stable"},
        reason="step 1 of 1",
    )
    rows = {"metric": "accuracy", "values": [1.0] * 200}
    step_start = clock.at
    for i in range(windows):
        begin, end = step_start + timedelta(seconds=2 * i), step_start + timedelta(seconds=2 * i + 2)
        drift = rng.lognormal(0, 0.3)
        for version, role, factor in ((candidate, "candidate", slower), (1, "stable", 1.0)):
            samples = (5 * drift * factor * rng.lognormal(0, 0.1) * rng.lognormal(0, 0.4, 16)).tolist()
            raw = {"live_missing": [], "live_deferred": False} | ({"quality_rows": rows} if i == 0 else {})
            store.evidence.add_probe_window(
                "m", version, role=role, rollout_id=rollout, started_at=begin, ended_at=end,
                figures={"requests": 16, "errors": 0, "samples": samples, "quality": 1.0, "step": 0,
                         "agreement": 1.0 if role == "candidate" else None, "raw": raw},
            )  # fmt: skip
    clock.at = step_start + timedelta(seconds=2 * windows)
    store.evidence.add_decision(
        "m",
        candidate,
        Decision(outcome="wait", reason="stored by the test", checks={}, policy=Policy().as_dict(), rollout_id=rollout),
    )
    store.lifecycle.end_rollout(rollout, outcome="rolled_back" if slower > 1 else "promoted")
    clock.at += timedelta(minutes=5)
    return rollout


@pytest.fixture
def store(tmp_path: Path) -> Store:
    clock = Clock()
    opened = Store.open(f"sqlite:///{tmp_path / 'history.db'}", clock=clock)
    opened.lifecycle.record_version("m", 1, manifest={"model": "m", "version": 1}, kind="classifier")
    _store_rollout(opened, clock, 2, slower=1.0, windows=200, seed=1)
    _store_rollout(opened, clock, 3, slower=1.6, windows=40, seed=2)
    _store_rollout(opened, clock, 4, slower=1.0, windows=20, seed=3)  # stopped early: too few windows to decide
    return opened


def test_each_rollout_is_replayed_with_what_happened_beside_it(store: Store) -> None:
    replays = {r.rollout.candidate: r for r in backtest(store)}
    assert replays[2].happened == "promoted" and replays[2].would == PROMOTE and replays[2].agrees
    assert replays[2].would_seconds is not None and replays[2].would_seconds >= Policy().bake_seconds
    assert replays[3].happened == "rolled_back" and replays[3].would == ROLLBACK and replays[3].agrees
    assert replays[3].would_seconds is not None and replays[3].would_seconds <= 60
    assert "latency regressed" in replays[3].would_reason
    assert replays[4].would == UNDECIDED and "20 stored windows" in replays[4].would_reason
    assert replays[4].looks == 20 and not replays[4].agrees
    store.close()


def test_another_policy_decides_differently_and_says_when(store: Store) -> None:
    loose = backtest(store, policy_for=lambda model: Policy(max_latency_increase=1.0, max_tail_latency_increase=1.0))
    by = {r.rollout.candidate: r for r in loose}
    assert by[3].would != ROLLBACK  # 1.6x is inside a 100 % margin
    strict = backtest(store, policy_for=lambda model: Policy(breaker_latency_ratio=1.3), model="m")
    assert {r.rollout.candidate: r.would for r in strict}[3] == ROLLBACK
    assert backtest(store, since=START + timedelta(days=1)) == []
    store.close()


@pytest.mark.triton
def test_backtest_cli_on_the_database_of_real_rollouts(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    rt = make_runtime(repo, triton, tmp_path)
    try:
        establish_stable(rt, repo, tmp_path)
        slow = publish(repo, tmp_path / "build", "clf", "slow")
        tick_until(rt, lambda: state_of(rt, "clf", slow) == State.rolled_back)
    finally:
        rt.close()
    db = ["--db", f"sqlite:///{tmp_path / 'history.db'}"]
    run = shepherd(tmp_path, "backtest", *db, "--json")
    assert run.returncode == 0, run.stderr
    (replay,) = json.loads(run.stdout)["rollouts"]
    assert replay["happened"] == "rolled_back" and replay["would"] == ROLLBACK and replay["agrees"]
    assert replay["rollout"]["candidate"] == slow and replay["looks"] >= 1
    loose = tmp_path / "loose.yaml"
    loose.write_text(
        "defaults:\n  max_latency_increase: 50\n  max_tail_latency_increase: 50\n  breaker_latency_ratio: 100\n"
    )
    table = shepherd(tmp_path, "backtest", *db, "--policy", str(loose), "--model", "clf", "--since", "1d")
    assert table.returncode == 0, table.stderr
    assert "rolled_back" in table.stdout and "(differs)" in table.stdout
