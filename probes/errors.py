"""Errors of the probes, one tree with one root.

    ProbeError                      anything the probes package refuses or cannot do
    ├── MetricsUnavailable          Triton's metrics endpoint did not answer (the message names the url)
    │   └── MetricsMalformed        it answered, but with text that is not Prometheus exposition format
    ├── ProbeFailed                 a probe or a load run was asked for with bad arguments
    └── BadWindow                   two snapshots that do not make a window (the end is older than the start)

Request errors during a probe are NOT exceptions: they are counted in the result, because a
version that fails requests is exactly what the judge needs to see. Each error carries the exit
code the CLI returns for it.
"""

from __future__ import annotations

from shepherd_errors import ShepherdError


class ProbeError(ShepherdError):
    exit_code = 50


class MetricsUnavailable(ProbeError):
    exit_code = 51


class MetricsMalformed(MetricsUnavailable):
    exit_code = 53


class ProbeFailed(ProbeError):
    exit_code = 52


class BadWindow(ProbeError):
    exit_code = 54
