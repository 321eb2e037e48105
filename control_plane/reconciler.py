"""The decision path of the control plane, as a level-triggered reconciler.

Every pass reads the desired state (SQL) and the actual state (Triton's repository index) and
converges, so a crash at any line is repaired by the next pass. Desired state is always written to
SQL *before* Triton is touched: a version is marked rolled_back, then unloaded; marked canary, then
loaded. A version's life:

    discovered -> preflight -> canary -> promoted
                     |           |-> rolled_back
                     |-> rejected / failed (Triton could not load it)

The first version of a model has no stable version to compare with and is promoted on its
preflight alone. Supporting models (tokenizers, ensembles) are loaded once their model serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from builders.errors import BuilderError
from builders.manifest import Manifest
from builders.repository import PREFLIGHT_SUFFIX
from control_plane import golden as golden_sets
from control_plane.errors import TritonLoadFailed, TritonUnreachable
from control_plane.events import announce
from control_plane.evidence import evidence_for_rollout, evidence_from_windows, probe_figures
from control_plane.judging import Verdict, judge_canary, judge_preflight
from control_plane.runtime import Runtime
from control_plane.store.models import State
from control_plane.store.records import VersionRecord
from probes.golden import ProbeRun, send_paired_probes, send_probe
from probes.metrics import scrape, window

log = logging.getLogger("shepherd.reconciler")

SUPPORT_KINDS = frozenset({"tokenizer", "ensemble"})
SYSTEM = "shepherd"
PREFLIGHT_ROUNDS = 40  # bound on probe requests in one preflight
PREFLIGHT_ATTEMPTS = 5  # undecided preflights before a version is rejected


@dataclass
class TickReport:
    """What one pass did, for `shepherd tick --json` and the tests."""

    actions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, action: str, model: str, version: int | None = None, **details: Any) -> None:
        self.actions.append({"action": action, "model": model, "version": version, **details})
        log.info("%s %s %s %s", action, model, version if version is not None else "", details or "")


# -- observing --------------------------------------------------------------------------------
def model_kind(rt: Runtime, model: str) -> str | None:
    """The kind recorded in the newest readable manifest of `model` (None if it has none)."""
    for version in reversed(rt.repo.versions(model)):
        try:
            return rt.repo.read_manifest(model, version).kind
        except BuilderError:
            continue
    return None


def discover(rt: Runtime, model: str, kind: str, report: TickReport) -> None:
    """Record every version folder with a readable manifest; a broken one is reported, not recorded."""
    rt.store.ensure_model(model, kind=kind)
    known = {record.version for record in rt.store.versions(model=model)}
    for version in rt.repo.versions(model):
        if version in known:
            continue
        try:
            manifest = rt.repo.read_manifest(model, version)
        except BuilderError as exc:
            report.errors.append(str(exc))
            continue
        if rt.store.record_version(model, version, manifest=_manifest_dict(manifest), kind=kind):
            report.add("discovered", model, version)


def _manifest_dict(manifest: Manifest) -> dict[str, Any]:
    import json

    return dict(json.loads(manifest.to_json()))


def desired_versions(rt: Runtime, model: str) -> set[int]:
    """Versions that should serve under the model's own name right now."""
    pinned = rt.store.pinned(model)
    if pinned is not None:
        return {pinned}
    wanted: set[int] = set()
    stable = rt.store.stable(model)
    if stable is not None:
        wanted.add(stable.version)
    for record in rt.store.versions(model=model, states=[State.canary]):
        wanted.add(record.version)
    drain = timedelta(seconds=rt.settings.policy_for(model).drain_seconds)
    for record in rt.store.versions(model=model, states=[State.promoted]):
        if not record.is_stable and record.retired_at is not None and rt.now() - record.retired_at < drain:
            wanted.add(record.version)  # the old stable drains in-flight requests
    return wanted


