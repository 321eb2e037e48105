"""The judge: pure functions from what the probes saw to promote, roll back, wait or reject.

Why pure: every decision is stored with its figures and the policy behind it, and must be
reproducible from them; no clock, no I/O (the bake time comes in as `baked_seconds`).

Why these tests (Kayenta's rule: a difference must be both significant and large enough):
- latency: one-sided Mann-Whitney U of candidate vs stable samples taken side by side, AND an
  effect above the margin (ratio of medians, or of p95s once both sides have `p95_min_samples`).
  To be decisive the candidate must also be significantly slower than the stable version
  *stretched by the margin* (the same U test on candidate / (1 + margin)): judged after every
  probe on clustered, noisy samples, a plain U test plus a point-estimate margin rolled back
  about one identical (A/A) version in sixteen in simulation; the margin-shifted test none of
  400 (docs/judging.md).
- errors: one-sided Fisher exact test (exact at any count) AND the candidate's rate above the limit.
- quality and agreement come from the same golden inputs on both versions, so they carry no
  sampling noise and are compared directly.
A candidate significantly slower with a large effect, but not yet significantly beyond the margin,
and an error rate above the limit but not yet significant, are "insufficient" (wait), never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats

from control_plane.errors import EvidenceError
from control_plane.policy import Policy

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"
PROMOTE, ROLLBACK, WAIT, REJECT = "promote", "rollback", "wait", "reject"


@dataclass(frozen=True)
class Evidence:
    """What the probes saw of ONE version over the judged period."""

    version: int
    latencies_ms: tuple[float, ...]
    requests: int
    errors: int
    quality: float | None
    agreement: float | None = None
    server_p95_ms: float | None = None
    missing: tuple[str, ...] = ()  # replicas whose live figures could not be read in the latest window

    def __post_init__(self) -> None:
        where = f"evidence of version {self.version}"
        if self.requests < 0 or self.errors < 0:
            raise EvidenceError(f"{where}: requests ({self.requests}) and errors ({self.errors}) must be >= 0")
        if self.errors > self.requests:
            raise EvidenceError(f"{where}: {self.errors} errors out of {self.requests} requests")
        bad = [x for x in self.latencies_ms if not math.isfinite(x) or x < 0]
        if bad:
            raise EvidenceError(f"{where}: latency samples must be finite and >= 0, got {bad[:3]}")
        for name in ("quality", "agreement", "server_p95_ms"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise EvidenceError(f"{where}: {name} is {value!r}")

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Check:
    """One test of a verdict: 'pass', 'fail' or 'insufficient', with the figures behind it."""

    name: str
    status: str
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "figures": _json_safe(self.figures), "message": self.message}


@dataclass(frozen=True)
class Verdict:
    """The judge's answer: 'promote' | 'rollback' | 'wait' | 'reject', why, and every check."""

    outcome: str
    reason: str
    checks: tuple[Check, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (no NaN, no numpy types): stored as the decision's evidence in SQL."""
        return {"outcome": self.outcome, "reason": self.reason, "checks": [c.as_dict() for c in self.checks]}

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return round(number, 6) if math.isfinite(number) else None
    return value


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return 1.0 if a <= 0 else math.inf


def _pct(samples: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=float), q))


