"""Turn probe runs and metric windows into stored figures, and stored windows into the judge's Evidence.

Why: the judge decides on everything seen since the rollout began, not on the last probe, and the
same figures must be in SQL so a decision can be checked later. Errors count from Triton's own
counters when they were scraped (they include real client traffic as well as the probes), else from
the probes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from control_plane.judging import Evidence
from control_plane.store.records import ProbeWindowRecord
from control_plane.store.store import Store
from probes.golden import ProbeRun
from probes.metrics import HostStats, WindowStats


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


def _server_counts(window: ProbeWindowRecord) -> tuple[float, float] | None:
    server = (window.raw or {}).get("server") if isinstance(window.raw, dict) else None
    if not server:
        return None
    return float(server.get("requests", 0)) + float(server.get("failures", 0)), float(server.get("failures", 0))


def evidence_from_windows(version: int, windows: list[ProbeWindowRecord]) -> Evidence:
    samples: list[float] = []
    requests = errors = 0.0
    qualities = [w.quality for w in windows if w.quality is not None]
    agreements = [w.agreement for w in windows if w.agreement is not None]
    server_p95 = [w.p95_ms for w in windows if w.p95_ms is not None]
    for w in windows:
        samples.extend(w.samples or [])
        counts = _server_counts(w)
        probe_requests, probe_errors = float(w.requests or 0), float(w.errors or 0)
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


def evidence_for_rollout(
    store: Store, model: str, candidate: int, stable: int, rollout_id: int
) -> tuple[Evidence, Evidence]:
    """Everything the probes saw of candidate and stable since this rollout began."""
    cand = store.probe_windows(model, candidate, role="candidate", rollout_id=rollout_id)
    base = store.probe_windows(model, stable, role="stable", rollout_id=rollout_id)
    return evidence_from_windows(candidate, cand), evidence_from_windows(stable, base)
