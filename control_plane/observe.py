"""Observe: gather evidence (golden probes, Triton's metric windows) and store it; open nothing, decide nothing.

Why a module of its own: the judge must decide on everything seen since a rollout began, not on
the last probe, and every figure it used must be in SQL so a decision can be checked later. So
this module only sends probes, reads Triton's counters, writes probe windows, and turns stored
windows back into the judge's `Evidence`. Loading the versions it probes, opening the rollout and
acting on what the judge says are the reconciler's job.

Errors count from Triton's own counters when they were scraped (they include real client traffic
as well as the probes), else from the probes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from control_plane import golden as golden_sets
from control_plane.errors import TritonUnreachable
from control_plane.fleet import Replica
from control_plane.judging import Evidence, QualityRows, WindowLatency
from control_plane.live_metrics import LiveMetrics, LiveWindow
from control_plane.policy import Policy
from control_plane.runtime import Runtime
from control_plane.store.records import ProbeWindowRecord, RolloutStepRecord, VersionRecord
from probes.channel import GrpcTls
from probes.golden import ProbeRun, merged, send_interleaved, send_probe
from probes.metrics import HostStats, WindowStats, combined
from shepherd_errors import ShepherdError


@dataclass(frozen=True)
class Observed:
    """What one observation stored, and the errors met on the way (the caller reports them)."""

    agreement: float | None = None
    errors: tuple[ShepherdError, ...] = ()


# -- probing ------------------------------------------------------------------------------------
def observe_preflight(
    rt: Runtime, *, alias: str, record: VersionRecord, golden: golden_sets.Golden, policy: Policy, replica: Replica
) -> Observed:
    """Probe a version loaded under its preflight alias on one replica and store one `preflight` window.

    The whole golden set once (its quality), then slices until `preflight_requests`
    requests were sent, at most `preflight_rounds` slices.
    """
    started = rt.now()
    first = _probe_one(replica.grpc, alias, record.version, golden_sets.quality_inputs(golden), policy, rt.grpc_tls)
    latencies, requests, errors = list(first.latencies_ms), first.requests, first.errors
    for round_number in range(policy.preflight_rounds):
        if requests >= policy.preflight_requests:
            break
        extra = _probe_one(
            replica.grpc, alias, record.version, golden_sets.rows(golden, round_number, policy.probe_rows), policy,
            rt.grpc_tls,
        )  # fmt: skip
        latencies.extend(extra.latencies_ms)
        requests += extra.requests
        errors += extra.errors
    quality = golden_sets.score(golden, first.outputs) if first.outputs is not None else {}
    rows = golden_sets.per_row(golden, first.outputs) if first.outputs is not None else None
    rt.store.evidence.add_probe_window(
        record.model,
        record.version,
        role="preflight",
        rollout_id=None,
        started_at=started,
        ended_at=rt.now(),
        figures={
            **probe_figures(first, quality=quality.get("value"), agreement=None, server=None),
            "requests": requests,
            "errors": errors,
            "samples": latencies,
            "raw": {"replica": replica.name, "quality_rows": rows},
        },
    )
    return Observed()


@dataclass(frozen=True)
class Sides:
    """Which replicas a window probes each version on, and which of each side could not be reached."""

    candidate: tuple[Replica, ...]
    stable: tuple[Replica, ...]
    candidate_lost: tuple[str, ...] = ()
    stable_lost: tuple[str, ...] = ()


def sides(step: RolloutStepRecord, replicas: dict[str, Replica]) -> Sides:
    """Canary: the candidate on the canary replicas, stable on the baseline replicas. Bluegreen:
    both on every replica taking traffic (stable's figures there only give agreement)."""
    if step.strategy != "canary":  # every reachable replica serves both; one that is down serves nobody
        everywhere = tuple(replicas[n] for n in sorted(replicas))
        return Sides(candidate=everywhere, stable=everywhere)
    cand, base = step.replicas("canary"), step.replicas("baseline")
    return Sides(
        candidate=tuple(replicas[n] for n in cand if n in replicas),
        stable=tuple(replicas[n] for n in base if n in replicas),
        candidate_lost=tuple(n for n in cand if n not in replicas),
        stable_lost=tuple(n for n in base if n not in replicas),
    )


def observe_step(
    rt: Runtime,
    *,
    candidate: VersionRecord,
    stable: VersionRecord,
    rollout_id: int,
    step: RolloutStepRecord,
    golden: golden_sets.Golden,
    policy: Policy,
    replicas: dict[str, Replica],
    live: LiveMetrics,
) -> Observed:
    """One window of a rollout step: golden probes sent to both sides over the same seconds, and
    the live figures of each side since the step's previous window; one window stored per version.

    Until both versions' quality was measured in this step, a window sends the quality rows (the
    same inputs to both); later ones rotate through slices of the golden set. A replica of either
    side that cannot be reached is stored as missing in the window (the judge waits, never passes
    on what it could not see); with a whole side gone, nothing is probed.
    """
    model = candidate.model
    where = sides(step, replicas)
    lost = sorted({*where.candidate_lost, *where.stable_lost})
    errors: list[ShepherdError] = [
        TritonUnreachable(f"replica {name} ({step.role_of(name)} in step {step.step + 1} of {model}) is unreachable")
        for name in lost
    ]
    seen = rt.store.read.probe_windows(model, candidate.version, role="candidate", rollout_id=rollout_id, step=step.step)
    counted = [w for w in seen if _complete(w)]
    since = counted[-1].ended_at if counted else step.started_at  # deferred or incomplete ones: counted by this one
    if not where.candidate or not where.stable:
        empty = LiveWindow(started_at=since, ended_at=max(rt.now(), since))
        for record, role, gone in ((candidate, "candidate", where.candidate_lost), (stable, "stable", where.stable_lost)):
            _store_window(
                rt, record, role=role, rollout_id=rollout_id, step=step.step, run=None, quality=None,
                agreement=None, window=empty, on=(), lost=gone,
            )  # fmt: skip
        return Observed(errors=tuple(errors))
    stable_seen = rt.store.read.probe_windows(
        model, stable.version, role="stable", rollout_id=rollout_id, step=step.step
    )
    measured = _rows_measured(seen) and _rows_measured(stable_seen)  # both sides, or the quality rows again
    inputs = golden_sets.rows(golden, len(seen), policy.probe_rows) if measured else golden_sets.quality_inputs(golden)
    targets = [(r.grpc, candidate.version) for r in where.candidate] + [(r.grpc, stable.version) for r in where.stable]
    runs = send_interleaved(
        targets, model, inputs, batch_size=policy.probe_batch_size, timeout_s=policy.probe_timeout_seconds,
        tls=rt.grpc_tls,
    )  # fmt: skip
    runs = {key: _without_connect(run) for key, run in runs.items()}
    involved = list({r.name: r for r in (*where.candidate, *where.stable)}.values())
    window = live.window(model, involved, since)
    errors.extend(window.errors)
    cand_run = merged([runs[(r.grpc, str(candidate.version))] for r in where.candidate])
    stable_run = merged([runs[(r.grpc, str(stable.version))] for r in where.stable])
    agree = None
    if cand_run.outputs is not None and stable_run.outputs is not None:
        agree = golden_sets.agreement(golden, cand_run.outputs, stable_run.outputs)
    for record, run, on, role, gone in (
        (candidate, cand_run, where.candidate, "candidate", where.candidate_lost),
        (stable, stable_run, where.stable, "stable", where.stable_lost),
    ):
        scored = not measured and run.outputs is not None
        quality = golden_sets.score(golden, run.outputs) if scored and run.outputs is not None else {}
        _store_window(
            rt,
            record,
            role=role,
            rollout_id=rollout_id,
            step=step.step,
            run=run,
            quality=quality.get("value"),
            quality_rows=golden_sets.per_row(golden, run.outputs) if scored and run.outputs is not None else None,
            agreement=agree if role == "candidate" else None,
            window=window,
            on=on,
            lost=gone,
        )
    return Observed(agreement=agree, errors=tuple(errors))


def observe_baseline(
    rt: Runtime,
    *,
    stable: VersionRecord,
    rollout_id: int,
    step: RolloutStepRecord,
    golden: golden_sets.Golden,
    policy: Policy,
    replicas: dict[str, Replica],
    live: LiveMetrics,
    since: datetime,
) -> Observed:
    """Bluegreen's step 0, just before the cut-over: stable under all live traffic, for the candidate
    to be compared with. Its live figures since `since` (the preflight's start) and one probe of
    the quality rows on every replica are stored as the step's stable window."""
    on = tuple(replicas[n] for n in step.roles if n in replicas)
    if not on:
        return Observed(errors=(TritonUnreachable(f"no replica of {stable.model}'s fleet is reachable"),))
    # The quality rows once, then slices until p95_min_samples requests: this window is all the judge
    # will have of stable's error rate, so it gets enough requests to tell a few percent from none.
    runs = list(_send_to(on, stable, golden_sets.quality_inputs(golden), policy, rt.grpc_tls).values())
    outputs_run = merged(runs)
    for round_number in range(policy.preflight_rounds):
        if sum(r.requests for r in runs) >= policy.p95_min_samples:
            break
        more = _send_to(on, stable, golden_sets.rows(golden, round_number, policy.probe_rows), policy, rt.grpc_tls)
        runs.extend(more.values())
    window = live.window(stable.model, list(on), since)
    run = replace(merged(runs), outputs=outputs_run.outputs)
    quality = golden_sets.score(golden, run.outputs) if run.outputs is not None else {}
    _store_window(
        rt,
        stable,
        role="stable",
        rollout_id=rollout_id,
        step=step.step,
        run=run,
        quality=quality.get("value"),
        quality_rows=golden_sets.per_row(golden, run.outputs) if run.outputs is not None else None,
        agreement=None,
        window=window,
        on=on,
    )
    return Observed(errors=window.errors)


def _send_to(
    on: tuple[Replica, ...], record: VersionRecord, inputs: dict[str, Any], policy: Policy, tls: GrpcTls | None
) -> dict[tuple[str, str], ProbeRun]:
    return send_interleaved(
        [(r.grpc, record.version) for r in on],
        record.model,
        inputs,
        batch_size=policy.probe_batch_size,
        timeout_s=policy.probe_timeout_seconds,
        tls=tls,
    )


def _store_window(
    rt: Runtime,
    record: VersionRecord,
    *,
    role: str,
    rollout_id: int,
    step: int,
    run: ProbeRun | None,
    quality: float | None,
    agreement: float | None,
    window: LiveWindow,
    on: tuple[Replica, ...],
    lost: tuple[str, ...] = (),
    quality_rows: dict[str, Any] | None = None,
) -> None:
    """One version's window: its probes, and its live figures summed over `on`; missing when any
    replica's figures are, or when a replica of its side (`lost`) could not be reached at all.
    `quality_rows`: per-row golden figures (`golden.per_row`) of a window that measured quality."""
    missing = sorted({*(r.name for r in on if r.name in window.missing), *lost})
    per_replica = {r.name: window.of(r.name, record.version) for r in on}
    server = None if missing else combined([s for s in per_replica.values() if s is not None])
    figures = probe_figures(run, quality=quality, agreement=agreement, server=server)
    figures["step"] = step
    figures["raw"]["replicas"] = {name: (s.as_dict() if s is not None else None) for name, s in per_replica.items()}
    figures["raw"]["live_missing"] = missing
    figures["raw"]["live_deferred"] = window.deferred
    if quality_rows is not None:
        figures["raw"]["quality_rows"] = quality_rows
    rt.store.evidence.add_probe_window(
        record.model,
        record.version,
        role=role,
        rollout_id=rollout_id,
        started_at=window.started_at,
        ended_at=max(window.ended_at, window.started_at),
        figures=figures,
    )


def _without_connect(run: ProbeRun) -> ProbeRun:
    """The run without its first latency sample: a probe opens its connections anew, and the first
    request on one pays for opening it (about x1.3 on a window's p90 measured here, always on the
    side probed first). Its request and error still count."""
    return replace(run, latencies_ms=run.latencies_ms[1:], sent_at=run.sent_at[1:]) if run.latencies_ms else run


def _rows_measured(windows: list[ProbeWindowRecord]) -> bool:
    """Whether one of the windows holds per-row quality (or, stored before per-row figures, quality)."""
    return any(isinstance(w.raw.get("quality_rows"), dict) or w.quality is not None for w in windows)


def _probe_one(
    grpc: str, model: str, version: int, inputs: dict[str, Any], policy: Policy, tls: GrpcTls | None
) -> ProbeRun:
    return send_probe(
        grpc,
        model,
        version,
        inputs,
        batch_size=policy.probe_batch_size,
        timeout_s=policy.probe_timeout_seconds,
        tls=tls,
    )


# -- stored figures -----------------------------------------------------------------------------
def _percentile(samples: list[float] | tuple[float, ...], q: float) -> float | None:
    return float(np.percentile(samples, q)) if samples else None


def probe_figures(
    run: ProbeRun | None,
    *,
    quality: float | None,
    agreement: float | None,
    server: WindowStats | None,
    host: HostStats | None = None,
) -> dict[str, Any]:
    """Columns of one probe window: the client probe, Triton's window for the version, host memory."""
    samples = list(run.latencies_ms) if run else []
    figures: dict[str, Any] = {
        "requests": run.requests if run else 0,
        "errors": run.errors if run else 0,
        "client_p50_ms": _percentile(samples, 50),
        "client_p95_ms": _percentile(samples, 95),
        "quality": quality,
        "agreement": agreement,
        "samples": samples,
        "raw": {"probe": run.as_dict() if run else None},
    }
    if server is not None:
        figures.update(
            {
                "failure_by_reason": server.failures_by_reason,
                "p50_ms": server.p50_ms,
                "p95_ms": server.p95_ms,
                "p99_ms": server.p99_ms,
                "avg_queue_ms": server.avg_queue_ms,
                "avg_compute_ms": server.avg_compute_ms,
            }
        )
        figures["raw"]["server"] = server.as_dict()
    if host is not None:
        figures["triton_cpu_memory_bytes"] = host.cpu_memory_used_bytes
        figures["gpu_memory_bytes"] = sum(host.gpu_memory_used_bytes.values()) if host.gpu_memory_used_bytes else None
    return figures


# -- evidence for the judge ---------------------------------------------------------------------
def _count(value: Any) -> float | None:
    """A stored figure as a finite number >= 0, else None ("not measured"): older rows may hold
    null where a NaN was written, and a bad row must never stall every later judgement."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _server_counts(window: ProbeWindowRecord) -> tuple[float, float] | None:
    """(attempts, failures) Triton counted for the window, or None when they were not measured.

    Both figures must be there and be finite numbers >= 0; anything else (no metrics scraped, a
    null, a NaN stored as null by an older version, a string) counts as not measured, and the
    caller falls back to the probe's own counts.
    """
    server = window.raw.get("server") if isinstance(window.raw, dict) else None
    if not isinstance(server, dict):
        return None
    requests, failures = _count(server.get("requests")), _count(server.get("failures"))
    if requests is None or failures is None:
        return None
    return requests + failures, failures


def evidence_from_windows(version: int, windows: list[ProbeWindowRecord]) -> Evidence:
    """One version's `Evidence` over all of `windows` (samples pooled and kept per window, counts
    summed over complete windows, quality averaged, per-row quality from the first window that
    measured it, the latest windows in a row with missing live figures).

    A figure that is missing, non-finite or negative in a stored window is "not measured" and left
    out, never an error: the judge must reach a decision (or the rollout its time limit) whatever
    one bad window holds.
    """
    samples: list[float] = []
    per_window: list[WindowLatency] = []
    requests = errors = 0.0
    qualities = [q for q in (_finite(w.quality) for w in windows) if q is not None]
    agreements = [a for a in (_finite(w.agreement) for w in windows) if a is not None]
    server_p95 = [p for p in (_count(w.p95_ms) for w in windows) if p is not None]
    for w in windows:
        own = tuple(s for s in (_count(x) for x in (w.samples or ())) if s is not None)
        samples.extend(own)
        per_window.append(WindowLatency(at=_at(w), samples=own))
        if not _complete(w):
            continue  # its traffic, the probes' included, is in the next complete window's counts
        counts = _server_counts(w)
        probe_requests, probe_errors = _count(w.requests) or 0.0, _count(w.errors) or 0.0
        probe_errors = min(probe_errors, probe_requests)
        if counts is not None:
            requests += max(counts[0], probe_requests)
            errors += max(counts[1], probe_errors)
        else:
            requests += probe_requests
            errors += probe_errors
    read = [w for w in windows if not w.raw.get("live_deferred")]
    last_missing = read[-1].raw.get("live_missing") if read else None
    streak = 0
    for w in reversed(read):
        if not w.raw.get("live_missing"):
            break
        streak += 1
    return Evidence(
        version=version,
        latencies_ms=tuple(samples),
        requests=int(requests),
        errors=int(errors),
        quality=float(np.mean(qualities)) if qualities else None,
        agreement=float(np.mean(agreements)) if agreements else None,
        server_p95_ms=server_p95[-1] if server_p95 else None,
        missing=tuple(str(name) for name in last_missing) if isinstance(last_missing, list) else (),
        windows=tuple(per_window),
        quality_rows=next((rows for rows in (_quality_rows(w) for w in windows) if rows is not None), None),
        missing_streak=streak,
    )


def _at(window: ProbeWindowRecord) -> float:
    """The key that pairs a candidate window with stable's window of the same probe: its end (both
    sides of a probe are stored with the same live window; its start repeats after an incomplete one)."""
    return round(window.ended_at.timestamp(), 6)


def _quality_rows(window: ProbeWindowRecord) -> QualityRows | None:
    """The window's per-row golden figures, or None when it has none or they are malformed."""
    rows = window.raw.get("quality_rows") if isinstance(window.raw, dict) else None
    if not isinstance(rows, dict) or not isinstance(rows.get("metric"), str):
        return None
    values, labels = rows.get("values"), rows.get("labels", [])
    if not isinstance(values, list) or not isinstance(labels, list) or not values:
        return None
    numbers = [_finite(v) for v in values]
    if any(v is None for v in numbers) or any(isinstance(x, bool) or not isinstance(x, int) for x in labels):
        return None
    if labels and len(labels) != len(values):
        return None
    return QualityRows(metric=rows["metric"], values=tuple(float(v) for v in numbers if v is not None), labels=tuple(labels))


