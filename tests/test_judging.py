"""The judge on seeded evidence: A/A versions are promoted, regressions rolled back, nothing passes on
missing evidence.

The rollout simulation feeds the judge the way the reconciler does: one window per probe (one every
`probe_interval_seconds`, `samples_per_probe` requests per version, both versions in the same
seconds), the first one larger (the whole golden set for quality) and a warm-up; after every window
it judges everything seen so far and stops at the first promote or rollback. The latency noise is
the "docs" model of docs/judging.md: a shared drift per window, a per-version burst per window,
log-normal jitter and 5 % outliers five times slower. Error rates of each test on many generated
streams are in tests/test_judgment_error_rates.py.
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
    QualityRows,
    Verdict,
    WindowLatency,
    decide_canary,
    decide_preflight,
    error_check,
    latency_check,
    quality_check,
    t_boundary,
)
from control_plane.policy import Policy

DEFAULT = Policy()
NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # a Thursday
ROWS = tuple([1.0] * 360 + [0.0] * 40)  # 400 golden rows, accuracy 0.9


def _window(rng: np.random.Generator, k: int, slower: float, tail: float | None) -> tuple[np.ndarray, np.ndarray]:
    drift = rng.lognormal(0, 0.3)
    sides = []
    for factor, is_candidate in ((slower, True), (1.0, False)):
        x = 5.0 * drift * rng.lognormal(0, 0.1) * rng.lognormal(0, 0.4, k) * factor
        x = np.where(rng.random(k) < 0.05, x * 5, x)
        if tail is not None and is_candidate:
            x = np.where(rng.random(k) < 0.1, x * tail, x)
        sides.append(x)
    return sides[0], sides[1]


def _rollout(
    seed: int,
    policy: Policy = DEFAULT,
    *,
    slower: float = 1.0,
    tail: float | None = None,
    error_rate: float = 0.0,
    stable_error_rate: float = 0.0,
    candidate_rows: tuple[float, ...] = ROWS,
    agreement: float | None = 1.0,
    missing_from: int | None = None,
    live: int = 0,
    horizon_s: float = 600.0,
) -> tuple[Verdict, float]:
    rng = np.random.default_rng(seed)
    k = policy.samples_per_probe
    cand: list[WindowLatency] = []
    base: list[WindowLatency] = []
    cand_errors = base_errors = requests = 0
    verdict = Verdict("wait", "never judged")
    for i in range(int(horizon_s / policy.probe_interval_seconds)):
        n = 100 if i == 0 else k  # the first window sends the whole golden set
        c, s = _window(rng, n, slower, tail)
        cand.append(WindowLatency(float(i), tuple(c.tolist())))
        base.append(WindowLatency(float(i), tuple(s.tolist())))
        n += live  # client requests each side served in the window (Triton's counters count them)
        requests += n
        cand_errors += int((rng.random(n) < error_rate).sum())
        base_errors += int((rng.random(n) < stable_error_rate).sum())
        streak = 0 if missing_from is None or i < missing_from else i - missing_from + 1
        missing = ("r0",) if streak else ()
        baked = (i + 1) * policy.probe_interval_seconds
        verdict = decide_canary(
            Evidence(2, (), requests, cand_errors, 0.9, agreement, None, missing, tuple(cand),
                     QualityRows("accuracy", candidate_rows), streak),
            Evidence(1, (), requests, base_errors, 0.9, None, None, (), tuple(base),
                     QualityRows("accuracy", ROWS)),
            policy,
            baked_seconds=baked,
            now=NOON,
        )  # fmt: skip
        if verdict.outcome != "wait":
            return verdict, baked
    return verdict, horizon_s


def test_aa_rollouts_are_promoted_never_rolled_back() -> None:
    outcomes = [_rollout(seed) for seed in range(8)]
    assert [v.outcome for v, _ in outcomes] == ["promote"] * 8, [v.reason for v, _ in outcomes]
    for verdict, seconds in outcomes:
        assert seconds >= DEFAULT.bake_seconds
        assert {c.status for c in verdict.checks} == {"pass"}  # every bound inside its margin


def test_one_and_a_half_times_slower_candidate_is_rolled_back_within_60_seconds() -> None:
    for seed in range(200, 208):
        verdict, seconds = _rollout(seed, slower=1.5)
        assert verdict.outcome == "rollback", verdict.reason
        assert seconds <= 60
        latency = verdict.check("latency")
        assert latency is not None and latency.status == "fail", verdict.reason
        assert latency.figures["lower"] > 1.0 and latency.figures["effect"] > 1 + DEFAULT.max_latency_increase
        assert "latency regressed" in verdict.reason


def test_tail_only_regression_is_rolled_back_by_the_tail_check() -> None:
    """10 % of requests x4: the median hardly moves (x1.05), each window's p90 does."""
    for seed in range(300, 304):
        verdict, _ = _rollout(seed, tail=4.0)
        assert verdict.outcome == "rollback", verdict.reason
        tail = verdict.check("latency tail")
        assert tail is not None and tail.status == "fail"
        median = verdict.check("latency")
        assert median is not None and median.status != "fail"


