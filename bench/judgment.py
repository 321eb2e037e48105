"""Judgment benchmark: shepherd's judge beside a Flagger-style and a Kayenta-style judge, on the same streams.

    python bench/judgment.py                      # simulated streams; writes bench/tools/results/judgment.{md,json}
    python bench/judgment.py --record-triton      # first records A/A probe windows from the local Triton
    python bench/judgment.py --aa-runs 200 --runs 60 --quick   # a smaller run

Each simulated rollout is one stream of probe windows, cut at the default canary cap (600 s): the
default look schedule (a first window with the whole golden set, about 100 requests per version,
then 16 requests per version every 2 s, both versions in the same seconds), per-window error
counts, and the per-row correctness of both versions on a 400-row golden set. Every judge looks
after every window and stops at its first promote or rollback:

- shepherd: `control_plane.judging.decide_canary` with the default `Policy` (min_agreement off);
- Flagger-style: per window, checks against thresholds (candidate median <= 1.25 x stable's, error
  rate <= stable's + 1 point, golden quality drop <= 0.02, live metrics present); every failed check
  counts, cumulatively; rollback at 5 failed checks (Flagger's `threshold`), promotion after the
  30 s bake with fewer;
- Kayenta-style: once both versions have >= 50 latency samples, a two-sided Mann-Whitney test at
  98 % on the pooled samples and Fisher's test on the pooled error counts, each metric failing when
  significant and worse, quality failing on a point drop over 0.02; score = share of metrics
  passing; rollback under 75, promotion after the bake at 75 or more. It falls back to the probes'
  counts when live figures are missing (what shepherd did before issue 10).

Noise models (latency of one request = 5 ms x the factors):
- docs: a drift per window shared by both versions (log-normal sigma 0.3), a per-version factor
  per window (sigma 0.1), per-request jitter (sigma 0.4), 5 % of requests five times slower (the
  model of tests/test_judging.py);
- heavy: the same drift, per-version factor (sigma 0.1) and a per-version, per-window factor
  (sigma 0.2: samples of one probe are correlated), jitter sigma 0.5, in 10 % of windows a burst
  on one version (x log-normal(0.4, 0.3)), 3 % of requests x (1 + 3 Pareto(1.5));
- triton: windows recorded from the real local Triton (A/A, both versions under client load,
  `--record-triton`), resampled with replacement, sides swapped at random; a regression multiplies
  the candidate's samples.
A regression "median x f" multiplies every candidate request by f; "tail p95 x1.5" multiplies 10 %
of the candidate's requests by the factor that makes the pooled p95 ratio 1.5 in that noise model.
Errors: each request fails with the stated probability (probe requests, plus `--live` client
requests per window and side that the live counters count). Quality: in the A/A and latency and
error scenarios both versions answer every golden row alike (the same model); in the quality
scenarios the candidate is a retrain that answers 6 % of the golden rows differently from stable
(two honest retrains of the example intent model disagree on 7.5 % of its 400 rows), losing
(6 % + drop) / 2 of the rows and winning the rest, on 400 rows (the example intent set) and 2,400.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from control_plane.judging import PROMOTE, ROLLBACK, Evidence, QualityRows, WindowLatency, decide_canary  # noqa: E402
from control_plane.policy import Policy  # noqa: E402

RESULTS = ROOT / "bench" / "tools" / "results"
RECORDED = ROOT / "bench" / "data" / "triton_aa_windows.json"
NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
INTERVAL, CAP, FIRST, PER_WINDOW, ROWS, DISCORDANT = 2.0, 600.0, 100, 16, 400, 0.06
POLICY = Policy(min_agreement=None)


@dataclass(frozen=True)
class Scenario:
    name: str
    noise: str = "docs"
    slower: float = 1.0
    tail: float | None = None  # a share of 10 % of the candidate's requests x this
    p_c: float = 0.0
    p_s: float = 0.0
    drop: float = 0.0
    outage: bool = False
    live: int = 0  # client requests per window and side counted by the live counters
    regression: bool = False
    discordant: float = 0.0  # share of golden rows the candidate answers differently (0: the same outputs)
    rows: int = ROWS


@dataclass
class Stream:
    cand: list[np.ndarray]
    stable: list[np.ndarray]
    requests: list[int]
    cand_errors: list[int]
    stable_errors: list[int]
    cand_rows: np.ndarray
    stable_rows: np.ndarray
    outage: bool


# -- noise ------------------------------------------------------------------------------------------
_RECORDED: list[tuple[np.ndarray, np.ndarray]] | None = None


def recorded() -> list[tuple[np.ndarray, np.ndarray]]:
    global _RECORDED
    if _RECORDED is None:
        data = json.loads(RECORDED.read_text())
        _RECORDED = [(np.asarray(c, float), np.asarray(s, float)) for c, s in data["windows"]]
    return _RECORDED


def _sides(rng: np.random.Generator, noise: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One window's (candidate, stable) samples under no regression."""
    if noise == "triton":
        pool = recorded()
        c, s = pool[int(rng.integers(len(pool)))]
        out = (c, s) if rng.random() < 0.5 else (s, c)
        if k > len(out[0]):  # the first window is larger: draw more recorded windows
            more = [pool[int(rng.integers(len(pool)))] for _ in range(k // len(out[0]))]
            return np.concatenate([out[0], *[m[0] for m in more]])[:k], np.concatenate([out[1], *[m[1] for m in more]])[
                :k
            ]
        return out
    drift = rng.lognormal(0, 0.3)
    sides = []
    burst_side = int(rng.integers(2)) if noise == "heavy" and rng.random() < 0.1 else -1
    for side in range(2):
        if noise == "docs":
            x = 5.0 * drift * rng.lognormal(0, 0.1) * rng.lognormal(0, 0.4, k)
            x = np.where(rng.random(k) < 0.05, x * 5, x)
        else:
            burst = rng.lognormal(0.4, 0.3) if side == burst_side else 1.0
            x = 5.0 * drift * rng.lognormal(0, 0.1) * rng.lognormal(0, 0.2) * burst * rng.lognormal(0, 0.5, k)
            x = np.where(rng.random(k) < 0.03, x * (1 + 3 * rng.pareto(1.5, k)), x)
        sides.append(x)
    return sides[0], sides[1]


_TAIL_FACTOR: dict[str, float] = {}


def tail_factor(noise: str) -> float:
    """The factor on 10 % of the candidate's requests that makes the pooled p95 ratio 1.5 (A/A otherwise)."""
    if noise not in _TAIL_FACTOR:
        rng = np.random.default_rng(99)
        windows = [_sides(rng, noise, PER_WINDOW) for _ in range(4000)]
        c = np.concatenate([w[0] for w in windows])
        s = np.concatenate([w[1] for w in windows])
        hit = np.random.default_rng(98).random(len(c)) < 0.1
        target = 1.5 * np.percentile(s, 95)
        low, high = 1.0, 50.0
        for _ in range(50):
            mid = (low + high) / 2
            if np.percentile(np.where(hit, c * mid, c), 95) < target:
                low = mid
            else:
                high = mid
        _TAIL_FACTOR[noise] = (low + high) / 2
    return _TAIL_FACTOR[noise]


def make_stream(seed: int, sc: Scenario) -> Stream:
    rng = np.random.default_rng(seed)
    windows = int(CAP / INTERVAL)
    cand, stable, requests, ce, se = [], [], [], [], []
    tail = tail_factor(sc.noise) if sc.tail is not None else None
    for i in range(windows):
        k = FIRST if i == 0 else PER_WINDOW
        c, s = _sides(rng, sc.noise, k)
        c = c * sc.slower
        if tail is not None:
            c = np.where(rng.random(len(c)) < 0.1, c * tail, c)
        cand.append(c)
        stable.append(s)
        n = k + sc.live
        requests.append(n)
        ce.append(int((rng.random(n) < sc.p_c).sum()))
        se.append(int((rng.random(n) < sc.p_s).sum()))
    u = rng.random(sc.rows)
    loses = u < (sc.discordant + sc.drop) / 2
    wins = (u >= (sc.discordant + sc.drop) / 2) & (u < sc.discordant)
    s_rows = np.where(loses, 1.0, np.where(wins, 0.0, (rng.random(sc.rows) < 0.9).astype(float)))
    c_rows = np.where(loses, 0.0, np.where(wins, 1.0, s_rows))
    return Stream(cand, stable, requests, ce, se, c_rows, s_rows, sc.outage)


# -- judges -----------------------------------------------------------------------------------------
Outcome = tuple[str, float]  # (promote | rollback | undecided, seconds)


def shepherd_judge(stream: Stream, policy: Policy = POLICY) -> Outcome:
    """The judge as the reconciler calls it, on the windows so far (pooled samples left out: with no
    latency ceiling set they are informational only, and copying them every look is the bench's cost)."""
    cw: list[WindowLatency] = []
    sw: list[WindowLatency] = []
    n = ec = es = 0
    c_rows = QualityRows("accuracy", tuple(stream.cand_rows.tolist()))
    s_rows = QualityRows("accuracy", tuple(stream.stable_rows.tolist()))
    for i in range(len(stream.cand)):
        c, s = tuple(stream.cand[i].tolist()), tuple(stream.stable[i].tolist())
        cw.append(WindowLatency(float(i), c))
        sw.append(WindowLatency(float(i), s))
        if not stream.outage:
            n += stream.requests[i]
            ec += stream.cand_errors[i]
            es += stream.stable_errors[i]
        missing = ("r0",) if stream.outage else ()
        streak = i + 1 if stream.outage else 0
        baked = (i + 1) * INTERVAL
        verdict = decide_canary(
            Evidence(2, (), n, ec, 0.9, None, None, missing, tuple(cw), c_rows, streak),
            Evidence(1, (), n, es, 0.9, None, None, missing, tuple(sw), s_rows, streak),
            policy,
            baked_seconds=baked,
            now=NOON,
        )
        if verdict.outcome in (PROMOTE, ROLLBACK):
            return verdict.outcome, baked
    return "undecided", CAP


def flagger_judge(stream: Stream, *, threshold: int = 5, bake: float = 30.0) -> Outcome:
    failed = 0
    quality_drop = stream.stable_rows.mean() - stream.cand_rows.mean()
    for i in range(len(stream.cand)):
        checks = [float(np.median(stream.cand[i])) <= 1.25 * float(np.median(stream.stable[i]))]
        if stream.outage:
            checks.append(False)  # a metric query that returns nothing is a failed check
        else:
            n = stream.requests[i]
            checks.append(stream.cand_errors[i] / n <= stream.stable_errors[i] / n + 0.01)
        checks.append(quality_drop <= 0.02)
        failed += sum(not ok for ok in checks)
        baked = (i + 1) * INTERVAL
        if failed >= threshold:
            return ROLLBACK, baked
        if baked >= bake:
            return PROMOTE, baked
    return "undecided", CAP


def kayenta_judge(stream: Stream, *, bake: float = 30.0, points: int = 50) -> Outcome:
    quality_ok = stream.stable_rows.mean() - stream.cand_rows.mean() <= 0.02
    c: list[float] = []
    s: list[float] = []
    n = ec = es = 0
    for i in range(len(stream.cand)):
        c.extend(stream.cand[i].tolist())
        s.extend(stream.stable[i].tolist())
        probes = FIRST if i == 0 else PER_WINDOW
        n += probes if stream.outage else stream.requests[i]  # falls back to the probes' counts
        ec += min(stream.cand_errors[i], probes) if stream.outage else stream.cand_errors[i]
        es += min(stream.stable_errors[i], probes) if stream.outage else stream.stable_errors[i]
        baked = (i + 1) * INTERVAL
        if len(c) < points or len(s) < points:
            continue
        test = stats.mannwhitneyu(c, s, alternative="two-sided")
        latency_ok = not (test.pvalue < 0.02 and np.median(c) > np.median(s))
        errors_ok = True
        if ec > es * 1.0:
            errors_ok = stats.fisher_exact([[ec, n - ec], [es, n - es]], alternative="two-sided")[1] >= 0.02
        score = 100 * (latency_ok + errors_ok + quality_ok) / 3
        if score < 75:
            return ROLLBACK, baked
        if baked >= bake:
            return PROMOTE, baked
    return "undecided", CAP


JUDGES: dict[str, Callable[[Stream], Outcome]] = {
    "shepherd": shepherd_judge,
    "flagger": flagger_judge,
    "kayenta": kayenta_judge,
}


def _one(args: tuple[int, Scenario]) -> dict[str, Outcome]:
    seed, sc = args
    stream = make_stream(seed, sc)
    return {name: judge(stream) for name, judge in JUDGES.items()}


# -- statistics -------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Row:
    scenario: Scenario
    runs: int
    by_judge: dict[str, dict[str, Any]] = field(default_factory=dict)


def summarise(sc: Scenario, results: list[dict[str, Outcome]]) -> Row:
    row = Row(sc, len(results))
    for name in JUDGES:
        outs = [r[name] for r in results]
        rolled = [t for o, t in outs if o == ROLLBACK]
        promoted = [t for o, t in outs if o == PROMOTE]
        undecided = sum(o == "undecided" for o, _ in outs)
        low, high = wilson(len(rolled), len(outs))
        row.by_judge[name] = {
            "rollback": len(rolled),
            "promote": len(promoted),
            "undecided": undecided,
            "rollback_share": len(rolled) / len(outs),
            "rollback_wilson95": [low, high],
            "promote_share": len(promoted) / len(outs),
            "rollback_s_median": float(np.median(rolled)) if rolled else None,
            "rollback_s_p95": float(np.percentile(rolled, 95)) if rolled else None,
            "promote_s_median": float(np.median(promoted)) if promoted else None,
            "promote_s_p95": float(np.percentile(promoted, 95)) if promoted else None,
        }
    return row


def run_scenario(sc: Scenario, runs: int, workers: int, seed0: int) -> Row:
    args = [(seed0 + i, sc) for i in range(runs)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_one, args, chunksize=max(1, runs // (workers * 8))))
    else:
        results = [_one(a) for a in args]
    return summarise(sc, results)


def scenarios(quick: bool, live: int) -> tuple[list[Scenario], list[Scenario]]:
    noises = ["docs", "heavy"] + (["triton"] if RECORDED.is_file() else [])
    aa = [Scenario(f"A/A, {n} noise", noise=n) for n in noises]
    aa += [
        Scenario("A/A, live metrics down", outage=True),
        Scenario("A/A, 1 % errors on both", p_c=0.01, p_s=0.01),
        Scenario("A/A, 3 % baseline errors on both", p_c=0.03, p_s=0.03),
        Scenario(f"A/A, 3 % baseline errors, {live} client requests/window", p_c=0.03, p_s=0.03, live=live),
    ]
    grid: list[Scenario] = []
    for n in noises if not quick else ["docs"]:
        grid += [Scenario(f"median x{f:g}, {n}", noise=n, slower=f, regression=f > 1.25) for f in (1.1, 1.25, 1.5, 2.0)]
        grid.append(Scenario(f"tail-only p95 x1.5, {n}", noise=n, tail=1.5, regression=True))
    for base in (0.0, 0.01):
        for extra in (0.005, 0.01, 0.02, 0.05):
            grid.append(
                Scenario(
                    f"errors {base:.0%} -> +{extra * 100:g} pt", p_c=base + extra, p_s=base, regression=extra > 0.01
                )
            )
        grid.append(
            Scenario(
                f"errors {base:.0%} -> +2 pt, {live} client requests/window",
                p_c=base + 0.02,
                p_s=base,
                live=live,
                regression=True,
            )
        )
    for rows in (ROWS, 2400):
        aa.append(
            Scenario(
                f"A/A quality: a retrain, {DISCORDANT:.0%} of {rows} golden rows answered differently",
                discordant=DISCORDANT,
                rows=rows,
            )
        )
        grid += [
            Scenario(
                f"quality -{d:g}, {rows} golden rows", drop=d, regression=d > 0.02, discordant=DISCORDANT, rows=rows
            )
            for d in (0.01, 0.02, 0.05)
        ]
    return aa, grid


def table(rows: list[Row], *, aa: bool) -> list[str]:
    lines = []
    if aa:
        lines.append(
            "| scenario | runs | judge | rolled back (Wilson 95 %) | promoted | undecided at 600 s | time to promote: median / p95 s |"
        )
        lines.append("|---|---|---|---|---|---|---|")
    else:
        lines.append(
            "| regression | runs | judge | detected (rolled back) | median / p95 s to detect | promoted (false promotion) | undecided at 600 s |"
        )
        lines.append("|---|---|---|---|---|---|---|")
    for row in rows:
        for name, f in row.by_judge.items():
            if aa:
                low, high = f["rollback_wilson95"]
                lines.append(
                    f"| {row.scenario.name} | {row.runs} | {name} | {f['rollback_share']:.1%} ({low:.1%}-{high:.1%}) "
                    f"| {f['promote_share']:.1%} | {f['undecided'] / row.runs:.1%} | {_s(f['promote_s_median'])} / {_s(f['promote_s_p95'])} |"
                )
            else:
                lines.append(
                    f"| {row.scenario.name} | {row.runs} | {name} | {f['rollback_share']:.1%} "
                    f"| {_s(f['rollback_s_median'])} / {_s(f['rollback_s_p95'])} | {f['promote_share']:.1%} | {f['undecided'] / row.runs:.1%} |"
                )
    return lines


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# -- recording from the local Triton -------------------------------------------------------------
def record_triton(windows: int, interval: float) -> None:
    """A/A probe windows from the real local Triton: `good` and `same` of the test classifier both
    loaded, client load on both versions, the default probe shape (64 rows in requests of 4, the
    first request of each window dropped as observe does)."""
    import tempfile

    from builders.repository import ModelRepository
    from control_plane.local_triton import LocalTriton
    from control_plane.triton_admin import TritonAdmin
    from probes.golden import send_interleaved
    from probes.load import LoadGenerator
    from tests.classifier_models import golden_set, publish

    tmp = Path(tempfile.mkdtemp(prefix="judgment-"))
    repo = ModelRepository(tmp / "repo")
    repo.root.mkdir(parents=True)
    a = publish(repo, tmp / "build", "clf", "good")
    b = publish(repo, tmp / "build", "clf", "same")
    x, _ = golden_set()
    rows = np.resize(x, (64, x.shape[1]))
    out: list[list[list[float]]] = []
    with LocalTriton(repo.root, state_dir=tmp / "triton") as triton:
        url = triton.state.grpc_url
        admin = TritonAdmin(url)
        admin.load_versions("clf", repo.read_config("clf"), [a, b])
        admin.close()
        with (
            LoadGenerator(
                url, "clf", {"x": x[:4]}, concurrency=1, pause_s=0.02, model_version=str(a), max_seconds=3600
            ),
            LoadGenerator(
                url, "clf", {"x": x[:4]}, concurrency=1, pause_s=0.02, model_version=str(b), max_seconds=3600
            ),
        ):
            for i in range(windows):
                targets = [(url, b), (url, a)] if i % 2 == 0 else [(url, a), (url, b)]
                runs = send_interleaved(targets, "clf", {"x": rows}, batch_size=4)
                c = list(runs[(url, str(b))].latencies_ms[1:])
                s = list(runs[(url, str(a))].latencies_ms[1:])
                out.append([c, s])
                time.sleep(interval)
    RECORDED.parent.mkdir(parents=True, exist_ok=True)
    RECORDED.write_text(
        json.dumps(
            {
                "what": "A/A probe windows from the local Triton (tests.classifier_models good vs same), 64 rows "
                "in requests of 4, client load on both versions, first request of each window dropped",
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "interval_s": interval,
                "windows": [[[round(v, 4) for v in c], [round(v, 4) for v in s]] for c, s in out],
            }
        )
    )
    print(f"recorded {len(out)} windows into {RECORDED}")


REAL_POLICY = """
defaults:
  probe_interval_seconds: {interval}
  drain_seconds: 0
  min_agreement: null
"""


def real_rollouts(aa: int, slow: int, interval: float, heavy: int, timeout: float) -> dict[str, Any]:
    """A/A and slower rollouts through the real reconciler on the local Triton, under client load.

    One Triton, so each rollout is a bluegreen step (docs/fleet.md); the default policy but a
    window every `interval` seconds. A/A: the `same` test classifier as the next version; slower:
    `slow` with hidden size `heavy`. A LoadGenerator sends unversioned requests throughout.
    """
    import tempfile

    from bench.control_plane_harness import runtime_for
    from builders.repository import ModelRepository
    from control_plane import reconciler
    from control_plane.local_triton import LocalTriton
    from control_plane.store.models import State
    from probes.load import LoadGenerator
    from tests.classifier_models import golden_set, publish

    tmp = Path(tempfile.mkdtemp(prefix="judgment-real-"))
    repo = ModelRepository(tmp / "repo")
    repo.root.mkdir(parents=True)
    config = tmp / "shepherd.yaml"
    config.write_text(REAL_POLICY.format(interval=interval))
    x, _ = golden_set()
    results: dict[str, list[dict[str, Any]]] = {"aa": [], "slow": []}
    with LocalTriton(repo.root, state_dir=tmp / "triton") as triton:
        rt = runtime_for(config, repo, triton, f"sqlite:///{tmp / 'history.db'}")

        def state(version: int) -> State | None:
            record = rt.store.read.get_version("clf", version)
            return State(record.state) if record is not None else None

        def until(version: int, states: set[State]) -> float:
            began = time.monotonic()
            while time.monotonic() - began < timeout:
                reconciler.tick(rt)
                if state(version) in states:
                    return time.monotonic() - began
                time.sleep(min(interval, 0.2))
            return math.nan

        try:
            first = publish(repo, tmp / "build", "clf", "good")
            until(first, {State.promoted})
            with LoadGenerator(
                triton.state.grpc_url, "clf", {"x": x[:4]}, concurrency=1, pause_s=0.02, max_seconds=4 * 3600
            ):
                plan = ["same"] * aa + ["slow"] * slow
                for n, variant in enumerate(plan):
                    version = publish(repo, tmp / "build", "clf", variant, heavy=heavy if variant == "slow" else None)
                    until(version, {State.canary, State.rejected, State.failed})
                    seconds = until(version, {State.promoted, State.rolled_back, State.rejected, State.failed})
                    decision = rt.store.read.decisions("clf", version)[-1]
                    latency = next((c for c in decision.checks.get("checks", []) if c["name"] == "latency"), None)
                    row = {
                        "version": version,
                        "state": str(state(version).value if state(version) else None),
                        "seconds_in_canary": None if math.isnan(seconds) else round(seconds, 1),
                        "reason": (decision.reason or "")[:300],
                        "median_ratio": (latency or {}).get("figures", {}).get("effect"),
                    }
                    results["aa" if variant == "same" else "slow"].append(row)
                    print(f"real {variant} #{n + 1}: {row['state']} after {row['seconds_in_canary']} s", flush=True)
                    if variant == "slow" and state(version) == State.promoted:
                        break  # a promoted slow version is stable now; later ones would compare with it
        finally:
            rt.close()
    return results


def real_lines(results: dict[str, Any], interval: float, heavy: int) -> list[str]:
    lines = [
        f"Real local Triton (one replica: bluegreen), the default policy with a window every {interval:g} s, "
        f"unversioned client load throughout; A/A = the `same` test classifier, slower = `slow` with hidden size {heavy}:",
        "",
        "| rollouts | runs | promoted | rolled back | other | seconds in canary: median / max | judged median ratio (last decision) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in (("A/A", results["aa"]), ("slower", results["slow"])):
        if not rows:
            continue
        states = [r["state"] for r in rows]
        secs = [r["seconds_in_canary"] for r in rows if r["seconds_in_canary"] is not None]
        ratios = [r["median_ratio"] for r in rows if r["median_ratio"] is not None]
        lines.append(
            f"| {name} | {len(rows)} | {states.count('promoted')} | {states.count('rolled_back')} | "
            f"{len(rows) - states.count('promoted') - states.count('rolled_back')} | "
            f"{_s(float(np.median(secs)) if secs else None)} / {_s(max(secs) if secs else None)} | "
            f"{'-' if not ratios else f'{np.median(ratios):.2f}'} |"
        )
    reasons = sorted({r["reason"][:120] for r in results["aa"] if r["state"] != "promoted"})
    if reasons:
        lines += ["", "A/A rollouts not promoted, why: " + "; ".join(reasons)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aa-runs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--live", type=int, default=100, help="client requests per window and side in the live scenarios"
    )
    parser.add_argument("--quick", action="store_true", help="the regression grid on the docs noise only")
    parser.add_argument("--record-triton", action="store_true")
    parser.add_argument("--record-windows", type=int, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--real-aa", type=int, default=0, help="A/A rollouts on the local Triton (0: none)")
    parser.add_argument("--real-slow", type=int, default=0)
    parser.add_argument("--real-interval", type=float, default=0.5)
    parser.add_argument("--real-heavy", type=int, default=1024)
    parser.add_argument("--skip-sim", action="store_true")
    args = parser.parse_args(argv)
    if args.record_triton:
        record_triton(args.record_windows, 0.25)
    if args.real_aa or args.real_slow:
        real = real_rollouts(args.real_aa, args.real_slow, args.real_interval, args.real_heavy, timeout=600)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "judgment_real.json").write_text(json.dumps(real, indent=1))
        text = "\n".join(real_lines(real, args.real_interval, args.real_heavy))
        (args.out / "judgment_real.md").write_text(text + "\n")
        print(text)
    if args.skip_sim:
        return 0
    started = time.time()
    aa, grid = scenarios(args.quick, args.live)
    aa_rows, grid_rows = [], []
    for i, sc in enumerate(aa):
        runs = args.aa_runs if "noise" in sc.name else max(args.runs, args.aa_runs // 3)
        aa_rows.append(run_scenario(sc, runs, args.workers, 10_000 * (i + 1)))
        print(f"{sc.name}: done ({time.time() - started:.0f} s)", flush=True)
    for i, sc in enumerate(grid):
        grid_rows.append(run_scenario(sc, args.runs, args.workers, 1_000_000 + 10_000 * i))
        print(f"{sc.name}: done ({time.time() - started:.0f} s)", flush=True)
    factors = {n: round(tail_factor(n), 2) for n in ("docs", "heavy", "triton") if n != "triton" or RECORDED.is_file()}
    lines = [
        f"Command: `python bench/judgment.py --aa-runs {args.aa_runs} --runs {args.runs}"
        + (" --quick" if args.quick else "")
        + f"` ({time.time() - started:.0f} s on {args.workers} processes).",
        "",
        f"Tail-only factor on 10 % of the candidate's requests (pooled p95 x1.5): {factors}.",
        "",
        "A/A (the same version on both sides):",
        "",
        *table(aa_rows, aa=True),
        "",
        "Regressions (median x1.1 and x1.25, errors +0.5 and +1 point and quality -0.01 and -0.02 are within or at "
        "the default margins: a rollback there is strict, not required):",
        "",
        *table(grid_rows, aa=False),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "judgment.md").write_text("\n".join(lines) + "\n")
    (args.out / "judgment.json").write_text(
        json.dumps(
            [{"scenario": r.scenario.__dict__, "runs": r.runs, "judges": r.by_judge} for r in aa_rows + grid_rows],
            indent=1,
        )
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
