"""The judge: pure functions from what the probes saw to promote, roll back, wait or reject.

Why pure: every decision is stored with its figures and the policy behind it, and must be
reproducible from them (`shepherd backtest` replays them); no clock, no I/O (the bake time comes in
as `baked_seconds`).

Why these tests (docs/judging.md has the figures). The judge looks after every probe window, so
every test here is **anytime-valid**: its error rate holds however often it is looked at, which a
plain U test or Fisher test repeated on growing evidence does not (an A/A canary crossed p < 0.01 at
some look in 21-37 % of simulated rollouts). Each check gives a confidence bound on an effect and
decides three ways, as Kayenta does (a difference must be significant AND large enough):

- **fail** (roll back): the effect is shown above zero at `alpha / k` (the family-wise `alpha` split
  over the k tests that can roll back) AND its estimate is beyond the margin;
- **pass**: the bound on the effect at `beta` is inside the margin (non-inferiority shown);
- **insufficient** (wait): neither; a check that cannot be computed is insufficient, never dropped.

Promotion needs every check to pass. The units are honest about dependence: latency is judged on
one figure per probe window (the candidate's and stable's samples of one window are taken in the
same seconds), never on samples as if independent.

- latency: log ratio of the window's medians, and of its 90th percentiles (the tail), each with a
  t confidence sequence (a normal mixture over the standardised effect, scale-invariant: valid
  for any look schedule with the variance unknown);
- errors: exposure-weighted (each side's errors over its own requests), two e-processes by
  universal inference (a beta mixture over the likelihood maximised within the null): "no worse
  than stable" for a rollback, "at least max(stable x (1 + max_error_increase), stable +
  error_floor)" for a pass;
- quality: paired on the same golden rows (per-row correctness, per-query recall, DeLong's
  components for AUC), an adjusted Wald interval (Agresti-Min) on the paired difference. The golden
  rows are fixed, so this is one test, not a sequence, and "not shown within the margin" is final:
  the canary is rolled back at once rather than kept serving until its time limit.
A gross-failure breaker (latency median x `breaker_latency_ratio`, error rate `breaker_error_rate`)
rolls back on the first look, before any test has enough windows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from scipy import optimize, stats

from control_plane.errors import EvidenceError
from control_plane.policy import Policy

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"
PROMOTE, ROLLBACK, WAIT, REJECT = "promote", "rollback", "wait", "reject"

# The t confidence sequence mixes over the standardised effect d = mean / sd with a N(0, g) prior:
# g = 2 is quickest around d = 1-2 (a 1.5x slowdown on the simulated windows, sd 0.23 in log units)
# and costs little at d = 0.5 (docs/judging.md, "Anytime-valid tests").
EFFECT_PRIOR = 2.0
TAIL_QUANTILE = 90.0  # per-window tail: the highest percentile 16 samples resolve without being the max
MIN_UNITS = 3  # a t statistic needs a spread: fewer paired windows are "not enough" whatever the bound
# The error e-processes mix each side's rate over Beta(1, b) priors, b in these (prior means 9 %, 1 %, 0.1 %).
_RATE_PRIORS = (10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class WindowLatency:
    """The latency samples of one probe window of one version; `at` (epoch seconds of the window's
    end) pairs it with the other version's window of the same probe."""

    at: float
    samples: tuple[float, ...]


