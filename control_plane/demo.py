"""The main job on embedded defaults: build the examples, serve them, roll out good and bad versions.

What it shows, with real parts only: the three example models are built and verified into a fresh
repository; the real local Triton serves them; the scheduled control plane (APScheduler, SQLite,
the policy defaults of shepherd.yaml) promotes their first versions on preflight, then a retrained
`query_intent` (promoted), a larger and slower one and one trained on damaged labels (each
unloaded, with the reason), while a light stream of clients sends raw query text to the
`query_intent_text` ensemble throughout. Everything printed is read back from the history database and from Triton.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builders.examples import INTENT, build_examples, build_variant
from builders.golden_data import read_intents
from builders.pipeline import BuildResult, StepResult
from builders.repository import ModelRepository
from control_plane import scheduler
from control_plane.audit import history_mismatches
from control_plane.cli.output import console, print_table, waiting
from control_plane.local_triton import LocalTriton, Ports, free_ports, port_is_free
from control_plane.runtime import Runtime, open_runtime
from control_plane.settings import load_settings
from control_plane.store.models import State
from control_plane.world import SUPPORT_KINDS, model_kind
from probes.load import LoadGenerator

FINAL = {State.promoted, State.rolled_back, State.rejected, State.failed}


@dataclass(frozen=True)
class Step:
    variant: str
    expected: frozenset[State]
    why: str


ROLLOUTS = (
    Step("retrained", frozenset({State.promoted}), "same recipe, another seed: should be promoted"),
    Step("slow", frozenset({State.rolled_back, State.rejected}), "a much larger model: should be unloaded as slower"),
    Step("damaged", frozenset({State.rolled_back, State.rejected}), "trained on corrupted labels: should be unloaded"),
)


def _progress(model: str) -> Callable[[str, StepResult | None], None]:
    def show(step: str, result: StepResult | None) -> None:
        if result is not None:
            console.print(
                f"  {model}: {step} {result.status.value if hasattr(result.status, 'value') else result.status}"
            )

    return show


def _client_queries(rows: int = 4) -> np.ndarray:
    """A few real queries from the golden set, as the BYTES tensor [rows, 1] the ensemble takes."""
    queries = [query for query, _ in read_intents()[:rows]]
    return np.array([[q.encode()] for q in queries], dtype=object)


def _built(results: list[BuildResult]) -> None:
    for result in results:
        if not result.ok:
            raise SystemExit(f"building {result.model} failed: {result.error}")
        console.print(f"built {result.model} version {result.version}")


def _wait_for(rt: Runtime, model: str, version: int, states: set[State], timeout: float) -> State:
    deadline = time.monotonic() + timeout
    with waiting(f"{model} v{version}: waiting for the control plane") as say:
        while time.monotonic() < deadline:
            record = rt.store.read.get_version(model, version)
            if record is not None and record.state in states:
                return State(record.state)
            say(f"{model} v{version}: {record.state.value if record else 'not discovered yet'}")
            time.sleep(0.5)
    record = rt.store.read.get_version(model, version)
    raise SystemExit(f"{model} v{version} still {record.state if record else 'undiscovered'} after {timeout:.0f} s")


def run_demo(workdir: Path, *, config: Path | None = None, timeout: float = 600.0) -> bool:
    """Run the demo in `workdir` (wiped first, kept afterwards); True when every rollout ended as expected."""
    shutil.rmtree(workdir, ignore_errors=True)
    root = workdir / "model_repository"
    root.mkdir(parents=True)
    repo = ModelRepository(root)
    db_url = f"sqlite:///{workdir / 'history.db'}"

    console.rule("1. build the three example models (verified ONNX, manifests, tokenizers, ensembles)")
    with waiting("building the example models") as say:
        built = build_examples(repo, progress=lambda step, _result: say(f"building the example models: {step}"))
    _built(built)

    default = Ports()
    ports = default if all(port_is_free(p) for p in default.as_tuple()) else Ports(*free_ports(3))
    console.rule(f"2. start the real local Triton (gRPC {ports.grpc}) and the scheduled control plane")
    with LocalTriton(root, ports=ports, state_dir=workdir / "triton") as triton:
        settings = load_settings(
            config,
            overrides={
                "repo": root,
                "triton_grpc": triton.state.grpc_url,
                "triton_metrics": f"127.0.0.1:{triton.state.metrics_port}",
                "db_url": db_url,
            },
        )
        rt = open_runtime(settings)
        jobs = scheduler.build_scheduler(rt)
        jobs.start()
        try:
            for model in repo.models():
                if model_kind(rt.repo, model) in SUPPORT_KINDS:
                    continue
                state = _wait_for(rt, model, 1, FINAL, timeout)
                console.print(f"{model} v1: {state.value} (first version, judged on its preflight)")
            while not rt.admin.ready_versions(f"{INTENT}_text"):  # promoted in SQL first, then loaded
                time.sleep(0.2)
            with LoadGenerator(
                triton.state.grpc_url,
                f"{INTENT}_text",  # what clients call: raw query text through the tokenizer ensemble
                {"text": _client_queries()},
                concurrency=1,
                pause_s=0.1,
                max_seconds=timeout * 3,
            ) as clients:
                outcomes = []
                for step in ROLLOUTS:
                    console.rule(f"3. {INTENT}: publish the {step.variant} version ({step.why})")
                    with waiting(f"building {INTENT} ({step.variant})") as say:
                        result = build_variant(
                            repo, INTENT, step.variant, progress=lambda name, _r: say(f"building {INTENT}: {name}")
                        )
                    _built([result])
                    assert result.version is not None
                    state = _wait_for(rt, INTENT, result.version, FINAL, timeout)
                    record = rt.store.read.get_version(INTENT, result.version)
                    reason = record.reason if record else ""
                    console.print(f"{INTENT} v{result.version} ({step.variant}): [bold]{state.value}[/] - {reason}")
                    outcomes.append((step, result.version, state))
                traffic = clients.report()
        finally:
            jobs.shutdown(wait=True)
        console.rule("4. history (from SQLite)")
        _history(rt)
        mismatches = history_mismatches(rt.store)
        for problem in mismatches:
            console.print(f"[red]history inconsistent:[/] {problem}", highlight=False)
        if not mismatches:
            console.print("history consistent: every version's last decision matches its state")
        console.print(
            f"client requests naming no version during the rollouts: {traffic.requests}, failed: {traffic.failures}"
        )
        for message in traffic.failure_messages:
            console.print(f"  a failed request said: {message}", highlight=False)
        rt.close()
    good = all(state in step.expected for step, _, state in outcomes) and not mismatches
    console.print(f"history database: {db_url}  (shepherd history --db {db_url})")
    console.print("every rollout ended as expected" if good else "[red]a rollout did not end as expected[/]")
    return good


def _first_clause(reason: str, limit: int = 90) -> str:
    """The headline of a decision's reason (the whole text with every figure is in SQL)."""
    head = reason.split(";")[0]
    return head if len(head) <= limit else head[: limit - 1] + "…"


def _history(rt: Runtime) -> None:
    rows: list[tuple[Any, ...]] = []
    for entry in rt.store.read.history():
        decision = entry.get("last_decision") or {}
        rows.append(
            (
                entry["model"],
                entry["version"],
                entry["state"],
                "yes" if entry.get("is_stable") else "",
                f"{entry['quality_value']:.3f}" if entry.get("quality_value") is not None else "",
                _first_clause(decision.get("reason") or entry.get("reason") or ""),
            )
        )
    print_table("Versions", ["model", "version", "state", "stable", "quality", "why"], rows)