def test_gross_failure_breaker_acts_on_the_first_look() -> None:
    verdict, seconds = _rollout(1, slower=4.0)
    assert verdict.outcome == "rollback" and "gross failure" in verdict.reason
    # the first look with min_samples (20) samples per side after the warm-up window: the third window
    assert seconds == 3 * DEFAULT.probe_interval_seconds
    failing, at = _rollout(2, error_rate=0.3)
    assert failing.outcome == "rollback" and "requests failed" in failing.reason
    assert at == DEFAULT.probe_interval_seconds  # errors count from the first window


def test_errors_are_judged_relative_to_stable() -> None:
    """A stable version failing 3 % of its client traffic (50 requests a second on each side) does not
    block an A/A rollout; +5 points over it is rolled back."""
    verdict, _ = _rollout(40, error_rate=0.03, stable_error_rate=0.03, live=100)
    assert verdict.outcome == "promote", verdict.reason
    worse, _ = _rollout(41, error_rate=0.08, stable_error_rate=0.03, live=100)
    assert worse.outcome == "rollback" and worse.check("errors").status == "fail", worse.reason  # type: ignore[union-attr]


def test_error_check_needs_significance_and_the_allowed_rate() -> None:
    def ev(version: int, requests: int, errors: int) -> Evidence:
        return Evidence(version, (), requests, errors, None)

    # significantly more than stable's none, but under the 1-point floor: not a failure
    under = error_check(ev(2, 20_000, 100), ev(1, 20_000, 0), DEFAULT)
    assert under.figures["e_value_worse"] > 1e6 and under.status != "fail"
    # 3 of 40: above the allowed rate, far from significant: wait, never pass
    assert error_check(ev(2, 40, 3), ev(1, 40, 0), DEFAULT).status == "insufficient"
    assert error_check(ev(2, 2000, 120), ev(1, 2000, 10), DEFAULT).status == "fail"
    # exposure-weighted: the same rates on unequal exposure
    assert error_check(ev(2, 8000, 80), ev(1, 2000, 20), DEFAULT).status == "pass"


def test_quality_drop_is_rolled_back_by_the_paired_test() -> None:
    dropped = tuple([1.0] * 340 + [0.0] * 60)  # 20 rows that stable gets right now wrong: -0.05
    verdict, seconds = _rollout(6, candidate_rows=dropped)
    assert verdict.outcome == "rollback" and seconds == DEFAULT.probe_interval_seconds
    quality = verdict.check("quality")
    assert quality is not None and quality.status == "fail"
    assert quality.figures["changed_rows"] == 20 and quality.figures["drop"] == pytest.approx(0.05)


