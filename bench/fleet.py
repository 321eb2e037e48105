"""Issue 9: the fleet, measured side by side in one run on three real local replicas behind HAProxy.

Why: the fleet's claims (a canary on k of N replicas takes k/N of the client requests; an identical
candidate judged against an equally loaded baseline is not rolled back, where today's single-server
design compared it with a stable version that only saw probes; a regression is rolled back on every
replica within a minute; no client request fails on the way; a restarted replica serves the stable
versions again within one pass; an idle pass reads the store and each replica's index once) only
mean something against real processes under client load. One `LocalFleet` (3 `tritonserver`, HAProxy,
Prometheus), a Runtime on SQLite over its fleet file, `reconciler.tick` every pass interval from a
scheduler thread, and `probes.load.LoadGenerator` traffic through the load balancer on every model
from start to end.

    .venv/bin/python bench/fleet.py [--aa 20] [--regressions 3] [--heavy H] [--out DIR] [--write-docs]

Phases, in this order: stable versions, calibration of the 1.5x `slow` variant (a separate Triton),
A/A rollouts (canary and bluegreen alternately), regressions (latency and errors alternately),
a replica killed and restarted, then (in its own process) one idle pass over 50 models x 3
replicas (`bench/tick_cost.py --replicas 3`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tritonclient.grpc as grpcclient
import yaml
from scipy import stats
from sqlalchemy import select

from bench.common import ROOT, Spread, machine, met, percentile, table, write_result
from bench.control_plane_harness import SETTINGS_FILE, as_utc, state_of, transition_time
from bench.tick_cost import code_state
from builders.repository import ModelRepository
from control_plane import observe, reconciler
from control_plane.fleet import Replica
from control_plane.judging import PROMOTE, ROLLBACK, WAIT, decide_canary
from control_plane.local_fleet import LocalFleet
from control_plane.local_triton import LocalTriton
from control_plane.observe import evidence_from_windows
from control_plane.runtime import Runtime, open_runtime
from control_plane.settings import load_settings
from control_plane.store.models import RolloutRow, State
from control_plane.store.records import ProbeWindowRecord
from control_plane.triton_admin import LIVE_STATES, TritonAdmin
from probes.golden import send_paired_probes
from probes.load import LoadGenerator, LoadReport
from tests.classifier_models import golden_set, publish

DOC = ROOT / "docs" / "benchmarks.md"
PASS_INTERVAL_S = 1.0
# The policy: shepherd.yaml's defaults with these changed, so the whole run fits in ~30 minutes.
POLICY_CHANGES: dict[str, Any] = {
    "bake_seconds": 10,
    "probe_interval_seconds": 1,
    "probe_rows": 32,
    "drain_seconds": 2,
    "max_canary_seconds": 120,
}
# Policy figures named in the report (those the judge of the code measured has).
POLICY_SHOWN = (
    "alpha",
    "beta",
    "max_latency_increase",
    "max_tail_latency_increase",
    "max_error_rate",
    "max_error_increase",
    "error_floor",
    "min_samples",
    "probe_batch_size",
    "p95_min_samples",
    "warmup_windows",
    "breaker_latency_ratio",
    "breaker_error_rate",
    "canary_steps",
)
MODELS = {"aa_canary": "canary", "aa_bluegreen": "bluegreen", "reg": "canary"}
LIVE: dict[str, Any] = {"concurrency": 1, "pause_s": 0.02, "max_seconds": 4 * 3600}  # per model, all run long
REG_EXTRA: dict[str, Any] = {"concurrency": 1, "pause_s": 0.002, "max_seconds": 3600}  # on `reg` in the regressions
ERROR_SHARE = 0.05  # share of the regression model's client requests that carry a row the `failing` version cannot take
HEAVY_CANDIDATES = (512, 768, 1024, 1280, 1536, 2048)
TARGET_RATIO = 1.5
DONE = (State.rolled_back, State.promoted, State.rejected, State.failed)
ROLLBACK_GOAL_S = 60.0


# -- the scheduler --------------------------------------------------------------------------------
@dataclass
class Tick:
    started: float  # wall clock
    ended: float
    actions: list[dict[str, Any]]
    errors: list[str]


@dataclass
class Scheduler:
    """`reconciler.tick(rt)` at a fixed rate (every `interval` s, at once when a pass overran), in its own thread."""

    rt: Runtime
    interval: float
    ticks: list[Tick] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            began = time.time()
            try:
                report = reconciler.tick(self.rt)
                actions, errors = list(report.actions), [str(e) for e in report.errors]
            except Exception as exc:  # a crashed pass is a record, never a dead scheduler
                actions, errors = [], [f"tick crashed: {type(exc).__name__}: {exc}"]
            self.ticks.append(Tick(began, time.time(), actions, errors))
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def errors_between(self, start: float, end: float) -> list[str]:
        return [e for t in self.ticks if start <= t.started < end for e in t.errors]


def wait_for(done: Callable[[], bool], *, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(every)
    return done()


# -- watching each replica's index ----------------------------------------------------------------
class FleetWatcher:
    """Polls every replica's repository index from its own client (not the control plane's): what each
    served when, as (wall time, {(model, version): state}) per replica. A failed poll is a gap."""

    def __init__(self, replicas: Sequence[Replica], *, every: float = 0.1) -> None:
        self.replicas = list(replicas)
        self.every = every
        self.samples: dict[str, list[tuple[float, dict[tuple[str, int], str]]]] = {r.name: [] for r in replicas}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(r,), daemon=True) for r in replicas]

    def __enter__(self) -> FleetWatcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _poll(self, replica: Replica) -> None:
        # Its own subchannel pool, and a new channel after every failed poll: gRPC shares subchannels
        # (and their reconnect backoff) between the channels of one process, and a channel that failed
        # waits out a growing backoff; this watcher must see a restarted replica when it is up, not
        # when some channel to it gets out of its backoff.
        def connect() -> grpcclient.InferenceServerClient:
            return grpcclient.InferenceServerClient(replica.grpc, channel_args=[("grpc.use_local_subchannel_pool", 1)])

        client = connect()
        try:
            while not self._stop.is_set():
                try:
                    raw = client.get_model_repository_index(as_json=True, client_timeout=5)
                    states = {
                        (e["name"], int(e["version"])): e.get("state", "")
                        for e in raw.get("models", [])
                        if e.get("version")
                    }
                    self.samples[replica.name].append((time.time(), states))
                except Exception:
                    client.close()
                    client = connect()
                self._stop.wait(self.every)
        finally:
            client.close()

    def gone_after(self, replica: str, model: str, version: int, since: float) -> float | None:
        """First poll at or after `since` where the version is neither READY, LOADING nor UNLOADING there."""
        return next(
            (
                t
                for t, states in self.samples[replica]
                if t >= since and states.get((model, version), "") not in LIVE_STATES
            ),
            None,
        )

    def first_ready(self, replica: str, model: str, version: int, since: float = 0.0) -> float | None:
        return next(
            (t for t, states in self.samples[replica] if t >= since and states.get((model, version)) == "READY"),
            None,
        )

    def serving_all(self, replica: str, wanted: dict[str, int], since: float) -> float | None:
        """First poll at or after `since` where every (model, version) of `wanted` is READY on `replica`."""
        for t, states in self.samples[replica]:
            if t >= since and all(states.get((m, v)) == "READY" for m, v in wanted.items()):
                return t
        return None


# -- statistics -----------------------------------------------------------------------------------
def interval(k: int, n: int, method: str = "exact") -> tuple[float, float] | None:
    """95 % interval of a proportion: Clopper-Pearson ("exact") or Wilson, from scipy."""
    if n <= 0:
        return None
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method=method)
    return float(ci.low), float(ci.high)


def rate_text(k: int, n: int, method: str = "exact") -> str:
    ci = interval(k, n, method)
    if ci is None:
        return f"{k}/{n}"
    return f"{k}/{n} ({100 * k / n:.1f} %, 95 % CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f} %)"


def ts(moment: datetime | None) -> float | None:
    return as_utc(moment).timestamp() if moment is not None else None


# -- the bench ------------------------------------------------------------------------------------
@dataclass
class Bench:
    scratch: Path
    repo: ModelRepository
    fleet: LocalFleet
    rt: Runtime
    scheduler: Scheduler
    loads: dict[str, LoadGenerator]
    stable: dict[str, int] = field(default_factory=dict)
    extra_loads: list[LoadGenerator] = field(default_factory=list)  # the error runs' unlucky rows
    reg_busy: LoadGenerator | None = None  # the regression phase's extra traffic on `reg`

    @property
    def build(self) -> Path:
        return self.scratch / "build"

    def publish(self, model: str, variant: str, **knobs: Any) -> int:
        return publish(self.repo, self.build, model, variant, **knobs)

    def ready_everywhere(self, model: str, *, live: bool = False) -> list[set[int]]:
        """What each replica's own index says of `model`: READY versions (or READY/LOADING/UNLOADING with `live`)."""
        out = []
        for replica in self.fleet.replicas:
            admin = TritonAdmin(replica.grpc)
            try:
                out.append(admin.live_versions(model) if live else admin.ready_versions(model))
            except Exception:
                out.append(set())
            finally:
                admin.close()
        return out