@dataclass(frozen=True)
class QualityRows:
    """Per-row golden figures of one version, for paired tests: `values` is per-row correctness
    (accuracy), per-query recall (recall@k) or per-row score (auc, with the rows' `labels`)."""

    metric: str
    values: tuple[float, ...]
    labels: tuple[int, ...] = ()


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
    windows: tuple[WindowLatency, ...] = ()  # per-window samples, oldest first (the judged units)
    quality_rows: QualityRows | None = None
    missing_streak: int = 0  # latest windows in a row whose live figures were missing

    def __post_init__(self) -> None:
        where = f"evidence of version {self.version}"
        if self.requests < 0 or self.errors < 0:
            raise EvidenceError(f"{where}: requests ({self.requests}) and errors ({self.errors}) must be >= 0")
        if self.errors > self.requests:
            raise EvidenceError(f"{where}: {self.errors} errors out of {self.requests} requests")
        for samples in (self.latencies_ms, *(w.samples for w in self.windows)):
            if samples and (not math.isfinite(sum(samples)) or min(samples) < 0):  # C speed: every look re-checks
                bad = [x for x in samples if not math.isfinite(x) or x < 0]
                raise EvidenceError(f"{where}: latency samples must be finite and >= 0, got {bad[:3]}")
        for name in ("quality", "agreement", "server_p95_ms"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise EvidenceError(f"{where}: {name} is {value!r}")
        if self.quality_rows is not None:
            rows = self.quality_rows
            if any(not math.isfinite(v) for v in rows.values):
                raise EvidenceError(f"{where}: per-row quality values must be finite")
            if rows.labels and len(rows.labels) != len(rows.values):
                raise EvidenceError(f"{where}: {len(rows.values)} per-row values but {len(rows.labels)} labels")

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


# -- anytime-valid bounds -----------------------------------------------------------------------
def _log_t_mixture(t: float, n: int, g: float = EFFECT_PRIOR) -> float:
    """Log of the mixture likelihood ratio of the t statistic of n units (prior N(0, g) on mean/sd).

    This is the scale-invariant Bayes factor of Rouder et al. (2009); with the right-Haar prior on
    the scale it is an e-process on the scale-invariant filtration (Perez-Ortiz et al. 2024), so
    {mean: ratio < 1/level} is a confidence sequence for normal units, valid at every look.
    """
    nu = n - 1
    return -0.5 * math.log1p(n * g) + (nu + 1) / 2 * (math.log1p(t * t / nu) - math.log1p(t * t / (nu * (1 + n * g))))


@functools.lru_cache(maxsize=4096)
def t_boundary(n: int, level: float, g: float = EFFECT_PRIOR) -> float:
    """The |t| at which the mixture reaches 1/level with n units (inf when n units can never reach it)."""
    if n < 2:
        return math.inf
    target = math.log(1 / level)
    high = 1e9
    if _log_t_mixture(high, n, g) < target:
        return math.inf
    return float(optimize.brentq(lambda t: _log_t_mixture(t, n, g) - target, 0.0, high, xtol=1e-9))


def mean_bounds(units: Sequence[float], *, low_level: float, high_level: float) -> tuple[float, float, float]:
    """(mean, lower bound at `low_level`, upper bound at `high_level`) of the units' mean, anytime-valid."""
    x = np.asarray(units, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return mean, -math.inf, math.inf
    sd = float(x.std(ddof=1))
    scale = sd / math.sqrt(n)
    if scale <= 0:  # every unit equal: no spread to scale by; treat one unit of rounding as the spread
        scale = 1e-6
    return mean, mean - t_boundary(n, low_level) * scale, mean + t_boundary(n, high_level) * scale


def _bernoulli_loglik(errors: float, requests: float, p: float) -> float:
    p = min(max(p, 1e-15), 1 - 1e-15)
    return errors * math.log(p) + (requests - errors) * math.log1p(-p)


def _beta_marginal(errors: int, requests: int) -> float:
    """log of one side's mixture likelihood (any order, any windows): Beta(1, b) priors averaged
    over b in `_RATE_PRIORS`, so that no error at all and a few per cent both cost little."""
    logs = [
        math.lgamma(1 + errors)
        + math.lgamma(b + requests - errors)
        - math.lgamma(1 + b + requests)
        - (math.lgamma(b) - math.lgamma(1 + b))
        for b in _RATE_PRIORS
    ]
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs) / len(logs))