# -- converging -------------------------------------------------------------------------------
def converge(rt: Runtime, model: str, report: TickReport, *, wait_unloads: bool = True) -> None:
    """Make Triton serve exactly the desired versions of `model`; a version that fails to load is failed.

    The load itself moves request routing atomically; `wait_unloads` then polls Triton's index
    until the released versions are really gone (a rollback measures both moments).
    """
    for _ in range(3):
        wanted = desired_versions(rt, model)
        live = rt.admin.ready_versions(model)
        if live == wanted:
            return
        if not wanted:
            rt.admin.unload(model)
            report.add("unloaded", model, None, versions=sorted(live))
            return
        try:
            started = time.monotonic()
            rt.admin.load_versions(model, rt.repo.read_config(model), wanted)
            report.add("loaded", model, None, versions=sorted(wanted), seconds=round(time.monotonic() - started, 3))
        except TritonLoadFailed as exc:
            culprit = _failed_candidate(rt, model, wanted)
            if culprit is None:
                report.errors.append(str(exc))
                return
            _fail(rt, model, culprit, reason=f"Triton could not load it: {exc}", report=report)
            continue
        gone = live - wanted
        if gone and wait_unloads and not rt.admin.wait_gone(model, gone, timeout_s=30):
            report.errors.append(f"{model} versions {sorted(gone)} still loaded 30 s after their unload")
        return


def _failed_candidate(rt: Runtime, model: str, wanted: set[int]) -> int | None:
    """The non-stable version among `wanted` that Triton reports as unavailable."""
    stable = rt.store.stable(model)
    for entry in rt.admin.index():
        unavailable = entry.model == model and entry.version in wanted and entry.state == "UNAVAILABLE"
        if unavailable and (stable is None or entry.version != stable.version):
            return entry.version
    candidates = [v for v in wanted if stable is None or v != stable.version]
    return max(candidates) if candidates else None


def ensure_support_models(rt: Runtime, model: str, support: list[str], report: TickReport) -> None:
    """Load the tokenizer and ensemble of a text model once the model itself serves."""
    index = rt.admin.index()
    if not rt.admin.ready_versions(model, index):
        return
    for name in support:
        if not name.startswith(f"{model}_") or rt.admin.ready_versions(name, index):
            continue
        try:
            rt.admin.load(name)
            report.add("loaded", name, None, role="support")
        except TritonLoadFailed as exc:
            report.errors.append(str(exc))


def sweep_preflight_aliases(rt: Runtime, report: TickReport) -> None:
    """Unload preflight aliases left by a crash whose model has no version in preflight any more."""
    suffix = PREFLIGHT_SUFFIX
    for entry in rt.admin.index():
        if not entry.model.endswith(suffix) or entry.state not in ("READY", "LOADING"):
            continue
        model = entry.model.removesuffix(suffix)
        if rt.store.versions(model=model, states=[State.preflight]):
            continue  # its preflight runs again in this pass and cleans up after itself
        rt.admin.unload(entry.model)
        rt.repo.unlink_preflight(model)
        report.add("unloaded", entry.model, entry.version, role="stale preflight alias")


# -- transitions --------------------------------------------------------------------------------
def _fail(rt: Runtime, model: str, version: int, *, reason: str, report: TickReport) -> None:
    rt.store.transition(model, version, State.failed, reason=reason)
    report.add("failed", model, version, reason=reason)
    announce(rt, event="failure", model=model, version=version, reason=reason, evidence={})


def begin_preflight(rt: Runtime, model: str, version: int, report: TickReport) -> None:
    rt.store.transition(model, version, State.preflight, reason="next candidate")
    report.add("preflight", model, version)