def policy_file(scratch: Path) -> Path:
    data = yaml.safe_load(SETTINGS_FILE.read_text())
    data["defaults"].update(POLICY_CHANGES)
    data["probe_interval_seconds"] = PASS_INTERVAL_S
    data["reconcile_interval_seconds"] = PASS_INTERVAL_S
    data["models"] = {model: {"strategy": strategy} for model, strategy in MODELS.items()}
    path = scratch / "shepherd.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def establish(bench: Bench, model: str) -> int:
    version = bench.publish(model, "good")
    if not wait_for(lambda: state_of(bench.rt, model, version) == State.promoted, timeout=120):
        raise SystemExit(f"{model} v{version} was not promoted within 120 s: {bench.scheduler.ticks[-1:]}")
    if not wait_for(lambda: bench.ready_everywhere(model) == [{version}] * 3, timeout=30):
        raise SystemExit(f"{model} v{version} is not served by every replica: {bench.ready_everywhere(model)}")
    return version


# -- calibration of the 1.5x latency regression ---------------------------------------------------
def calibrate_heavy(scratch: Path, *, rounds: int = 12) -> tuple[int, dict[int, dict[str, float]]]:
    """The smallest `slow` hidden size whose probe latency is ~1.5x `good`'s, as a fleet canary sees it.

    Each size is version 2 of its own model beside `good` as version 1 on a separate local Triton,
    each version under the same client load (one LoadGenerator naming each version, as the canary
    and the baseline replica each take 1/N of the traffic), probed with the reconciler's paired
    probes (32 golden rows in requests of 4), `rounds` times. Median and p95 ratio per size.
    """
    x, _ = golden_set()
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    ratios: dict[int, dict[str, float]] = {}
    with LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton:
        admin = TritonAdmin(triton.state.grpc_url)
        try:
            for heavy in HEAVY_CANDIDATES:
                model = f"cal_h{heavy}"
                publish(repo, scratch / "build", model, "good")
                publish(repo, scratch / "build", model, "slow", heavy=heavy)
                admin.load_versions(model, repo.read_config(model), [1, 2])
                samples: dict[str, list[float]] = {"1": [], "2": []}
                with ExitStack() as stack:
                    for version in ("1", "2"):
                        stack.enter_context(
                            LoadGenerator(
                                triton.state.grpc_url,
                                model,
                                {"x": x[:4]},
                                model_version=version,
                                concurrency=1,
                                pause_s=0.06,
                                max_seconds=120,
                            )
                        )
                    time.sleep(0.5)
                    for _ in range(rounds):
                        runs = send_paired_probes(triton.state.grpc_url, model, [2, 1], {"x": x[:32]}, batch_size=4)
                        for version, run in runs.items():
                            samples[version] += run.latencies_ms
                        time.sleep(0.3)
                admin.unload(model)
                ratios[heavy] = {
                    "median": statistics.median(samples["2"]) / statistics.median(samples["1"]),
                    "p95": percentile(samples["2"], 95) / percentile(samples["1"], 95),
                }
                print(f"  calibration: heavy {heavy}: {ratios[heavy]}", flush=True)
                if ratios[heavy]["median"] >= TARGET_RATIO + 0.3:
                    break  # the larger ones are slower still
        finally:
            admin.close()
    enough = [h for h, r in ratios.items() if r["median"] >= TARGET_RATIO - 0.05]
    return (min(enough) if enough else max(ratios)), ratios


# -- one rollout ----------------------------------------------------------------------------------
def rollout(bench: Bench, model: str, variant: str, *, timeout: float = 200.0, **knobs: Any) -> dict[str, Any]:
    """Publish the next version of `model`, let the scheduler take it to an end state, and record what happened."""
    rt = bench.rt
    stable = bench.stable[model]
    published = time.time()
    version = bench.publish(model, variant, **knobs)
    finished = wait_for(lambda: state_of(rt, model, version) in DONE, timeout=timeout)
    noticed = time.time()
    final = state_of(rt, model, version)
    # Wait until every replica serves what the end state wants (the promotion's loads, the rollback's unload).
    if final == State.promoted:
        settled_ok = wait_for(lambda: all(version in r for r in bench.ready_everywhere(model)), timeout=60)
    else:  # gone from every replica's index (an unload is over once it is no longer UNLOADING)
        settled_ok = wait_for(
            lambda: all(version not in r for r in bench.ready_everywhere(model, live=True)), timeout=60
        )
    settled = time.time()
    record = rt.store.read.get_version(model, version)
    decisions = rt.store.read.decisions(model, version)
    rollout_id = next((d.rollout_id for d in reversed(decisions) if d.rollout_id is not None), None)
    steps = rt.store.fleet.steps(rollout_id) if rollout_id is not None else []
    decided = ts(transition_time(rt, model, version, State.rolled_back)) or ts(
        transition_time(rt, model, version, State.promoted)
    )
    result: dict[str, Any] = {
        "model": model,
        "strategy": MODELS[model],
        "variant": variant,
        "version": version,
        "stable": stable,
        "finished": finished,
        "final_state": final.value if final else None,
        "reason": record.reason if record is not None else None,
        "published_at": published,
        "preflight_at": ts(transition_time(rt, model, version, State.preflight)),
        "canary_at": ts(transition_time(rt, model, version, State.canary)),
        "decided_at": decided,
        "noticed_at": noticed,
        "settled_at": settled,
        "settled": settled_ok,
        "rollout_id": rollout_id,
        "steps": [
            {"step": s.step, "strategy": s.strategy, "share": s.share, "roles": s.roles, "started_at": ts(s.started_at)}
            for s in steps
        ],
        "decisions": len(decisions),
        "last_decision": f"{decisions[-1].outcome}: {decisions[-1].reason}" if decisions else None,
        "tick_errors": bench.scheduler.errors_between(published, settled)[-5:],
    }
    if result["canary_at"] is not None and decided is not None:
        result["canary_to_decision_s"] = decided - result["canary_at"]
    if decided is not None:
        result["publish_to_decision_s"] = decided - published
    bench.stable[model] = version if final == State.promoted else stable
    if MODELS[model] == "bluegreen" and rollout_id is not None:
        # Stable's pre-cut-over window (step 0): what the bluegreen judge compares the candidate with.
        result["stable_step0_windows"] = [
            {
                "seconds": (as_utc(w.ended_at) - as_utc(w.started_at)).total_seconds(),
                "requests": w.requests,
                "samples": len(w.samples),
                "live_deferred": bool(w.raw.get("live_deferred")),
                "live_missing": w.raw.get("live_missing"),
            }
            for w in rt.store.read.probe_windows(model, stable, role="stable", rollout_id=rollout_id, step=0)
        ]
    if decisions:
        checks = decisions[-1].checks.get("checks", []) if isinstance(decisions[-1].checks, dict) else []
        latency: dict[str, Any] = next((c.get("figures", {}) for c in checks if c.get("name") == "latency"), {})
        errors: dict[str, Any] = next((c.get("figures", {}) for c in checks if c.get("name") == "errors"), {})
        result["judged"] = {
            "median_ratio": latency.get("median_ratio"),
            "p95_ratio": latency.get("p95_ratio"),
            "n": [latency.get("n_candidate"), latency.get("n_stable")],
            "errors_candidate": errors.get("errors_candidate"),
            "requests_candidate": errors.get("requests_candidate"),
            "errors_stable": errors.get("errors_stable"),
            "requests_stable": errors.get("requests_stable"),
        }
    return result