def rate_evalue(e_c: int, n_c: int, e_s: int, n_s: int, *, worse: bool, allowed: Any = None) -> float:
    """E-value against a null about the two error rates, from the totals (universal inference).

    The mixture likelihood of both sides' outcomes over the likelihood maximised within the null.
    For every (p_c, p_s) in the null, mixture / likelihood is a martingale that starts at 1, so the
    ratio is an e-process: it may be looked at after every request, with exposures of any size on
    either side (Wasserman, Ramdas and Balakrishnan 2020).
    - `worse=True`: null "the candidate fails no more often than stable" (p_c <= p_s);
    - `worse=False`: null "the candidate fails at least `allowed(p_s)`" (rejecting it shows
      non-inferiority).
    """
    if n_c <= 0 or n_s <= 0:
        return 0.0
    mixture = _beta_marginal(e_c, n_c) + _beta_marginal(e_s, n_s)
    rate_c, rate_s = e_c / n_c, e_s / n_s
    best = _bernoulli_loglik(e_c, n_c, rate_c) + _bernoulli_loglik(e_s, n_s, rate_s)
    if worse:
        if rate_c <= rate_s:
            return math.exp(min(700.0, mixture - best))
        pooled = (e_c + e_s) / (n_c + n_s)
        inside = _bernoulli_loglik(e_c, n_c, pooled) + _bernoulli_loglik(e_s, n_s, pooled)
        return math.exp(min(700.0, mixture - inside))
    if rate_c >= allowed(rate_s):
        return math.exp(min(700.0, mixture - best))

    def inside_at(p_s: np.ndarray) -> np.ndarray:  # the null's log likelihood on its boundary p_c = allowed(p_s)
        p_s = np.clip(p_s, 1e-15, 1 - 1e-15)
        p_c = np.clip(np.minimum(allowed(p_s), 1.0), 1e-15, 1 - 1e-15)
        return e_c * np.log(p_c) + (n_c - e_c) * np.log1p(-p_c) + e_s * np.log(p_s) + (n_s - e_s) * np.log1p(-p_s)

    grid = np.concatenate([[0.0], np.geomspace(1e-7, 1.0, 400)])
    k = int(np.argmax(inside_at(grid)))
    fine = np.linspace(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)], 401)  # refine around the best
    inside = float(max(inside_at(grid).max(), inside_at(fine).max()))
    return math.exp(min(700.0, mixture - inside))


def paired_bounds(
    diffs: Sequence[float] | np.ndarray, *, low_level: float, high_level: float
) -> tuple[float, float, float]:
    """(mean, lower, upper) of paired per-row differences in [-1, 1], adjusted Wald (Agresti-Min).

    Half a pseudo-row at +1 and at -1 and one at 0 are added (for 0/1 correctness this is exactly
    Agresti and Min's 0.5 per cell), so identical versions still get an honest width (about 1/N)
    instead of a zero-width interval.
    """
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, -math.inf, math.inf
    total = float(d.sum())
    squares = float((d * d).sum()) + 1.0  # the two half pseudo-rows at +-1
    weight = n + 2.0
    mean = total / weight
    var = max(squares / weight - mean * mean, 0.0) / weight
    se = math.sqrt(var)
    return (
        float(d.mean()),
        mean - stats.norm.ppf(1 - low_level) * se,
        mean + stats.norm.ppf(1 - high_level) * se,
    )


