"""Rollouts across a fleet of three real local Tritons: every replica converged, canary roles, repair.

The load balancer and Prometheus are not needed to show these (tests/test_fleet_traffic.py runs the
whole local fleet with client traffic); here each replica is a real `tritonserver` and shepherd
drives each one by its own address, as it does behind a Kubernetes Service.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from builders.repository import ModelRepository
from control_plane import reconciler
from control_plane.clock import utc_now
from control_plane.errors import TritonUnreachable
from control_plane.fleet import MetricsSource, Replica, fleet_file_text
from control_plane.live_metrics import live_metrics
from control_plane.local_triton import LocalTriton, free_ports
from control_plane.runtime import Runtime, open_runtime
from control_plane.serving import FRESH_PARAMETER
from control_plane.settings import load_settings
from control_plane.store import Store
from control_plane.store.models import State
from control_plane.triton_admin import TritonAdmin
from probes.load import LoadGenerator
from tests.classifier_models import golden_set, publish
from tests.conftest import HISTORIES
from tests.dns_server import DnsTestServer
from tests.test_cli_errors import fails_with, shepherd
from tests.test_control_plane import FAST_POLICY, QUICK_AA, state_of, tick_until

pytestmark = pytest.mark.triton


@pytest.fixture
def tritons(repo: ModelRepository, tmp_path: Path) -> Iterator[list[LocalTriton]]:
    servers = [LocalTriton(repo.root, state_dir=tmp_path / f"r{i}") for i in range(3)]
    try:
        for server in servers:
            server.__enter__()
        yield servers
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def replicas_of(tritons: list[LocalTriton]) -> list[Replica]:
    return [
        Replica(f"r{i}", t.state.grpc_url, f"127.0.0.1:{t.state.metrics_port}") for i, t in enumerate(tritons)
    ]


def fleet_runtime(tmp_path: Path, repo: ModelRepository, fleet_file: Path, policy: str = FAST_POLICY) -> Runtime:
    config = tmp_path / "shepherd.yaml"
    config.write_text(policy)
    settings = load_settings(
        config,
        overrides={"repo": repo.root, "db_url": f"sqlite:///{tmp_path / 'history.db'}", "fleet": fleet_file},
    )
    HISTORIES.append(settings.db_url)  # audited after the test (conftest.history_tells_the_truth)
    return open_runtime(settings)


@pytest.fixture
def rt(tritons: list[LocalTriton], repo: ModelRepository, tmp_path: Path) -> Iterator[Runtime]:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(fleet_file_text(replicas_of(tritons)))
    runtime = fleet_runtime(tmp_path, repo, fleet_file)
    yield runtime
    runtime.close()


def served(tritons: list[LocalTriton], model: str = "clf") -> list[set[int] | None]:
    """What each replica serves, read from each replica itself."""
    return served_at([t.state.grpc_url for t in tritons], model)


def served_at(addresses: list[str], model: str = "clf") -> list[set[int] | None]:
    """What each address serves; None for one that does not answer (yet)."""
    out: list[set[int] | None] = []
    for address in addresses:
        admin = TritonAdmin(address)
        try:
            out.append(admin.ready_versions(model))
        except TritonUnreachable:
            out.append(None)
        finally:
            admin.close()
    return out


def establish(rt: Runtime, repo: ModelRepository, tmp_path: Path, tritons: list[LocalTriton]) -> int:
    version = publish(repo, tmp_path / "build", "clf", "good")
    tick_until(rt, lambda: state_of(rt, "clf", version) == State.promoted)
    assert served(tritons) == [{version}] * 3  # every replica, not whichever one a connection reached
    return version


def test_identical_candidate_goes_canary_baseline_then_every_replica(
    rt: Runtime, repo: ModelRepository, tmp_path: Path, tritons: list[LocalTriton]
) -> None:
    stable = establish(rt, repo, tmp_path, tritons)
    same = publish(repo, tmp_path / "build", "clf", "same")
    actions = tick_until(rt, lambda: state_of(rt, "clf", same) == State.canary)
    # Step 0 on three replicas: one canary, one freshly reloaded baseline, one plain stable.
    assert served(tritons) == [{stable, same}, {stable}, {stable}]
    assert any(a["action"] == "reloaded" and a.get("replica") == "r1" for a in actions), actions
    # Really reloaded: Triton skips a load with an unchanged config, so the baseline's carries a fresh mark.
    configs = [grpcclient.InferenceServerClient(t.state.grpc_url).get_model_config("clf").config for t in tritons]
    assert [FRESH_PARAMETER in c.parameters for c in configs] == [False, True, False]
    rollout = rt.store.read.open_rollout("clf", same)
    assert rollout is not None
    (step,) = rt.store.fleet.steps(rollout.id)
    assert (step.strategy, step.roles) == ("canary", {"r0": "canary", "r1": "baseline", "r2": "stable"})
    assert step.share == pytest.approx(1 / 3)

    tick_until(rt, lambda: state_of(rt, "clf", same) == State.promoted, timeout=120)
    tick_until(rt, lambda: served(tritons) == [{same}] * 3)
    # The candidate was judged on its canary replica against the baseline replica, window by window.
    cand = rt.store.read.probe_windows("clf", same, role="candidate", rollout_id=rollout.id)
    base = rt.store.read.probe_windows("clf", stable, role="stable", rollout_id=rollout.id)
    assert cand and base
    assert all(set(w.raw["replicas"]) == {"r0"} and w.step == 0 for w in cand)
    assert all(set(w.raw["replicas"]) == {"r1"} and w.step == 0 for w in base)
    assert any(w.requests and w.p50_ms is not None for w in cand)  # r0's own counters, read per window


def test_slow_candidate_is_rolled_back_on_every_replica(
    rt: Runtime, repo: ModelRepository, tmp_path: Path, tritons: list[LocalTriton]
) -> None:
    stable = establish(rt, repo, tmp_path, tritons)
    slow = publish(repo, tmp_path / "build", "clf", "slow")
    tick_until(rt, lambda: state_of(rt, "clf", slow) == State.rolled_back, timeout=120)
    assert served(tritons) == [{stable}] * 3
    decision = rt.store.read.decisions("clf", slow)[-1]
    assert decision.outcome == "rollback" and "latency" in (decision.reason or "").lower()


def test_restarted_replica_is_repaired_and_a_dead_one_blocks_nobody(
    rt: Runtime, repo: ModelRepository, tmp_path: Path, tritons: list[LocalTriton]
) -> None:
    stable = establish(rt, repo, tmp_path, tritons)
    r2_grpc = tritons[2].state.grpc_url
    tritons[2].__exit__(None, None, None)  # r2 dies
    report = reconciler.tick(rt)
    assert report.exit_code == 16 and any(r2_grpc in str(e) for e in report.errors), report.errors
    health = rt.store.read.snapshot().replicas
    assert health["r2"].reachable is False and health["r0"].reachable and health["r1"].reachable
    # A new version still goes through on the two replicas left (blue-green: a canary needs three).
    same = publish(repo, tmp_path / "build", "clf", "same")
    tick_until(rt, lambda: state_of(rt, "clf", same) == State.promoted, timeout=240)  # blue-green A/A: a before/after comparison, slow on a loaded machine
    assert served(tritons[:2]) == [{same}] * 2
    rollout_steps = rt.store.fleet.steps(rt.store.read.decisions("clf", same)[-1].rollout_id or 0)
    assert rollout_steps[0].strategy == "bluegreen" and "3 reachable" in (rollout_steps[0].reason or "")
    # r2 comes back empty (explicit mode loads nothing): one pass serves it the stable version.
    tritons[2].__enter__()
    deadline = time.monotonic() + 20
    while served(tritons)[2] is None and time.monotonic() < deadline:
        time.sleep(0.2)  # its gRPC port may answer a moment after its HTTP readiness
    assert served(tritons)[2] == set()
    reconciler.tick(rt)
    assert served(tritons) == [{same}] * 3
    assert rt.store.read.snapshot().replicas["r2"].reachable
    assert stable not in served(tritons)[2]


def test_candidate_a_replica_cannot_load_fails_and_stable_keeps_serving_everywhere(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """r0 (the canary replica of step 0) has its own copy of the repository, without the candidate: the
    canary load is refused there, the version is failed, and every replica keeps serving stable."""
    own = tmp_path / "r0-repository"
    servers = [LocalTriton(own, state_dir=tmp_path / "r0")] + [
        LocalTriton(repo.root, state_dir=tmp_path / f"r{i}") for i in (1, 2)
    ]
    stable = publish(repo, tmp_path / "build", "clf", "good")
    shutil.copytree(repo.root, own)
    try:
        for server in servers:
            server.__enter__()
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(fleet_file_text(replicas_of(servers)))
        rt = fleet_runtime(tmp_path, repo, fleet_file)
        try:
            tick_until(rt, lambda: state_of(rt, "clf", stable) == State.promoted)
            candidate = publish(repo, tmp_path / "build", "clf", "same")
            tick_until(rt, lambda: state_of(rt, "clf", candidate) == State.failed)
            assert served(servers) == [{stable}] * 3
            record = rt.store.read.get_version("clf", candidate)
            assert record is not None and "could not load" in (record.reason or "")
        finally:
            rt.close()
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def test_dns_fleet_is_resolved_every_pass_through_a_real_dns_server(repo: ModelRepository, tmp_path: Path) -> None:
    """Three Tritons on 127.0.0.11-13 with the same ports, found through A records, as pods behind a
    headless Service; a replica whose record appears later is converged on the next pass."""
    first = LocalTriton(repo.root, state_dir=tmp_path / "r0", host="127.0.0.11")
    ports = first.ports
    servers = [first] + [
        LocalTriton(repo.root, state_dir=tmp_path / f"r{i}", host=f"127.0.0.{11 + i}", ports=ports) for i in (1, 2)
    ]
    version = publish(repo, tmp_path / "build", "clf", "good")
    with DnsTestServer() as dns:
        dns.set("triton.fleet.test", ["127.0.0.11", "127.0.0.12"])
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(
            f"dns: {{name: triton.fleet.test, grpc_port: {ports.grpc}, metrics_port: {ports.metrics}, "
            f"nameserver: '{dns.nameserver}'}}\n"
        )
        try:
            for server in servers:
                server.__enter__()
            rt = fleet_runtime(tmp_path, repo, fleet_file)
            try:
                tick_until(rt, lambda: state_of(rt, "clf", version) == State.promoted)
                assert served(servers) == [{version}, {version}, set()]  # the third has no record yet
                dns.set("triton.fleet.test", ["127.0.0.11", "127.0.0.12", "127.0.0.13"])
                reconciler.tick(rt)
                assert served(servers) == [{version}] * 3
                assert set(rt.store.read.snapshot().replicas) == {"127.0.0.11", "127.0.0.12", "127.0.0.13"}
                dns.set("triton.fleet.test", [])
                report = reconciler.tick(rt)
                assert report.exit_code == 61 and any("no A or AAAA record" in str(e) for e in report.errors)
                assert served(servers) == [{version}] * 3  # nothing is unloaded when the fleet cannot be seen
            finally:
                rt.close()
        finally:
            for server in servers:
                server.__exit__(None, None, None)


@pytest.mark.parametrize("source", ["direct", "prometheus"])
def test_live_metrics_that_cannot_be_read_never_promote(
    source: str, repo: ModelRepository, tmp_path: Path, triton: LocalTriton
) -> None:
    """An identical candidate whose live figures cannot be read (its metrics endpoint, or Prometheus,
    is down) is never promoted on its probes alone: it waits, and its time limit rolls it back."""
    closed = f"127.0.0.1:{free_ports(1)[0]}"
    replica = Replica("r0", triton.state.grpc_url, closed if source == "direct" else f"127.0.0.1:{triton.state.metrics_port}")
    fleet_file = tmp_path / "fleet.yaml"
    metrics = MetricsSource("prometheus", f"http://{closed}", min_window_s=1.0) if source == "prometheus" else None
    fleet_file.write_text(fleet_file_text([replica], metrics=metrics))
    rt = fleet_runtime(tmp_path, repo, fleet_file, policy=FAST_POLICY + "  max_canary_seconds: 12\n")
    try:
        stable = publish(repo, tmp_path / "build", "clf", "good")
        tick_until(rt, lambda: state_of(rt, "clf", stable) == State.promoted)
        same = publish(repo, tmp_path / "build", "clf", "same")
        actions = tick_until(rt, lambda: state_of(rt, "clf", same) in (State.promoted, State.rolled_back), timeout=90)
        assert state_of(rt, "clf", same) == State.rolled_back, actions
        decision = rt.store.read.decisions("clf", same)[-1]
        assert "no live figures from replica(s) r0" in (decision.reason or ""), decision.reason
        live = next(c for c in decision.checks["checks"] if c["name"] == "live metrics")
        assert live["status"] == "insufficient"
    finally:
        rt.close()


def test_tick_with_a_fleet_file_converges_every_replica_and_reports_a_dead_one(
    tritons: list[LocalTriton], repo: ModelRepository, tmp_path: Path
) -> None:
    """`shepherd tick --fleet FILE` (as a CronJob runs it): the first version on every replica; a fleet
    file naming a replica that does not answer exits 16 naming it, after converging the others."""
    version = publish(repo, tmp_path / "build", "clf", "good")
    fleet_file = tmp_path / "fleet.yaml"
    dead = Replica("r3", f"127.0.0.1:{free_ports(1)[0]}", f"127.0.0.1:{free_ports(1)[0]}")
    fleet_file.write_text(fleet_file_text([*replicas_of(tritons), dead]))
    where = ["--repo", str(repo.root), "--db", f"sqlite:///{tmp_path / 'cli.db'}", "--fleet", str(fleet_file)]
    HISTORIES.append(f"sqlite:///{tmp_path / 'cli.db'}")
    for _ in range(3):
        run = shepherd(tmp_path, "tick", *where)
    fails_with(run, 16, dead.grpc)
    assert served(tritons) == [{version}] * 3
    listing = shepherd(tmp_path, "tick", "--json", *where)
    assert listing.returncode == 16 and '"replica down"' not in listing.stdout  # recorded once, when it changed


def test_canary_widens_step_by_step_on_four_replicas(repo: ModelRepository, tmp_path: Path) -> None:
    """canary_steps [1, "50%"] on four replicas: one canary beside one baseline, judged; then two beside
    two (the next step's roles recorded and served), judged again; then every replica."""
    servers = [LocalTriton(repo.root, state_dir=tmp_path / f"r{i}") for i in range(4)]
    try:
        for server in servers:
            server.__enter__()
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(fleet_file_text(replicas_of(servers)))
        rt = fleet_runtime(tmp_path, repo, fleet_file, policy=FAST_POLICY + QUICK_AA)
        try:
            stable = publish(repo, tmp_path / "build", "clf", "good")
            tick_until(rt, lambda: state_of(rt, "clf", stable) == State.promoted)
            same = publish(repo, tmp_path / "build", "clf", "same")
            tick_until(rt, lambda: state_of(rt, "clf", same) == State.canary)
            assert served(servers) == [{stable, same}, {stable}, {stable}, {stable}]
            rollout = rt.store.read.open_rollout("clf", same)
            assert rollout is not None
            tick_until(rt, lambda: len(rt.store.fleet.steps(rollout.id)) == 2, timeout=120)
            assert served(servers) == [{stable, same}, {stable, same}, {stable}, {stable}]
            first, second = rt.store.fleet.steps(rollout.id)
            assert first.roles == {"r0": "canary", "r1": "baseline", "r2": "stable", "r3": "stable"}
            assert second.roles == {"r0": "canary", "r1": "canary", "r2": "baseline", "r3": "baseline"}
            assert second.share == 0.5 and "step 2 of 2" in (second.reason or "")
            widened = [d for d in rt.store.read.decisions("clf", same) if "widening" in (d.reason or "")]
            assert len(widened) == 1  # the first step was judged and passed
            tick_until(rt, lambda: state_of(rt, "clf", same) == State.promoted, timeout=120)
            tick_until(rt, lambda: served(servers) == [{same}] * 4)
            second_windows = rt.store.read.probe_windows("clf", same, role="candidate", rollout_id=rollout.id, step=1)
            assert second_windows and all(set(w.raw["replicas"]) == {"r0", "r1"} for w in second_windows)
        finally:
            rt.close()
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def test_direct_windows_continue_from_the_mark_another_process_stored(
    repo: ModelRepository, tmp_path: Path, triton: LocalTriton
) -> None:
    """A CronJob's `shepherd tick` is a new process each time: the window it reads starts at the
    counters the previous process stored in SQL, so every client request in between is counted once."""
    version = publish(repo, tmp_path / "build", "clf", "good")
    admin = TritonAdmin(triton.state.grpc_url)
    admin.load_versions("clf", repo.read_config("clf"), [version])
    admin.close()
    replica = Replica("r0", triton.state.grpc_url, f"127.0.0.1:{triton.state.metrics_port}")
    db = f"sqlite:///{tmp_path / 'marks.db'}"
    with Store.open(db) as store:
        assert live_metrics(MetricsSource(), store, timeout_s=5).mark("clf", [replica]) == ()
    x, _ = golden_set()
    with LoadGenerator(triton.state.grpc_url, "clf", {"x": x[:4]}, concurrency=1, max_requests=37) as clients:
        sent = clients.wait(60)
    with Store.open(db) as store:  # another process: nothing but SQL carries the start of the window
        window = live_metrics(MetricsSource(), store, timeout_s=5).window("clf", [replica], since=utc_now())
        again = live_metrics(MetricsSource(), store, timeout_s=5).window("clf", [replica], since=utc_now())
    assert sent.requests == 37 and window.missing == ()
    stats = window.of("r0", version)
    assert stats is not None and stats.requests == 37 and stats.failures == 0
    later = again.of("r0", version)
    assert later is not None and later.requests == 0  # nothing counted twice


def test_a_replica_with_no_mark_is_missing_once_then_counted(
    repo: ModelRepository, tmp_path: Path, triton: LocalTriton
) -> None:
    """Without a stored start (its metrics were down when the rollout marked it, or it just joined)
    a window cannot be read: missing, never a window of no traffic; but it starts then, so the next
    window counts it (before, it stayed missing for good and its canary was rolled back for it)."""
    version = publish(repo, tmp_path / "build", "clf", "good")
    admin = TritonAdmin(triton.state.grpc_url)
    admin.load_versions("clf", repo.read_config("clf"), [version])
    admin.close()
    replica = Replica("r0", triton.state.grpc_url, f"127.0.0.1:{triton.state.metrics_port}")
    x, _ = golden_set()
    with Store.open(f"sqlite:///{tmp_path / 'marks.db'}") as store:
        live = live_metrics(MetricsSource(), store, timeout_s=5)
        first = live.window("clf", [replica], since=utc_now())
        with LoadGenerator(triton.state.grpc_url, "clf", {"x": x[:4]}, concurrency=1, max_requests=11) as clients:
            sent = clients.wait(60)
        second = live.window("clf", [replica], since=utc_now())
    assert first.missing == ("r0",) and first.of("r0", version) is None
    stats = second.of("r0", version)
    assert sent.requests == 11 and second.missing == () and stats is not None and stats.requests == 11