def test_identical_outputs_on_a_small_golden_set_pass_with_an_honest_width() -> None:
    """96 rows, none differs: the drop's bound is about 1/N, inside the 0.02 margin (not zero-width)."""
    rows = QualityRows("accuracy", tuple([1.0] * 96))
    check = quality_check(
        Evidence(2, (), 0, 0, 1.0, quality_rows=rows), Evidence(1, (), 0, 0, 1.0, quality_rows=rows), DEFAULT
    )
    assert check.status == "pass" and 0.005 < check.figures["drop_upper"] < DEFAULT.max_quality_drop


def test_auc_is_compared_paired_by_delong() -> None:
    rng = np.random.default_rng(3)
    labels = tuple(int(x) for x in (rng.random(2000) < 0.2))
    scores = np.asarray(labels) * 1.0 + rng.normal(0, 1, 2000)
    stable = QualityRows("auc", tuple(scores.tolist()), labels)
    same = quality_check(
        Evidence(2, (), 0, 0, 0.8, quality_rows=stable), Evidence(1, (), 0, 0, 0.8, quality_rows=stable), DEFAULT
    )
    assert same.status == "pass"
    noisy = QualityRows("auc", tuple((scores + rng.normal(0, 2.5, 2000)).tolist()), labels)
    worse = quality_check(
        Evidence(2, (), 0, 0, 0.6, quality_rows=noisy), Evidence(1, (), 0, 0, 0.8, quality_rows=stable), DEFAULT
    )
    assert worse.status == "fail" and worse.figures["metric"] == "auc"


def test_a_check_that_cannot_be_computed_is_insufficient_never_dropped() -> None:
    verdict, _ = _rollout(7, agreement=None, horizon_s=100)
    assert verdict.outcome == "wait" and verdict.check("agreement").status == "insufficient"  # type: ignore[union-attr]
    latency = _evidence_pair()
    cand, stable = latency
    no_rows = decide_canary(
        Evidence(2, (), 500, 0, 0.9, 1.0, windows=cand), Evidence(1, (), 500, 0, 0.9, windows=stable), DEFAULT,
        baked_seconds=60, now=NOON,
    )  # fmt: skip
    assert no_rows.outcome == "wait" and no_rows.check("quality").status == "insufficient"  # type: ignore[union-attr]
    renamed = quality_check(
        Evidence(2, (), 0, 0, 0.9, quality_rows=QualityRows("recall@10", (1.0,) * 10)),
        Evidence(1, (), 0, 0, 0.9, quality_rows=QualityRows("accuracy", (1.0,) * 10)),
        DEFAULT,
    )
    assert renamed.status == "insufficient" and "different metrics" in renamed.message


def _evidence_pair(n: int = 40, seed: int = 4) -> tuple[tuple[WindowLatency, ...], tuple[WindowLatency, ...]]:
    rng = np.random.default_rng(seed)
    pairs = [_window(rng, 16, 1.0, None) for _ in range(n)]
    return (
        tuple(WindowLatency(float(i), tuple(c.tolist())) for i, (c, _) in enumerate(pairs)),
        tuple(WindowLatency(float(i), tuple(s.tolist())) for i, (_, s) in enumerate(pairs)),
    )


def test_missing_live_figures_wait_then_roll_back_after_the_consecutive_limit() -> None:
    verdict, seconds = _rollout(8, missing_from=3)
    assert verdict.outcome == "rollback"
    assert f"missing in {DEFAULT.max_consecutive_missing} consecutive windows" in verdict.reason
    assert "no live figures from replica(s) r0" in verdict.reason
    assert verdict.check("live metrics").status == "insufficient"  # type: ignore[union-attr]
    assert seconds == (3 + DEFAULT.max_consecutive_missing) * DEFAULT.probe_interval_seconds


def test_too_few_windows_is_never_a_pass_even_after_the_bake_time() -> None:
    cand, stable = _evidence_pair(n=3)
    verdict = decide_canary(
        Evidence(2, (), 400, 0, 0.9, 1.0, windows=cand, quality_rows=QualityRows("accuracy", ROWS)),
        Evidence(1, (), 400, 0, 0.9, windows=stable, quality_rows=QualityRows("accuracy", ROWS)),
        DEFAULT, baked_seconds=DEFAULT.bake_seconds * 10, now=NOON,
    )  # fmt: skip
    assert verdict.outcome == "wait" and verdict.check("latency").status == "insufficient"  # type: ignore[union-attr]
    assert "not enough evidence" in verdict.reason