def auc_components(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive row, the share of negatives it outranks (ties
    half), and per negative row, the share of positives that outrank it. AUC is the mean of either."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels) > 0
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return np.array([]), np.array([])
    greater = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
    return greater.mean(axis=1), greater.mean(axis=0)


# -- checks -----------------------------------------------------------------------------------
def rollback_level(policy: Policy) -> float:
    """The level of each test that can roll back: the family-wise `alpha` split over them (Bonferroni)."""
    tests = 4 + (policy.latency_ceiling_ms is not None)  # latency, latency tail, errors, quality (+ ceiling)
    return policy.alpha / tests


def paired_windows(candidate: Evidence, stable: Evidence, policy: Policy) -> list[tuple[WindowLatency, WindowLatency]]:
    """Candidate and stable windows of the same probes (same `at`), the first `warmup_windows` of
    the candidate's left out (cold caches, the first window's larger quality batch)."""
    base = {w.at: w for w in stable.windows}
    judged = candidate.windows[policy.warmup_windows :]
    return [(c, base[c.at]) for c in judged if c.at in base and len(c.samples) >= 3 and len(base[c.at].samples) >= 3]


@functools.lru_cache(maxsize=1 << 16)
def _log_stat(samples: tuple[float, ...], q: float) -> float:
    """log of one window's percentile (cached: every look re-reads every earlier window)."""
    return math.log(max(_pct(samples, q), 1e-3))


def _sequential_latency_check(
    name: str, what: str, q: float, margin: float, pairs: list[tuple[WindowLatency, WindowLatency]], policy: Policy
) -> Check:
    """One latency figure (the window median, or its tail) judged on per-window log ratios."""
    units = [_log_stat(c.samples, q) - _log_stat(s.samples, q) for c, s in pairs]
    level = rollback_level(policy)
    limit = math.log1p(margin)
    figures: dict[str, Any] = {
        "windows": len(units),
        "threshold": 1 + margin,
        "alpha": level,
        "beta": policy.beta,
        "quantile": q,
    }
    if len(units) < MIN_UNITS:
        return Check(name, INSUFFICIENT, figures, f"{len(units)} paired windows of {what}, {MIN_UNITS} needed")
    mean, low, high = mean_bounds(units, low_level=level, high_level=policy.beta)
    figures.update(
        {
            "effect": math.exp(mean),
            "lower": math.exp(low) if math.isfinite(low) else 0.0,
            "upper": math.exp(high) if math.isfinite(high) else None,
            "sd_log": float(np.std(units, ddof=1)),
        }
    )
    upper = f"x{math.exp(high):.2f}" if math.isfinite(high) else "unbounded"
    lower = f"x{math.exp(low):.2f}" if math.isfinite(low) else "unbounded"
    summary = (
        f"{what} x{math.exp(mean):.2f} over {len(units)} windows (bounds {lower}..{upper}, margin x{1 + margin:.2f})"
    )
    if low > 0 and mean > limit:
        return Check(name, FAIL, figures, f"latency regressed: {summary}")
    if high <= limit:
        return Check(name, PASS, figures, f"latency within the margin: {summary}")
    return Check(name, INSUFFICIENT, figures, f"latency not yet shown within the margin: {summary}")


def latency_check(candidate: Evidence, stable: Evidence, policy: Policy) -> Check:
    """Is the candidate's median slower than stable's beyond the margin (or shown within it)?"""
    pairs = paired_windows(candidate, stable, policy)
    check = _sequential_latency_check("latency", "median", 50.0, policy.max_latency_increase, pairs, policy)
    check.figures.update(_pooled_latency(candidate, stable))
    return check


def latency_tail_check(candidate: Evidence, stable: Evidence, policy: Policy) -> Check:
    """The same on each window's 90th percentile: a slowdown of a few requests that leaves the median."""
    pairs = paired_windows(candidate, stable, policy)
    return _sequential_latency_check(
        "latency tail", f"p{TAIL_QUANTILE:g}", TAIL_QUANTILE, policy.max_tail_latency_increase, pairs, policy
    )


def _pooled_latency(candidate: Evidence, stable: Evidence) -> dict[str, Any]:
    """Informational pooled figures (not what is judged: the units are the windows)."""
    figures: dict[str, Any] = {
        "n_candidate": len(candidate.latencies_ms),
        "n_stable": len(stable.latencies_ms),
        "server_p95_ms_candidate": candidate.server_p95_ms,
        "server_p95_ms_stable": stable.server_p95_ms,
    }
    if candidate.latencies_ms and stable.latencies_ms:
        c, s = candidate.latencies_ms, stable.latencies_ms
        figures.update(
            {
                "median_ms_candidate": _pct(c, 50),
                "median_ms_stable": _pct(s, 50),
                "p95_ms_candidate": _pct(c, 95),
                "p95_ms_stable": _pct(s, 95),
                "median_ratio": _ratio(_pct(c, 50), _pct(s, 50)),
                "p95_ratio": _ratio(_pct(c, 95), _pct(s, 95)),
            }
        )
    return figures


def latency_ceiling_check(candidate: Evidence, policy: Policy) -> Check | None:
    """Is the candidate's p95 above the absolute ceiling? (binomial test on the share of samples above it)"""
    if policy.latency_ceiling_ms is None:
        return None
    ceiling = policy.latency_ceiling_ms
    samples = candidate.latencies_ms or tuple(x for w in candidate.windows for x in w.samples)
    level = rollback_level(policy)
    figures: dict[str, Any] = {"threshold": ceiling, "n": len(samples), "alpha": level}
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
    if test.pvalue < level:
        return Check("latency_ceiling", FAIL, figures, f"over the latency ceiling: {summary}")
    return Check("latency_ceiling", INSUFFICIENT, figures, f"over the latency ceiling, not yet significant: {summary}")


def allowed_error_rate(stable_rate: Any, policy: Policy) -> Any:
    """The candidate's largest acceptable error rate next to stable's (a rate or an array of rates):
    relative, with an absolute floor."""
    return np.maximum(stable_rate * (1 + policy.max_error_increase), stable_rate + policy.error_floor)


def error_check(candidate: Evidence, stable: Evidence, policy: Policy) -> Check:
    """Does the candidate fail more requests than stable, significantly AND beyond the allowed rate?

    Both by `rate_evalue` on the counted totals (exposure-weighted: each side's rate is its errors
    over its own requests): rolled back when "no worse than stable" is rejected at alpha / k and the
    candidate's rate is above the allowed one; passed when "at least the allowed rate" is rejected
    at beta.
    """
    level = rollback_level(policy)
    n_c, e_c, n_s, e_s = candidate.requests, candidate.errors, stable.requests, stable.errors
    figures: dict[str, Any] = {
        "errors_candidate": e_c,
        "requests_candidate": n_c,
        "errors_stable": e_s,
        "requests_stable": n_s,
        "alpha": level,
        "beta": policy.beta,
        "max_error_increase": policy.max_error_increase,
        "error_floor": policy.error_floor,
    }
    if n_c == 0 or n_s == 0:
        return Check("errors", INSUFFICIENT, figures, f"{n_c} candidate and {n_s} stable requests counted")
    rate_c, rate_s = e_c / n_c, e_s / n_s
    threshold = float(allowed_error_rate(rate_s, policy))
    worse = rate_evalue(e_c, n_c, e_s, n_s, worse=True)
    within = rate_evalue(e_c, n_c, e_s, n_s, worse=False, allowed=lambda p: allowed_error_rate(p, policy))
    figures.update(
        {
            "rate_candidate": rate_c,
            "rate_stable": rate_s,
            "effect": rate_c - rate_s,
            "threshold": threshold,
            "e_value_worse": worse,
            "e_value_within": within,
        }
    )
    summary = (
        f"{e_c}/{n_c} failed ({rate_c:.2%}) vs stable {e_s}/{n_s} ({rate_s:.2%}), allowed {threshold:.2%}; "
        f"e-values: worse {worse:.3g} (rollback at {1 / level:.0f}), within {within:.3g} (pass at {1 / policy.beta:.0f})"
    )
    if worse >= 1 / level and rate_c > threshold:
        return Check("errors", FAIL, figures, f"error rate regressed: {summary}")
    if within >= 1 / policy.beta:
        return Check("errors", PASS, figures, f"error rate within the limit: {summary}")
    return Check("errors", INSUFFICIENT, figures, f"error rate not yet shown within the limit: {summary}")


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
    if rate <= policy.max_error_rate:
        return Check("errors", PASS, figures, f"error rate within the limit: {summary}")
    if test.pvalue < policy.alpha:
        return Check("errors", FAIL, figures, f"fails its requests: {summary}")
    return Check("errors", INSUFFICIENT, figures, f"error rate above the limit, not yet significant: {summary}")


def paired_quality(candidate: QualityRows, stable: QualityRows) -> tuple[np.ndarray, int] | str:
    """Per-unit paired differences (candidate - stable) in [-1, 1] and their count, or why there are none.

    accuracy and recall@k: one unit per golden row. auc: DeLong's components, positives then
    negatives, each weighted so that the mean of the units is the AUC difference.
    """
    if candidate.metric != stable.metric:
        return f"the versions report different metrics ({candidate.metric} and {stable.metric})"
    if len(candidate.values) != len(stable.values) or candidate.labels != stable.labels:
        return "the versions were scored on different golden rows"
    if candidate.metric != "auc":
        return np.asarray(candidate.values, float) - np.asarray(stable.values, float), len(candidate.values)
    c10, c01 = auc_components(candidate.values, candidate.labels)
    s10, s01 = auc_components(stable.values, stable.labels)
    if len(c10) == 0:
        return "AUC needs both clicked and unclicked golden rows"
    return np.concatenate([c10 - s10, c01 - s01]), len(c10)


def quality_check(candidate: Evidence, stable: Evidence, policy: Policy) -> Check:
    """Golden-set quality, paired on the same rows: non-inferiority against `max_quality_drop`, and the floor."""
    figures: dict[str, Any] = {
        "candidate": candidate.quality,
        "stable": stable.quality,
        "max_drop": policy.max_quality_drop,
        "floor": policy.quality_floor,
    }
    if candidate.quality is not None and policy.quality_floor is not None and candidate.quality < policy.quality_floor:
        return Check(
            "quality", FAIL, figures, f"quality {candidate.quality:.4f} below the floor {policy.quality_floor:.4f}"
        )
    if candidate.quality_rows is None or stable.quality_rows is None:
        side = "candidate" if candidate.quality_rows is None else "stable version"
        return Check("quality", INSUFFICIENT, figures, f"no per-row golden-set quality measured for the {side} yet")
    paired = paired_quality(candidate.quality_rows, stable.quality_rows)
    if isinstance(paired, str):
        return Check("quality", INSUFFICIENT, figures, f"quality cannot be compared: {paired}")
    diffs, rows = paired
    level = rollback_level(policy)
    metric = candidate.quality_rows.metric
    if metric == "auc":
        mean, low, high = auc_bounds(
            candidate.quality_rows, stable.quality_rows, low_level=policy.beta, high_level=level
        )
    else:
        mean, low, high = paired_bounds(diffs, low_level=policy.beta, high_level=level)
    drop, drop_low, drop_high = -mean, -high, -low  # a drop is a negative difference
    changed = int(np.count_nonzero(np.abs(diffs) > 1e-12))
    figures.update(
        {
            "metric": metric,
            "rows": rows,
            "changed_rows": changed,
            "drop": drop,
            "drop_lower": drop_low,
            "drop_upper": drop_high,
            "alpha": level,
            "beta": policy.beta,
            "effect": -drop,
            "threshold": policy.max_quality_drop,
        }
    )
    summary = (
        f"{metric} drop {drop:+.4f} on {rows} paired rows ({changed} differ), bounds {drop_low:+.4f}..{drop_high:+.4f}, "
        f"margin {policy.max_quality_drop:g}"
    )
    if drop_low > 0 and drop > policy.max_quality_drop:
        return Check("quality", FAIL, figures, f"quality dropped: {summary}")
    if drop_high <= policy.max_quality_drop:
        return Check("quality", PASS, figures, f"quality within the margin: {summary}")
    # Final: the golden rows are fixed and both versions answer them the same way every time, so no
    # later window can show more. Waiting would only keep the candidate serving on no evidence.
    figures["final"] = True
    return Check("quality", INSUFFICIENT, figures, f"quality not shown within the margin: {summary}")


def auc_bounds(
    candidate: QualityRows, stable: QualityRows, *, low_level: float, high_level: float
) -> tuple[float, float, float]:
    """(candidate AUC - stable AUC, lower bound at `low_level`, upper at `high_level`), paired by DeLong.

    The variance is DeLong's (per-positive and per-negative component differences), each with the
    pseudo-rows of `paired_bounds` so that identical scores still get an honest width.
    """
    c10, c01 = auc_components(candidate.values, candidate.labels)
    s10, s01 = auc_components(stable.values, stable.labels)
    mean = float(c10.mean() - s10.mean())
    var = 0.0
    for d in (c10 - s10, c01 - s01):
        weight = len(d) + 2.0
        center = float(d.sum()) / weight
        var += max((float((d * d).sum()) + 1.0) / weight - center * center, 0.0) / weight
    se = math.sqrt(var)
    return mean, mean - stats.norm.ppf(1 - low_level) * se, mean + stats.norm.ppf(1 - high_level) * se


def preflight_quality_check(candidate: Evidence, stable_quality: float | None, policy: Policy) -> Check:
    """Preflight: the floor, and a drop against stable's recorded figure only when it is beyond any
    sampling error a paired difference on these rows can have (z * sqrt(1 / rows)); smaller drops
    are judged by the canary's paired test, with both versions scored on the same rows."""
    quality = candidate.quality
    figures: dict[str, Any] = {
        "candidate": quality,
        "stable": stable_quality,
        "max_drop": policy.max_quality_drop,
        "floor": policy.quality_floor,
    }
    if quality is None:
        return Check("quality", INSUFFICIENT, figures, "no golden-set quality measured for the candidate yet")
    if policy.quality_floor is not None and quality < policy.quality_floor:
        return Check("quality", FAIL, figures, f"quality {quality:.4f} below the floor {policy.quality_floor:.4f}")
    if stable_quality is not None:
        rows = len(candidate.quality_rows.values) if candidate.quality_rows is not None else 0
        slack = stats.norm.ppf(1 - policy.alpha) * math.sqrt(1 / rows) if rows else 0.0
        figures.update({"effect": quality - stable_quality, "slack": slack, "rows": rows})
        if stable_quality - quality > policy.max_quality_drop + slack:
            return Check(
                "quality",
                FAIL,
                figures,
                f"quality {quality:.4f} vs stable {stable_quality:.4f}: dropped {stable_quality - quality:.4f} "
                f"(more than {policy.max_quality_drop:g} + sampling slack {slack:.4f})",
            )
    against = f" vs stable {stable_quality:.4f}" if stable_quality is not None else ""
    return Check("quality", PASS, figures, f"quality {quality:.4f}{against}")


def agreement_check(candidate: Evidence, policy: Policy) -> Check | None:
    """Share of golden inputs where the candidate answers like the stable version; not measured is
    insufficient (a renamed output must not drop the check)."""
    if policy.min_agreement is None:
        return None
    figures = {"agreement": candidate.agreement, "threshold": policy.min_agreement}
    if candidate.agreement is None:
        return Check("agreement", INSUFFICIENT, figures, "agreement with the stable version could not be measured")
    text = f"agreement with stable {candidate.agreement:.3f} (minimum {policy.min_agreement:.3f})"
    if candidate.agreement < policy.min_agreement:
        return Check("agreement", FAIL, figures, f"disagrees with the stable version: {text}")
    return Check("agreement", PASS, figures, text)


def live_metrics_check(candidate: Evidence, stable: Evidence) -> Check:
    """Live figures that could not be read are missing evidence, never a pass: a canary whose errors
    on real traffic cannot be counted must not be promoted on its probes alone."""
    missing = {
        "candidate": list(candidate.missing),
        "stable": list(stable.missing),
        "streak_candidate": candidate.missing_streak,
        "streak_stable": stable.missing_streak,
    }
    if candidate.missing or stable.missing:
        names = ", ".join(sorted({*candidate.missing, *stable.missing}))
        return Check(
            "live metrics", INSUFFICIENT, missing, f"no live figures from replica(s) {names} in the last window"
        )
    return Check("live metrics", PASS, missing, "live figures read from every replica of both sides")


def breaker_check(candidate: Evidence, stable: Evidence, policy: Policy) -> Check:
    """Gross failures roll back on the first look, without waiting for a test: the median of the
    post-warm-up samples `breaker_latency_ratio` x stable's, or `breaker_error_rate` of requests failed."""
    pairs = paired_windows(candidate, stable, policy)
    c = [x for cw, _ in pairs for x in cw.samples]
    s = [x for _, sw in pairs for x in sw.samples]
    figures: dict[str, Any] = {
        "latency_ratio_limit": policy.breaker_latency_ratio,
        "error_rate_limit": policy.breaker_error_rate,
    }
    problems = []
    if len(c) >= policy.min_samples and len(s) >= policy.min_samples:
        ratio = _ratio(_pct(c, 50), _pct(s, 50))
        figures["median_ratio"] = ratio
        if ratio >= policy.breaker_latency_ratio:
            problems.append(f"median latency x{ratio:.2f} (breaker at x{policy.breaker_latency_ratio:g})")
    if candidate.requests >= policy.min_samples:
        rate = candidate.errors / candidate.requests
        figures["error_rate"] = rate
        if rate >= policy.breaker_error_rate:
            problems.append(
                f"{candidate.errors}/{candidate.requests} requests failed ({rate:.1%}, breaker at "
                f"{policy.breaker_error_rate:.0%})"
            )
    if problems:
        return Check("breaker", FAIL, figures, "gross failure: " + "; ".join(problems))
    return Check("breaker", PASS, figures, "no gross failure")


# -- verdicts ---------------------------------------------------------------------------------
def _messages(checks: Sequence[Check], status: str) -> str:
    return "; ".join(c.message for c in checks if c.status == status)


def decide_canary(
    candidate: Evidence,
    stable: Evidence,
    policy: Policy,
    *,
    baked_seconds: float,
    now: datetime,
) -> Verdict:
    """The final decision on a canary, compared with the stable version over the same period.

    Any decisive failure rolls back at once (no waiting for the bake time or a promotion window);
    so do live figures missing for `max_consecutive_missing` windows in a row. Promotion needs every
    check to pass, `baked_seconds >= policy.bake_seconds` and an open promotion window at `now`;
    anything undecided waits, and a canary still undecided after `policy.max_canary_seconds` is
    rolled back (it must not keep taking traffic on no evidence).
    """
    checks = tuple(
        c
        for c in (
            breaker_check(candidate, stable, policy),
            live_metrics_check(candidate, stable),
            latency_check(candidate, stable, policy),
            latency_tail_check(candidate, stable, policy),
            latency_ceiling_check(candidate, policy),
            error_check(candidate, stable, policy),
            quality_check(candidate, stable, policy),
            agreement_check(candidate, policy),
        )
        if c is not None
    )
    if any(c.status == FAIL for c in checks):
        return Verdict(ROLLBACK, _messages(checks, FAIL), checks)
    final = [c for c in checks if c.status == INSUFFICIENT and c.figures.get("final")]
    if final:
        return Verdict(
            ROLLBACK, "cannot be shown on the fixed golden rows: " + "; ".join(c.message for c in final), checks
        )
    streak = max(candidate.missing_streak, stable.missing_streak)
    if streak >= policy.max_consecutive_missing:
        live = next(c for c in checks if c.name == "live metrics")
        return Verdict(
            ROLLBACK,
            f"live figures missing in {streak} consecutive windows (limit {policy.max_consecutive_missing}): "
            f"{live.message}",
            checks,
        )
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

    It must answer, meet its floor and ceiling, and not lose quality grossly against the stable
    version (small drops are the canary's paired test). 'promote' means it passed (the reconciler
    makes a first version stable, or starts a canary); 'reject' on any decisive failure, when it
    could not be probed (`candidate` is None, for the reason `unprobed`: no golden set, an
    unreadable one, files that differ from the manifest), or when this attempt is undecided and
    `earlier_attempts` undecided ones came before it (`policy.preflight_attempts` in all); 'wait'
    when it is probed again on the next pass.
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
            preflight_quality_check(candidate, stable_quality, policy),
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