# -- checks -----------------------------------------------------------------------------------
def latency_check(candidate: Evidence, stable: Evidence, policy: Policy) -> Check:
    """Is the candidate slower than the stable version, significantly AND beyond the margin?"""
    cand, base = candidate.latencies_ms, stable.latencies_ms
    limit = 1 + policy.max_latency_increase
    figures: dict[str, Any] = {
        "n_candidate": len(cand),
        "n_stable": len(base),
        "threshold": limit,
        "alpha": policy.alpha,
        "server_p95_ms_candidate": candidate.server_p95_ms,
        "server_p95_ms_stable": stable.server_p95_ms,
    }
    if len(cand) < policy.min_samples or len(base) < policy.min_samples:
        return Check(
            "latency",
            INSUFFICIENT,
            figures,
            f"{len(cand)} candidate and {len(base)} stable latency samples, {policy.min_samples} needed on each side",
        )
    c, s = np.asarray(cand, dtype=float), np.asarray(base, dtype=float)
    median_ratio = _ratio(float(np.median(c)), float(np.median(s)))
    p95_ratio = _ratio(_pct(c, 95), _pct(s, 95))
    use_p95 = len(c) >= policy.p95_min_samples and len(s) >= policy.p95_min_samples
    effect = max(median_ratio, p95_ratio) if use_p95 else median_ratio
    plain = stats.mannwhitneyu(c, s, alternative="greater")
    shifted = stats.mannwhitneyu(c / limit, s, alternative="greater")
    figures.update(
        {
            "statistic": float(plain.statistic),
            "p_value": float(plain.pvalue),
            "p_value_beyond_margin": float(shifted.pvalue),
            "effect": effect,
            "median_ratio": median_ratio,
            "p95_ratio": p95_ratio,
            "p95_ratio_used": use_p95,
            "median_ms_candidate": float(np.median(c)),
            "median_ms_stable": float(np.median(s)),
            "p95_ms_candidate": _pct(c, 95),
            "p95_ms_stable": _pct(s, 95),
        }
    )
    summary = f"x{effect:.2f} (limit x{limit:.2f}), U-test p={plain.pvalue:.2g}, beyond margin p={shifted.pvalue:.2g}"
    if effect > limit and plain.pvalue < policy.alpha and shifted.pvalue < policy.alpha:
        return Check("latency", FAIL, figures, f"latency regressed: {summary}")
    if effect > limit and plain.pvalue < policy.alpha:
        return Check("latency", INSUFFICIENT, figures, f"slower, not yet significantly beyond the margin: {summary}")
    return Check("latency", PASS, figures, f"latency not significantly beyond the margin: {summary}")


def latency_ceiling_check(candidate: Evidence, policy: Policy) -> Check | None:
    """Is the candidate's p95 above the absolute ceiling? (binomial test on the share of samples above it)"""
    if policy.latency_ceiling_ms is None:
        return None
    ceiling = policy.latency_ceiling_ms
    samples = candidate.latencies_ms
    figures: dict[str, Any] = {"threshold": ceiling, "n": len(samples), "alpha": policy.alpha}
    if len(samples) < policy.min_samples:
        return Check(
            "latency_ceiling", INSUFFICIENT, figures, f"{len(samples)} latency samples, {policy.min_samples} needed"
        )
    above = sum(1 for x in samples if x > ceiling)
    p95 = _pct(samples, 95)
    test = stats.binomtest(above, len(samples), policy.tail_share, alternative="greater")
    figures.update({"p95_ms": p95, "above": above, "statistic": above / len(samples), "p_value": float(test.pvalue)})
    summary = f"p95 {p95:.1f} ms vs ceiling {ceiling:g} ms ({above}/{len(samples)} above, p={test.pvalue:.2g})"
    if p95 <= ceiling:
        return Check("latency_ceiling", PASS, figures, f"under the latency ceiling: {summary}")
    if test.pvalue < policy.alpha:
        return Check("latency_ceiling", FAIL, figures, f"over the latency ceiling: {summary}")
    return Check("latency_ceiling", INSUFFICIENT, figures, f"over the latency ceiling, not yet significant: {summary}")


def error_check(candidate: Evidence, stable: Evidence, policy: Policy) -> Check:
    """Does the candidate fail more requests than the stable version, significantly AND above the limit?"""
    figures: dict[str, Any] = {
        "errors_candidate": candidate.errors,
        "requests_candidate": candidate.requests,
        "errors_stable": stable.errors,
        "requests_stable": stable.requests,
        "threshold": policy.max_error_rate,
        "alpha": policy.alpha,
    }
    if candidate.requests < policy.min_samples or stable.requests < policy.min_samples:
        return Check(
            "errors",
            INSUFFICIENT,
            figures,
            f"{candidate.requests} candidate and {stable.requests} stable requests, {policy.min_samples} needed on each side",
        )
    rate = candidate.errors / candidate.requests
    table = [
        [candidate.errors, candidate.requests - candidate.errors],
        [stable.errors, stable.requests - stable.errors],
    ]
    test = stats.fisher_exact(table, alternative="greater")
    figures.update(
        {
            "rate_candidate": rate,
            "rate_stable": stable.errors / stable.requests,
            "effect": rate - stable.errors / stable.requests,
            "statistic": float(test.statistic),
            "p_value": float(test.pvalue),
        }
    )
    summary = (
        f"{candidate.errors}/{candidate.requests} failed ({rate:.1%}, limit {policy.max_error_rate:.1%}) vs stable "
        f"{stable.errors}/{stable.requests}, Fisher p={test.pvalue:.2g}"
    )
    return _error_rate_check(rate, float(test.pvalue), policy, figures, summary, failed="error rate regressed")