# -- today's single-server design, re-judged from the bluegreen rollouts' own windows -------------
def replay(
    rt: Runtime, model: str, candidate: int, stable: int, rollout_id: int, step_start: float, *, base_step: int
) -> dict[str, Any]:
    """Judge the candidate's step-1 windows look by look against stable's windows of `base_step`.

    base_step 1: stable's step-1 windows (stable seeing only the probes while the candidate takes all
    traffic: what the single-server design compared). base_step 0: stable's pre-cut-over window (the
    bluegreen rule itself; a check that the replay reproduces the recorded outcome).
    Look i judges windows[:i] of both sides with `decide_canary` at the moment the real judge made its
    i-th decision of the step (stored), with the same policy and the same time limit as the real judge
    (`max_canary_seconds` less the time from the rollout's start to the step's); the first look that is
    not "wait" is the outcome.
    """
    policy = rt.settings.policy_for(model)
    with rt.store.db.engine.connect() as conn:
        started = conn.execute(select(RolloutRow.started_at).where(RolloutRow.id == rollout_id)).scalar_one()
    if policy.max_canary_seconds is not None:
        spent = max(0.0, step_start - as_utc(started).timestamp())
        policy = replace(policy, max_canary_seconds=max(policy.bake_seconds, policy.max_canary_seconds - spent))
    cand = rt.store.read.probe_windows(model, candidate, role="candidate", rollout_id=rollout_id, step=1)
    same = rt.store.read.probe_windows(model, stable, role="stable", rollout_id=rollout_id, step=1)
    before = rt.store.read.probe_windows(model, stable, role="stable", rollout_id=rollout_id, step=0)
    judged_at = sorted(
        as_utc(d.at)
        for d in rt.store.read.decisions(model, candidate)
        if d.rollout_id == rollout_id and as_utc(d.at).timestamp() >= step_start
    )
    # The bluegreen rule of the code measured: `observe.bluegreen_stable` where it exists (counts from
    # step 0, latency from stable's probes of the judged step), else step 0's windows alone.
    rule = getattr(observe, "bluegreen_stable", None)
    looks = 0
    for i in range(1, len(cand) + 1):
        cand_w: list[ProbeWindowRecord] = cand[:i]
        if base_step == 1:
            stable_ev = evidence_from_windows(stable, same[:i]) if same[:i] else None
        elif rule is not None:
            stable_ev = rule(stable, before, same[:i]) if before else None
        else:
            stable_ev = evidence_from_windows(stable, before) if before else None
        if stable_ev is None:
            continue
        now = judged_at[i - 1] if i - 1 < len(judged_at) else as_utc(cand_w[-1].ended_at)
        verdict = decide_canary(
            evidence_from_windows(candidate, cand_w),
            stable_ev,
            policy,
            baked_seconds=now.timestamp() - step_start,
            now=now,
        )
        looks += 1
        if verdict.outcome != WAIT:
            return {"outcome": verdict.outcome, "reason": verdict.reason, "looks": looks, "windows": len(cand)}
    return {
        "outcome": WAIT,
        "reason": "undecided after every window the rollout stored",
        "looks": looks,
        "windows": len(cand),
    }


# -- shares of client requests --------------------------------------------------------------------
def share_between(timeline: Sequence[tuple[float, str]], start: float, end: float, version: int) -> tuple[int, int]:
    """(answered by `version`, answered at all) among requests sent in [start, end)."""
    target = str(version)
    answered = [served for sent, served in timeline if start <= sent < end and served]
    return sum(1 for s in answered if s == target), len(answered)


def first_answer(timeline: Sequence[tuple[float, str]], version: int, since: float) -> float | None:
    target = str(version)
    return min((sent for sent, served in timeline if sent >= since and served == target), default=None)


def shares(runs: list[dict[str, Any]], timelines: Mapping[str, Sequence[tuple[float, str]]]) -> list[dict[str, Any]]:
    """Per phase of each rollout: the candidate's share of the model's answered client requests.

    preflight: [preflight, canary start) (the alias takes no client traffic: 0).
    each step: from the candidate's first answer after the step began to the next step or the decision.
    promoted: from every replica serving the candidate (settled) to the next publish.
    """
    rows: list[dict[str, Any]] = []
    for run in runs:
        line = timelines[run["model"]]
        v = run["version"]
        if run.get("preflight_at") and run.get("canary_at"):
            k, n = share_between(line, run["preflight_at"], run["canary_at"], v)
            rows.append({"phase": "preflight", "strategy": run["strategy"], "expected": 0.0, "k": k, "n": n})
        steps = run.get("steps", [])
        for i, step in enumerate(steps):
            end = steps[i + 1]["started_at"] if i + 1 < len(steps) else run.get("decided_at")
            if end is None or step["started_at"] is None:
                continue
            expected = step["share"]
            if step["strategy"] == "bluegreen" and step["share"] == 0:
                start = step["started_at"]  # before the cut-over: stable everywhere
            else:
                start = first_answer(line, v, step["started_at"]) or step["started_at"]
            k, n = share_between(line, start, end, v)
            if step["strategy"] == "bluegreen":
                name = "bluegreen, after the cut-over" if step["share"] else "bluegreen, before the cut-over"
            else:
                name = f"canary step {step['step'] + 1}: candidate on {len([r for r in step['roles'].values() if r == 'canary'])} of {len(step['roles'])}"
            rows.append({"phase": name, "strategy": run["strategy"], "expected": expected, "k": k, "n": n})
        if run.get("final_state") == "promoted" and run.get("next_published_at"):
            k, n = share_between(line, run["settled_at"], run["next_published_at"], v)
            rows.append({"phase": "promoted", "strategy": run["strategy"], "expected": 1.0, "k": k, "n": n})
    return rows


def share_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["strategy"], row["phase"], row["expected"]), []).append(row)
    out = []
    for (strategy, phase, expected), group in grouped.items():
        k, n = sum(r["k"] for r in group), sum(r["n"] for r in group)
        each = [r["k"] / r["n"] for r in group if r["n"]]
        out.append(
            {
                "strategy": strategy,
                "phase": phase,
                "expected": expected,
                "rollouts": len(group),
                "k": k,
                "n": n,
                "pooled": k / n if n else None,
                "wilson": interval(k, n, "wilson"),
                "per_rollout": Spread.of(each).as_dict() if each else None,
            }
        )
    return out


