"""The whole local fleet: three real Tritons behind a real HAProxy, a real Prometheus, client traffic.

What a team sees on its own fleet: a candidate on one replica of three takes about a third of the
client requests through the load balancer, an identical candidate is judged against an equally
loaded baseline replica (live figures read through Prometheus) and promoted under load, and no
client request fails on the way; a baseline replica that dies mid-step stops the judge from
passing anything until it is back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from builders.repository import ModelRepository
from control_plane.local_fleet import LocalFleet
from control_plane.store.models import State
from probes.load import LoadGenerator
from tests.classifier_models import golden_set, publish
from tests.test_control_plane import FAST_POLICY, state_of, tick_until
from tests.test_fleet_rollout import fleet_runtime, served_at

pytestmark = pytest.mark.triton


def test_aa_canary_under_client_load_takes_a_third_and_is_promoted(repo: ModelRepository, tmp_path: Path) -> None:
    x, _ = golden_set()
    with LocalFleet(repo.root, replicas=3, state_dir=tmp_path / "fleet") as fleet:
        rt = fleet_runtime(tmp_path, repo, fleet.fleet_file)
        try:
            assert rt.settings.metrics.source == "prometheus"  # the fleet file names the fleet's Prometheus
            stable = publish(repo, tmp_path / "build", "clf", "good")
            tick_until(rt, lambda: state_of(rt, "clf", stable) == State.promoted)
            with LoadGenerator(fleet.grpc_url, "clf", {"x": x[:8]}, concurrency=2, pause_s=0.01, max_seconds=240) as clients:
                same = publish(repo, tmp_path / "build", "clf", "same")
                tick_until(rt, lambda: state_of(rt, "clf", same) == State.canary)
                before = clients.report()
                time.sleep(4)
                during = clients.report()
                answered = during.requests - before.requests
                by_candidate = during.served_by.get(str(same), 0) - before.served_by.get(str(same), 0)
                share = by_candidate / max(1, answered)
                assert 0.2 < share < 0.47, (share, answered)  # one replica of three: k/N = 1/3
                tick_until(rt, lambda: state_of(rt, "clf", same) == State.promoted, timeout=150)
                tick_until(rt, lambda: served_at([r.grpc for r in fleet.replicas]) == [{same}] * 3)
                time.sleep(1)
                report = clients.report()
            assert report.failures == 0, report.failure_messages
            assert report.served_by.get(str(same), 0) > 0 and report.served_by.get(str(stable), 0) > 0
            rollout_id = rt.store.read.decisions("clf", same)[-1].rollout_id
            assert rollout_id is not None
            windows = rt.store.read.probe_windows("clf", same, role="candidate", rollout_id=rollout_id)
            live = [w.raw["replicas"]["r0"] for w in windows if w.raw["replicas"].get("r0")]
            # Prometheus' per-instance windows count the clients' requests, not only the probes'.
            assert live and sum(s["requests"] for s in live) > sum((w.requests or 0) for w in windows)
        finally:
            rt.close()


def test_baseline_replica_dying_mid_step_is_never_a_pass(repo: ModelRepository, tmp_path: Path) -> None:
    policy = FAST_POLICY + "  max_canary_seconds: 20\n"
    with LocalFleet(repo.root, replicas=3, state_dir=tmp_path / "fleet") as fleet:
        rt = fleet_runtime(tmp_path, repo, fleet.fleet_file, policy=policy)
        try:
            stable = publish(repo, tmp_path / "build", "clf", "good")
            tick_until(rt, lambda: state_of(rt, "clf", stable) == State.promoted)
            same = publish(repo, tmp_path / "build", "clf", "same")
            tick_until(rt, lambda: state_of(rt, "clf", same) == State.canary)
            fleet.kill("r1")  # the baseline replica
            actions = tick_until(rt, lambda: state_of(rt, "clf", same) != State.canary, timeout=60)
            assert state_of(rt, "clf", same) == State.rolled_back, actions
            decision = rt.store.read.decisions("clf", same)[-1]
            assert "r1" in (decision.reason or ""), decision.reason
            waits = [d for d in rt.store.read.decisions("clf", same) if d.outcome == "wait"]
            assert waits and all(d.outcome != "promote" for d in waits)
            fleet.restart("r1")
            tick_until(rt, lambda: served_at([r.grpc for r in fleet.replicas]) == [{stable}] * 3)  # repaired in one pass
        finally:
            rt.close()