def test_no_evidence_at_all_waits_then_is_rolled_back_after_the_canary_limit() -> None:
    empty_c, empty_s = Evidence(2, (), 0, 0, None), Evidence(1, (), 0, 0, None)
    assert decide_canary(empty_c, empty_s, DEFAULT, baked_seconds=100, now=NOON).outcome == "wait"
    late = decide_canary(empty_c, empty_s, DEFAULT, baked_seconds=DEFAULT.max_canary_seconds or 0, now=NOON)
    assert late.outcome == "rollback" and "no decision after" in late.reason


def test_t_boundary_needs_a_few_windows_and_shrinks() -> None:
    level = DEFAULT.alpha / 4
    assert math.isinf(t_boundary(2, level))
    widths = [t_boundary(n, level) / math.sqrt(n) for n in (8, 15, 30, 60, 150)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.4


def test_latency_within_the_margin_passes_and_beyond_it_fails() -> None:
    cand, stable = _evidence_pair(n=300)
    faster = tuple(WindowLatency(w.at, tuple(x * 1.12 for x in w.samples)) for w in cand)
    small = latency_check(
        Evidence(2, (), 0, 0, None, windows=faster), Evidence(1, (), 0, 0, None, windows=stable), DEFAULT
    )
    assert small.status == "pass" and small.figures["lower"] > 1.0  # shown slower, and shown within the margin
    slow = tuple(WindowLatency(w.at, tuple(x * 1.6 for x in w.samples)) for w in cand)
    big = latency_check(Evidence(2, (), 0, 0, None, windows=slow), Evidence(1, (), 0, 0, None, windows=stable), DEFAULT)
    assert big.status == "fail"


def test_latency_ceiling_is_checked_with_a_test_not_a_single_sample() -> None:
    policy = Policy(latency_ceiling_ms=200.0)
    verdict, _ = _rollout(11, policy)
    assert verdict.outcome == "promote" and verdict.check("latency_ceiling").status == "pass"  # type: ignore[union-attr]
    slow, _ = _rollout(12, Policy(latency_ceiling_ms=3.0))
    assert slow.outcome == "rollback" and slow.check("latency_ceiling").status == "fail"  # type: ignore[union-attr]


def _lognormal(seed: int, n: int, scale: float = 5.0, sigma: float = 0.3) -> list[float]:
    return (scale * np.random.default_rng(seed).lognormal(0, sigma, n)).tolist()


def _evidence(version: int, samples: list[float], *, errors: int = 0, quality: float | None = None) -> Evidence:
    return Evidence(version, tuple(samples), len(samples), errors, quality=quality)


def test_preflight_first_version_passes_on_its_own() -> None:
    verdict = decide_preflight(
        _evidence(1, _lognormal(12, 40), quality=0.9), DEFAULT, stable_quality=None, earlier_attempts=0
    )
    assert verdict.outcome == "promote", verdict.reason


@pytest.mark.parametrize(
    ("evidence", "policy", "stable_quality", "needle"),
    [
        (dict(quality=0.6), Policy(quality_floor=0.8), None, "below the floor"),
        (dict(quality=0.5), DEFAULT, 0.9, "dropped"),
        (dict(quality=0.9, scale=400.0), Policy(latency_ceiling_ms=100.0), None, "over the latency ceiling"),
        (dict(quality=None, errors=40), DEFAULT, None, "fails its requests"),
    ],
)
def test_preflight_rejects(evidence: dict, policy: Policy, stable_quality: float | None, needle: str) -> None:
    samples = _lognormal(13, 40, scale=evidence.get("scale", 5.0))
    rows = QualityRows("accuracy", (1.0,) * 400)
    candidate = Evidence(1, tuple(samples), 40, evidence.get("errors", 0), evidence["quality"], quality_rows=rows)
    verdict = decide_preflight(candidate, policy, stable_quality=stable_quality, earlier_attempts=0)
    assert verdict.outcome == "reject"
    assert needle in verdict.reason


def test_preflight_leaves_a_small_drop_to_the_canary_paired_test() -> None:
    """0.03 below stable's figure on 400 rows is within sampling error: the canary's paired test judges it."""
    rows = QualityRows("accuracy", (1.0,) * 400)
    candidate = Evidence(1, tuple(_lognormal(13, 40)), 40, 0, 0.87, quality_rows=rows)
    assert decide_preflight(candidate, DEFAULT, stable_quality=0.9, earlier_attempts=0).outcome == "promote"


def test_preflight_waits_for_samples_and_quality() -> None:
    assert (
        decide_preflight(
            _evidence(1, _lognormal(14, 5), quality=0.9), DEFAULT, stable_quality=None, earlier_attempts=0
        ).outcome
        == "wait"
    )
    no_quality = decide_preflight(
        _evidence(1, _lognormal(14, 40), quality=None), DEFAULT, stable_quality=0.9, earlier_attempts=0
    )
    assert no_quality.outcome == "wait"


def test_verdicts_are_json_for_the_decision_rows() -> None:
    verdict, _ = _rollout(0, slower=1.5)
    text = json.dumps(verdict.as_dict(), allow_nan=False)  # PostgreSQL JSON rejects NaN
    data = json.loads(text)
    assert data["outcome"] == "rollback"
    assert {c["name"] for c in data["checks"]} >= {
        "latency",
        "latency tail",
        "errors",
        "quality",
        "agreement",
        "breaker",
    }
    zero = tuple(WindowLatency(float(i), (0.0,) * 16) for i in range(30))
    rows = QualityRows("accuracy", (1.0,) * 10)
    odd = decide_canary(
        Evidence(2, (0.0,) * 30, 30, 0, 0.9, 1.0, windows=zero, quality_rows=rows),
        Evidence(1, (0.0,) * 30, 30, 0, 0.9, windows=zero, quality_rows=rows),
        DEFAULT, baked_seconds=60, now=NOON,
    ).as_dict()  # fmt: skip
    json.dumps(odd, allow_nan=False)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(requests=3, errors=4), "4 errors out of 3 requests"),
        (dict(requests=-1, errors=0), "must be >= 0"),
        (dict(latencies_ms=(1.0, math.nan)), "finite"),
        (dict(latencies_ms=(-2.0,)), "finite and >= 0"),
        (dict(windows=(WindowLatency(0.0, (1.0, math.inf)),)), "finite"),
        (dict(quality=math.inf), "quality"),
        (dict(quality_rows=QualityRows("auc", (0.1, 0.2), (1,))), "labels"),
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

    weekdays = Policy(promotion_windows=(PromotionWindow(day_of_week="mon-fri", hour="9-16"),))
    assert _rollout(21, weekdays)[0].outcome == "promote"
    sunday = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    cand, stable = _evidence_pair(n=200, seed=22)
    rows = QualityRows("accuracy", ROWS)
    closed = decide_canary(
        Evidence(2, (), 3200, 0, 0.9, 1.0, windows=cand, quality_rows=rows),
        Evidence(1, (), 3200, 0, 0.9, windows=stable, quality_rows=rows),
        weekdays, baked_seconds=400, now=sunday,
    )  # fmt: skip
    assert closed.outcome == "wait" and "outside the promotion window" in closed.reason
    slow = tuple(WindowLatency(w.at, tuple(x * 3 for x in w.samples)) for w in cand)
    rolled = decide_canary(
        Evidence(2, (), 3200, 0, 0.9, 1.0, windows=slow, quality_rows=rows),
        Evidence(1, (), 3200, 0, 0.9, windows=stable, quality_rows=rows),
        weekdays, baked_seconds=60, now=sunday,
    )  # fmt: skip
    assert rolled.outcome == "rollback"
