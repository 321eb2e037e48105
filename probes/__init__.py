"""Probes of a running Triton: metrics windows, golden gRPC probes to one version, client load.

No database and no control-plane code in here: the control plane calls these and stores the results.
"""

from probes.errors import BadWindow, MetricsMalformed, MetricsUnavailable, ProbeError, ProbeFailed
from probes.golden import ProbeRun, send_paired_probes, send_probe
from probes.load import LoadGenerator, LoadReport
from probes.metrics import HostStats, Snapshot, VersionCounters, WindowStats, parse_metrics, scrape, window

__all__ = [
    "BadWindow",
    "HostStats",
    "LoadGenerator",
    "LoadReport",
    "MetricsMalformed",
    "MetricsUnavailable",
    "ProbeError",
    "ProbeFailed",
    "ProbeRun",
    "Snapshot",
    "VersionCounters",
    "WindowStats",
    "parse_metrics",
    "scrape",
    "send_paired_probes",
    "send_probe",
    "window",
]