# -- phases ---------------------------------------------------------------------------------------
def aa_phase(bench: Bench, count: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for i in range(count):
        for model in ("aa_canary", "aa_bluegreen"):
            run = rollout(bench, model, "same")
            if run["strategy"] == "bluegreen" and run.get("rollout_id") and len(run["steps"]) > 1:
                cut = run["steps"][1]["started_at"]
                for key, base_step in (("single_server", 1), ("replay_bluegreen", 0)):
                    run[key] = replay(
                        bench.rt, model, run["version"], run["stable"], run["rollout_id"], cut, base_step=base_step
                    )
            print(
                f"  A/A {i + 1}/{count} {model}: {run['final_state']} in {run.get('publish_to_decision_s') or 0:.1f} s"
                + (f"; single-server replay: {run['single_server']['outcome']}" if "single_server" in run else ""),
                flush=True,
            )
            runs.append(run)
            time.sleep(1.0)
    return runs


def regression_phase(bench: Bench, repeats: int, heavy: int) -> list[dict[str, Any]]:
    x, _ = golden_set()
    threshold = float(x[:, 0].max()) + 1.0  # above every golden row: the golden probes all pass
    bad = x[:4].copy()
    bad[0, 0] = threshold + 5.0  # a category the `failing` version's table does not have
    runs = []
    # More client traffic on `reg` for this phase: an error rate is only told from the 2 % limit with
    # hundreds of requests on the candidate's replica within the bake time.
    busy = LoadGenerator(bench.fleet.grpc_url, "reg", {"x": x[:4]}, **REG_EXTRA).start()
    bench.reg_busy = busy
    time.sleep(2.0)
    for attempt in range(repeats):
        for kind in ("latency", "errors"):
            unlucky: LoadGenerator | None = None
            if kind == "errors":
                generators = (bench.loads["reg"], busy)
                before = [g.report().requests for g in generators]
                t0 = time.monotonic()
                time.sleep(3.0)
                sent = sum(g.report().requests for g in generators) - sum(before)
                rate = max(1.0, sent / (time.monotonic() - t0))
                bad_rate = rate * ERROR_SHARE / (1 - ERROR_SHARE)
                unlucky = LoadGenerator(
                    bench.fleet.grpc_url, "reg", {"x": bad}, concurrency=1, pause_s=1.0 / bad_rate, max_seconds=600
                ).start()
                bench.extra_loads.append(unlucky)
            with FleetWatcher(bench.fleet.replicas) as watcher:
                if kind == "latency":
                    run = rollout(bench, "reg", "slow", heavy=heavy)
                else:
                    run = rollout(bench, "reg", "failing", failing_threshold=threshold)
                time.sleep(0.5)
            run["kind"] = kind
            v, decided, canary = run["version"], run.get("decided_at"), run.get("canary_at")
            if run["final_state"] == "rolled_back" and decided is not None and canary is not None:
                gone = {r.name: watcher.gone_after(r.name, "reg", v, decided) for r in bench.fleet.replicas}
                run["gone_per_replica_s"] = {k: (t - canary if t else None) for k, t in gone.items()}
                if all(t is not None for t in gone.values()):
                    run["canary_to_rolled_back_everywhere_s"] = max(t for t in gone.values() if t) - canary
            run["loaded_on"] = sorted(
                r.name for r in bench.fleet.replicas if watcher.first_ready(r.name, "reg", v) is not None
            )
            if unlucky is not None:
                unlucky.stop()
                # The candidate's error rate as the clients saw it: stable answers every row, so each
                # failed request of the model in the canary was the candidate's.
                start = first_answer(bench.loads["reg"].report().timeline, v, canary or 0) or (canary or 0)
                end = decided or run["noticed_at"]
                lines = [bench.loads["reg"].report().timeline, busy.report().timeline, unlucky.report().timeline]
                failed = sum(1 for line in lines for sent, served in line if start <= sent < end and served == "")
                answered = sum(1 for line in lines for sent, served in line if start <= sent < end and served == str(v))
                run["client_candidate_errors"] = [failed, failed + answered]
                bad_sent = sum(1 for sent, _ in lines[2] if start <= sent < end)
                run["bad_share_sent"] = bad_sent / max(
                    1, sum(1 for line in lines for sent, _ in line if start <= sent < end)
                )
            print(
                f"  regression {kind} #{attempt + 1}: {run['final_state']}, canary -> rolled back everywhere "
                f"{run.get('canary_to_rolled_back_everywhere_s')}",
                flush=True,
            )
            runs.append(run)
            time.sleep(1.0)
    busy.stop()
    return runs


def kill_phase(bench: Bench, *, victim: str = "r2", down_s: float = 5.0) -> dict[str, Any]:
    """Kill a replica under load, let passes run without it, restart it: when does it serve stable again?"""
    wanted = dict(bench.stable)
    result: dict[str, Any] = {"replica": victim, "pass_interval_s": PASS_INTERVAL_S, "wanted": wanted, "down_s": down_s}
    replica = next(r for r in bench.fleet.replicas if r.name == victim)
    with FleetWatcher([replica], every=0.05) as watcher:
        time.sleep(1.0)
        killed = time.time()
        bench.fleet.kill(victim)
        out = bench.fleet.wait_balancer(victim, up=False, timeout=15)
        result["balancer_out_s"] = time.time() - killed if out else None
        time.sleep(max(0.0, killed + down_s - time.time()))
        restart_called = time.time()
        bench.fleet.restart(victim)
        ready = time.time()
        back = bench.fleet.wait_balancer(victim, up=True, timeout=30)
        result["balancer_in_after_ready_s"] = time.time() - ready if back else None
        serving_ok = wait_for(lambda: watcher.serving_all(victim, wanted, ready) is not None, timeout=60, every=0.05)
        serving = watcher.serving_all(victim, wanted, ready)
        time.sleep(2.0)
    result.update(
        {
            "killed_at": killed,
            "restart_called_at": restart_called,
            "ready_at": ready,
            "restart_s": ready - restart_called,
            "serving_at": serving,
            "served": serving_ok,
            "ready_to_serving_s": (serving - ready) if serving else None,
            "restart_call_to_serving_s": (serving - restart_called) if serving else None,
            "ended_at": time.time(),
        }
    )
    # The pass that repaired it: the first one whose actions loaded a model on the victim.
    repair = next(
        (
            t
            for t in bench.scheduler.ticks
            if t.started >= restart_called - PASS_INTERVAL_S
            and any(a.get("action") == "loaded" and a.get("replica") == victim for a in t.actions)
        ),
        None,
    )
    if repair is not None:
        loads = [a for a in repair.actions if a.get("action") == "loaded" and a.get("replica") == victim]
        earlier = [t for t in bench.scheduler.ticks if ready <= t.started < repair.started]
        result["repair_pass"] = {
            "started_after_ready_s": repair.started - ready,
            "duration_s": repair.ended - repair.started,
            "loads": [{"model": a["model"], "versions": a.get("versions"), "seconds": a.get("seconds")} for a in loads],
            "load_seconds_sum": sum(float(a.get("seconds") or 0) for a in loads),
            "passes_started_after_ready_before_it": len(earlier),
            "errors_of_those_passes": sorted({e[:300] for t in earlier for e in t.errors}),
        }
    return result


def failures_between(timelines: Iterable[Sequence[tuple[float, str]]], start: float, end: float) -> tuple[int, int]:
    sent = failed = 0
    for line in timelines:
        for t, served in line:
            if start <= t < end:
                sent += 1
                failed += served == ""
    return failed, sent


# -- the idle pass (its own process, clean CPU figures) -------------------------------------------
def idle_pass(out: Path, models: int, ticks: int) -> dict[str, Any] | None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "tick_cost.py"),
        "--replicas",
        "3",
        "--models",
        str(models),
        "--ticks",
        str(ticks),
        "--postgres",
        "",
        "--out",
        str(out),
    ]
    print(f"== {' '.join(command)}", flush=True)
    done = subprocess.run(command, cwd=ROOT, check=False)
    path = out / "tick_cost_fleet.json"
    if done.returncode != 0 or not path.is_file():
        print(f"  idle pass failed (exit {done.returncode})", flush=True)
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- report ---------------------------------------------------------------------------------------
def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(values: list[float], digits: int = 1) -> str:
    return Spread.of(values).fmt(digits) if values else "-"


