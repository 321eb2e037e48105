"""Issue 4: CPU and wall time of one reconcile tick with nothing to do, 50 models loaded, SQLite vs PostgreSQL.

Why: the reconciler is level-triggered, so it pays for every model on every tick even when nothing
changes; this is the floor of its cost. 50 small ONNX classifiers are published, promoted and loaded
in the real local Triton (one CPU instance each: 50 Python-backend stubs), then `reconciler.tick` is
timed with `time.process_time()` and the wall clock, on a Runtime over SQLite and over PostgreSQL.

With `--replicas N` (N >= 2, issue 9) the models are loaded on every replica of a LocalFleet of N
Tritons (HAProxy, Prometheus) and the Runtime reads its fleet file; each pass also counts the store
snapshots it takes and the Triton repository-API calls it makes per replica (`TritonAdmin.index`,
`_load`, `unload`, wrapped here only), and the same pass is measured over a fleet file naming the
first replica alone. Results go to tick_cost_fleet.json / .md.

    .venv/bin/python bench/tick_cost.py [--models 50] [--ticks 10] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
    .venv/bin/python bench/tick_cost.py --replicas 3 [--models 50] [--ticks 10] [--postgres '']
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from bench.common import ROOT, Spread, table, write_result
from bench.control_plane_harness import SETTINGS_FILE, runtime_for
from builders.repository import ModelRepository
from control_plane import reconciler
from control_plane.fleet import fleet_file_text
from control_plane.judging import PROMOTE, Verdict
from control_plane.local_fleet import LocalFleet
from control_plane.local_triton import LocalTriton, group_processes
from control_plane.runtime import Runtime, open_runtime
from control_plane.settings import load_settings
from control_plane.store.models import State
from control_plane.triton_admin import TritonAdmin
from control_plane.world import read_world
from tests.classifier_models import publish

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def runtime(repo: ModelRepository, triton: LocalTriton, db_url: str) -> Runtime:
    return runtime_for(SETTINGS_FILE, repo, triton, db_url)


def seed(rt: Runtime, models: list[str]) -> float:
    """Record every model's version 1 and promote it with the reconciler's own `promote` (which loads it).

    The preflight probes are skipped (the version goes discovered -> preflight -> promoted in the
    store directly): they cost minutes for 50 models and are not what this benchmark measures.
    """
    began = time.monotonic()
    for model in models:
        report = reconciler.TickReport()
        reconciler.discover(rt, report, read_world(rt), model)
        rt.store.lifecycle.transition(model, 1, State.preflight, reason="benchmark set-up")
        verdict = Verdict(PROMOTE, "benchmark set-up: preflight skipped")
        reconciler.promote(rt, report, model, 1, verdict=verdict)
        if report.errors:
            raise SystemExit(f"promoting {model} failed: {report.errors}")
    return time.monotonic() - began


def measure(rt: Runtime, ticks: int) -> dict[str, Any]:
    statements = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    event.listen(rt.store.db.engine, "before_cursor_execute", count)
    for _ in range(2):  # warm-up: caches, connection pool
        reconciler.tick(rt)
    cpu, wall, actions, per_tick = [], [], 0, []
    for _ in range(ticks):
        before = statements[0]
        c0, w0 = time.process_time(), time.perf_counter()
        report = reconciler.tick(rt)
        cpu.append((time.process_time() - c0) * 1000.0)
        wall.append((time.perf_counter() - w0) * 1000.0)
        actions += len(report.actions)
        per_tick.append(statements[0] - before)
    event.remove(rt.store.db.engine, "before_cursor_execute", count)
    parts: dict[str, Spread] = {}
    for name, part in (("reconcile", reconciler.reconcile), ("probe", reconciler.probe), ("judge", reconciler.judge)):
        spent = []
        for _ in range(max(3, ticks // 2)):  # where the tick's CPU goes
            c0 = time.process_time()
            part(rt)
            spent.append((time.process_time() - c0) * 1000.0)
        parts[name] = Spread.of(spent)
    return {
        "cpu_ms": Spread.of(cpu),
        "wall_ms": Spread.of(wall),
        "actions": actions,
        "sql_statements_per_tick": Spread.of(per_tick),
        "reconcile_cpu_ms": parts["reconcile"],
        "probe_cpu_ms": parts["probe"],
        "judge_cpu_ms": parts["judge"],
    }


def postgres_schema(base: str) -> tuple[str, Any]:
    name = f"shepherd_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()

    return url, drop


def run(scratch: Path, *, count: int, ticks: int, postgres: str | None) -> dict[str, Any]:
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    models = [f"m{i:02d}" for i in range(count)]
    for model in models:
        publish(repo, scratch / "build", model, "good")
    free_before = available_mib()
    data: dict[str, Any] = {"models": count, "ticks": ticks, "results": {}}
    with LocalTriton(repo.root, state_dir=scratch / "triton-state") as triton:
        rt = runtime(repo, triton, f"sqlite:///{scratch / 'history.db'}")
        try:
            data["seed_seconds"] = seed(rt, models)
            loaded = sum(1 for m in models if rt.admin.ready_versions(m) == {1})
            data["loaded"] = loaded
            data["processes"] = len(group_processes(triton.state.pid))
            data["memory_used_mib"] = free_before - available_mib()
            print(
                f"  {loaded} models loaded in {data['seed_seconds']:.0f} s, {data['processes']} processes", flush=True
            )
            data["results"]["SQLite"] = measure(rt, ticks)
            print(f"  SQLite: {data['results']['SQLite']}", flush=True)
        finally:
            rt.close()
        if postgres:
            url, drop = postgres_schema(postgres)
            try:
                rt = runtime(repo, triton, url)
                try:
                    seed(rt, models)  # already loaded: only the store is written
                    data["results"]["PostgreSQL"] = measure(rt, ticks)
                    print(f"  PostgreSQL: {data['results']['PostgreSQL']}", flush=True)
                finally:
                    rt.close()
            finally:
                drop()
    return data


def render(data: dict[str, Any], command: str) -> str:
    rows = [
        [
            name,
            data["loaded"],
            r["cpu_ms"].fmt(1),
            r["wall_ms"].fmt(1),
            r["sql_statements_per_tick"].fmt(0),
            f"{r['reconcile_cpu_ms'].fmt(1)} / {r['probe_cpu_ms'].fmt(1)} / {r['judge_cpu_ms'].fmt(1)}",
            r["actions"],
        ]
        for name, r in data["results"].items()
    ]
    return "\n".join(
        [
            f"### One idle reconcile tick with {data['loaded']} models loaded",
            "",
            f"Command: `{command}`",
            "",
            f"{data['models']} small ONNX classifiers (`tests/classifier_models.py` `good`, one CPU instance each, "
            f"dynamic batching) published through ModelRepository and promoted with `reconciler.promote` (which "
            f"loads them into the real local Triton; the preflight probes were skipped to keep the set-up short: "
            f"{data['seed_seconds']:.0f} s for the loads). Triton then ran {data['processes']} processes (server + "
            f"Python stubs) and the machine's available memory dropped by {data['memory_used_mib']:.0f} MiB. Then 2 "
            f"warm-up ticks and {data['ticks']} measured `reconciler.tick(rt)` calls with nothing to do (reconcile, "
            "probe, judge; no canary): `time.process_time()` (CPU of this process, all threads) and wall time, "
            "median with (min-max); then each of the tick's three steps called alone, to show where the CPU goes. "
            "SQL statements counted with a SQLAlchemy `before_cursor_execute` listener. "
            "PostgreSQL: 127.0.0.1:5432, database `test`, a fresh schema dropped afterwards.",
            "",
            table(
                [
                    "database",
                    "models loaded",
                    "CPU ms / tick",
                    "wall ms / tick",
                    "SQL statements / tick",
                    "CPU ms of reconcile / probe / judge alone",
                    "actions",
                ],
                rows,
            ),
            "",
        ]
    )


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    results = {
        k: {m: (v.as_dict() if isinstance(v, Spread) else v) for m, v in r.items()} for k, r in data["results"].items()
    }
    return {**data, "results": results}


# -- a fleet of replicas (issue 9) -------------------------------------------------------------------
TRITON_CALLS = ("index", "_load", "unload")  # every repository-API RPC of TritonAdmin goes through one of these


@contextmanager
def triton_calls() -> Iterator[Counter[tuple[str, str]]]:
    """Count TritonAdmin's repository-API calls by (replica gRPC address, method) while the block runs."""
    counts: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    originals = {name: getattr(TritonAdmin, name) for name in TRITON_CALLS}

    def counted(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: TritonAdmin, *args: Any, **kwargs: Any) -> Any:
            with lock:
                counts[(self.grpc_url, name.lstrip("_"))] += 1
            return call(self, *args, **kwargs)

        return wrapper

    for name, call in originals.items():
        setattr(TritonAdmin, name, counted(name, call))
    try:
        yield counts
    finally:
        for name, call in originals.items():
            setattr(TritonAdmin, name, call)


