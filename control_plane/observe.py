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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from control_plane import golden as golden_sets
from control_plane.judging import Evidence
from control_plane.policy import Policy
from control_plane.runtime import Runtime
from control_plane.store.records import ProbeWindowRecord, VersionRecord
from probes.errors import ProbeError
from probes.golden import ProbeRun, send_paired_probes, send_probe
from probes.metrics import HostStats, Snapshot, WindowStats, scrape, window
from shepherd_errors import ShepherdError


@dataclass(frozen=True)
class Observed:
    """What one observation stored, and the errors met on the way (the caller reports them)."""

    agreement: float | None = None
    errors: tuple[ShepherdError, ...] = ()


# -- probing ------------------------------------------------------------------------------------
def observe_preflight(
    rt: Runtime, *, alias: str, record: VersionRecord, golden: golden_sets.Golden, policy: Policy
) -> Observed:
    """Probe a version loaded under its preflight alias and store one `preflight` window.

    The whole golden set once (its quality), then slices until `preflight_requests`
    requests were sent, at most `preflight_rounds` slices.
    """
    started = rt.now()
    first = _probe_one(rt, alias, record.version, golden_sets.quality_inputs(golden), policy)
    latencies, requests, errors = list(first.latencies_ms), first.requests, first.errors
    for round_number in range(policy.preflight_rounds):
        if requests >= policy.preflight_requests:
            break
        extra = _probe_one(rt, alias, record.version, golden_sets.rows(golden, round_number, policy.probe_rows), policy)
        latencies.extend(extra.latencies_ms)
        requests += extra.requests
        errors += extra.errors
    quality = golden_sets.score(golden, first.outputs) if first.outputs is not None else {}
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
        },
    )
    return Observed()


def observe_canary(
    rt: Runtime,
    *,
    candidate: VersionRecord,
    stable: VersionRecord,
    rollout_id: int,
    golden: golden_sets.Golden,
    policy: Policy,
) -> Observed:
    """Probe candidate and stable side by side with the same golden inputs; store one window each.

    Triton's counters are read from where this rollout's previous window ended, so a window covers
    all client traffic since then, not only the probes' own fraction of a second. Until both
    versions' quality was measured, a window sends the quality rows (the same inputs for both);
    later ones rotate through slices of the golden set, for latency and agreement samples.
    """
    model = candidate.model
    errors: list[ShepherdError] = []
    started = rt.now()
    before = rt.snapshots.get((model, rollout_id))
    if before is not None:
        started = datetime.fromtimestamp(before.taken_at, UTC)
    else:
        before = _scrape(rt, policy, errors)
    seen = rt.store.read.probe_windows(model, candidate.version, role="candidate", rollout_id=rollout_id)
    measured = any(w.quality is not None for w in seen)
    inputs = golden_sets.rows(golden, len(seen), policy.probe_rows) if measured else golden_sets.quality_inputs(golden)
    runs = send_paired_probes(
        rt.grpc_url,
        model,
        [candidate.version, stable.version],
        inputs,
        batch_size=policy.probe_batch_size,
        timeout_s=policy.probe_timeout_seconds,
    )
    server: dict[tuple[str, str], WindowStats] = {}
    after = _scrape(rt, policy, errors) if before is not None else None
    if before is not None and after is not None:
        try:
            server = window(before, after)
            rt.snapshots[(model, rollout_id)] = after
        except ProbeError as exc:
            errors.append(exc)
    cand_run, stable_run = runs[str(candidate.version)], runs[str(stable.version)]
    cand_q = golden_sets.score(golden, cand_run.outputs) if not measured and cand_run.outputs is not None else {}
    stable_q = golden_sets.score(golden, stable_run.outputs) if not measured and stable_run.outputs is not None else {}
    agree = None
    if cand_run.outputs is not None and stable_run.outputs is not None:
        agree = golden_sets.agreement(golden, cand_run.outputs, stable_run.outputs)
    ended = rt.now()
    for record, run, quality, role in (
        (candidate, cand_run, cand_q, "candidate"),
        (stable, stable_run, stable_q, "stable"),
    ):
        rt.store.evidence.add_probe_window(
            model,
            record.version,
            role=role,
            rollout_id=rollout_id,
            started_at=started,
            ended_at=ended,
            figures=probe_figures(
                run,
                quality=quality.get("value"),
                agreement=agree if role == "candidate" else None,
                server=server.get((model, str(record.version))),
                host=after.host if after is not None else None,
            ),
        )
    return Observed(agreement=agree, errors=tuple(errors))


def _probe_one(rt: Runtime, model: str, version: int, inputs: dict[str, Any], policy: Policy) -> ProbeRun:
    return send_probe(
        rt.grpc_url,
        model,
        version,
        inputs,
        batch_size=policy.probe_batch_size,
        timeout_s=policy.probe_timeout_seconds,
    )


def _scrape(rt: Runtime, policy: Policy, errors: list[ShepherdError]) -> Snapshot | None:
    try:
        return scrape(rt.metrics_url, timeout=policy.metrics_timeout_seconds)
    except ProbeError as exc:
        errors.append(exc)
        return None


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
    """One version's `Evidence` over all of `windows` (samples pooled, counts summed, quality averaged).

    A figure that is missing, non-finite or negative in a stored window is "not measured" and left
    out, never an error: the judge must reach a decision (or the rollout its time limit) whatever
    one bad window holds.
    """
    samples: list[float] = []
    requests = errors = 0.0
    qualities = [q for q in (_finite(w.quality) for w in windows) if q is not None]
    agreements = [a for a in (_finite(w.agreement) for w in windows) if a is not None]
    server_p95 = [p for p in (_count(w.p95_ms) for w in windows) if p is not None]
    for w in windows:
        samples.extend(s for s in (_count(x) for x in (w.samples or ())) if s is not None)
        counts = _server_counts(w)
        probe_requests, probe_errors = _count(w.requests) or 0.0, _count(w.errors) or 0.0
        probe_errors = min(probe_errors, probe_requests)
        if counts is not None:
            requests += max(counts[0], probe_requests)
            errors += max(counts[1], probe_errors)
        else:
            requests += probe_requests
            errors += probe_errors
    return Evidence(
        version=version,
        latencies_ms=tuple(samples),
        requests=int(requests),
        errors=int(errors),
        quality=float(np.mean(qualities)) if qualities else None,
        agreement=float(np.mean(agreements)) if agreements else None,
        server_p95_ms=server_p95[-1] if server_p95 else None,
    )


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def preflight_evidence(rt: Runtime, record: VersionRecord) -> Evidence:
    """Every preflight attempt of the version counts: an undecided one is probed again next pass."""
    return evidence_from_windows(
        record.version, rt.store.read.probe_windows(record.model, record.version, role="preflight")
    )


def canary_evidence(rt: Runtime, model: str, candidate: int, stable: int, rollout_id: int) -> tuple[Evidence, Evidence]:
    """Everything the probes saw of candidate and stable since this rollout began."""
    cand = rt.store.read.probe_windows(model, candidate, role="candidate", rollout_id=rollout_id)
    base = rt.store.read.probe_windows(model, stable, role="stable", rollout_id=rollout_id)
    return evidence_from_windows(candidate, cand), evidence_from_windows(stable, base)
