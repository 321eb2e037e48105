"""Issue 4: how fast a regressed canary is unloaded, how fast traffic is back on stable, and swaps under load.

Why: the control plane promises that a regressed version stops taking traffic within a minute, that
traffic is back on the stable version within a second of the decision, and that loading and unloading
versions never fails a client request. Each is measured against the real local Triton with a Runtime
on SQLite and the policy DEFAULTS from shepherd.yaml, the reconciler driven by `reconciler.tick` in a
loop at the policy's probe interval.

    .venv/bin/python bench/rollback.py [--repeats 2] [--swaps 20] [--only latency errors swaps]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.common import Spread, met, percentile, table, write_result
from bench.control_plane_harness import IndexWatcher, TickLoop, control_plane, state_of, transition_time
from control_plane.runtime import Runtime
from control_plane.store.models import State
from probes.golden import send_paired_probes
from probes.load import LoadGenerator, LoadReport
from tests.classifier_models import golden_set, publish

HEAVY_CANDIDATES = (1024, 1280, 1536, 1792, 2048)
LIVE: dict[str, Any] = {"concurrency": 2, "pause_s": 0.05, "max_seconds": 600}  # live client traffic on the canary
TARGET_LATENCY_RATIO = 1.5
UNLOAD_TARGET_S = 60.0
TRAFFIC_TARGET_S = 1.0
DONE = (State.rolled_back, State.promoted, State.rejected, State.failed)


# -- calibration ------------------------------------------------------------------------------------
def calibrate_heavy(scratch: Path, *, rounds: int = 8) -> tuple[int, dict[int, float]]:
    """The smallest `slow` hidden size whose probe p95 is at least ~1.5x `good`'s, measured as a canary sees it.

    Each size is version 2 of its own model beside `good` as version 1, with live traffic naming no
    version (so it lands on version 2, as in a canary), probed with the reconciler's own paired probes
    (64 golden rows in requests of 4). Pooled p95 over `rounds` probe rounds.
    """
    x, _ = golden_set()
    ratios: dict[int, float] = {}
    with control_plane(scratch) as (repo, triton, rt):
        for heavy in HEAVY_CANDIDATES:
            model = f"cal_h{heavy}"
            publish(repo, scratch / "build", model, "good")
            publish(repo, scratch / "build", model, "slow", heavy=heavy)
            rt.admin.load_versions(model, repo.read_config(model), [1, 2])
            samples: dict[str, list[float]] = {"1": [], "2": []}
            with LoadGenerator(triton.state.grpc_url, model, {"x": x[:2]}, **LIVE):
                for _ in range(rounds):
                    runs = send_paired_probes(triton.state.grpc_url, model, [2, 1], {"x": x[:64]}, batch_size=4)
                    for version, run in runs.items():
                        samples[version] += run.latencies_ms
                    time.sleep(0.2)
            rt.admin.unload(model)
            ratios[heavy] = percentile(samples["2"], 95) / percentile(samples["1"], 95)
            print(f"  calibration: heavy {heavy}: p95 ratio {ratios[heavy]:.2f}", flush=True)
    enough = [h for h in HEAVY_CANDIDATES if ratios[h] >= TARGET_LATENCY_RATIO - 0.05]
    return (enough[0] if enough else HEAVY_CANDIDATES[-1]), ratios


# -- one regressed canary ------------------------------------------------------------------------------
def establish_stable(rt: Runtime, repo: Any, scratch: Path, model: str, loop: TickLoop) -> int:
    version = publish(repo, scratch / "build", model, "good")
    if not loop.run(lambda: state_of(rt, model, version) == State.promoted, timeout=120):
        raise SystemExit(f"{model} v{version} was not promoted within 120 s: {loop.errors[-3:]}")
    return version


def side_p95(rt: Runtime, model: str, version: int, role: str) -> tuple[float, int]:
    samples = [s for w in rt.store.read.probe_windows(model, version, role=role) for s in (w.samples or [])]
    return percentile(samples, 95), len(samples)


def canary_run(scratch: Path, kind: str, *, heavy: int, timeout: float) -> dict[str, Any]:
    """Stable `good`, then a regressed candidate under live traffic; times from canary start to unload."""
    model = "clf"
    x, _ = golden_set()
    good_rows = {"x": x[:2]}
    with control_plane(scratch) as (repo, triton, rt):
        interval = rt.settings.probe_interval_seconds
        loop = TickLoop(rt, interval)
        stable = establish_stable(rt, repo, scratch, model, loop)
        loads = [LoadGenerator(triton.state.grpc_url, model, good_rows, **LIVE)]
        threshold = None
        if kind == "errors":
            # Above every golden row: the golden probes pass, only live rows beyond it fail.
            threshold = float(x[:, 0].max()) + 0.5
            bad = x[:1].copy()
            bad[0, 0] = threshold + 1.0
            loads.append(
                LoadGenerator(triton.state.grpc_url, model, {"x": bad}, concurrency=1, pause_s=0.5, max_seconds=600)
            )
        for load in loads:
            load.start()
        time.sleep(2.0)  # live traffic on stable first, as in production
        if kind == "latency":
            candidate = publish(repo, scratch / "build", model, "slow", heavy=heavy)
        else:
            candidate = publish(repo, scratch / "build", model, "failing", failing_threshold=threshold)
        published_at = time.time()
        with IndexWatcher(triton.state.grpc_url, model) as watcher:
            finished = loop.run(lambda: state_of(rt, model, candidate) in DONE, timeout=timeout)
            loop_ended = time.time()
            time.sleep(1.5)  # keep traffic and the watcher going a moment after the outcome
        reports: list[LoadReport] = [load.stop() for load in loads]
        final = state_of(rt, model, candidate)
        record = rt.store.read.get_version(model, candidate)
        canary_at = transition_time(rt, model, candidate, State.canary)
        decided_at = transition_time(rt, model, candidate, State.rolled_back) or transition_time(
            rt, model, candidate, State.promoted
        )
        rollback = loop.action("rolled_back", model, candidate) or {}
        result: dict[str, Any] = {
            "kind": kind,
            "finished": finished,
            "final_state": final.value if final else None,
            "reason": record.reason if record is not None else None,
            "publish_to_canary_s": (canary_at.timestamp() - published_at) if canary_at else None,
            "traffic_back_s": rollback.get("traffic_back_s"),
            "unload_verified_s": rollback.get("unload_verified_s"),
            "errors": loop.errors[-5:],
        }
        if canary_at is not None:
            # An undecided canary is measured up to the end of the loop (the timeout).
            start, decision = canary_at.timestamp(), (decided_at.timestamp() if decided_at else loop_ended)
            gone = watcher.gone_after(candidate, decision) if final == State.rolled_back else None
            result["canary_to_decision_s"] = (decision - start) if decided_at else None
            result["canary_to_unloaded_s"] = (gone - start) if gone else None
            result["decision_to_gone_watch_s"] = (gone - decision) if gone else None
            merged = sorted(entry for report in reports for entry in report.timeline)
            during = [served for sent, served in merged if start <= sent < decision]
            failed = sum(1 for served in during if served == "")
            result["live_requests_in_canary"] = len(during)
            result["live_failed_in_canary"] = failed
            result["live_error_rate"] = failed / len(during) if during else None
            if final == State.rolled_back:
                last_candidate = max((r.last_sent_to(str(candidate)) or 0.0 for r in reports), default=0.0)
                result["client_last_to_candidate_after_decision_s"] = (
                    (last_candidate - decision) if last_candidate else None
                )
                first_stable = min(
                    (sent for sent, served in merged if sent >= decision and served == str(stable)), default=None
                )
                result["client_first_stable_after_decision_s"] = (first_stable - decision) if first_stable else None
        cand_p95, cand_n = side_p95(rt, model, candidate, "candidate")
        stable_p95, stable_n = side_p95(rt, model, stable, "stable")
        decisions = rt.store.read.decisions(model, candidate)
        result["last_decision"] = f"{decisions[-1].outcome}: {decisions[-1].reason}" if decisions else None
        checks = decisions[-1].checks.get("checks", []) if decisions else []
        latency: dict[str, Any] = next((c.get("figures", {}) for c in checks if c.get("name") == "latency"), {})
        errors: dict[str, Any] = next((c.get("figures", {}) for c in checks if c.get("name") == "errors"), {})
        result["judged"] = {
            "median_ratio": latency.get("median_ratio"),
            "p95_ratio": latency.get("p95_ratio"),
            "errors_candidate": errors.get("errors_candidate"),
            "requests_candidate": errors.get("requests_candidate"),
        }
        result["probe_p95_ms"] = {"candidate": cand_p95, "stable": stable_p95, "samples": [cand_n, stable_n]}
        result["p95_ratio"] = cand_p95 / stable_p95 if stable_p95 and cand_n and stable_n else None
        result["live_failures_total"] = sum(r.failures for r in reports)
        result["live_requests_total"] = sum(r.requests for r in reports)
        return result


# -- swaps under load ------------------------------------------------------------------------------------
def swaps_run(scratch: Path, *, swaps: int, concurrency: int) -> dict[str, Any]:
    """[1] -> [1, 2] -> [1], `swaps` times, under LoadGenerator traffic that names no version."""
    model = "swap"
    x, _ = golden_set()
    with control_plane(scratch) as (repo, triton, rt):
        first = publish(repo, scratch / "build", model, "good")
        second = publish(repo, scratch / "build", model, "same")
        config = repo.read_config(model)
        rt.admin.load_versions(model, config, [first])
        load_s: list[float] = []
        unload_s: list[float] = []
        with LoadGenerator(
            triton.state.grpc_url, model, {"x": x[:4]}, concurrency=concurrency, max_seconds=900
        ) as load:
            time.sleep(1.0)
            for _ in range(swaps):
                began = time.monotonic()
                rt.admin.load_versions(model, config, [first, second])
                load_s.append(time.monotonic() - began)
                time.sleep(0.5)
                began = time.monotonic()
                rt.admin.load_versions(model, config, [first])
                rt.admin.wait_gone(model, [second], timeout_s=30)
                unload_s.append(time.monotonic() - began)
                time.sleep(0.5)
            report = load.stop()
    return {
        "swaps": swaps,
        "concurrency": concurrency,
        "requests": report.requests,
        "failures": report.failures,
        "failure_messages": list(report.failure_messages),
        "served_by": report.served_by,
        "seconds": report.seconds,
        "load_s": Spread.of(load_s).as_dict(),
        "unload_verified_s": Spread.of(unload_s).as_dict(),
    }


# -- report ------------------------------------------------------------------------------------------------
def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _error_cell(run: dict[str, Any]) -> str:
    rate = run.get("live_error_rate")
    shown = (
        "-"
        if rate is None
        else f"{100 * rate:.1f}% ({run.get('live_failed_in_canary')}/{run.get('live_requests_in_canary')})"
    )
    judged = run.get("judged") or {}
    return f"{shown} / {judged.get('errors_candidate')}/{judged.get('requests_candidate')}"


def render(data: dict[str, Any], command: str) -> str:
    lines = [
        "### Regressed canary: from canary start to unload verified in Triton's index",
        "",
        f"Command: `{command}`",
        "",
        "Real local Triton, a Runtime on SQLite, the policy DEFAULTS of `shepherd.yaml` unchanged (probe interval 2 s, "
        "64 probe rows in requests of 4, min_samples 20, alpha 0.01, max_latency_increase 0.25, max_error_rate 0.02, "
        "bake 30 s). The reconciler is driven by `reconciler.tick` (reconcile + probe + judge) in a loop every "
        "`probe_interval_seconds` (2 s), not by the APScheduler process (which would reconcile every 5 s and probe/"
        "judge every 2 s). Canary start = the store's transition to `canary`; unloaded = the first time a separate "
        "client polling Triton's repository index every 50 ms saw the version neither READY nor UNLOADING. Live "
        "client traffic (LoadGenerator, no version named, 2 threads, 50 ms pause) runs throughout, so the canary "
        "takes real traffic (Triton routes unversioned requests to the highest loaded version).",
        "",
    ]
    heavy, ratios = data.get("heavy"), data.get("heavy_ratios", {})
    if heavy is not None:
        lines += [
            f"Latency regression: the `slow` classifier with hidden size {heavy}, the smallest size whose probe p95 "
            "reached about 1.5x `good`'s in a calibration run that mimics a canary (slow as version 2 beside good "
            "as version 1, the same live traffic on version 2, the reconciler's paired probes; p95 ratio per size: "
            + ", ".join(f"{h}: {r:.2f}x" for h, r in sorted(ratios.items(), key=lambda kv: int(kv[0])))
            + "; not monotonic because the live traffic on the slow version takes the same 2 cores the stable "
            "version's probes need). Error regression: the `failing` classifier with its lookup threshold above every golden row (the "
            "golden probes all pass); a second LoadGenerator (1 thread, 500 ms pause) sends a row beyond the "
            "threshold, which fails in onnxruntime on the candidate and succeeds on stable.",
            "",
        ]
    rows = []
    for run in data.get("canaries", []):
        rows.append(
            [
                run["kind"],
                run["final_state"],
                (
                    f"{_f(run['judged'].get('p95_ratio'), 2, 'x')} / {_f(run['judged'].get('median_ratio'), 2, 'x')}"
                    if run["kind"] == "latency" and run.get("judged")
                    else "-"
                ),
                _error_cell(run) if run["kind"] == "errors" else "-",
                _f(run.get("publish_to_canary_s"), 1),
                _f(run.get("canary_to_decision_s"), 1),
                _f(run.get("canary_to_unloaded_s"), 1),
                _f(run.get("traffic_back_s"), 3),
                _f(run.get("unload_verified_s"), 3),
                _f(run.get("client_first_stable_after_decision_s"), 3),
                _f(run.get("client_last_to_candidate_after_decision_s"), 3),
            ]
        )
    lines += [
        table(
            [
                "regression",
                "outcome",
                "judged p95 / median ratio (last decision)",
                "live error rate in canary (client) / errors the judge counted",
                "publish -> canary s",
                "canary -> decision (rollback or promotion) s",
                "canary -> unloaded s",
                "roll_back traffic_back_s",
                "roll_back unload_verified_s",
                "client: first stable answer after decision s",
                "client: last request sent to candidate, rel. to decision s",
            ],
            rows,
        ),
        "",
    ]
    for kind in ("latency", "errors"):
        runs = [r for r in data.get("canaries", []) if r["kind"] == kind]
        unloaded = [r["canary_to_unloaded_s"] for r in runs if r.get("canary_to_unloaded_s") is not None]
        if not runs:
            continue
        ok = len(unloaded) == len(runs) and max(unloaded) <= UNLOAD_TARGET_S
        spread = f"{Spread.of(unloaded).fmt(1)} s" if unloaded else "never"
        lines.append(
            f"- Target ({kind}): unloaded within {UNLOAD_TARGET_S:g} s of canary start: {spread} over "
            f"{len(runs)} run(s), {met(ok)}."
        )
        for r in runs:
            if r.get("final_state") != "rolled_back":
                lines.append(
                    f"  - a {kind} run ended `{r.get('final_state')}`; last decision: {r.get('last_decision')}"
                )
    backs = [r["traffic_back_s"] for r in data.get("canaries", []) if r.get("traffic_back_s") is not None]
    client = [
        r["client_first_stable_after_decision_s"]
        for r in data.get("canaries", [])
        if r.get("client_first_stable_after_decision_s") is not None
    ]
    if backs or client:
        ok = bool(client) and max(client) <= TRAFFIC_TARGET_S
        lines.append(
            f"- Target: requests served by stable within {TRAFFIC_TARGET_S:g} s of the rollback decision: the client "
            f"saw its first stable answer {Spread.of(client).fmt(3) if client else '-'} s after the decision, "
            f"{met(ok)}. `roll_back()`'s own traffic_back_s ({Spread.of(backs).fmt(3) if backs else '-'} s) is longer: "
            "it is measured when Triton's `load_model` call with the new version policy returns, and that call "
            "only returns once the rolled-back version's Python stub has shut down; requests naming no version "
            "were already routed to stable before that."
        )
    swaps = data.get("swaps")
    if swaps:
        lines += [
            "",
            "### Load/unload swaps under concurrent gRPC load",
            "",
            f"Version policy [1] -> [1,2] -> [1] via `TritonAdmin.load_versions` (one `load_model` with a config "
            f"override each), {swaps['swaps']} times, 0.5 s apart, each unload followed by `wait_gone`, while a "
            f"LoadGenerator at concurrency {swaps['concurrency']} sends 4-row requests naming no version.",
            "",
            table(
                ["swaps", "client requests", "failed", "served by", "load [1,2] s", "back to [1] + gone s"],
                [
                    [
                        swaps["swaps"],
                        swaps["requests"],
                        swaps["failures"],
                        ", ".join(f"v{k}: {v}" for k, v in sorted(swaps["served_by"].items())),
                        Spread(**_spread(swaps["load_s"])).fmt(2),
                        Spread(**_spread(swaps["unload_verified_s"])).fmt(3),
                    ]
                ],
            ),
            "",
            f"- Target: 0 failed client requests across {swaps['swaps']} swaps: {swaps['failures']} failed, "
            f"{met(swaps['failures'] == 0)}."
            + (f" Messages: {swaps['failure_messages'][:3]}" if swaps["failure_messages"] else ""),
        ]
    lines.append("")
    return "\n".join(lines)


def _spread(d: dict[str, Any]) -> dict[str, Any]:
    return {"median": d["median"], "low": d["min"], "high": d["max"], "n": d["n"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each regressed canary")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8, help="client threads during the swaps")
    parser.add_argument("--heavy", type=int, help="skip the calibration and use this slow hidden size")
    parser.add_argument("--timeout", type=float, default=150.0, help="give up on a canary after this long")
    parser.add_argument("--only", nargs="*", default=["latency", "errors", "swaps"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", action="store_true", help="rewrite rollback.md from --out's rollback.json")
    args = parser.parse_args(argv)
    if args.render:
        if args.out is None:
            raise SystemExit("--render needs --out (the folder holding rollback.json)")
        saved = json.loads((args.out / "rollback.json").read_text())
        write_result(args.out, "rollback", saved, render(saved, saved.get("command", "python bench/rollback.py")))
        return 0
    data: dict[str, Any] = {"canaries": []}
    with tempfile.TemporaryDirectory(prefix="shepherd-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        heavy = args.heavy
        if "latency" in args.only and heavy is None:
            heavy, ratios = calibrate_heavy(scratch / "calibration")
            data["heavy_ratios"] = {str(h): r for h, r in ratios.items()}
            print(f"  calibration: heavy {heavy}, ratios {ratios}", flush=True)
        data["heavy"] = heavy
        for attempt in range(args.repeats):
            for kind in ("latency", "errors"):
                if kind not in args.only:
                    continue
                run = canary_run(scratch / f"{kind}-{attempt}", kind, heavy=heavy or 0, timeout=args.timeout)
                print(f"  {kind} #{attempt}: {run}", flush=True)
                data["canaries"].append(run)
        if "swaps" in args.only:
            data["swaps"] = swaps_run(scratch / "swaps", swaps=args.swaps, concurrency=args.concurrency)
            print(f"  swaps: {data['swaps']}", flush=True)
    command = "python bench/rollback.py " + " ".join(argv if argv is not None else sys.argv[1:])
    data["command"] = command.strip()
    write_result(args.out, "rollback", data, render(data, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