def code_state() -> dict[str, Any]:
    """Which code was measured: the commit and a digest of the uncommitted changes to the code under test
    (other sessions may be changing it in the same checkout)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout

    diff = git("diff", "HEAD", "--", "control_plane", "probes", "builders")
    return {
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_files": sorted(
            line[3:] for line in git("status", "--short", "--", "control_plane", "probes", "builders").splitlines()
        ),
        "uncommitted_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None,
    }


def measure_fleet(rt: Runtime, ticks: int, names: dict[str, str]) -> dict[str, Any]:
    """Idle passes with SQL statements, store snapshots and Triton calls per replica counted per pass."""
    statements = [0]
    snapshots = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    read = rt.store.read
    original_snapshot = read.snapshot

    def snapshot() -> Any:
        snapshots[0] += 1
        return original_snapshot()

    read.snapshot = snapshot  # type: ignore[method-assign]
    threads = [0]
    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        threads[0] += 1
        original_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]
    event.listen(rt.store.db.engine, "before_cursor_execute", count)
    try:
        with triton_calls() as calls:
            for _ in range(2):
                reconciler.tick(rt)
            cpu, wall, sql, snaps, started, actions = [], [], [], [], [], 0
            per_tick: list[Counter[tuple[str, str]]] = []
            for _ in range(ticks):
                before_sql, before_snap, before_calls, before_threads = (
                    statements[0],
                    snapshots[0],
                    Counter(calls),
                    threads[0],
                )
                c0, w0 = time.process_time(), time.perf_counter()
                report = reconciler.tick(rt)
                cpu.append((time.process_time() - c0) * 1000.0)
                wall.append((time.perf_counter() - w0) * 1000.0)
                sql.append(statements[0] - before_sql)
                snaps.append(snapshots[0] - before_snap)
                started.append(threads[0] - before_threads)
                per_tick.append(Counter(calls) - before_calls)
                actions += len(report.actions)
            parts: dict[str, Any] = {}
            for name, part in (
                ("reconcile", reconciler.reconcile),
                ("probe", reconciler.probe),
                ("judge", reconciler.judge),
            ):
                spent, taken = [], snapshots[0]
                for _ in range(max(3, ticks // 2)):
                    c0 = time.process_time()
                    part(rt)
                    spent.append((time.process_time() - c0) * 1000.0)
                parts[f"{name}_cpu_ms"] = Spread.of(spent)
                parts[f"snapshots_{name}"] = (snapshots[0] - taken) / max(3, ticks // 2)
    finally:
        event.remove(rt.store.db.engine, "before_cursor_execute", count)
        read.snapshot = original_snapshot  # type: ignore[method-assign]
        threading.Thread.start = original_start  # type: ignore[method-assign]
    by_replica: dict[str, dict[str, float]] = {}
    for tick in per_tick:
        for (url, method), n in tick.items():
            by_replica.setdefault(names.get(url, url), {}).setdefault(method, 0.0)
            by_replica[names.get(url, url)][method] += n / len(per_tick)
    return {
        "cpu_ms": Spread.of(cpu),
        "wall_ms": Spread.of(wall),
        "sql_statements_per_tick": Spread.of(sql),
        "snapshots_per_tick": Spread.of(snaps),
        "threads_started_per_tick": Spread.of(started),
        "triton_calls_per_tick": by_replica,
        "actions": actions,
        **parts,
    }


def fleet_runtime(repo: ModelRepository, fleet_file: Path, db_url: str) -> Runtime:
    settings = load_settings(SETTINGS_FILE, overrides={"repo": repo.root, "db_url": db_url, "fleet": fleet_file})
    return open_runtime(settings)


def run_fleet(scratch: Path, *, count: int, ticks: int, replicas: int, postgres: str | None) -> dict[str, Any]:
    """Idle passes over `count` models loaded on every replica of a LocalFleet, then over its first replica alone."""
    repo = ModelRepository(scratch / "model_repository")
    repo.root.mkdir(parents=True)
    models = [f"m{i:02d}" for i in range(count)]
    for model in models:
        publish(repo, scratch / "build", model, "good")
    free_before = available_mib()
    data: dict[str, Any] = {
        "models": count,
        "ticks": ticks,
        "replicas": replicas,
        "results": {},
        "code": code_state(),
    }
    with LocalFleet(repo.root, replicas=replicas, state_dir=scratch / "fleet") as fleet:
        names = {r.grpc: r.name for r in fleet.replicas}
        rt = fleet_runtime(repo, fleet.fleet_file, f"sqlite:///{scratch / 'history.db'}")
        try:
            data["seed_seconds"] = seed(rt, models)
            loaded = [sum(1 for m in models if rt.admin_for(r).ready_versions(m) == {1}) for r in fleet.replicas]
            data["loaded"] = min(loaded)
            data["loaded_per_replica"] = loaded
            data["processes"] = sum(len(group_processes(fleet.replica(r.name).pid)) for r in fleet.replicas)
            data["memory_used_mib"] = free_before - available_mib()
            print(
                f"  {loaded} models loaded in {data['seed_seconds']:.0f} s, {data['processes']} processes", flush=True
            )
            data["results"][f"{replicas} replicas"] = measure_fleet(rt, ticks, names)
            print(f"  {replicas} replicas: {data['results'][f'{replicas} replicas']}", flush=True)
        finally:
            rt.close()
        one = scratch / "fleet-r0.yaml"
        first = fleet.replicas[0]
        one.write_text(fleet_file_text([first]))
        rt = fleet_runtime(repo, one, f"sqlite:///{scratch / 'history-r0.db'}")
        try:
            seed(rt, models)  # already served on r0: only the store is written
            data["results"]["1 replica"] = measure_fleet(rt, ticks, names)
            print(f"  1 replica: {data['results']['1 replica']}", flush=True)
        finally:
            rt.close()
        if postgres:
            url, drop = postgres_schema(postgres)
            try:
                rt = fleet_runtime(repo, fleet.fleet_file, url)
                try:
                    seed(rt, models)
                    data["results"][f"{replicas} replicas, PostgreSQL"] = measure_fleet(rt, ticks, names)
                finally:
                    rt.close()
            finally:
                drop()
    return data


def render_fleet(data: dict[str, Any], command: str) -> str:
    rows = []
    for name, r in data["results"].items():
        calls = "; ".join(
            f"{rep}: " + ", ".join(f"{m} {n:g}" for m, n in sorted(c.items()))
            for rep, c in sorted(r["triton_calls_per_tick"].items())
        )
        rows.append(
            [
                name,
                r["cpu_ms"].fmt(1),
                r["wall_ms"].fmt(1),
                r["sql_statements_per_tick"].fmt(0),
                r["snapshots_per_tick"].fmt(0),
                calls,
                f"{r['reconcile_cpu_ms'].fmt(1)} / {r['probe_cpu_ms'].fmt(1)} / {r['judge_cpu_ms'].fmt(1)}",
                r["actions"],
            ]
        )
    return "\n".join(
        [
            f"### One idle pass over {data['loaded']} models x {data['replicas']} replicas",
            "",
            f"Command: `{command}`",
            "",
            f"{data['models']} `good` classifiers promoted with `reconciler.promote` on every replica of a LocalFleet "
            f"({data['seed_seconds']:.0f} s of loads; {data['processes']} Triton processes; available memory "
            f"dropped by {data['memory_used_mib']:.0f} MiB), then 2 warm-up passes and {data['ticks']} measured "
            "`reconciler.tick(rt)` with nothing to do. `1 replica`: a fleet file naming the first replica alone.",
            "",
            table(
                [
                    "fleet",
                    "CPU ms / pass",
                    "wall ms / pass",
                    "SQL statements / pass",
                    "store snapshots / pass",
                    "Triton calls / pass, per replica",
                    "CPU ms of reconcile / probe / judge alone",
                    "actions",
                ],
                rows,
            ),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--postgres", default=POSTGRES, help="base URL; '' skips PostgreSQL")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", action="store_true", help="rewrite tick_cost.md from --out's tick_cost.json")
    parser.add_argument("--replicas", type=int, default=1, help="N >= 2: a LocalFleet of N replicas (issue 9)")
    args = parser.parse_args(argv)
    if args.replicas >= 2 and not args.render:
        with tempfile.TemporaryDirectory(prefix="shepherd-bench-") as scratch:
            data = run_fleet(
                Path(scratch),
                count=args.models,
                ticks=args.ticks,
                replicas=args.replicas,
                postgres=args.postgres or None,
            )
        command = shlex.join(["python", "bench/tick_cost.py", *(argv if argv is not None else sys.argv[1:])])
        data["command"] = command
        write_result(args.out, "tick_cost_fleet", _plain(data), render_fleet(data, command))
        return 0
    if args.render:
        if args.out is None:
            raise SystemExit("--render needs --out (the folder holding tick_cost.json)")
        saved = json.loads((args.out / "tick_cost.json").read_text())
        for figures in saved["results"].values():
            for key, value in figures.items():
                if isinstance(value, dict):
                    figures[key] = Spread(value["median"], value["min"], value["max"], value["n"])
        write_result(
            args.out, "tick_cost", _plain(saved), render(saved, saved.get("command", "python bench/tick_cost.py"))
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="shepherd-bench-") as scratch:
        data = run(Path(scratch), count=args.models, ticks=args.ticks, postgres=args.postgres or None)
    command = ("python bench/tick_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    data["command"] = command
    write_result(args.out, "tick_cost", _plain(data), render(data, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
