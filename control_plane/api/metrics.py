"""shepherd's own Prometheus metrics: what the control plane did in this process, and what the history says.

Two sources, one `/metrics` page:

- counters of this process, in this module's own `REGISTRY` (never prometheus_client's global one),
  fed by two hooks anyone can call without knowing the API:
  `observe_pass(report, seconds, job=...)` after each scheduler pass (reconcile, probe, judge), and
  `set_leader("leader" | "standby" | "stopped" | "unknown")` pushed by the leader election, or
  `set_leader_source(fn)`, a function read at each scrape (`shepherd serve` wires
  `scheduler.leader_status().role` to it);
  manual actions made through the API are counted by `observe_report` (decisions and rollbacks, no pass);
- gauges read from the SQL history at scrape time (`HistoryCollector`): the stable version of each
  model, whichever process promoted it, and whether the history could be read at all.

    shepherd_passes_total{job}                    passes run by this process
    shepherd_pass_duration_seconds{job}           their duration (histogram)
    shepherd_last_pass_timestamp_seconds{job}     when the last one ended (alert on "no pass for 10 min")
    shepherd_decisions_total{outcome}             promote | rollback | reject | wait | fail
    shepherd_rollbacks_total{trigger}             automatic (the judge) | manual (a person)
    shepherd_probe_errors_total                   probe errors (metrics endpoint unreachable, malformed ...)
    shepherd_triton_errors_total                  Triton errors (unreachable, refused a load or unload ...)
    shepherd_leader{shepherd_leader=STATE}        1 for the current state: unknown | leader | standby | stopped
    shepherd_is_leader                            1 while this process leads, else 0
    shepherd_stable_version{model}                the stable version of each model (from the history)
    shepherd_history_up                           1 when the history answered this scrape

A pass's decisions are counted from its report: entering canary after a passed preflight is a
"promote" decision of the preflight, as the history stores it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane.errors import TritonError
from control_plane.report import TickReport
from control_plane.store.lifecycle import SYSTEM_ACTOR
from control_plane.store.models import DECISION_OUTCOMES
from probes.errors import ProbeError

if TYPE_CHECKING:
    from control_plane.runtime import Runtime
    from control_plane.store.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LEADER_STATES = ("unknown", "leader", "standby", "stopped")  # stopped: no control plane runs here
TRIGGERS = ("automatic", "manual")

# The report action each decision outcome shows up as (see reconciler.enter and record_wait).
OUTCOME_OF_ACTION = {
    "promoted": "promote",
    "canary": "promote",  # the preflight passed: its decision is "promote", into the canary
    "rolled_back": "rollback",
    "rejected": "reject",
    "failed": "fail",
    "waiting": "wait",
}

REGISTRY = CollectorRegistry(auto_describe=True)
PASSES = Counter("shepherd_passes", "Passes of the control plane run by this process.", ["job"], registry=REGISTRY)
PASS_SECONDS = Histogram(
    "shepherd_pass_duration_seconds",
    "Duration of the control plane's passes in this process.",
    ["job"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
LAST_PASS = Gauge(
    "shepherd_last_pass_timestamp_seconds",
    "When this process last ended a pass (Unix time).",
    ["job"],
    registry=REGISTRY,
)
DECISIONS = Counter("shepherd_decisions", "Decisions taken, by outcome.", ["outcome"], registry=REGISTRY)
ROLLBACKS = Counter(
    "shepherd_rollbacks",
    "Versions rolled back, by the judge (automatic) or a person (manual).",
    ["trigger"],
    registry=REGISTRY,
)
PROBE_ERRORS = Counter("shepherd_probe_errors", "Probe errors met by the control plane's passes.", registry=REGISTRY)
TRITON_ERRORS = Counter("shepherd_triton_errors", "Triton errors met by the control plane's passes.", registry=REGISTRY)
LEADER = Enum("shepherd_leader", "This process's leader-election state.", states=list(LEADER_STATES), registry=REGISTRY)
IS_LEADER = Gauge("shepherd_is_leader", "1 while this process is the leader, else 0.", registry=REGISTRY)

for _outcome in DECISION_OUTCOMES:  # every series exists from the start, at 0
    DECISIONS.labels(outcome=_outcome)
for _trigger in TRIGGERS:
    ROLLBACKS.labels(trigger=_trigger)


def observe_report(report: TickReport) -> None:
    """Count the decisions, rollbacks and errors of one pass or one manual action."""
    for action in report.actions:
        outcome = OUTCOME_OF_ACTION.get(str(action.get("action")))
        if outcome is not None:
            DECISIONS.labels(outcome=outcome).inc()
        if action.get("action") == "rolled_back":
            trigger = "automatic" if action.get("actor", SYSTEM_ACTOR) == SYSTEM_ACTOR else "manual"
            ROLLBACKS.labels(trigger=trigger).inc()
    for error in report.errors:
        if isinstance(error, ProbeError):
            PROBE_ERRORS.inc()
        elif isinstance(error, TritonError):
            TRITON_ERRORS.inc()


def observe_pass(report: TickReport, seconds: float, *, job: str = "tick") -> None:
    """The hook for the scheduler: one pass of `job` took `seconds` and did what `report` says."""
    PASSES.labels(job=job).inc()
    PASS_SECONDS.labels(job=job).observe(max(0.0, seconds))
    LAST_PASS.labels(job=job).set_to_current_time()
    observe_report(report)


def timed_pass(job: str, step: Callable[[Runtime], TickReport], rt: Runtime) -> TickReport:
    """Run one pass and observe it: `report = timed_pass(name, step, rt)` in place of `report = step(rt)`."""
    started = time.monotonic()
    report = step(rt)
    observe_pass(report, time.monotonic() - started, job=job)
    return report


def set_leader(state: str) -> None:
    """The hook for the leader election: "leader", "standby" or "unknown" (the state until it is called)."""
    if state not in LEADER_STATES:
        raise ValueError(f"leader state {state!r}: one of {', '.join(LEADER_STATES)}")
    LEADER.state(state)
    IS_LEADER.set(1 if state == "leader" else 0)


_leader_source: Callable[[], str] | None = None


def set_leader_source(source: Callable[[], str] | None) -> None:
    """Read the leader state from `source` at each scrape (None: only what `set_leader` pushed)."""
    global _leader_source
    _leader_source = source


def _refresh_leader() -> None:
    source = _leader_source
    if source is None:
        return
    try:
        state = source()
    except Exception:  # a scrape never fails on the hook
        state = "unknown"
    set_leader(state if state in LEADER_STATES else "unknown")


class HistoryCollector(Collector):
    """Gauges read from the history at each scrape, so every replica of shepherd reports the same truth."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stable = GaugeMetricFamily("shepherd_stable_version", "The stable version of each model.", labels=["model"])
        up = GaugeMetricFamily("shepherd_history_up", "1 when the history database answered this scrape.")
        try:
            rows = self.store.read.status()
        except Exception:  # a scrape never fails: the history being down is itself the figure
            up.add_metric([], 0)
            yield up
            return
        for row in rows:
            if row["stable"] is not None:
                stable.add_metric([row["model"]], row["stable"])
        up.add_metric([], 1)
        yield stable
        yield up


def render(history: CollectorRegistry | None = None) -> bytes:
    """The metrics page: this process's counters, then the history's gauges when given."""
    _refresh_leader()
    page = generate_latest(REGISTRY)
    return page + generate_latest(history) if history is not None else page


def history_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HistoryCollector(store))
    return registry