def render(data: dict[str, Any], command: str) -> str:
    policy = data["policy"]
    lines = [
        "## Fleet (issue 9): three replicas behind a load balancer",
        "",
        f"Command: `{command}` ({data['date']}, {data['seconds'] / 60:.0f} min in all). Figures of one run, "
        "measured side by side. **Caveat: a noisy, shared 2-core machine**; other sessions' tests (with their own "
        "Tritons) may have run at the same time, and the load generator, the control plane, three Tritons, "
        "HAProxy and Prometheus all share the 2 cores. Rates are given with 95 % intervals.",
        "",
        *(
            [
                f"Code measured: commit {data['code']['head']}"
                + (
                    f" plus uncommitted changes to {len(data['code']['uncommitted_files'])} file(s) under control_plane/, "
                    f"probes/ and builders/ (diff sha256 {data['code']['uncommitted_diff_sha256']}: work of other "
                    "sessions in the same checkout at the time)."
                    if data["code"].get("uncommitted_files")
                    else "."
                ),
                "",
            ]
            if data.get("code")
            else []
        ),
        "Set-up: `control_plane.local_fleet.LocalFleet` (3 real `tritonserver` replicas on one model repository, "
        "a real HAProxy balancing each gRPC call round robin, a real Prometheus scraping every replica each "
        "second; the fleet file's `metrics: {source: prometheus}` is what the judge reads), a Runtime on SQLite "
        f"over that fleet file, and a scheduler thread running `reconciler.tick` every {data['pass_interval_s']:g} s "
        "(reconcile, probe, judge: the pass interval; at once when a pass overran). Client load through the load "
        f"balancer on every model from start to end: one `LoadGenerator` per model ({LIVE['concurrency']} thread, "
        f"{LIVE['pause_s'] * 1000:.0f} ms pause, 4 golden rows per request, no version named). Models are the "
        "small ONNX classifiers of `tests/classifier_models.py`.",
        "",
        "Policy: shepherd.yaml's defaults with "
        + ", ".join(f"`{k}: {v}`" for k, v in data.get("policy_changes", POLICY_CHANGES).items())
        + " (so "
        + ", ".join(f"{k} {policy[k]}" for k in POLICY_SHOWN if k in policy)
        + "); models: "
        + ", ".join(f"`{m}` strategy `{s}`" for m, s in MODELS.items())
        + ". On 3 replicas the canary steps `(1, '50%')` are both capped at half the fleet (1 replica), so a canary "
        "has one step (candidate on r0, fresh baseline on r1, stable on r2), then promotion to every replica. "
        "Prometheus windows shorter than 5 s are deferred to the next one (`min_window_seconds` default).",
        "",
    ]
    rates = data.get("client_rates") or {}
    if rates:
        names = sorted({m for per in rates.values() for m in per})
        lines += [
            "Client requests sent per second through the load balancer, measured per phase (the regression phase "
            f"adds a second generator on `reg`: {REG_EXTRA['concurrency']} thread, {REG_EXTRA['pause_s'] * 1000:g} ms "
            "pause, so that the canary replica sees hundreds of requests within the bake time):",
            "",
            table(["phase", *names], [[p, *(f"{rates[p].get(m, 0):.0f}" for m in names)] for p in rates]),
            "",
        ]
    # 1. shares
    lines += [
        "### Share of client requests answered by the candidate",
        "",
        "From every A/A rollout below: the share of the model's answered client requests that the candidate "
        "answered (`LoadReport.served_by` per request: Triton names the answering version), per phase. Preflight: "
        "from its start to the canary start. A step: from the candidate's first answer after the step was recorded "
        "(its load takes ~2 s) to the next step or the decision. Promoted: from every replica serving the "
        "candidate to the next rollout's publish. Pooled over the rollouts, Wilson 95 % interval on the pooled "
        "count (requests are not independent: round robin is deterministic, so the per-rollout spread is the "
        "better guide).",
        "",
        table(
            [
                "strategy",
                "phase",
                "expected (k/N)",
                "rollouts",
                "candidate / answered",
                "pooled share (95 % CI)",
                "per rollout median (min-max)",
            ],
            [
                [
                    r["strategy"],
                    r["phase"],
                    f"{r['expected']:.3f}",
                    r["rollouts"],
                    f"{r['k']}/{r['n']}",
                    "-" if r["pooled"] is None else f"{r['pooled']:.3f} ({r['wilson'][0]:.3f}-{r['wilson'][1]:.3f})",
                    "-"
                    if not r["per_rollout"]
                    else Spread(
                        r["per_rollout"]["median"],
                        r["per_rollout"]["min"],
                        r["per_rollout"]["max"],
                        r["per_rollout"]["n"],
                    ).fmt(3),
                ]
                for r in data["shares"]
            ],
        ),
        "",
    ]
    # 2. A/A
    aa = data["aa"]
    lines += ["### A/A rollouts under load: false rollbacks", ""]
    rows = []
    for strategy in ("canary", "bluegreen"):
        runs = [r for r in aa if r["strategy"] == strategy]
        if not runs:
            continue
        rolled = sum(1 for r in runs if r["final_state"] == "rolled_back")
        other = [r["final_state"] for r in runs if r["final_state"] not in ("rolled_back", "promoted")]
        times = [r["publish_to_decision_s"] for r in runs if r.get("publish_to_decision_s") is not None]
        rows.append(
            [
                f"fleet `{strategy}` (real outcome)",
                len(runs),
                rate_text(rolled, len(runs)),
                ", ".join(other) or "-",
                _spread(times),
            ]
        )
    bg = [r for r in aa if r["strategy"] == "bluegreen" and "single_server" in r]
    if bg:
        old = sum(1 for r in bg if r["single_server"]["outcome"] == ROLLBACK)
        undecided = sum(1 for r in bg if r["single_server"]["outcome"] == WAIT)
        rows.append(
            [
                "today's single-server design (re-judged from the same bluegreen rollouts)",
                len(bg),
                rate_text(old, len(bg)),
                f"{undecided} undecided" if undecided else "-",
                "-",
            ]
        )
    lines += [
        table(
            [
                "design",
                "rollouts",
                "rolled back (Clopper-Pearson 95 % CI)",
                "other outcomes",
                "publish -> decision s, median (min-max)",
            ],
            rows,
        ),
        "",
    ]
    if bg:
        agree = sum(
            1
            for r in bg
            if {PROMOTE: "promoted", ROLLBACK: "rolled_back"}.get(r["replay_bluegreen"]["outcome"]) == r["final_state"]
        )
        lines += [
            "How the single-server figure was computed: a bluegreen rollout stores, after its cut-over (step 1), a "
            "window per probe for each side: the candidate (taking all client traffic on every replica; its "
            "Prometheus counters plus its golden probes) and stable (role `stable`, step 1: loaded beside it on "
            "every replica but seeing only the golden probes, since Triton routes unversioned requests to the "
            "highest loaded version). That is exactly the comparison today's single-server design made. For each "
            "bluegreen rollout, the candidate's step-1 windows were judged look by look against stable's step-1 "
            "windows with `control_plane.judging.decide_canary` on `control_plane.observe.evidence_from_windows` "
            "(look i: the first i windows of each side; baked seconds = window i's end - the cut-over; the same "
            "policy); the first look that was not `wait` is that design's outcome. The same replay with the bluegreen "
            "rule of the code measured (stable's pre-cut-over window of step 0; where `observe.bluegreen_stable` "
            "exists, its counts from step 0 and its latency from its probes of step 1) reproduced the recorded outcome "
            f"in {agree} of "
            f"{len(bg)} rollouts (a check of the replay). No old code was run. Unlike one Triton, the candidate's "
            "client traffic is spread over the 3 replicas here (about a third per replica), so the asymmetry the "
            "single-server rule suffers from is milder than on one server at the same total load.",
            "",
        ]
        reasons = [r["single_server"]["reason"] for r in bg if r["single_server"]["outcome"] == ROLLBACK]
        if reasons:
            lines += [f"- single-server replay, a rollback reason: {reasons[0][:400]}"]
    for strategy in ("canary", "bluegreen"):
        missed = [r for r in aa if r["strategy"] == strategy and r["final_state"] != "promoted"]
        for r in missed[:4]:
            lines.append(
                f"- `{strategy}` A/A v{r['version']} ended `{r['final_state']}` after "
                f"{_f(r.get('publish_to_decision_s'))} s: {(r['reason'] or '')[:400]}"
            )
        if len(missed) > 4:
            lines.append(
                f"- ... and {len(missed) - 4} more `{strategy}` A/A rollouts not promoted (reasons in fleet.json)"
            )
    for strategy in ("canary", "bluegreen"):
        runs = [r for r in aa if r["strategy"] == strategy]
        if runs:
            rolled = sum(1 for r in runs if r["final_state"] == "rolled_back")
            lines.append(
                f"- Goal (`{strategy}`): 0 false rollbacks: {rate_text(rolled, len(runs))}, {met(rolled == 0)}."
            )
    for outcome in ("promoted", "rolled_back"):
        runs = [r for r in aa if r["strategy"] == "bluegreen" and r["final_state"] == outcome and r.get("judged")]
        med = [r["judged"]["median_ratio"] for r in runs if r["judged"].get("median_ratio") is not None]
        p95 = [r["judged"]["p95_ratio"] for r in runs if r["judged"].get("p95_ratio") is not None]
        n = [r["judged"]["n"][0] for r in runs if r["judged"].get("n") and r["judged"]["n"][0] is not None]
        if med:
            lines.append(
                f"- Bluegreen A/A {outcome.replace('_', ' ')}, at the last decision: candidate / stable median latency "
                f"ratio {_spread(med, 2)}, p95 ratio {_spread(p95, 2)}, {_spread([float(x) for x in n], 0)} candidate "
                "samples (pooled over the step, informational: the judge decides on per-window pairs)."
            )
    windows = [w for r in aa if r["strategy"] == "bluegreen" for w in (r.get("stable_step0_windows") or [])[:1]]
    if windows:
        deferred = [
            r
            for r in aa
            if r["strategy"] == "bluegreen" and any(w["live_deferred"] for w in r.get("stable_step0_windows") or [])
        ]
        lines.append(
            f"- Bluegreen's pre-cut-over window of stable (step 0, one per rollout) was "
            f"{_spread([w['seconds'] for w in windows], 2)} s long; a window shorter than the Prometheus source's "
            "`min_window_seconds` (5 s) is stored as deferred, and `evidence_from_windows` then skips its counts "
            f"(live and probe): {len(deferred)} of {len(windows)} here"
            + (
                " (outcomes: "
                + ", ".join(f"{r['final_state']} after {_f(r.get('publish_to_decision_s'))} s" for r in deferred)
                + ")"
                if deferred
                else ""
            )
            + "."
        )
    lines.append("")
    # 3. regressions
    reg = data["regressions"]
    heavy, ratios = data.get("heavy"), data.get("heavy_ratios") or {}
    lines += [
        "### Regressions: canary start -> rolled back on every replica",
        "",
        f"Model `reg` (strategy canary). Latency: the `slow` classifier with hidden size {heavy}"
        + (
            ", the smallest size whose probe median reached ~1.5x `good`'s in a calibration on a separate local Triton "
            "(slow as version 2 beside good as version 1, each version under the same client load, paired probes; "
            "median / p95 ratio per size: "
            + ", ".join(
                f"{h}: {r['median']:.2f}x / {r['p95']:.2f}x"
                for h, r in sorted(ratios.items(), key=lambda kv: int(kv[0]))
            )
            + ")"
            if ratios
            else " (given with --heavy)"
        )
        + ". Errors: the `failing` classifier with its lookup threshold above every golden row (its golden probes "
        f"and preflight all pass); a second LoadGenerator sends, through the load balancer, a row beyond the threshold "
        f"at a rate set to {100 * ERROR_SHARE:.0f} % of the model's client requests (from the measured rate of the "
        "first); stable answers it, the candidate fails it (and any request Triton batched with it). Canary start = "
        "the store's transition to `canary`; rolled back on every replica = the first poll, after the decision, at "
        "which each replica's own repository index (polled every 100 ms by a separate client) no longer listed the "
        "candidate READY, LOADING or UNLOADING, the latest of the three.",
        "",
    ]
    rows = []
    for r in reg:
        judged = r.get("judged") or {}
        client = r.get("client_candidate_errors")
        rows.append(
            [
                r["kind"],
                r["final_state"],
                ",".join(r.get("loaded_on", [])) or "-",
                f"{_f(judged.get('median_ratio'), 2)}x / {_f(judged.get('p95_ratio'), 2)}x"
                if r["kind"] == "latency"
                else "-",
                (
                    f"{rate_text(client[0], client[1], 'wilson')} / {judged.get('errors_candidate')}/"
                    f"{judged.get('requests_candidate')} vs {judged.get('errors_stable')}/{judged.get('requests_stable')}"
                )
                if r["kind"] == "errors" and client
                else "-",
                _f(r.get("canary_to_decision_s")),
                _f(r.get("canary_to_rolled_back_everywhere_s")),
            ]
        )
    lines += [
        table(
            [
                "regression",
                "outcome",
                "candidate loaded on",
                "judged median / p95 ratio (last decision)",
                "candidate error rate seen by clients (Wilson 95 % CI) / errors the judge counted, candidate vs stable",
                "canary -> decision s",
                "canary -> rolled back on every replica s",
            ],
            rows,
        ),
        "",
    ]
    for kind in ("latency", "errors"):
        runs = [r for r in reg if r["kind"] == kind]
        if not runs:
            continue
        times = [r.get("canary_to_rolled_back_everywhere_s") for r in runs]
        got = [t for t in times if t is not None]
        ok = len(got) == len(runs) and max(got) <= ROLLBACK_GOAL_S
        lines.append(
            f"- Goal ({kind}, 5 %/1.5x): rolled back on every replica within {ROLLBACK_GOAL_S:g} s of canary start: "
            f"median {_f(statistics.median(got)) if got else '-'} s, max {_f(max(got)) if got else '-'} s over "
            f"{len(runs)} run(s){'' if len(got) == len(runs) else f' ({len(runs) - len(got)} never rolled back)'}: {met(ok)}."
        )
        for r in runs:
            if r["final_state"] != "rolled_back":
                lines.append(f"  - a {kind} run ended `{r['final_state']}`: {(r.get('last_decision') or '')[:400]}")
    lines.append("")
    # 4. failed client requests
    f = data["failures"]
    lines += [
        "### Failed client requests across promotions and rollbacks",
        "",
        table(
            ["period", "promotions + rollbacks", "client requests", "failed"],
            [[p["period"], p["transitions"], p["sent"], p["failed"]] for p in f["periods"]],
        ),
        "",
        f"- Goal: 0 failed client requests across {f['goal_transitions']} promotions and rollbacks (A/A phase and "
        f"latency rollbacks): {f['goal_failed']} failed, {met(f['goal_failed'] == 0)}."
        + (
            " Failure messages seen in the whole run (kill phase and error runs included): "
            + "; ".join(f"`{m.splitlines()[0][:160]}`" for m in f["messages"][:4])
            if f["messages"]
            else ""
        ),
        "- The error runs are left out of the goal: there the candidate fails, by design, the unlucky rows and every "
        "good request Triton batched with one (dynamic batching concatenates requests into one session call).",
        "",
    ]
    # 5. kill / restart
    lines += kill_lines(data["kill"])
    rerun = data.get("kill_rerun")
    if rerun:
        code = rerun.get("code") or {}
        lines += [
            f'Re-run of this phase alone after the fix "a restarted replica gets a fresh channel" (commit '
            f"{code.get('head')}{' plus uncommitted changes' if code.get('uncommitted_files') else ''}), "
            f"{rerun.get('date')}: `{rerun.get('command')}`; the index watcher now also opens a new channel after "
            "each failed poll, so its own reconnect backoff cannot delay what it sees:",
            "",
            *kill_lines(rerun["kill"], heading=False),
        ]
    # 6. idle pass
    idle = data.get("idle")
    lines += [
        f"### One idle pass over {(idle or {}).get('models', 50)} models x {(idle or {}).get('replicas', 3)} replicas",
        "",
    ]
    if idle:
        lines += idle_lines(idle)
    else:
        lines += ["Did not run or failed in this run; no figures.", ""]
    return "\n".join(lines)


