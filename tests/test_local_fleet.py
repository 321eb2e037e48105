"""The local fleet: three real tritonservers behind a real HAProxy, scraped by a real Prometheus.

What is shown here, against the real processes (nothing mocked):
- `shepherd fleet up` starts it and writes a fleet file that `read_fleet_file` reads back; one
  gRPC client through HAProxy is balanced per request over all three replicas (each replica's own
  counters say so); a version loaded on one replica answers about a third of the requests;
  Prometheus has the same counters per instance and version; `fleet status --json` shows each
  replica's versions; `fleet down` leaves no process (servers, Python stubs, HAProxy, Prometheus);
- a replica killed with SIGKILL under client load costs the client at most a few requests,
  HAProxy takes it out, and `restart` brings it back on the same ports;
- a missing tool, a part that dies during start, and no fleet at all each end with their exit code
  and one line, and a failed start leaves nothing running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from builders.repository import ModelRepository
from control_plane.errors import FleetNotRunning, FleetStartFailed, FleetToolMissing
from control_plane.fleet import Replica, StaticFleet, read_fleet_file
from control_plane.local_fleet import LocalFleet
from control_plane.local_triton import group_processes, port_is_free
from control_plane.triton_admin import GRPC_API_KEY_HEADER, override_json
from tests.conftest import publish_scale

pytestmark = pytest.mark.triton

KEY_ENV = "SHEPHERD_TEST_FLEET_KEY"
KEY = "fleet-test-key-0123456789"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """`scale` version 1 answers x * 1, version 2 answers x * 2: every answer names its version."""
    root = tmp_path_factory.mktemp("fleet-repo")
    repository = ModelRepository(root / "model_repository")
    repository.root.mkdir()
    publish_scale(repository, root, "scale", 1.0)
    publish_scale(repository, root, "scale", 2.0)
    return repository


def shepherd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control_plane.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def load(replica: Replica, repo: ModelRepository, versions: list[int], key: str | None = None) -> None:
    """Load exactly `versions` of `scale` on one replica, addressed directly (the override the control plane sends)."""
    client = grpcclient.InferenceServerClient(replica.grpc)
    headers = {GRPC_API_KEY_HEADER: key} if key else None
    client.load_model("scale", config=override_json(repo.read_config("scale"), versions), headers=headers)


def load_everywhere(replicas: tuple[Replica, ...], repo: ModelRepository, key: str | None = None) -> None:
    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(lambda r: load(r, repo, [1], key), replicas))


def infer(client: grpcclient.InferenceServerClient) -> float:
    """One unversioned request; the factor of the version that answered it."""
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return float(client.infer("scale", [tensor]).as_numpy("y")[0, 0])


def send(address: str, count: int) -> tuple[Counter[float], list[str]]:
    """`count` sequential requests from one client (one channel): answers by factor, and the failures."""
    client = grpcclient.InferenceServerClient(address)
    answers: Counter[float] = Counter()
    failures: list[str] = []
    for _ in range(count):
        try:
            answers[infer(client)] += 1
        except Exception as exc:
            failures.append(str(exc)[:200])
    return answers, failures


def successes(replica: Replica) -> dict[str, float]:
    """The replica's own `nv_inference_request_success` for `scale`, per version."""
    text = requests.get(replica.metrics_url, timeout=5).text
    return {
        s.labels["version"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if family.name == "nv_inference_request_success" and s.labels.get("model") == "scale"
    }


def settled(replicas: tuple[Replica, ...], total: float) -> dict[str, dict[str, float]]:
    """Each replica's counters once they add up to `total` (Triton counts a request just after answering it)."""
    deadline = time.monotonic() + 5
    while True:
        counts = {r.name: successes(r) for r in replicas}
        if sum(v for c in counts.values() for v in c.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def promql(url: str, query: str) -> list[dict]:
    response = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


def processes_of(path: Path) -> list[int]:
    """Live processes whose command line names a path under `path` (servers, stubs, HAProxy, Prometheus)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(path).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_cli_fleet_balances_per_request_serves_a_canary_on_one_replica_and_stops(
    repo: ModelRepository, tmp_path: Path
) -> None:
    state_dir = tmp_path / "fleet"
    key_env = {KEY_ENV: KEY}
    started = shepherd(
        "fleet", "up", "--repo", str(repo.root), "--replicas", "3", "--state-dir", str(state_dir),
        "--api-key-env", KEY_ENV, "--json", env=key_env,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    summary = json.loads(started.stdout)
    try:
        fleet_file = read_fleet_file(Path(summary["fleet_file"]))
        assert isinstance(fleet_file.fleet, StaticFleet)
        replicas = fleet_file.fleet.replicas
        assert [r.name for r in replicas] == ["r0", "r1", "r2"]
        assert fleet_file.metrics is not None and fleet_file.metrics.source == "prometheus"
        assert fleet_file.metrics.url == summary["prometheus"]
        balancer = fleet_file.load_balancer["grpc"]
        assert balancer == summary["load_balancer"]["grpc"] and "http" in fleet_file.load_balancer
        assert all(a.startswith("127.0.0.1:") for r in replicas for a in (r.grpc, r.metrics))
        for text in (started.stdout, started.stderr, Path(summary["fleet_file"]).read_text(),
                     (state_dir / "fleet.json").read_text()):  # fmt: skip
            assert KEY not in text

        # Stable everywhere: 300 unversioned requests through HAProxy, a third to each replica.
        load_everywhere(replicas, repo, KEY)
        answers, failures = send(balancer, 300)
        assert failures == [] and answers == {1.0: 300}
        counts = settled(replicas, 300)
        for name, per_version in counts.items():
            assert 70 <= per_version.get("1", 0) <= 130, (name, counts)

        # The candidate on r0 only: about a third of the requests reach it, all of them through r0.
        load(replicas[0], repo, [2], KEY)
        answers, failures = send(balancer, 300)
        assert failures == [] and sum(answers.values()) == 300
        assert 70 <= answers[2.0] <= 130, answers
        counts = settled(replicas, 600)
        assert counts["r0"].get("2") == answers[2.0] and "2" not in counts["r1"] and "2" not in counts["r2"]

        # Prometheus has the same counters, per instance (= each replica's metrics address) and version.
        expected = {(r.metrics_instance, v): n for r in replicas for v, n in counts[r.name].items()}
        query = 'sum by (instance, version) (nv_inference_request_success{model="scale"})'
        deadline = time.monotonic() + 10
        while True:
            seen = {(s["metric"]["instance"], s["metric"]["version"]): float(s["value"][1])
                    for s in promql(summary["prometheus"], query)}  # fmt: skip
            if seen == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen == expected
        assert {instance for instance, _ in seen} == {r.metrics_instance for r in replicas}

        # Status asks each replica directly: r0 serves version 2, the others version 1.
        status = shepherd("fleet", "status", "--state-dir", str(state_dir), "--api-key-env", KEY_ENV, "--json",
                          env=key_env)  # fmt: skip
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["haproxy_up"] and report["prometheus_up"]
        assert report["targets_up"] == {r.metrics_instance: True for r in replicas}
        by_name = {r["name"]: r for r in report["replicas"]}
        assert by_name["r0"]["models"] == {"scale": ["2"]}
        assert by_name["r1"]["models"] == by_name["r2"]["models"] == {"scale": ["1"]}
        assert all(r["live"] and r["ready"] and r["balancer"] == {"grpc": "UP", "http": "UP"} for r in by_name.values())
        # Each replica's readiness check (what HAProxy asks): ready, failing open (shepherd wrote no manifest here).
        assert all(
            r["readiness"]["ready"] is True and "fail-open" in r["readiness"]["reason"] for r in by_name.values()
        )
        keyless = json.loads(shepherd("fleet", "status", "--state-dir", str(state_dir), "--json").stdout)
        assert all(r["models"] == {} and "key" in r["error"] for r in keyless["replicas"])  # the index wants the key

        groups = [r[pid] for r in summary["replicas"] for pid in ("pid", "readiness_pid")]
        groups += [summary["haproxy_pid"], summary["prometheus_pid"]]
        stubs = [p for r in summary["replicas"] for p in group_processes(r["pid"]) if p != r["pid"]]
        assert len(stubs) >= 3, "each replica runs its Python stubs in its own process group"
    finally:
        stopped = shepherd("fleet", "down", "--state-dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert all(group_processes(pgid) == [] for pgid in groups)
    assert processes_of(state_dir) == []
    ports = [int(a.rsplit(":", 1)[1]) for r in summary["replicas"] for a in (r["grpc"], r["http"], r["metrics"])]
    assert all(port_is_free(p) for p in ports)
    for command in ("status", "down"):
        gone = shepherd("fleet", command, "--state-dir", str(state_dir))
        assert gone.returncode == FleetNotRunning.exit_code, gone.stderr
        assert gone.stderr.count("\n") == 1 and "no local fleet" in gone.stderr


@pytest.fixture
def fleet(repo: ModelRepository, tmp_path: Path) -> Iterator[LocalFleet]:
    with LocalFleet(repo.root, replicas=3, state_dir=tmp_path / "fleet") as running:
        load_everywhere(running.replicas, repo)
        yield running
    assert processes_of(tmp_path / "fleet") == []


class Load:
    """One client sending requests through the load balancer in a loop, counting answers and failures."""

    def __init__(self, address: str) -> None:
        self.client = grpcclient.InferenceServerClient(address)
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                infer(self.client)
                self.ok += 1
            except Exception as exc:
                self.failures.append(str(exc)[:200])

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_replica_killed_under_load_costs_at_most_a_few_requests_and_comes_back(
    fleet: LocalFleet, repo: ModelRepository
) -> None:
    victim = fleet.replica("r2")
    with Load(fleet.grpc_url) as traffic:
        time.sleep(1.0)
        before = traffic.ok
        fleet.kill("r2")
        assert group_processes(victim.pid) == [], "the server and its stubs die together"
        assert fleet.wait_balancer("r2", up=False, timeout=5), fleet.balancer_view()
        at_kill = traffic.ok
        time.sleep(1.0)
    assert before > 50 and traffic.ok - at_kill > 50, "the load went on through the other replicas"
    assert len(traffic.failures) <= 3, traffic.failures  # retries and redispatch hide nearly all
    report = fleet.status()
    r2 = next(r for r in report.replicas if r.name == "r2")
    assert not r2.running and not r2.live and r2.error == "not running"

    fleet.restart("r2")
    restarted = fleet.replica("r2")
    assert restarted.pid != victim.pid and restarted.ports == victim.ports
    load(restarted.replica, repo, [1])  # explicit mode: a restarted replica serves nothing until loaded
    assert fleet.wait_balancer("r2", up=True, timeout=10), fleet.balancer_view()
    answers, failures = send(fleet.grpc_url, 90)
    assert failures == [] and answers == {1.0: 90}
    assert settled((restarted.replica,), 20)[restarted.name].get("1", 0) >= 20  # r2 takes its share again


def broken_path(tmp_path: Path, *, haproxy: bool, prometheus: str | None) -> str:
    """A PATH with the real haproxy (or none) and the real prometheus, a broken one, or none."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if haproxy:
        (folder / "haproxy").symlink_to("/usr/sbin/haproxy")
    if prometheus == "real":
        (folder / "prometheus").symlink_to("/usr/bin/prometheus")
    elif prometheus == "dies":  # a broken install: starts, says why, exits
        script = folder / "prometheus"
        script.write_text("#!/bin/sh\necho 'level=error msg=\"Error opening storage: broken install\"'\nexit 1\n")
        script.chmod(0o755)
    return str(folder)


def test_missing_haproxy_is_one_line_and_starts_nothing(repo: ModelRepository, tmp_path: Path) -> None:
    state_dir = tmp_path / "fleet"
    result = shepherd(
        "fleet", "up", "--repo", str(repo.root), "--state-dir", str(state_dir),
        env={"PATH": broken_path(tmp_path, haproxy=False, prometheus="real")},
    )  # fmt: skip
    assert result.returncode == FleetToolMissing.exit_code, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: haproxy not found")
    assert "apt-get install -y haproxy prometheus" in result.stderr and "make system-deps" in result.stderr
    assert processes_of(state_dir) == [] and not (state_dir / "fleet.json").exists()


def test_a_part_dying_during_start_stops_everything_started(repo: ModelRepository, tmp_path: Path) -> None:
    state_dir = tmp_path / "fleet"
    result = shepherd(
        "fleet", "up", "--repo", str(repo.root), "--replicas", "2", "--state-dir", str(state_dir),
        env={"PATH": broken_path(tmp_path, haproxy=True, prometheus="dies")},
    )  # fmt: skip
    assert result.returncode == FleetStartFailed.exit_code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr  # after the progress
    assert "prometheus exited with code 1" in errors[0] and "broken install" in errors[0]
    assert (state_dir / "r0" / "tritonserver.log").exists(), "the replicas had started"
    assert processes_of(state_dir) == [] and not (state_dir / "fleet.json").exists()
    assert shepherd("fleet", "status", "--state-dir", str(state_dir)).returncode == FleetNotRunning.exit_code