def run_preflight(rt: Runtime, record: VersionRecord, report: TickReport) -> None:
    """Load the candidate under its preflight alias (no client traffic), probe it with its golden set, judge."""
    model, version = record.model, record.version
    policy = rt.settings.policy_for(model)
    alias = rt.repo.link_preflight(model, version)
    try:
        try:
            rt.admin.load_versions(alias, rt.repo.preflight_config(model), [version])
        except TritonLoadFailed as exc:
            _fail(rt, model, version, reason=f"Triton could not load it: {exc}", report=report)
            return
        golden = golden_sets.golden_for(rt.repo, model, version)
        started = rt.now()
        run, latencies, requests, errors = _preflight_probes(rt, alias, version, golden, policy)
        quality = golden_sets.score(golden, run.outputs) if (golden and run and run.outputs is not None) else {}
        stable = rt.store.stable(model)
        rt.store.add_probe_window(
            model,
            version,
            role="preflight",
            rollout_id=None,
            started_at=started,
            ended_at=rt.now(),
            figures={
                **probe_figures(run, quality=quality.get("value"), agreement=None, server=None),
                "requests": requests,
                "errors": errors,
                "samples": latencies,
            },
        )
        # Every preflight attempt of this version counts: an undecided one is probed again next tick.
        evidence = evidence_from_windows(version, rt.store.probe_windows(model, version, role="preflight"))
        verdict = judge_preflight(evidence, policy, stable_quality=stable.quality_value if stable else None)
        rt.store.add_decision(
            model,
            version,
            outcome=verdict.outcome,
            reason=verdict.reason,
            checks=verdict.as_dict(),
            policy=policy.as_dict(),
        )
    finally:
        try:
            rt.admin.unload(alias)
        except TritonUnreachable as exc:
            report.errors.append(str(exc))
        rt.repo.unlink_preflight(model)
    if run is None:
        verdict = Verdict(outcome="reject", reason="no golden set to probe it with", checks=())
    elif verdict.outcome == "wait":
        attempts = [d for d in rt.store.decisions(model, version) if d.outcome == "wait"]
        if len(attempts) >= PREFLIGHT_ATTEMPTS:
            verdict = Verdict(
                outcome="reject",
                reason=f"no decision after {len(attempts)} preflight attempts: {verdict.reason}",
                checks=verdict.checks,
            )
    if verdict.outcome == "reject":
        rt.store.transition(model, version, State.rejected, reason=verdict.reason, evidence=verdict.as_dict())
        report.add("rejected", model, version, reason=verdict.reason)
        announce(rt, event="rejection", model=model, version=version, reason=verdict.reason, evidence=verdict.as_dict())
    elif verdict.outcome == "promote" and stable is None:
        promote(rt, model, version, reason=f"first version: {verdict.reason}", report=report)
    elif verdict.outcome == "promote" and stable is not None:
        rt.store.transition(model, version, State.canary, reason="preflight passed", evidence=verdict.as_dict())
        rollout_id = rt.store.start_rollout(model, version, stable.version)
        report.add("canary", model, version, rollout=rollout_id, stable=stable.version)


def _preflight_probes(
    rt: Runtime, alias: str, version: int, golden: golden_sets.Golden | None, policy: Any
) -> tuple[ProbeRun | None, list[float], int, int]:
    """The whole golden set once (for quality), then slices until there are enough requests to judge."""
    if golden is None:
        return None, [], 0, 0
    first = send_probe(rt.grpc_url, alias, version, golden.inputs, batch_size=policy.probe_batch_size)
    latencies, requests, errors = list(first.latencies_ms), first.requests, first.errors
    target = 2 * policy.min_samples
    for round_number in range(PREFLIGHT_ROUNDS):
        if requests >= target:
            break
        extra = send_probe(
            rt.grpc_url,
            alias,
            version,
            _slice(golden.inputs, round_number, policy.probe_rows),
            batch_size=policy.probe_batch_size,
        )
        latencies.extend(extra.latencies_ms)
        requests += extra.requests
        errors += extra.errors
    return first, latencies, requests, errors


def promote(rt: Runtime, model: str, version: int, *, reason: str, report: TickReport, actor: str = SYSTEM) -> None:
    rt.store.transition(model, version, State.promoted, reason=reason, actor=actor)
    rt.store.set_stable(model, version, reason=reason, actor=actor)
    rollout = rt.store.open_rollout(model, version)
    if rollout is not None:
        rt.store.end_rollout(rollout.id, outcome="promoted")
    report.add("promoted", model, version, reason=reason)
    converge(rt, model, report)
    announce(rt, event="promotion", model=model, version=version, reason=reason, evidence={"actor": actor})


def roll_back(
    rt: Runtime, model: str, version: int, *, verdict: Verdict, report: TickReport, actor: str = SYSTEM
) -> dict[str, float]:
    """Mark the version rolled back, send traffic back to stable at once, verify it is gone from Triton."""
    decided = time.monotonic()
    rt.store.transition(
        model, version, State.rolled_back, reason=verdict.reason, actor=actor, evidence=verdict.as_dict()
    )
    rollout = rt.store.open_rollout(model, version)
    if rollout is not None:
        rt.store.end_rollout(rollout.id, outcome="rolled_back")
    timings: dict[str, float] = {}
    try:
        converge(rt, model, report, wait_unloads=False)
        timings["traffic_back_s"] = round(time.monotonic() - decided, 4)
        gone = rt.admin.wait_gone(model, [version], timeout_s=30)
        timings["unload_verified_s"] = round(time.monotonic() - decided, 4)
        if not gone:
            report.errors.append(f"{model} version {version} still in Triton's index after rollback")
    except TritonUnreachable as exc:
        report.errors.append(f"rollback of {model} v{version} recorded; Triton unreachable, next tick unloads: {exc}")
    report.add("rolled_back", model, version, reason=verdict.reason, **timings)
    announce(
        rt,
        event="rollback",
        model=model,
        version=version,
        reason=verdict.reason,
        evidence={**verdict.as_dict(), **timings},
    )
    return timings


