"""The readiness gate: a replica takes client traffic only once it serves every model the fleet serves.

What is shown here:
- `replica_ready`, the pure decision, with every fail-open rule; the serving manifest's reading
  (malformed, foreign, oversized), its atomic writing, and that an idle pass does not rewrite it;
  what the reconciler puts in it (only models that some replica serves) and that a manifest that
  cannot be written is reported, never raised;
- against a real local Triton: the repository index lists a hidden FOLDER but not a top-level
  file (why the manifest is a file); an empty Triton with a manifest naming a model answers 503
  naming it, 200 once the model is loaded; `shepherd readiness` as a process (exit codes, SIGTERM);
- the decisive one, against the real local fleet (3 Tritons, HAProxy, each replica's check): a
  replica killed and restarted under client load stays out of HAProxy's rotation until shepherd's
  pass has loaded the stable version on it, and no client request fails; then, with the manifest
  gone (the check fails open), the same restart sends clients to an empty replica and requests
  fail: what the gate prevents.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from builders.repository import ModelRepository
from control_plane.errors import ConfigError, PortInUse, RepositoryMissing, ServingManifestError
from control_plane.fleet import Replica
from control_plane.local_fleet import LocalFleet
from control_plane.local_triton import LocalTriton, free_ports
from control_plane.readiness import ManifestProblem, ReadinessChecker, TritonProblem, replica_ready, serve
from control_plane.report import TickReport
from control_plane.serving_manifest import (
    MAX_BYTES,
    Required,
    ServingManifest,
    manifest_path,
    publish,
    read_manifest,
    record,
    required,
    write_manifest,
)
from control_plane.store.models import State
from control_plane.store.records import ModelRecord, StoreSnapshot, VersionRecord
from control_plane.triton_admin import IndexEntry, TritonAdmin
from control_plane.world import Catalogue, ReplicaView, World
from probes.load import LoadGenerator
from tests.classifier_models import golden_set
from tests.classifier_models import publish as publish_classifier
from tests.conftest import load_versions, publish_scale
from tests.test_cli_errors import fails_with, shepherd
from tests.test_control_plane import state_of, tick_until
from tests.test_fleet_rollout import fleet_runtime, served_at

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def entry(model: str, version: int | None, state: str = "READY") -> IndexEntry:
    return IndexEntry(model=model, version=version, state=state, reason="")


def manifest(*models: str) -> ServingManifest:
    return ServingManifest(models={m: Required(stable=1) for m in models})


# -- the decision ---------------------------------------------------------------------------------
def test_ready_only_when_every_model_of_the_manifest_has_a_ready_version() -> None:
    wanted = manifest("clf", "ranker")
    both = [entry("clf", 3), entry("ranker", 1)]
    assert replica_ready(wanted, both).ready
    answer = replica_ready(wanted, [entry("clf", 3)])
    assert not answer.ready and answer.missing == ("ranker",) and "ranker" in answer.reason
    # Any version counts (a canary replica serving the candidate beside, or instead of, stable) ...
    assert replica_ready(manifest("clf"), [entry("clf", 7)]).ready
    # ... but only a READY one: loading, unloading, failed or a bare folder (no version) does not.
    for index in (
        [entry("clf", 3, "LOADING")],
        [entry("clf", 3, "UNLOADING")],
        [entry("clf", 3, "UNAVAILABLE")],
        [entry("clf", None, "")],
        [entry("clf__preflight", 3)],
        [],
    ):
        assert replica_ready(manifest("clf"), index).missing == ("clf",), index
    assert replica_ready(manifest("b", "a"), []).missing == ("a", "b")  # sorted, every one named
    assert replica_ready(manifest(), []).ready  # a manifest asking nothing: an empty fleet


def test_a_control_plane_problem_fails_open_a_triton_problem_does_not() -> None:
    empty: list[IndexEntry] = []
    for problem, words in (
        (None, "no serving manifest"),
        (ManifestProblem("x.json: not JSON"), "x.json: not JSON"),
    ):
        answer = replica_ready(problem, empty)
        assert answer.ready and "fail-open" in answer.reason and words in answer.reason, answer
    refused = replica_ready(manifest("clf"), TritonProblem("wants a key", triton_ready=True))
    assert refused.ready and "fail-open" in refused.reason and "wants a key" in refused.reason
    for wanted in (manifest("clf"), None, ManifestProblem("broken")):
        down = replica_ready(wanted, TritonProblem("Triton at 127.0.0.1:1 does not answer"))
        assert not down.ready and "does not answer" in down.reason and down.missing == ()
    assert replica_ready(None, empty).as_dict() == {
        "ready": True,
        "reason": replica_ready(None, empty).reason,
        "missing": [],
    }


# -- the manifest ---------------------------------------------------------------------------------
def test_the_manifest_round_trips_and_an_absent_one_is_none(tmp_path: Path) -> None:
    path = manifest_path(tmp_path)
    assert path.name.startswith(".") and path.parent == tmp_path
    assert read_manifest(path) is None
    written = ServingManifest(
        models={"clf": Required(stable=3), "ranker": Required(stable=2, pinned=1)}, written_at="t"
    )
    write_manifest(path, written)
    assert read_manifest(path) == written
    assert json.loads(path.read_text()) == {
        "format": 1,
        "written_at": "t",
        "models": {"clf": {"stable": 3}, "ranker": {"stable": 2, "pinned": 1}},
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": 2, "models": {}}', "format 2"),
        ('{"format": 1}', "`models` is not a mapping"),
        ('{"format": 1, "models": {"clf": 3}}', "clf"),
        ('{"format": 1, "models": {"clf": {"stable": true}}}', "clf"),
        ('{"format": 1, "models": {"clf": {"stable": "3"}}}', "clf"),
        ('{"format": 1, "models": {"clf": {"stabel": 3}}}', "clf"),
        ("\xff\xfe", "not JSON"),
    ],
)
def test_a_malformed_manifest_is_refused_naming_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = manifest_path(tmp_path)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ServingManifestError) as caught:
        read_manifest(path)
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_an_oversized_manifest_is_refused_unread(tmp_path: Path) -> None:
    path = manifest_path(tmp_path)
    path.write_text('{"format": 1, "models": {}, "pad": "' + "x" * MAX_BYTES + '"}')
    with pytest.raises(ServingManifestError, match="larger than"):
        read_manifest(path)


def test_publish_writes_only_when_the_models_change(tmp_path: Path) -> None:
    path = manifest_path(tmp_path)
    assert publish(tmp_path, {"clf": Required(stable=1)}, now=NOW)
    first = os.stat(path)
    assert oct(first.st_mode & 0o777) == "0o644"
    # An idle pass: the same models, nothing written (same inode, same modification time).
    for _ in range(3):
        assert not publish(tmp_path, {"clf": Required(stable=1)})
    again = os.stat(path)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert publish(tmp_path, {"clf": Required(stable=2)})  # a promotion: the version changed
    promoted = read_manifest(path)
    assert promoted is not None and promoted.models == {"clf": Required(stable=2)} and promoted.written_at
    # Another writer (a former leader) left the same content: read once, not rewritten ...
    write_manifest(path, ServingManifest({"clf": Required(stable=2)}, written_at="elsewhere"))
    assert not publish(tmp_path, {"clf": Required(stable=2)})
    assert getattr(read_manifest(path), "written_at", None) == "elsewhere"
    # ... other content, or garbage, is replaced.
    path.write_text("garbage")
    assert publish(tmp_path, {"clf": Required(stable=2)})
    assert read_manifest(path) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_the_manifest_is_written_atomically_and_readable_by_others(tmp_path: Path) -> None:
    path = manifest_path(tmp_path)
    small = ServingManifest({"a": Required(stable=1)})
    large = ServingManifest({f"model_{i}": Required(stable=i + 1) for i in range(400)})
    write_manifest(path, small)
    seen: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                read = read_manifest(path)
            except ServingManifestError as exc:  # a half-written file would land here
                problems.append(str(exc))
                continue
            seen.append(len(read.models) if read is not None else -1)

    thread = threading.Thread(target=reader)
    old = os.umask(0o077)  # a strict umask does not make it unreadable for the Triton pods
    try:
        thread.start()
        for i in range(300):
            write_manifest(path, large if i % 2 else small)
    finally:
        os.umask(old)
        stop.set()
        thread.join()
    assert problems == [] and set(seen) <= {1, 400} and len(seen) > 10
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def version(model: str, number: int, *, stable: bool = False) -> VersionRecord:
    return VersionRecord(
        id=number,
        model=model,
        version=number,
        state=State.promoted if stable else State.discovered,
        is_stable=stable,
        manifest={},
        source_sha256=None,
        quality_metric=None,
        quality_value=None,
        discovered_at=NOW,
        state_changed_at=NOW,
        stable_since=NOW if stable else None,
        retired_at=None,
        reason=None,
    )


def world(versions: list[VersionRecord], indexes: list[list[IndexEntry] | None], pinned: dict[str, int]) -> World:
    names = {v.model for v in versions} | set(pinned)
    store = StoreSnapshot(
        models={m: ModelRecord(m, "custom", pinned.get(m), False) for m in names},
        versions=tuple(versions),
        open_rollouts=(),
        taken_at=NOW,
    )
    views = tuple(
        ReplicaView(Replica(f"r{i}", f"127.0.0.1:{1000 + i}", f"127.0.0.1:{2000 + i}"), tuple(ix) if ix else ix)
        for i, ix in enumerate(indexes)
    )
    return World(catalogue=Catalogue(kinds={}, support=(), versions={}), store=store, replicas=views)


def test_the_manifest_lists_what_the_fleet_serves() -> None:
    seen = world(
        [
            version("clf", 1),
            version("clf", 2, stable=True),  # stable and served: listed
            version("new", 1),  # no stable version yet: not listed
            version("broken", 4, stable=True),  # stable, but no replica serves it: not demanded of anyone
            version("pinned", 1, stable=True),
        ],
        [
            None,  # r0 unreachable
            [entry("clf", 3), entry("new", 1), entry("pinned", 1)],  # r1: clf's candidate only still counts
            [entry("broken", 4, "UNAVAILABLE")],
        ],
        {"pinned": 1},
    )
    assert required(seen) == {"clf": Required(stable=2), "pinned": Required(stable=1, pinned=1)}
    assert required(world([version("clf", 1, stable=True)], [None], {})) == {}


def test_a_manifest_that_cannot_be_written_is_reported_never_raised(tmp_path: Path) -> None:
    manifest_path(tmp_path).mkdir()  # something in the way: os.replace cannot put a file there
    report = TickReport()
    record(tmp_path, report, world([version("clf", 1, stable=True)], [[entry("clf", 1)]], {}))
    assert [type(e) for e in report.errors] == [ServingManifestError]
    assert "cannot write the serving manifest" in str(report.errors[0]) and report.exit_code == 65
    assert sorted(p.name for p in tmp_path.iterdir()) == [manifest_path(tmp_path).name]


# -- against a real Triton ------------------------------------------------------------------------
def get(url: str) -> tuple[int, dict]:
    response = requests.get(url, timeout=5)
    return response.status_code, response.json()


@pytest.fixture
def check_url(repo: ModelRepository, triton: LocalTriton) -> Iterator[str]:
    """The check of `triton` served in this process on a free port; its answers are fresh (no cache)."""
    checker = ReadinessChecker(repo.root, triton.state.grpc_url, max_age_s=0.0)
    server = serve(checker, "127.0.0.1", free_ports(1)[0])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        checker.close()


@pytest.mark.triton
def test_an_empty_triton_is_unready_for_the_manifests_model_and_ready_once_it_serves_it(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path, check_url: str
) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    (repo.root / ".hidden").mkdir()
    status, body = get(f"{check_url}/ready")
    assert (status, body["ready"], body["missing"]) == (200, True, [])
    assert "no serving manifest" in body["reason"] and "fail-open" in body["reason"]  # nothing written yet

    assert publish(repo.root, {"scale": Required(stable=1)})
    status, body = get(f"{check_url}/ready")
    assert (status, body["ready"], body["missing"]) == (503, False, ["scale"]) and "scale" in body["reason"]
    # Why a file: Triton's index lists a hidden folder as a model, but not a top-level file.
    admin = TritonAdmin(triton.state.grpc_url)
    try:
        listed = {e.model for e in admin.index()}
    finally:
        admin.close()
    assert ".hidden" in listed and manifest_path(repo.root).name not in listed and "scale" in listed
    assert repo.models() == ["scale"]

    import tritonclient.grpc as grpcclient

    load_versions(grpcclient.InferenceServerClient(triton.state.grpc_url), repo, "scale", [1])
    status, body = get(f"{check_url}/ready")
    assert (status, body["ready"], body["missing"]) == (200, True, []), body
    assert get(f"{check_url}/live") == (200, {"live": True})
    assert requests.get(f"{check_url}/other", timeout=5).status_code == 404

    manifest_path(repo.root).write_text("{broken")  # a control-plane fault: fail open, say so
    status, body = get(f"{check_url}/ready")
    assert status == 200 and "unusable" in body["reason"] and "fail-open" in body["reason"]


@pytest.mark.triton
def test_a_triton_that_does_not_answer_is_unready_whatever_the_manifest(repo: ModelRepository) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    checker = ReadinessChecker(repo.root, dead, max_age_s=0.0)
    try:
        for wanted in ({}, {"clf": Required(stable=1)}):
            publish(repo.root, wanted)
            answer = checker.check()
            assert not answer.ready and dead in answer.reason and "does not answer" in answer.reason
    finally:
        checker.close()


def wait_answer(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(url)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.triton
def test_the_readiness_command_serves_the_check_with_the_key_and_stops_on_sigterm(
    repo: ModelRepository, tmp_path: Path
) -> None:
    key = "readiness-test-key-0123456789"
    publish_scale(repo, tmp_path, "scale", 1.0)
    publish(repo.root, {"scale": Required(stable=1)})
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    port = free_ports(1)[0]
    with LocalTriton(repo.root, state_dir=tmp_path / "keyed", api_key=key) as triton:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SHEPHERD_")}
        command = [sys.executable, "-m", "control_plane.cli", "readiness", "--repo", str(repo.root),
                   "--triton-grpc", triton.state.grpc_url, "--listen", f"127.0.0.1:{port}"]  # fmt: skip
        # Without the key the index is refused: fail-open (ready because Triton is), and it says why.
        keyless = subprocess.Popen(command, cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True)
        try:
            status, body = wait_answer(f"http://127.0.0.1:{port}/ready")
            assert status == 200 and "wants a key" in body["reason"] and "fail-open" in body["reason"], body
        finally:
            keyless.send_signal(signal.SIGTERM)
            keyless.wait(timeout=15)
        pid_file = tmp_path / "readiness.pid"
        keyed = subprocess.Popen([*command, "--admin-key-file", str(key_file), "--pid-file", str(pid_file)],
                                 cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            status, body = wait_answer(f"http://127.0.0.1:{port}/ready")
            assert (status, body["missing"]) == (503, ["scale"]), body
            assert pid_file.read_text().strip() == str(keyed.pid)
        finally:
            keyed.send_signal(signal.SIGTERM)
            _, stderr = keyed.communicate(timeout=15)
    assert keyed.returncode == 0 and keyless.returncode == 0, stderr
    assert not pid_file.exists() and key not in stderr and "key set" in stderr


def test_the_readiness_command_fails_in_one_line_with_its_exit_code(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    fails_with(shepherd(tmp_path, "readiness", "--repo", str(tmp_path / "none")), RepositoryMissing, "not found")
    fails_with(shepherd(tmp_path, "readiness", "--repo", str(repo), "--listen", "nowhere"), ConfigError, "nowhere")
    fails_with(
        shepherd(tmp_path, "readiness", "--repo", str(repo), "--triton-grpc", "a:b:c:d:"), ConfigError, "a:b:c:d:"
    )
    missing_key = shepherd(tmp_path, "readiness", "--repo", str(repo), "--admin-key-file", str(tmp_path / "nokey"))
    fails_with(missing_key, ConfigError, "--admin-key-file")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        fails_with(shepherd(tmp_path, "readiness", "--repo", str(repo), "--listen", f"127.0.0.1:{port}"), PortInUse)
    helped = shepherd(tmp_path, "readiness", "--help")
    assert helped.returncode == 0 and "/ready" in helped.stdout and "fail-open" in helped.stdout


# -- the decisive one: the real local fleet --------------------------------------------------------
class Watch:
    """Samples, every 50 ms, HAProxy's view of one replica, then that replica's own index (in that
    order: a replica seen in rotation whose index, read just after, does not list the model READY was
    in rotation before it served it)."""

    def __init__(self, fleet: LocalFleet, name: str, model: str) -> None:
        self.fleet, self.name, self.model = fleet, name, model
        self.samples: list[tuple[float, bool, bool]] = []  # (time, in rotation on both protocols, serving)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        address = self.fleet.replica(self.name).replica.grpc
        while not self._stop.is_set():
            view = self.fleet.balancer_view().get(self.name, {})
            in_rotation = all(view.get(side) == "UP" for side in ("grpc", "http"))
            serving = bool(served_at([address], self.model)[0])  # a fresh channel each time
            self.samples.append((time.monotonic(), in_rotation, serving))
            time.sleep(0.05)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def first(self, what: int) -> int | None:
        return next((i for i, sample in enumerate(self.samples) if sample[what]), None)


def successes(replica: Replica, model: str) -> float:
    text = requests.get(replica.metrics_url, timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if family.name == "nv_inference_request_success" and s.labels.get("model") == model
    )


@pytest.mark.triton
def test_a_restarted_replica_takes_traffic_only_once_it_serves_the_stable_version(
    repo: ModelRepository, tmp_path: Path
) -> None:
    x, _ = golden_set()
    with LocalFleet(repo.root, replicas=3, state_dir=tmp_path / "fleet") as fleet:
        rt = fleet_runtime(tmp_path, repo, fleet.fleet_file)
        try:
            stable = publish_classifier(repo, tmp_path / "build", "clf", "good")
            tick_until(
                rt,
                lambda: (
                    state_of(rt, "clf", stable) == State.promoted
                    and "clf" in getattr(read_manifest(manifest_path(repo.root)), "models", {})
                ),
            )
            assert all(fleet.wait_balancer(name, up=True) for name in ("r0", "r1", "r2")), fleet.balancer_view()
            r2 = fleet.replica("r2").replica
            with LoadGenerator(
                fleet.grpc_url, "clf", {"x": x[:8]}, concurrency=2, pause_s=0.01, max_seconds=120
            ) as clients:
                time.sleep(1.0)
                fleet.kill("r2")
                assert fleet.wait_balancer("r2", up=False, timeout=5), fleet.balancer_view()
                time.sleep(0.5)  # what the kill itself cost is not counted below
                before = clients.report()
                with Watch(fleet, "r2", "clf") as watch:
                    fleet.restart("r2")
                    time.sleep(3.0)  # no pass yet: r2 runs, Triton says ready, it serves nothing ...
                    said = fleet.readiness("r2")
                    assert said is not None and not said["ready"] and said["missing"] == ["clf"], said
                    assert fleet.balancer_view()["r2"] == {"grpc": "DOWN", "http": "DOWN"}  # ... and stays out
                    tick_until(rt, lambda: served_at([r2.grpc]) == [{stable}])  # the repairing pass
                    assert fleet.wait_balancer("r2", up=True, timeout=10), fleet.balancer_view()
                    time.sleep(1.5)
                after = clients.report()
            failed = after.failures - before.failures
            assert failed == 0, after.failure_messages[-5:]
            assert after.requests - before.requests > 100
            assert successes(r2, "clf") > 0  # it took its share again (its counters began at the restart)
            up, serving = watch.first(1), watch.first(2)
            assert up is not None and serving is not None and serving <= up, watch.samples
            assert watch.samples[up][0] - watch.samples[0][0] > 3.0  # not before the pass

            # The same restart with the manifest gone (the check fails open): r2 is back in rotation
            # as soon as Triton answers, empty, and requests balanced to it fail. What the gate prevents.
            manifest_path(repo.root).unlink()
            with LoadGenerator(
                fleet.grpc_url, "clf", {"x": x[:8]}, concurrency=2, pause_s=0.01, max_seconds=60
            ) as clients:
                fleet.kill("r2")
                assert fleet.wait_balancer("r2", up=False, timeout=5), fleet.balancer_view()
                time.sleep(0.5)
                before = clients.report()
                fleet.restart("r2")
                assert fleet.wait_balancer("r2", up=True, timeout=10), fleet.balancer_view()
                assert served_at([r2.grpc]) == [set()]
                time.sleep(1.5)
                after = clients.report()
            assert after.failures - before.failures > 0
            assert any("clf" in m for m in after.failure_messages), after.failure_messages[-3:]
        finally:
            rt.close()