def _complete(window: ProbeWindowRecord) -> bool:
    """A window whose live figures were read from every replica of its side (not deferred, none missing).

    The next window of a step starts where the last complete one ended, so the traffic of an
    incomplete one is counted there, once; the judge counts only complete windows.
    """
    return not window.raw.get("live_deferred") and not window.raw.get("live_missing")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def preflight_evidence(rt: Runtime, record: VersionRecord) -> Evidence:
    """Every preflight attempt of the version counts: an undecided one is probed again next pass."""
    return evidence_from_windows(
        record.version, rt.store.read.probe_windows(record.model, record.version, role="preflight")
    )


def canary_evidence(
    rt: Runtime, model: str, candidate: int, stable: int, rollout_id: int, step: RolloutStepRecord
) -> tuple[Evidence, Evidence]:
    """Everything both sides showed in the rollout's current step.

    Canary: the candidate on its canary replicas against stable on the baseline replicas, in the
    same step (same seconds, equal traffic). Bluegreen: the candidate after the cut-over against
    stable's window of step 0, taken under all live traffic just before it; latency is paired with
    stable's probes of the same step (the same replicas, the same seconds).
    """
    cand = rt.store.read.probe_windows(model, candidate, role="candidate", rollout_id=rollout_id, step=step.step)
    same = rt.store.read.probe_windows(model, stable, role="stable", rollout_id=rollout_id, step=step.step)
    if step.strategy != "bluegreen":
        return evidence_from_windows(candidate, cand), evidence_from_windows(stable, same)
    base = rt.store.read.probe_windows(model, stable, role="stable", rollout_id=rollout_id, step=0)
    return evidence_from_windows(candidate, cand), bluegreen_stable(stable, base, same)


def bluegreen_stable(stable: int, base: list[ProbeWindowRecord], same: list[ProbeWindowRecord]) -> Evidence:
    """Stable's evidence for a bluegreen step: counts, quality and live figures from step 0 (`base`,
    under all traffic before the cut-over), latency (the paired windows and the pooled samples the
    decision reports) from the probes of the judged step (`same`), taken beside the candidate's."""
    before = evidence_from_windows(stable, base)
    during = evidence_from_windows(stable, same)
    return replace(before, windows=during.windows, latencies_ms=during.latencies_ms)