# -- probing and judging canaries -------------------------------------------------------------
def probe_canary(rt: Runtime, candidate: VersionRecord, report: TickReport) -> None:
    """Probe candidate and stable side by side with the same golden inputs; store one window each."""
    model = candidate.model
    stable = rt.store.stable(model)
    if stable is None:
        return
    policy = rt.settings.policy_for(model)
    rollout_id = rt.store.start_rollout(model, candidate.version, stable.version)
    golden = golden_sets.golden_for(rt.repo, model, candidate.version)
    if golden is None:
        return
    started = rt.now()
    # Triton's counters are read from where this rollout's previous window ended, so the window
    # covers all client traffic since then, not only the probes' own fraction of a second.
    before = rt.snapshots.get((model, rollout_id))
    if before is not None:
        started = datetime.fromtimestamp(before.taken_at, UTC)
    else:
        try:
            before = scrape(rt.metrics_url)
        except Exception as exc:
            report.errors.append(f"metrics: {exc}")
    # The first window of a rollout covers the whole golden set (quality on the same inputs for
    # both); later ones rotate through slices of it, for latency and agreement samples.
    seen = rt.store.probe_windows(model, candidate.version, role="candidate", rollout_id=rollout_id)
    measured = any(w.quality is not None for w in seen)  # until then, every window tries the whole set
    inputs = golden.inputs if not measured else _slice(golden.inputs, len(seen), policy.probe_rows)
    runs = send_paired_probes(
        rt.grpc_url,
        model,
        [candidate.version, stable.version],
        inputs,
        batch_size=policy.probe_batch_size,
    )
    server: dict[tuple[str, str], Any] = {}
    after = None
    if before is not None:
        try:
            after = scrape(rt.metrics_url)
            server = window(before, after)
            rt.snapshots[(model, rollout_id)] = after
        except Exception as exc:
            report.errors.append(f"metrics: {exc}")
    cand_run, stable_run = runs[str(candidate.version)], runs[str(stable.version)]
    whole = not measured
    cand_q = golden_sets.score(golden, cand_run.outputs) if whole and cand_run.outputs is not None else {}
    stable_q = golden_sets.score(golden, stable_run.outputs) if whole and stable_run.outputs is not None else {}
    agree = None
    if cand_run.outputs is not None and stable_run.outputs is not None:
        agree = golden_sets.agreement(golden, cand_run.outputs, stable_run.outputs)
    ended = rt.now()
    for record, run, qual, role in (
        (candidate, cand_run, cand_q, "candidate"),
        (stable, stable_run, stable_q, "stable"),
    ):
        stats = server.get((model, str(record.version)))
        rt.store.add_probe_window(
            model,
            record.version,
            role=role,
            rollout_id=rollout_id,
            started_at=started,
            ended_at=ended,
            figures=probe_figures(
                run,
                quality=qual.get("value"),
                agreement=agree if role == "candidate" else None,
                server=stats,
                host=after.host if after is not None else None,
            ),
        )
    report.add("probed", model, candidate.version, stable=stable.version, agreement=agree)


def _slice(inputs: dict[str, Any], round_number: int, rows: int) -> dict[str, Any]:
    """Rows [k*rows, (k+1)*rows) of the golden inputs, wrapping around, for probe round k."""
    total = int(next(iter(inputs.values())).shape[0])
    if rows >= total:
        return inputs
    start = (round_number * rows) % total
    index = [(start + i) % total for i in range(rows)]
    return {name: array[index] for name, array in inputs.items()}