def kill_lines(kills: list[dict[str, Any]], *, heading: bool = True) -> list[str]:
    lines: list[str] = []
    first = kills[0]
    lines += [
        *(["### A replica killed and restarted", ""] if heading else []),
        f"`LocalFleet.kill('{first['replica']}')` (SIGKILL of its process group) under the client load, passes "
        f"going on every {first['pass_interval_s']:g} s without it, then `LocalFleet.restart` after the outage given "
        "(same ports; in explicit mode it serves nothing until loaded). Stable versions wanted back: "
        + ", ".join(f"{m} v{v}" for m, v in first["wanted"].items())
        + ". Ready = `restart()` returned (Triton answers ready); serving = the first poll of the replica's own "
        "index (every 50 ms, a client with its own gRPC subchannel pool) listing every one of them READY; the "
        "repairing pass = the first pass whose actions loaded a model on it.",
        "",
        table(
            [
                "outage s",
                "HAProxy took it out after kill s",
                "restart() s",
                "back in HAProxy after ready s",
                "ready -> serving every stable version s",
                "passes started after ready before the repairing one",
                "repairing pass started after ready s",
                "its loads on the replica s (sum)",
                "its duration s",
                "client requests failed during outage / after restart",
            ],
            [
                [
                    f"{k['down_s']:g}",
                    _f(k.get("balancer_out_s"), 2),
                    _f(k.get("restart_s"), 2),
                    _f(k.get("balancer_in_after_ready_s"), 2),
                    _f(k.get("ready_to_serving_s"), 2),
                    (k.get("repair_pass") or {}).get("passes_started_after_ready_before_it", "-"),
                    _f((k.get("repair_pass") or {}).get("started_after_ready_s"), 2),
                    _f((k.get("repair_pass") or {}).get("load_seconds_sum"), 2),
                    _f((k.get("repair_pass") or {}).get("duration_s"), 2),
                    f"{k['failed_kill'][0]}/{k['failed_kill'][1]} / {k['failed_restart'][0]}/{k['failed_restart'][1]}",
                ]
                for k in kills
            ],
        ),
        "",
    ]
    for k in kills:
        rp = k.get("repair_pass") or {}
        if k.get("ready_to_serving_s") is None or not rp:
            lines.append(
                f"- Outage {k['down_s']:g} s: the replica did not serve every stable version again: **not met**."
            )
            continue
        bound = k["pass_interval_s"] + rp["duration_s"]
        ok = k["ready_to_serving_s"] <= bound
        lines.append(
            f"- Goal (outage {k['down_s']:g} s): serving the stable versions within one pass plus its load time "
            f"(bound: pass interval {k['pass_interval_s']:g} s + the repairing pass's {rp['duration_s']:.2f} s = "
            f"{bound:.2f} s): {k['ready_to_serving_s']:.2f} s after it was ready, "
            f"{rp['passes_started_after_ready_before_it']} pass(es) in between: {met(ok)}."
            + (
                f" Those passes reported: `{rp['errors_of_those_passes'][0][:240]}`"
                if rp.get("errors_of_those_passes")
                else ""
            )
        )
    failed_after = [k for k in kills if k["failed_restart"][0]]
    if failed_after:
        lines.append(
            "- Client requests failed after each restart ("
            + ", ".join(f"{k['failed_restart'][0]} after the {k['down_s']:g} s outage" for k in failed_after)
            + "): the replica answers ready (Triton's `/v2/health/ready`, `--strict-readiness=false`) and HAProxy "
            "puts it back in rotation within a second, before a pass has loaded its models, so requests balanced to "
            "it meet a model it does not serve (`NOT_FOUND`) until the repairing pass is done."
        )
    lines.append("")
    return lines