def preflight_error_check(candidate: Evidence, policy: Policy) -> Check:
    """Without a stable version to compare with: is the error rate significantly above the limit?"""
    figures: dict[str, Any] = {
        "errors": candidate.errors,
        "requests": candidate.requests,
        "threshold": policy.max_error_rate,
        "alpha": policy.alpha,
    }
    if candidate.requests == 0:
        return Check("errors", INSUFFICIENT, figures, "no request was sent")
    rate = candidate.errors / candidate.requests
    test = stats.binomtest(candidate.errors, candidate.requests, policy.max_error_rate, alternative="greater")
    figures.update({"rate": rate, "statistic": rate, "p_value": float(test.pvalue)})
    summary = (
        f"{candidate.errors}/{candidate.requests} failed ({rate:.1%}, limit {policy.max_error_rate:.1%}), "
        f"binomial p={test.pvalue:.2g}"
    )
    return _error_rate_check(rate, float(test.pvalue), policy, figures, summary, failed="fails its requests")


def _error_rate_check(
    rate: float, p_value: float, policy: Policy, figures: dict[str, Any], summary: str, *, failed: str
) -> Check:
    """Within the limit passes; above it and significant fails; above it but not yet significant waits."""
    if rate <= policy.max_error_rate:
        return Check("errors", PASS, figures, f"error rate within the limit: {summary}")
    if p_value < policy.alpha:
        return Check("errors", FAIL, figures, f"{failed}: {summary}")
    return Check("errors", INSUFFICIENT, figures, f"error rate above the limit, not yet significant: {summary}")


def quality_check(
    candidate: float | None, reference: float | None, policy: Policy, *, require_reference: bool = False
) -> Check:
    """Golden-set quality against the stable version's on the same inputs (absolute drop) and the floor.

    In a canary the stable version's figure must be there (`require_reference`): without it the
    candidate cannot be compared, which is "not enough evidence", not a pass.
    """
    figures: dict[str, Any] = {
        "candidate": candidate,
        "stable": reference,
        "max_drop": policy.max_quality_drop,
        "floor": policy.quality_floor,
    }
    if candidate is None:
        return Check("quality", INSUFFICIENT, figures, "no golden-set quality measured for the candidate yet")
    problems: list[str] = []
    if policy.quality_floor is not None and candidate < policy.quality_floor:
        problems.append(f"quality {candidate:.4f} below the floor {policy.quality_floor:.4f}")
    if reference is not None:
        figures["effect"] = candidate - reference
        figures["threshold"] = reference - policy.max_quality_drop
        if candidate < reference - policy.max_quality_drop:
            problems.append(
                f"quality {candidate:.4f} vs stable {reference:.4f}: dropped {reference - candidate:.4f} "
                f"(more than {policy.max_quality_drop:g})"
            )
    if problems:
        return Check("quality", FAIL, figures, "; ".join(problems))
    if reference is None and require_reference:
        return Check("quality", INSUFFICIENT, figures, "no golden-set quality measured for the stable version yet")
    against = f" vs stable {reference:.4f}" if reference is not None else ""
    return Check("quality", PASS, figures, f"quality {candidate:.4f}{against}")


def agreement_check(candidate: Evidence, policy: Policy) -> Check | None:
    """Share of golden inputs where the candidate answers like the stable version (when measured)."""
    if policy.min_agreement is None or candidate.agreement is None:
        return None
    figures = {"agreement": candidate.agreement, "threshold": policy.min_agreement}
    text = f"agreement with stable {candidate.agreement:.3f} (minimum {policy.min_agreement:.3f})"
    if candidate.agreement < policy.min_agreement:
        return Check("agreement", FAIL, figures, f"disagrees with the stable version: {text}")
    return Check("agreement", PASS, figures, text)


# -- verdicts ---------------------------------------------------------------------------------
def _messages(checks: Sequence[Check], status: str) -> str:
    return "; ".join(c.message for c in checks if c.status == status)


def live_metrics_check(candidate: Evidence, stable: Evidence) -> Check:
    """Live figures that could not be read are missing evidence, never a pass: a canary whose errors
    on real traffic cannot be counted must not be promoted on its probes alone."""
    missing = {"candidate": list(candidate.missing), "stable": list(stable.missing)}
    if candidate.missing or stable.missing:
        names = ", ".join(sorted({*candidate.missing, *stable.missing}))
        return Check(
            "live metrics", INSUFFICIENT, missing, f"no live figures from replica(s) {names} in the last window"
        )
    return Check("live metrics", PASS, missing, "live figures read from every replica of both sides")


