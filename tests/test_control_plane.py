"""The reconciler against the real local Triton and a real database: each lifecycle path end to end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from builders.repository import ModelRepository
from control_plane import reconciler
from control_plane.local_triton import LocalTriton
from control_plane.runtime import Runtime, open_runtime
from control_plane.settings import load_settings
from control_plane.store.models import State
from probes.load import LoadGenerator
from tests.classifier_models import golden_set, publish
from tests.conftest import HISTORIES

pytestmark = pytest.mark.triton

FAST_POLICY = """
defaults:
  bake_seconds: 6
  probe_interval_seconds: 0.5
  probe_rows: 32
  probe_batch_size: 8
  min_samples: 24
  drain_seconds: 0
"""
# For tests whose point is an A/A promotion, not the error check: with no client traffic, showing the
# error rate within the default 1-point floor takes ~420 probe requests a side (~50 s at this probe
# rate); within 5 points, ~70. The error tests (test_canary_failing_live_requests_is_rolled_back, ...)
# keep the default floor.
QUICK_AA = "  error_floor: 0.05\n"


def make_runtime(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path, db_url: str | None = None, policy: str = FAST_POLICY
) -> Runtime:
    config = tmp_path / "shepherd.yaml"
    config.write_text(policy)
    settings = load_settings(
        config,
        overrides={
            "repo": repo.root,
            "triton_grpc": triton.state.grpc_url,
            "triton_metrics": f"127.0.0.1:{triton.state.metrics_port}",
            "db_url": db_url or f"sqlite:///{tmp_path / 'history.db'}",
        },
    )
    runtime = open_runtime(settings)
    HISTORIES.append(settings.db_url)  # audited after the test (conftest.history_tells_the_truth)
    return runtime


@pytest.fixture
def rt(repo: ModelRepository, triton: LocalTriton, tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(repo, triton, tmp_path)
    yield runtime
    runtime.close()


def state_of(rt: Runtime, model: str, version: int) -> State:
    record = rt.store.read.get_version(model, version)
    assert record is not None
    return State(record.state)


def tick_until(rt: Runtime, done: Callable[[], bool], *, timeout: float = 90.0, pause: float = 0.3) -> list[dict]:
    """Run full ticks until `done()`; returns every action taken (for the assertion messages)."""
    actions: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = reconciler.tick(rt)
        actions.extend(report.actions)
        if done():
            return actions
        time.sleep(pause)
    raise AssertionError(f"not converged after {timeout} s; actions: {actions[-12:]}")


def infer(triton: LocalTriton, model: str, version: str = "") -> np.ndarray:
    client = grpcclient.InferenceServerClient(triton.state.grpc_url)
    x, _ = golden_set()
    tensor = grpcclient.InferInput("x", [4, 16], "FP32")
    tensor.set_data_from_numpy(x[:4])
    return client.infer(model, [tensor], model_version=version).as_numpy("logits")


def ready(rt: Runtime, model: str) -> set[int]:
    return rt.admin.ready_versions(model)


def establish_stable(rt: Runtime, repo: ModelRepository, tmp_path: Path, model: str = "clf") -> int:
    version = publish(repo, tmp_path / "build", model, "good")
    tick_until(rt, lambda: state_of(rt, model, version) == State.promoted)
    record = rt.store.read.stable(model)
    assert record is not None and record.version == version
    assert ready(rt, model) == {version}
    return version


def test_first_version_is_promoted_on_preflight(
    rt: Runtime, repo: ModelRepository, tmp_path: Path, triton: LocalTriton
) -> None:
    version = establish_stable(rt, repo, tmp_path)
    assert not (repo.root / "clf__preflight").exists()  # the preflight alias is cleaned up
    assert "clf__preflight" not in {e.model for e in rt.admin.index() if e.state == "READY"}
    decisions = rt.store.read.decisions("clf", version)
    assert decisions and decisions[-1].outcome == "promote"
    assert infer(triton, "clf").shape == (4, 4)


def test_an_idle_pass_reads_the_history_and_the_index_once(
    rt: Runtime, repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to do, one tick takes one snapshot of the history and reads Triton's index once:
    probe and judge reuse reconcile's snapshot (issue 9's goal for an idle pass)."""
    establish_stable(rt, repo, tmp_path)
    reconciler.tick(rt)  # the drain and any last unload: the next pass is idle
    calls: dict[str, int] = {"snapshot": 0, "index": 0}

    def counted(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(rt.store.read, "snapshot", counted("snapshot", rt.store.read.snapshot))
    admin = next(iter(rt.admins.values()))
    monkeypatch.setattr(admin, "index", counted("index", admin.index))
    report = reconciler.tick(rt)
    assert report.actions == [] and report.errors == []
    assert calls == {"snapshot": 1, "index": 1}, calls


def test_slower_version_is_rolled_back(rt: Runtime, repo: ModelRepository, tmp_path: Path, triton: LocalTriton) -> None:
    stable = establish_stable(rt, repo, tmp_path)
    slow = publish(repo, tmp_path / "build", "clf", "slow")
    tick_until(rt, lambda: state_of(rt, "clf", slow) == State.canary)
    assert ready(rt, "clf") == {stable, slow}  # the canary serves beside the stable version
    tick_until(rt, lambda: state_of(rt, "clf", slow) == State.rolled_back)
    assert ready(rt, "clf") == {stable}
    assert slow not in rt.admin.live_versions("clf")  # verified gone from Triton's index
    decision = rt.store.read.decisions("clf", slow)[-1]
    assert decision.outcome == "rollback" and "latency" in decision.reason.lower()
    np.testing.assert_allclose(infer(triton, "clf"), infer(triton, "clf", str(stable)))
    for _ in range(3):  # never loaded again automatically
        reconciler.tick(rt)
        assert slow not in ready(rt, "clf")


def test_worse_version_is_rolled_back(rt: Runtime, repo: ModelRepository, tmp_path: Path) -> None:
    stable = establish_stable(rt, repo, tmp_path)
    worse = publish(repo, tmp_path / "build", "clf", "worse")
    tick_until(rt, lambda: state_of(rt, "clf", worse) in (State.rolled_back, State.rejected))
    assert ready(rt, "clf") == {stable}
    decision = rt.store.read.decisions("clf", worse)[-1]
    assert decision.outcome in ("rollback", "reject")
    assert "quality" in decision.reason.lower() or "agreement" in decision.reason.lower()


def test_version_that_cannot_load_fails_and_stable_keeps_answering(
    rt: Runtime, repo: ModelRepository, tmp_path: Path, triton: LocalTriton
) -> None:
    stable = establish_stable(rt, repo, tmp_path)
    before = infer(triton, "clf")
    broken = publish(repo, tmp_path / "build", "clf", "broken")
    tick_until(rt, lambda: state_of(rt, "clf", broken) == State.failed)
    assert ready(rt, "clf") == {stable}
    np.testing.assert_allclose(infer(triton, "clf"), before)
    record = rt.store.read.get_version("clf", broken)
    assert record is not None and "could not load" in (record.reason or "")


def test_identical_version_is_promoted(rt: Runtime, repo: ModelRepository, tmp_path: Path) -> None:
    first = establish_stable(rt, repo, tmp_path)
    same = publish(repo, tmp_path / "build", "clf", "same")
    tick_until(rt, lambda: state_of(rt, "clf", same) == State.promoted, timeout=120)
    stable = rt.store.read.stable("clf")
    assert stable is not None and stable.version == same
    tick_until(rt, lambda: ready(rt, "clf") == {same})  # the old stable is unloaded after the drain
    old = rt.store.read.get_version("clf", first)
    assert old is not None and old.state == State.promoted and not old.is_stable


def test_version_failing_requests_never_serves_clients(rt: Runtime, repo: ModelRepository, tmp_path: Path) -> None:
    stable = establish_stable(rt, repo, tmp_path)
    failing = publish(repo, tmp_path / "build", "clf", "failing")
    tick_until(rt, lambda: state_of(rt, "clf", failing) in (State.rejected, State.rolled_back))
    assert ready(rt, "clf") == {stable}
    decision = rt.store.read.decisions("clf", failing)[-1]
    assert "error" in decision.reason.lower() or "fail" in decision.reason.lower()
    errors = next(c for c in decision.checks["checks"] if c["name"] == "errors")
    assert errors["status"] == "fail" and errors["figures"]["errors"] > 0


def test_canary_failing_live_requests_is_rolled_back(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    """Errors only client traffic meets (no golden row triggers them) still roll the canary back."""
    rt = make_runtime(repo, triton, tmp_path, policy=FAST_POLICY.replace("probe_batch_size: 8", "probe_batch_size: 4"))
    try:
        stable = establish_stable(rt, repo, tmp_path)
        x, _ = golden_set()
        ceiling = float(x[:, 0].max())
        failing = publish(repo, tmp_path / "build", "clf", "failing", failing_threshold=ceiling + 1.0)
        tick_until(rt, lambda: state_of(rt, "clf", failing) == State.canary)  # golden probes all pass
        good, bad = x[:8].copy(), x[:8].copy()
        bad[0, 0] = ceiling + 5.0  # a new category the table does not have
        url = triton.state.grpc_url
        with (
            LoadGenerator(url, "clf", {"x": good}, concurrency=1, pause_s=0.01, max_seconds=120) as clients,
            LoadGenerator(url, "clf", {"x": bad}, concurrency=1, pause_s=0.25, max_seconds=120) as unlucky,
        ):
            tick_until(rt, lambda: state_of(rt, "clf", failing) == State.rolled_back, timeout=100)
            share = unlucky.report().failures / max(1, clients.report().requests + unlucky.report().requests)
        assert ready(rt, "clf") == {stable}
        decision = rt.store.read.decisions("clf", failing)[-1]
        errors = next(c for c in decision.checks["checks"] if c["name"] == "errors")
        assert errors["status"] == "fail", (decision.reason, share)
    finally:
        rt.close()