def idle_lines(idle: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in idle["results"].items():
        calls = r["triton_calls_per_tick"]
        rows.append(
            [
                name,
                idle["loaded"],
                Spread(**_sp(r["cpu_ms"])).fmt(1),
                Spread(**_sp(r["wall_ms"])).fmt(1),
                Spread(**_sp(r["sql_statements_per_tick"])).fmt(0),
                Spread(**_sp(r["snapshots_per_tick"])).fmt(0),
                "; ".join(
                    f"{rep}: " + ", ".join(f"{m} {n:g}" for m, n in sorted(c.items()))
                    for rep, c in sorted(calls.items())
                ),
                " / ".join(Spread(**_sp(r[f"{p}_cpu_ms"])).fmt(1) for p in ("reconcile", "probe", "judge")),
                Spread(**_sp(r["threads_started_per_tick"])).fmt(0) if r.get("threads_started_per_tick") else "-",
                r["actions"],
            ]
        )
    cpu = idle["results"].get(f"{idle['replicas']} replicas", {}).get("cpu_ms", {}).get("median")
    lines = [
        f"Command: `{idle['command']}` (run by bench/fleet.py in its own process). {idle['models']} `good` "
        f"classifiers published and promoted on every replica of a fresh LocalFleet with {idle['replicas']} "
        f"replicas ({idle['seed_seconds']:.0f} s of loads, preflight skipped as in the single-Triton figure), "
        "then 2 warm-up passes and "
        f"{idle['ticks']} measured `reconciler.tick(rt)` with nothing to do: `time.process_time()` (this process, "
        "all threads: the index reads run in a thread pool), SQL statements (a SQLAlchemy `before_cursor_execute` "
        "listener), store snapshots (calls of `rt.store.read.snapshot`) and Triton repository-API calls per replica "
        "(`TritonAdmin.index`, `_load`, `unload` wrapped in the bench only), median with (min-max) per pass. "
        "The `1 replica` row: the same process and Tritons, a Runtime over a fleet file naming r0 only. Threads "
        "started per pass: calls of `threading.Thread.start` during the pass."
        + (
            f" Code measured by this process: commit {idle['code']['head']}"
            + (
                f" plus uncommitted changes to {len(idle['code']['uncommitted_files'])} file(s) (diff sha256 "
                f"{idle['code']['uncommitted_diff_sha256']})."
                if idle["code"].get("uncommitted_files")
                else "."
            )
            if idle.get("code")
            else ""
        ),
        "",
        table(
            [
                "fleet",
                "models",
                "CPU ms / pass",
                "wall ms / pass",
                "SQL statements / pass",
                "store snapshots / pass",
                "Triton calls / pass, per replica",
                "CPU ms of reconcile / probe / judge alone",
                "threads started / pass",
                "actions",
            ],
            rows,
        ),
        "",
        "For comparison, one idle pass over 50 models on one Triton: 426 ms CPU and 702 SQL statements before the "
        "structure rework (issue 7), 16 ms and 9 statements after it (sections above).",
        "",
    ]
    if cpu is not None:
        big = idle["results"][f"{idle['replicas']} replicas"]
        per = big["triton_calls_per_tick"]
        once = all(abs(c.get("index", 0) - 1) < 1e-9 and len(c) == 1 for c in per.values())
        snaps = big["snapshots_per_tick"]["median"]
        reads = ", ".join(f"{rep} {c.get('index', 0):g}" for rep, c in sorted(per.items()))
        lines.append(
            f"- Goal: the store and each replica's index read once per pass, <= 50 ms CPU: index reads per replica "
            f"{reads}, store snapshots "
            f"{snaps:g} per pass (reconcile, probe and judge called alone, each with no canary: "
            f"{big['snapshots_reconcile']:g} / {big['snapshots_probe']:g} / {big['snapshots_judge']:g}), "
            f"{big['sql_statements_per_tick']['median']:g} SQL statements, CPU {cpu:.1f} ms: "
            f"index {met(once)}, store {met(snaps <= 1)}, CPU {met(cpu <= 50)}"
            + (f" (slowest pass {big['cpu_ms']['max']:.1f} ms)" if big["cpu_ms"]["max"] > 50 else "")
            + "."
        )
        lines.append("")
    return lines


def _sp(d: dict[str, Any]) -> dict[str, Any]:
    return {"median": d["median"], "low": d["min"], "high": d["max"], "n": d["n"]}


def write_docs(markdown: str, doc: Path = DOC) -> None:
    """Replace the `## Fleet` section of docs/benchmarks.md (up to the next `## ` heading), or append it."""
    text = doc.read_text()
    head = "## Fleet"
    start = text.find("\n" + head)
    if start < 0:
        doc.write_text(text.rstrip("\n") + "\n\n" + markdown.rstrip("\n") + "\n")
        return
    end = text.find("\n## ", start + 1)
    tail = text[end:] if end >= 0 else "\n"
    doc.write_text(text[: start + 1] + markdown.rstrip("\n") + "\n" + tail)


# -- main -----------------------------------------------------------------------------------------
def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    data: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "pass_interval_s": PASS_INTERVAL_S,
        "code": code_state(),
        "policy_changes": POLICY_CHANGES,
    }
    began = time.time()
    heavy = args.heavy
    if heavy is None and args.regressions:
        heavy, ratios = calibrate_heavy(scratch / "calibration")
        data["heavy_ratios"] = {str(h): r for h, r in ratios.items()}
    data["heavy"] = heavy
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    config = policy_file(scratch)
    x, _ = golden_set()
    with LocalFleet(repo.root, replicas=3, state_dir=scratch / "fleet") as fleet:
        settings = load_settings(
            config,
            overrides={"repo": repo.root, "db_url": f"sqlite:///{scratch / 'history.db'}", "fleet": fleet.fleet_file},
        )
        rt = open_runtime(settings)
        data["policy"] = rt.settings.defaults.as_dict()
        scheduler = Scheduler(rt, PASS_INTERVAL_S).start()
        loads: dict[str, LoadGenerator] = {}
        bench = Bench(scratch, repo, fleet, rt, scheduler, loads)
        try:
            for model in MODELS:
                bench.stable[model] = establish(bench, model)
                loads[model] = LoadGenerator(fleet.grpc_url, model, {"x": x[:4]}, **LIVE).start()
            print(f"  stable versions: {bench.stable}; fleet {[r.grpc for r in fleet.replicas]}", flush=True)
            time.sleep(3.0)
            phase: dict[str, tuple[float, float]] = {}
            t0 = time.time()
            data["aa"] = aa_phase(bench, args.aa)
            phase["aa"] = (t0, time.time())
            t0 = time.time()
            data["regressions"] = regression_phase(bench, args.regressions, heavy or 0) if args.regressions else []
            phase["regressions"] = (t0, time.time())
            t0 = time.time()
            data["kill"] = [kill_phase(bench, down_s=down) for down in args.down]
            phase["kill"] = (t0, time.time())
            time.sleep(1.0)
        finally:
            reports: dict[str, LoadReport] = {m: load.stop() for m, load in loads.items()}
            busy_report = bench.reg_busy.stop() if bench.reg_busy is not None else None
            for extra in bench.extra_loads:
                extra.stop()
            scheduler.stop()
            rt.close()
    timelines = {m: r.timeline for m, r in reports.items()}
    runs = data["aa"]
    for i, this in enumerate(runs):
        later = next((r for r in runs[i + 1 :] if r["model"] == this["model"]), None)
        this["next_published_at"] = later["published_at"] if later else phase["aa"][1]
    data["share_rows"] = shares(runs, timelines)
    data["shares"] = share_table(data["share_rows"])
    # Failed client requests per period.
    all_lines = list(timelines.values()) + ([busy_report.timeline] if busy_report is not None else [])
    reg_runs = data["regressions"]
    lat_runs = [r for r in reg_runs if r["kind"] == "latency"]
    periods = []
    aa_failed, aa_sent = failures_between(all_lines, *phase["aa"])
    aa_transitions = sum(1 for r in runs if r["final_state"] in ("promoted", "rolled_back"))
    periods.append(
        {"period": "A/A phase (all models)", "transitions": aa_transitions, "sent": aa_sent, "failed": aa_failed}
    )
    lat_failed = lat_sent = 0
    for r in lat_runs:
        failed_, sent_ = failures_between(all_lines, r["published_at"], r["settled_at"] + 1.0)
        lat_failed += failed_
        lat_sent += sent_
    lat_transitions = sum(1 for r in lat_runs if r["final_state"] in ("promoted", "rolled_back"))
    periods.append(
        {
            "period": "latency regressions (all models)",
            "transitions": lat_transitions,
            "sent": lat_sent,
            "failed": lat_failed,
        }
    )
    err_failed = err_sent = 0
    for r in reg_runs:
        if r["kind"] == "errors":
            others = [timelines[m] for m in MODELS if m != "reg"]
            failed_, sent_ = failures_between(others, r["published_at"], r["settled_at"] + 1.0)
            err_failed += failed_
            err_sent += sent_
    periods.append(
        {
            "period": "error regressions (the other models only)",
            "transitions": sum(1 for r in reg_runs if r["kind"] == "errors"),
            "sent": err_sent,
            "failed": err_failed,
        }
    )
    for kill in data["kill"]:
        kill["failed_kill"] = list(failures_between(all_lines, kill["killed_at"], kill["restart_called_at"]))
        kill["failed_restart"] = list(failures_between(all_lines, kill["restart_called_at"], kill["ended_at"]))
    messages = sorted({m for r in reports.values() for m in r.failure_messages})
    data["failures"] = {
        "periods": periods,
        "goal_transitions": aa_transitions + lat_transitions,
        "goal_failed": aa_failed + lat_failed,
        "messages": messages,
        "total": {m: [r.failures, r.requests] for m, r in reports.items()},
    }
    data["phases_s"] = {name: end - start for name, (start, end) in phase.items()}
    lines_by_name = {**timelines, **({"reg (extra)": busy_report.timeline} if busy_report is not None else {})}
    data["client_rates"] = {
        name: {
            m: sum(1 for t, _ in line if start <= t < end) / max(1e-9, end - start) for m, line in lines_by_name.items()
        }
        for name, (start, end) in phase.items()
    }
    if not args.skip_idle:
        t0 = time.time()
        data["idle"] = idle_pass(args.out or scratch / "results", args.idle_models, args.idle_ticks)
        data["phases_s"]["idle"] = time.time() - t0
    data["seconds"] = time.time() - began
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aa", type=int, default=20, help="A/A rollouts per strategy")
    parser.add_argument("--regressions", type=int, default=3, help="runs of each regression (latency, errors)")
    parser.add_argument("--heavy", type=int, help="skip the calibration and use this `slow` hidden size")
    parser.add_argument("--down", type=float, nargs="*", default=[5.0, 30.0], help="outages of the killed replica, s")
    parser.add_argument("--idle-models", type=int, default=50)
    parser.add_argument("--idle-ticks", type=int, default=10)
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--out", type=Path, help="folder for fleet.json and fleet.md")
    parser.add_argument("--write-docs", action="store_true", help="replace the Fleet section of docs/benchmarks.md")
    parser.add_argument("--render", action="store_true", help="only re-render --out's fleet.json")
    parser.add_argument(
        "--kill-from", type=Path, help="with --render: add the kill phase of the fleet.json in this folder (a re-run)"
    )
    args = parser.parse_args(argv)
    if args.render:
        if args.out is None:
            raise SystemExit("--render needs --out")
        data = json.loads((args.out / "fleet.json").read_text())
        if args.kill_from is not None:
            other = json.loads((args.kill_from / "fleet.json").read_text())
            data["kill_rerun"] = {k: other.get(k) for k in ("kill", "code", "command", "date")}
    else:
        with tempfile.TemporaryDirectory(prefix="shepherd-bench-fleet-") as scratch:
            data = run(args, Path(scratch))
            if args.out is not None:  # the SQL history of the run, for re-analysis without a rerun
                args.out.mkdir(parents=True, exist_ok=True)
                for suffix in ("", "-wal", "-shm"):
                    kept = Path(scratch) / f"history.db{suffix}"
                    if kept.is_file():
                        shutil.copyfile(kept, args.out / f"fleet-history.db{suffix}")
        data["command"] = (
            ".venv/bin/python bench/fleet.py " + " ".join(argv if argv is not None else sys.argv[1:])
        ).strip()
        data["machine"] = machine()
    markdown = render(data, data["command"])
    write_result(args.out, "fleet", data, markdown)
    if args.write_docs:
        write_docs(markdown)
        print(f"wrote the Fleet section of {DOC} ({date.today().isoformat()})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
