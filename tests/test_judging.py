"""The judge on seeded evidence: A/A versions are not rolled back for noise, regressions are caught fast.

The rollout simulation feeds the judge the way the reconciler does: after every probe (one every
`probe_interval_seconds`, `samples_per_probe` requests per version, interleaved so a burst of load
hits both versions) it judges everything seen so far, and stops at the first promote or rollback.
The latency noise is deliberately rough: a shared drift per probe, a small per-version burst,
log-normal jitter and 5% outliers five times slower.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from control_plane.errors import EvidenceError
from control_plane.judging import (
    Evidence,
    Verdict,
    decide_canary,
    decide_preflight,
    error_check,
    latency_check,
)
from control_plane.policy import Policy

DEFAULT = Policy()
NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # a Thursday
PROBE_SECONDS_TARGET = 60.0


def _rollout(
    seed: int,
    policy: Policy = DEFAULT,
    *,
    slower: float = 1.0,
    error_rate: float = 0.0,
    stable_error_rate: float = 0.0,
    horizon_s: float = PROBE_SECONDS_TARGET,
) -> tuple[Verdict, float]:
    rng = np.random.default_rng(seed)
    k = policy.samples_per_probe
    cand: list[float] = []
    base: list[float] = []
    cand_errors = base_errors = 0
    verdict = Verdict("wait", "never judged")
    probes = int(horizon_s / policy.probe_interval_seconds)
    for i in range(probes):
        drift = rng.lognormal(0, 0.3)
        for samples, factor in ((cand, slower), (base, 1.0)):
            x = 5.0 * drift * rng.lognormal(0, 0.1) * rng.lognormal(0, 0.4, k) * factor
            samples.extend(np.where(rng.random(k) < 0.05, x * 5, x).tolist())
        cand_errors += int((rng.random(k) < error_rate).sum())
        base_errors += int((rng.random(k) < stable_error_rate).sum())
        requests = (i + 1) * k
        baked = (i + 1) * policy.probe_interval_seconds
        verdict = decide_canary(
            Evidence(2, tuple(cand), requests, cand_errors, quality=0.91, agreement=1.0),
            Evidence(1, tuple(base), requests, base_errors, quality=0.91),
            policy,
            baked_seconds=baked,
            now=NOON,
        )
        if verdict.outcome != "wait":
            return verdict, baked
    return verdict, horizon_s


def test_default_probe_rate_gives_enough_samples_in_60_seconds() -> None:
    per_version = int(PROBE_SECONDS_TARGET / DEFAULT.probe_interval_seconds) * DEFAULT.samples_per_probe
    assert per_version >= 10 * DEFAULT.min_samples  # 480 with the defaults


def test_ten_aa_rollouts_are_promoted_and_none_is_rolled_back() -> None:
    outcomes = [_rollout(seed) for seed in range(10)]
    assert [v.outcome for v, _ in outcomes].count("rollback") == 0, [v.reason for v, _ in outcomes]
    for verdict, seconds in outcomes:
        assert verdict.outcome == "promote", verdict.reason
        assert seconds >= DEFAULT.bake_seconds  # never before the bake time


def test_thirty_more_aa_rollouts_none_rolled_back() -> None:
    """The plain rule (U test + point-estimate margin, no margin-shifted test) rolls back 2 of these 30."""
    rolled_back = [seed for seed in range(10, 40) if _rollout(seed)[0].outcome == "rollback"]
    assert rolled_back == []


def test_aa_with_equally_flaky_versions_is_not_rolled_back() -> None:
    outcomes = [_rollout(seed, error_rate=0.01, stable_error_rate=0.01) for seed in range(100, 110)]
    assert all(v.outcome != "rollback" for v, _ in outcomes), [v.reason for v, _ in outcomes]


def test_one_and_a_half_times_slower_candidate_is_rolled_back_within_60_seconds() -> None:
    for seed in range(200, 210):
        verdict, seconds = _rollout(seed, slower=1.5)
        assert verdict.outcome == "rollback", verdict.reason
        assert seconds <= PROBE_SECONDS_TARGET
        latency = verdict.check("latency")
        assert latency is not None and latency.status == "fail"
        assert latency.figures["p_value"] < DEFAULT.alpha
        assert latency.figures["effect"] > 1 + DEFAULT.max_latency_increase
        assert "latency regressed" in verdict.reason


def test_five_percent_error_rate_candidate_is_rolled_back_within_60_seconds() -> None:
    for seed in range(300, 310):
        verdict, seconds = _rollout(seed, error_rate=0.05)
        assert verdict.outcome == "rollback", verdict.reason
        assert seconds <= PROBE_SECONDS_TARGET
        errors = verdict.check("errors")
        assert errors is not None and errors.status == "fail"
        assert errors.figures["p_value"] < DEFAULT.alpha
        assert errors.figures["rate_candidate"] > DEFAULT.max_error_rate


def _evidence(
    version: int,
    samples: list[float],
    *,
    requests: int | None = None,
    errors: int = 0,
    quality: float | None = None,
    agreement: float | None = None,
) -> Evidence:
    count = len(samples) if requests is None else requests
    return Evidence(version, tuple(samples), count, errors, quality=quality, agreement=agreement)


def _lognormal(seed: int, n: int, scale: float = 5.0, sigma: float = 0.3) -> list[float]:
    return (scale * np.random.default_rng(seed).lognormal(0, sigma, n)).tolist()


def test_significant_but_small_slowdown_passes_as_kayenta_requires_both() -> None:
    stable = _evidence(1, _lognormal(1, 2000), quality=0.9)
    candidate = _evidence(2, [x * 1.1 for x in _lognormal(2, 2000)], quality=0.9, agreement=0.99)
    check = latency_check(candidate, stable, DEFAULT)
    assert check.figures["p_value"] < 1e-6  # clearly slower ...
    assert check.status == "pass"  # ... but within the 25% margin
    assert decide_canary(candidate, stable, DEFAULT, baked_seconds=60, now=NOON).outcome == "promote"


def test_large_but_not_significant_difference_is_not_rolled_back() -> None:
    policy = Policy(min_samples=5)
    stable = _evidence(1, [5.0, 6.0, 7.0, 30.0, 5.5, 6.5], quality=0.9)
    candidate = _evidence(2, [9.0, 4.0, 12.0, 5.0, 11.0, 10.5], quality=0.9, agreement=1.0)
    check = latency_check(candidate, stable, policy)
    assert check.figures["effect"] > 1.25 and check.figures["p_value"] >= policy.alpha
    assert check.status == "pass"  # Kayenta: a difference must be significant too
    assert decide_canary(candidate, stable, policy, baked_seconds=1000, now=NOON).outcome == "promote"


def test_significantly_slower_but_not_yet_beyond_the_margin_waits() -> None:
    stable = _evidence(1, _lognormal(20, 60, sigma=0.25), quality=0.9)
    candidate = _evidence(2, [x * 1.3 for x in _lognormal(21, 60, sigma=0.25)], quality=0.9, agreement=1.0)
    check = latency_check(candidate, stable, DEFAULT)
    assert check.figures["p_value"] < DEFAULT.alpha <= check.figures["p_value_beyond_margin"], check.figures
    assert check.status == "insufficient"
    assert decide_canary(candidate, stable, DEFAULT, baked_seconds=60, now=NOON).outcome == "wait"


def test_too_few_samples_is_never_a_pass_even_after_the_bake_time() -> None:
    few = _lognormal(3, DEFAULT.min_samples - 1)
    stable = _evidence(1, few, quality=0.9)
    candidate = _evidence(2, few, quality=0.9, agreement=1.0)
    verdict = decide_canary(candidate, stable, DEFAULT, baked_seconds=DEFAULT.bake_seconds * 10, now=NOON)
    assert verdict.outcome == "wait"
    assert verdict.check("latency").status == "insufficient"  # type: ignore[union-attr]
    assert verdict.check("errors").status == "insufficient"  # type: ignore[union-attr]
    assert "not enough evidence" in verdict.reason


def test_no_evidence_at_all_waits_then_is_rolled_back_after_the_canary_limit() -> None:
    empty_c, empty_s = Evidence(2, (), 0, 0, None), Evidence(1, (), 0, 0, None)
    assert decide_canary(empty_c, empty_s, DEFAULT, baked_seconds=100, now=NOON).outcome == "wait"
    late = decide_canary(empty_c, empty_s, DEFAULT, baked_seconds=DEFAULT.max_canary_seconds or 0, now=NOON)
    assert late.outcome == "rollback" and "no decision after" in late.reason


def test_passing_canary_waits_for_the_bake_time_then_promotes() -> None:
    samples = _lognormal(4, 200)
    stable = _evidence(1, samples, quality=0.9)
    candidate = _evidence(2, _lognormal(5, 200), quality=0.9, agreement=0.97)
    early = decide_canary(candidate, stable, DEFAULT, baked_seconds=DEFAULT.bake_seconds - 1, now=NOON)
    assert early.outcome == "wait" and "baking" in early.reason
    assert decide_canary(candidate, stable, DEFAULT, baked_seconds=DEFAULT.bake_seconds, now=NOON).outcome == "promote"


def test_quality_drop_is_rolled_back_at_once_without_waiting_for_the_bake() -> None:
    stable = _evidence(1, _lognormal(6, 40), quality=0.90)
    candidate = _evidence(2, _lognormal(7, 40), quality=0.85, agreement=0.95)
    verdict = decide_canary(candidate, stable, DEFAULT, baked_seconds=0, now=NOON)
    assert verdict.outcome == "rollback"
    assert verdict.check("quality").status == "fail"  # type: ignore[union-attr]
    assert "0.8500" in verdict.reason and "0.9000" in verdict.reason
    within = _evidence(2, _lognormal(7, 40), quality=0.885, agreement=0.95)  # 0.015 drop <= 0.02
    assert decide_canary(within, stable, DEFAULT, baked_seconds=60, now=NOON).outcome == "promote"


def test_canary_without_the_stable_quality_waits() -> None:
    stable = _evidence(1, _lognormal(15, 40), quality=None)
    candidate = _evidence(2, _lognormal(16, 40), quality=0.9, agreement=1.0)
    verdict = decide_canary(candidate, stable, DEFAULT, baked_seconds=60, now=NOON)
    assert verdict.outcome == "wait" and "stable version" in verdict.reason
    floored = decide_canary(candidate, stable, Policy(quality_floor=0.95), baked_seconds=60, now=NOON)
    assert floored.outcome == "rollback"  # below the floor needs no comparison


def test_quality_floor_and_agreement_are_enforced() -> None:
    stable = _evidence(1, _lognormal(8, 40), quality=0.70)
    candidate = _evidence(2, _lognormal(9, 40), quality=0.70, agreement=0.95)
    floored = decide_canary(candidate, stable, Policy(quality_floor=0.75), baked_seconds=60, now=NOON)
    assert floored.outcome == "rollback" and "below the floor" in floored.reason
    disagreeing = _evidence(2, _lognormal(9, 40), quality=0.70, agreement=0.5)
    verdict = decide_canary(disagreeing, stable, DEFAULT, baked_seconds=60, now=NOON)
    assert verdict.outcome == "rollback" and verdict.check("agreement").status == "fail"  # type: ignore[union-attr]
    assert decide_canary(disagreeing, stable, Policy(min_agreement=None), baked_seconds=60, now=NOON).outcome == "promote"


def test_errors_need_both_significance_and_the_limit() -> None:
    samples = _lognormal(10, 1000)
    stable = _evidence(1, samples, requests=1000, errors=0)
    # 1.5% errors: significantly more than the stable version's none, but under the 2% limit
    under = error_check(_evidence(2, samples, requests=1000, errors=15), stable, DEFAULT)
    assert under.figures["p_value"] < DEFAULT.alpha and under.status == "pass"
    # 3 of 40 failed: above the limit, not yet significant -> wait, not pass
    small = error_check(_evidence(2, samples[:40], requests=40, errors=3), _evidence(1, samples[:40]), DEFAULT)
    assert small.status == "insufficient"
    worse = error_check(_evidence(2, samples, requests=1000, errors=60), stable, DEFAULT)
    assert worse.status == "fail"


def test_latency_ceiling_is_checked_with_a_test_not_a_single_sample() -> None:
    policy = Policy(latency_ceiling_ms=20.0)
    fast = _lognormal(11, 100, scale=5.0)
    stable = _evidence(1, fast, quality=0.9)
    one_spike = _evidence(2, [*fast[:-1], 500.0], quality=0.9, agreement=1.0)
    assert decide_canary(one_spike, stable, policy, baked_seconds=60, now=NOON).outcome == "promote"
    slow = _evidence(2, [x * 6 for x in fast], quality=0.9, agreement=1.0)
    verdict = decide_canary(slow, stable, policy, baked_seconds=0, now=NOON)
    assert verdict.outcome == "rollback" and verdict.check("latency_ceiling").status == "fail"  # type: ignore[union-attr]


def test_preflight_first_version_passes_on_its_own() -> None:
    verdict = decide_preflight(_evidence(1, _lognormal(12, 40), quality=0.9), DEFAULT, stable_quality=None, earlier_attempts=0)
    assert verdict.outcome == "promote", verdict.reason


@pytest.mark.parametrize(
    ("evidence", "policy", "stable_quality", "needle"),
    [
        (dict(quality=0.6), Policy(quality_floor=0.8), None, "below the floor"),
        (dict(quality=0.8), DEFAULT, 0.9, "dropped"),
        (dict(quality=0.9, scale=400.0), Policy(latency_ceiling_ms=100.0), None, "over the latency ceiling"),
        (dict(quality=None, errors=40), DEFAULT, None, "fails its requests"),
    ],
)
def test_preflight_rejects(evidence: dict, policy: Policy, stable_quality: float | None, needle: str) -> None:
    samples = _lognormal(13, 40, scale=evidence.get("scale", 5.0))
    candidate = Evidence(1, tuple(samples), 40, evidence.get("errors", 0), evidence["quality"])
    verdict = decide_preflight(candidate, policy, stable_quality=stable_quality, earlier_attempts=0)
    assert verdict.outcome == "reject"
    assert needle in verdict.reason


def test_preflight_waits_for_samples_and_quality() -> None:
    assert decide_preflight(_evidence(1, _lognormal(14, 5), quality=0.9), DEFAULT, stable_quality=None, earlier_attempts=0).outcome == "wait"
    no_quality = decide_preflight(_evidence(1, _lognormal(14, 40), quality=None), DEFAULT, stable_quality=0.9, earlier_attempts=0)
    assert no_quality.outcome == "wait"


def test_verdicts_are_json_for_the_decision_rows() -> None:
    verdict, _ = _rollout(0, slower=1.5)
    text = json.dumps(verdict.as_dict(), allow_nan=False)  # PostgreSQL JSON rejects NaN
    data = json.loads(text)
    assert data["outcome"] == "rollback"
    assert {c["name"] for c in data["checks"]} >= {"latency", "errors", "quality", "agreement"}
    zero = Evidence(2, (0.0,) * 30, 30, 0, 0.9, 1.0)
    odd = decide_canary(zero, zero, DEFAULT, baked_seconds=60, now=NOON).as_dict()
    json.dumps(odd, allow_nan=False)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(requests=3, errors=4), "4 errors out of 3 requests"),
        (dict(requests=-1, errors=0), "must be >= 0"),
        (dict(latencies_ms=(1.0, math.nan)), "finite"),
        (dict(latencies_ms=(-2.0,)), "finite and >= 0"),
        (dict(quality=math.inf), "quality"),
    ],
)
def test_impossible_evidence_is_refused_with_the_cause(kwargs: dict, needle: str) -> None:
    fields = dict(version=3, latencies_ms=(1.0,), requests=1, errors=0, quality=0.5) | kwargs
    with pytest.raises(EvidenceError, match="version 3") as info:
        Evidence(**fields)
    assert needle in str(info.value)


def test_preflight_decision_is_final() -> None:
    """What the judge returns is what the reconciler does: no golden set and too many undecided tries reject."""
    assert decide_preflight(None, DEFAULT, stable_quality=0.9, earlier_attempts=0).outcome == "reject"
    few = _evidence(1, _lognormal(14, 5), quality=0.9)
    policy = Policy(preflight_attempts=3)
    assert decide_preflight(few, policy, stable_quality=None, earlier_attempts=1).outcome == "wait"
    last = decide_preflight(few, policy, stable_quality=None, earlier_attempts=2)
    assert last.outcome == "reject" and "3 preflight attempts" in last.reason


def test_canary_decision_respects_the_promotion_window() -> None:
    from control_plane.policy import PromotionWindow

    candidate = _evidence(2, _lognormal(21, 200), quality=0.9, agreement=1.0)
    stable = _evidence(1, _lognormal(22, 200), quality=0.9)
    weekdays = Policy(promotion_windows=(PromotionWindow(day_of_week="mon-fri", hour="9-16"),))
    assert decide_canary(candidate, stable, weekdays, baked_seconds=60, now=NOON).outcome == "promote"
    sunday = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    closed = decide_canary(candidate, stable, weekdays, baked_seconds=60, now=sunday)
    assert closed.outcome == "wait" and "outside the promotion window" in closed.reason
    slow = _evidence(2, tuple(x * 3 for x in _lognormal(23, 200)), quality=0.9, agreement=1.0)
    assert decide_canary(slow, stable, weekdays, baked_seconds=60, now=sunday).outcome == "rollback"