def judge_candidate(rt: Runtime, candidate: VersionRecord, report: TickReport) -> Verdict | None:
    """Judge a canary on every window of its rollout so far; act on rollback or promote."""
    model = candidate.model
    stable = rt.store.stable(model)
    rollout = rt.store.open_rollout(model, candidate.version)
    if stable is None or rollout is None:
        return None
    policy = rt.settings.policy_for(model)
    cand_ev, stable_ev = evidence_for_rollout(rt.store, model, candidate.version, stable.version, rollout.id)
    baked = (rt.now() - rollout.started_at).total_seconds()
    verdict = judge_canary(cand_ev, stable_ev, policy, baked_seconds=baked)
    if verdict.outcome == "promote" and not policy.window_open(rt.now()):
        verdict = Verdict(outcome="wait", reason="passed; outside the promotion window", checks=verdict.checks)
    rt.store.add_decision(
        model,
        candidate.version,
        outcome=verdict.outcome,
        reason=verdict.reason,
        checks=verdict.as_dict(),
        policy=policy.as_dict(),
        rollout_id=rollout.id,
    )
    if verdict.outcome == "rollback":
        roll_back(rt, model, candidate.version, verdict=verdict, report=report)
    elif verdict.outcome == "promote":
        promote(rt, model, candidate.version, reason=verdict.reason, report=report)
    else:
        report.add("waiting", model, candidate.version, reason=verdict.reason)
    return verdict


# -- one pass -----------------------------------------------------------------------------------
def reconcile(rt: Runtime, report: TickReport | None = None) -> TickReport:
    """Discover versions, converge what Triton serves, and move each model's next candidate along."""
    report = report or TickReport()
    with rt.lock:
        sweep_preflight_aliases(rt, report)
        support: list[str] = []
        rollable: list[tuple[str, str]] = []
        for model in rt.repo.models():
            kind = model_kind(rt, model)
            if kind in SUPPORT_KINDS:
                support.append(model)
            elif kind is not None:
                rollable.append((model, kind))
        for model, kind in rollable:
            try:
                _reconcile_model(rt, model, kind, report)
                ensure_support_models(rt, model, support, report)
            except TritonUnreachable as exc:
                report.errors.append(str(exc))
                break
    return report


def _reconcile_model(rt: Runtime, model: str, kind: str, report: TickReport) -> None:
    discover(rt, model, kind, report)
    converge(rt, model, report)
    if rt.store.pinned(model) is not None:
        return
    acted = len(report.actions)
    for record in rt.store.versions(model=model, states=[State.preflight]):
        run_preflight(rt, record, report)
    if not rt.store.versions(model=model, states=[State.preflight, State.canary]):
        _next_candidate(rt, model, report)
    if len(report.actions) > acted:  # a transition changed what should serve
        converge(rt, model, report)


def _next_candidate(rt: Runtime, model: str, report: TickReport) -> None:
    """Start the preflight of the oldest discovered version newer than the stable one."""
    waiting = rt.store.versions(model=model, states=[State.discovered])
    if waiting:
        nxt = min(waiting, key=lambda r: r.version)
        stable = rt.store.stable(model)
        if stable is not None and nxt.version < stable.version:
            rt.store.transition(model, nxt.version, State.rejected, reason="older than the stable version")
            report.add("rejected", model, nxt.version, reason="older than the stable version")
            return
        begin_preflight(rt, model, nxt.version, report)
        run_preflight(rt, rt.store.get_version(model, nxt.version) or nxt, report)


def _each_canary(rt: Runtime, report: TickReport | None, step: Callable[[VersionRecord], object]) -> TickReport:
    """Run `step` on every canary whose model is not pinned; an unreachable Triton ends the pass."""
    report = report or TickReport()
    with rt.lock:
        for record in rt.store.versions(states=[State.canary]):
            if rt.store.pinned(record.model) is not None:
                continue
            try:
                step(record)
            except TritonUnreachable as exc:
                report.errors.append(str(exc))
                break
    return report


def probe(rt: Runtime, report: TickReport | None = None) -> TickReport:
    """Probe every canary beside its stable version (after making sure both are loaded)."""
    report = report or TickReport()

    def step(record: VersionRecord) -> None:
        converge(rt, record.model, report)
        probe_canary(rt, record, report)

    return _each_canary(rt, report, step)


def judge(rt: Runtime, report: TickReport | None = None) -> TickReport:
    """Judge every canary on the evidence of its rollout so far."""
    report = report or TickReport()
    return _each_canary(rt, report, lambda record: judge_candidate(rt, record, report))


def tick(rt: Runtime) -> TickReport:
    """One full cycle: reconcile, probe, judge (what `shepherd tick` and each scheduler round run)."""
    report = TickReport()
    reconcile(rt, report)
    probe(rt, report)
    judge(rt, report)
    return report
