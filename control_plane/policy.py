"""Per-model rollout policy: every threshold the judge uses, and the windows in which promotion may happen.

Why one frozen object: a decision is stored with the policy that produced it (`Policy.as_dict`), so
a rollback can be explained later even after `shepherd.yaml` changed; and the judge stays a pure
function of (evidence, policy). The defaults are tuned so the example models pass an A/A rollout
and regressions are caught with the error rates docs/judging.md measures for each default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from control_plane.errors import ConfigError


@dataclass(frozen=True)
class PromotionWindow:
    """Hours in which a passing canary may be promoted, as cron fields (APScheduler `CronTrigger` semantics).

    Why cron fields: the scheduler fires the promotion job with the very same trigger, so "is the
    window open" and "when does the job run" can never disagree. `hour="9-16"` with
    `day_of_week="mon-fri"` means weekdays 09:00 to 16:59 in `timezone`.
    """

    day_of_week: str = "*"
    hour: str = "*"
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        self.trigger()  # a bad field fails here, when the settings load, not at the first promotion

    def trigger(self) -> CronTrigger:
        """The cron trigger of this window (fires at the start of every open hour)."""
        try:
            return CronTrigger(day_of_week=self.day_of_week, hour=self.hour, timezone=self.timezone)
        except Exception as exc:  # ValueError for fields, ZoneInfoNotFoundError/LookupError for zones
            raise ConfigError(
                f"promotion window day_of_week={self.day_of_week!r} hour={self.hour!r} "
                f"timezone={self.timezone!r} is not valid: {exc}"
            ) from exc

    def is_open(self, now: datetime) -> bool:
        """Whether `now` falls in an hour the trigger fires in (a naive `now` is taken as UTC)."""
        trigger = self.trigger()
        moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        local = moment.astimezone(trigger.timezone)
        hour_start = local.replace(minute=0, second=0, microsecond=0)
        fire = trigger.get_next_fire_time(None, hour_start)
        return fire is not None and fire == hour_start

    def as_dict(self) -> dict[str, str]:
        return {"day_of_week": self.day_of_week, "hour": self.hour, "timezone": self.timezone}


def _non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _fraction(name: str, value: float, *, open_low: bool = False) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not math.isfinite(value) or not low_ok or value >= 1:
        raise ConfigError(f"{name} must be in {'(0' if open_low else '[0'}, 1), got {value!r}")


@dataclass(frozen=True)
class Policy:
    """How one model's candidates are probed and judged.

    Volume: each probe sends `probe_rows` golden rows in requests of `probe_batch_size` rows, so
    every `probe_interval_seconds` the judge gets ceil(rows / batch) latency samples per version.
    The defaults give 16 per probe, 480 per version in 60 s: enough to see a 5% error rate with
    an exact test at `alpha` (a 2% limit cannot be told from 5% with a few dozen requests).
    """

    bake_seconds: float = 30
    probe_interval_seconds: float = 2.0
    probe_rows: int = 64
    probe_batch_size: int = 4
    min_samples: int = 20
    alpha: float = 0.01
    max_latency_increase: float = 0.25
    max_error_rate: float = 0.02
    max_quality_drop: float = 0.02
    quality_floor: float | None = None
    latency_ceiling_ms: float | None = None
    min_agreement: float | None = 0.9
    drain_seconds: float = 5.0
    promotion_windows: tuple[PromotionWindow, ...] = field(default_factory=tuple)
    p95_min_samples: int = 400  # requests of stable probed in a bluegreen step 0 (its only window)
    max_canary_seconds: float | None = 600.0
    # The sequential judge (docs/judging.md): beta is the chance, per check, of promoting a version
    # whose effect sits exactly on its margin; the tail margin bounds each window's p90 ratio; errors
    # may rise to max(stable x (1 + max_error_increase), stable + error_floor); the breaker rolls
    # back gross failures at the first look; warm-up windows are not judged for latency; live figures
    # missing this many windows in a row roll the canary back.
    beta: float = 0.05
    max_tail_latency_increase: float = 0.25
    max_error_increase: float = 0.5
    error_floor: float = 0.01
    breaker_latency_ratio: float = 3.0
    breaker_error_rate: float = 0.2
    warmup_windows: int = 1
    max_consecutive_missing: int = 10
    # Limits of the probes and of Triton calls, here so that every number a decision depends on
    # is stored beside it (docs/judging.md says how each is used).
    tail_share: float = 0.05
    preflight_requests: int = 40
    preflight_rounds: int = 40
    preflight_attempts: int = 5
    probe_timeout_seconds: float = 10.0
    metrics_timeout_seconds: float = 5.0
    unload_wait_seconds: float = 30.0
    # How a candidate meets client traffic on a fleet (docs/fleet.md): "canary" loads it on a few
    # replicas beside as many freshly reloaded baseline replicas, step by step; "bluegreen" gives
    # it all traffic at once, judged against stable's live figures from just before the cut-over;
    # "auto" is canary on 3 or more reachable replicas, else bluegreen.
    strategy: str = "auto"
    # Canary steps: replica counts (2) or shares of the fleet ("50%"); each is capped at half of
    # the fleet (as many baseline replicas are needed) and judged for bake_seconds. After the last
    # passing step the candidate goes to every replica.
    canary_steps: tuple[int | str, ...] = (1, "50%")

    def __post_init__(self) -> None:
        for name in (
            "bake_seconds",
            "drain_seconds",
            "max_latency_increase",
            "max_quality_drop",
            "max_tail_latency_increase",
            "max_error_increase",
        ):
            _non_negative(name, float(getattr(self, name)))
        _positive("probe_interval_seconds", float(self.probe_interval_seconds))
        for name in (
            "probe_rows",
            "probe_batch_size",
            "min_samples",
            "p95_min_samples",
            "preflight_requests",
            "preflight_rounds",
            "preflight_attempts",
            "max_consecutive_missing",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.min_samples < 3:
            raise ConfigError(f"min_samples must be >= 3 (a rank test needs a few samples), got {self.min_samples}")
        _fraction("alpha", float(self.alpha), open_low=True)
        _fraction("beta", float(self.beta), open_low=True)
        _fraction("error_floor", float(self.error_floor))
        _fraction("breaker_error_rate", float(self.breaker_error_rate), open_low=True)
        if not math.isfinite(float(self.breaker_latency_ratio)) or self.breaker_latency_ratio <= 1:
            raise ConfigError(f"breaker_latency_ratio must be a finite number > 1, got {self.breaker_latency_ratio!r}")
        if isinstance(self.warmup_windows, bool) or not isinstance(self.warmup_windows, int) or self.warmup_windows < 0:
            raise ConfigError(f"warmup_windows must be a whole number >= 0, got {self.warmup_windows!r}")
        _fraction("tail_share", float(self.tail_share), open_low=True)
        for name in ("probe_timeout_seconds", "metrics_timeout_seconds", "unload_wait_seconds"):
            _positive(name, float(getattr(self, name)))
        if self.preflight_requests < self.min_samples:
            raise ConfigError(
                f"preflight_requests ({self.preflight_requests}) must be >= min_samples ({self.min_samples}): "
                "a preflight that stops short of min_samples can never be judged"
            )
        _fraction("max_error_rate", float(self.max_error_rate))
        if self.latency_ceiling_ms is not None:
            _positive("latency_ceiling_ms", float(self.latency_ceiling_ms))
        if self.max_canary_seconds is not None:
            _positive("max_canary_seconds", float(self.max_canary_seconds))
            if self.max_canary_seconds < self.bake_seconds:
                raise ConfigError(
                    f"max_canary_seconds ({self.max_canary_seconds}) is shorter than bake_seconds ({self.bake_seconds})"
                )
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement must be in [0, 1], got {self.min_agreement!r}")
        if self.quality_floor is not None and not math.isfinite(self.quality_floor):
            raise ConfigError(f"quality_floor must be a finite number, got {self.quality_floor!r}")
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGY_NAMES)}, got {self.strategy!r}")
        if not self.canary_steps:
            raise ConfigError("canary_steps must name at least one step")
        for step in self.canary_steps:
            step_size(step, 100)  # raises ConfigError for anything but a count >= 1 or a share "1%".."100%"
        for window in self.promotion_windows:
            if not isinstance(window, PromotionWindow):
                raise ConfigError(f"promotion_windows must hold PromotionWindow objects, got {window!r}")

    @property
    def samples_per_probe(self) -> int:
        """Latency samples (requests) one probe yields per version."""
        return -(-self.probe_rows // self.probe_batch_size)

    def window_open(self, now: datetime) -> bool:
        """True when promotion is allowed at `now` (no windows means always)."""
        return not self.promotion_windows or any(w.is_open(now) for w in self.promotion_windows)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, stored next to every decision."""
        data = asdict(self)
        data["promotion_windows"] = [w.as_dict() for w in self.promotion_windows]
        data["canary_steps"] = list(self.canary_steps)
        return data

    def canary_sizes(self, fleet_size: int) -> list[int]:
        """The number of canary replicas of each step on a fleet of `fleet_size`: capped at half, no repeats."""
        cap = fleet_size // 2
        sizes: list[int] = []
        for step in self.canary_steps:
            size = min(max(1, step_size(step, fleet_size)), cap)
            if size >= 1 and (not sizes or size > sizes[-1]):
                sizes.append(size)
        return sizes


STRATEGY_NAMES = ("auto", "canary", "bluegreen")


def step_size(step: int | str, fleet_size: int) -> int:
    """Replicas of one canary step: a count as given, a share "N%" of the fleet rounded up."""
    if isinstance(step, bool):
        raise ConfigError(f"canary_steps: {step!r} is neither a replica count nor a share like '50%'")
    if isinstance(step, int):
        if step < 1:
            raise ConfigError(f"canary_steps: a replica count must be >= 1, got {step}")
        return step
    if isinstance(step, str) and step.endswith("%"):
        try:
            share = float(step[:-1])
        except ValueError:
            share = math.nan
        if math.isfinite(share) and 0 < share <= 100:
            return math.ceil(share / 100 * fleet_size)
    raise ConfigError(f"canary_steps: {step!r} is neither a replica count nor a share like '50%'")


POLICY_FIELDS = frozenset(f.name for f in fields(Policy))