def decide_canary(
    candidate: Evidence, stable: Evidence, policy: Policy, *, baked_seconds: float, now: datetime
) -> Verdict:
    """The final decision on a canary, compared with the stable version over the same period.

    Any decisive failure rolls back at once (no waiting for the bake time or a promotion window);
    promotion needs every check to pass, `baked_seconds >= policy.bake_seconds` and an open
    promotion window at `now`; anything undecided waits, and a canary still undecided after
    `policy.max_canary_seconds` is rolled back (it must not keep taking traffic on no evidence).
    """
    checks = tuple(
        c
        for c in (
            live_metrics_check(candidate, stable),
            latency_check(candidate, stable, policy),
            latency_ceiling_check(candidate, policy),
            error_check(candidate, stable, policy),
            quality_check(candidate.quality, stable.quality, policy, require_reference=True),
            agreement_check(candidate, policy),
        )
        if c is not None
    )
    if any(c.status == FAIL for c in checks):
        return Verdict(ROLLBACK, _messages(checks, FAIL), checks)
    if any(c.status == INSUFFICIENT for c in checks):
        undecided = _messages(checks, INSUFFICIENT)
        if policy.max_canary_seconds is not None and baked_seconds >= policy.max_canary_seconds:
            return Verdict(
                ROLLBACK,
                f"no decision after {baked_seconds:.0f} s (limit {policy.max_canary_seconds:g} s): {undecided}",
                checks,
            )
        return Verdict(WAIT, f"not enough evidence yet: {undecided}", checks)
    passed = _messages(checks, PASS)
    if baked_seconds < policy.bake_seconds:
        return Verdict(WAIT, f"passing; baking {baked_seconds:.0f}/{policy.bake_seconds:g} s: {passed}", checks)
    if not policy.window_open(now):
        return Verdict(WAIT, f"passed; outside the promotion window: {passed}", checks)
    return Verdict(PROMOTE, f"passed after {baked_seconds:.0f} s: {passed}", checks)


def decide_preflight(
    candidate: Evidence | None,
    policy: Policy,
    *,
    stable_quality: float | None,
    earlier_attempts: int,
    unprobed: str = "no golden set to probe it with",
) -> Verdict:
    """The final decision on a version probed alone under its preflight alias.

    It must answer, meet its floor and ceiling, and not lose quality against the stable version.
    'promote' means it passed (the reconciler makes a first version stable, or starts a canary);
    'reject' on any decisive failure, when it could not be probed (`candidate` is None, for the
    reason `unprobed`: no golden set, an unreadable one, files that differ from the manifest), or when this attempt is undecided and `earlier_attempts` undecided ones came before
    it (`policy.preflight_attempts` in all); 'wait' when it is probed again on the next pass.
    """
    if candidate is None:
        return Verdict(REJECT, unprobed, ())
    samples = len(candidate.latencies_ms)
    answered = Check(
        "latency",
        PASS if samples >= policy.min_samples else INSUFFICIENT,
        {"n": samples, "threshold": policy.min_samples}
        | (
            {"median_ms": _pct(candidate.latencies_ms, 50), "p95_ms": _pct(candidate.latencies_ms, 95)}
            if samples
            else {}
        ),
        f"{samples} answered requests timed ({policy.min_samples} needed)",
    )
    checks = tuple(
        c
        for c in (
            answered,
            latency_ceiling_check(candidate, policy),
            preflight_error_check(candidate, policy),
            quality_check(candidate.quality, stable_quality, policy),
        )
        if c is not None
    )
    if any(c.status == FAIL for c in checks):
        return Verdict(REJECT, _messages(checks, FAIL), checks)
    if any(c.status == INSUFFICIENT for c in checks):
        undecided = _messages(checks, INSUFFICIENT)
        attempts = earlier_attempts + 1
        if attempts >= policy.preflight_attempts:
            return Verdict(REJECT, f"no decision after {attempts} preflight attempts: {undecided}", checks)
        return Verdict(WAIT, f"not enough evidence yet: {undecided}", checks)
    return Verdict(PROMOTE, f"preflight passed: {_messages(checks, PASS)}", checks)
