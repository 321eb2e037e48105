"""The decision path of the control plane, as a level-triggered reconciler. Read it top to bottom.

Every pass reads the world once (the repository, the SQL history, Triton's index: `world.py`),
decides from it and acts, so a crash at any line is repaired by the next pass. Each lifecycle
step is a short function that calls the three parts of the story:

    observe  (observe.py)   probes and metric windows, stored as evidence
    decide   (judging.py)   a pure function returning the final decision
    act      (events.enter) records the decision and the state change, acts on Triton, logs, alerts

Desired state is always written to SQL *before* Triton is touched: a version is marked
rolled_back, then unloaded; marked canary, then loaded. Serving (`serving.py`) only reports what
Triton could not load; deciding what that means is done here. A version's life:

    discovered -> preflight -> canary -> promoted
         |            |           |-> rolled_back   (unloaded, verified gone, alert, never reloaded automatically)
         |            |-> rejected | failed (Triton could not load it; the stable version keeps serving)
         |-> rejected (older than the stable version)

The first version of a model has no stable version to compare with and is promoted on its
preflight alone. Supporting models (tokenizers, ensembles) are loaded once their model serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from builders.errors import BuilderError
from builders.repository import PREFLIGHT_SUFFIX
from control_plane import golden as golden_sets
from control_plane import integrity, observe, serving
from control_plane.errors import (
    BrokenGoldenSet,
    StoreError,
    TritonAccessDenied,
    TritonError,
    TritonLoadFailed,
    TritonUnreachable,
)
from control_plane.events import enter
from control_plane.judging import FAIL, PROMOTE, REJECT, ROLLBACK, WAIT, Verdict, decide_canary, decide_preflight
from control_plane.report import TickReport
from control_plane.runtime import Runtime
from control_plane.store.lifecycle import SYSTEM_ACTOR
from control_plane.store.models import State
from control_plane.store.records import Decision, RolloutRecord, StoreSnapshot, VersionRecord
from control_plane.world import World, desired_versions, manifest_dict, read_world, refreshed
from shepherd_errors import ShepherdError

__all__ = ["TickReport", "judge", "probe", "promote", "reconcile", "roll_back", "tick"]

# Errors after which the rest of a pass cannot go on: Triton or the history is gone, or refuses shepherd.
FATAL = (TritonUnreachable, TritonAccessDenied, StoreError)
T = TypeVar("T")


# -- one pass -------------------------------------------------------------------------------------
def tick(rt: Runtime) -> TickReport:
    """One full cycle: reconcile, probe, judge (what `shepherd tick` and each scheduler round run)."""
    report = TickReport()
    reconcile(rt, report)
    probe(rt, report)
    judge(rt, report)
    return report


def reconcile(rt: Runtime, report: TickReport | None = None) -> TickReport:
    """Discover versions, make Triton serve what the history says, and move each model's candidate one step.

    A model whose files or history are broken is reported and skipped; the others go on.
    """
    report = report or TickReport()
    with rt.lock:
        try:
            world = read_world(rt)
        except ShepherdError as exc:  # no Triton, no history or no repository: nothing to reconcile
            report.fail(exc)
            return report
        sweep_preflight_aliases(rt, report, world)
        # Models are independent: what is done to one changes no row or index entry of another,
        # so each starts from the world read at the start of the pass.
        for_each(report, world.catalogue.kinds, lambda model: reconcile_model(rt, report, world, model))
    return report


def for_each(report: TickReport, items: Iterable[T], step: Callable[[T], object]) -> None:
    """Run `step` on each item: a broken one is reported and skipped; a lost Triton or history ends the loop."""
    for item in items:
        try:
            step(item)
        except FATAL as exc:
            report.fail(exc)
            break
        except ShepherdError as exc:
            report.fail(exc)


def reconcile_model(rt: Runtime, report: TickReport, world: World, model: str) -> None:
    """Discover, serve, take the lifecycle step, serve again if it changed anything, load support models."""
    if discover(rt, report, world, model):
        world = refreshed(rt, world)
    world = serve_model(rt, report, world, model)
    if world.store.pinned(model) is None and advance(rt, report, world, model):
        world = serve_model(rt, report, refreshed(rt, world), model)
    load_support_models(rt, report, world, model)


# -- discovering ----------------------------------------------------------------------------------
def discover(rt: Runtime, report: TickReport, world: World, model: str) -> bool:
    """Record every new version folder with a readable manifest; a broken one is reported, not recorded."""
    known = world.store.known(model)
    found = False
    for version in world.catalogue.versions.get(model, ()):
        if version in known:
            continue
        try:
            manifest = rt.repo.read_manifest(model, version)
        except BuilderError as exc:
            report.fail(exc)
            continue
        if rt.store.lifecycle.record_version(
            model, version, manifest=manifest_dict(manifest), kind=world.catalogue.kinds[model]
        ):
            report.add("discovered", model, version)
            found = True
    return found


# -- serving --------------------------------------------------------------------------------------
def serve_model(rt: Runtime, report: TickReport, world: World, model: str) -> World:
    """Converge Triton to the model's desired versions; a candidate Triton cannot load is failed, then retried."""
    for _ in range(len(world.store.versions_of(model)) + 1):
        served = converge(rt, report, world.store, world.ready(model), model, wait=True)
        if served.refused is None:
            return refreshed(rt, world) if served.changed else world
        culprit = failed_candidate(world.store, model, served)
        if culprit is None:
            report.fail(served.refused)
            return world
        fail(rt, report, model, culprit, served.refused)
        world = refreshed(rt, world)
    return world


def converge(
    rt: Runtime, report: TickReport, store: StoreSnapshot, ready: set[int], model: str, *, wait: bool
) -> serving.Served:
    """One converge of `model` to what `store` wants, reported; released versions are awaited when `wait`."""
    policy = rt.settings.policy_for(model)
    served = serving.converge(
        rt.admin,
        model,
        desired_versions(store, model, rt.settings, rt.now()),
        live=ready,
        config=lambda: rt.repo.read_config(model),
        wait_s=policy.unload_wait_seconds if wait else None,
    )
    if served.changed:
        action = "loaded" if served.wanted else "unloaded"
        report.add(
            action, model, None, versions=sorted(served.wanted or served.before), seconds=round(served.seconds, 3)
        )
    if served.lingering:
        report.fail(
            TritonError(
                f"{model} versions {sorted(served.lingering)} still loaded "
                f"{policy.unload_wait_seconds:g} s after their unload"
            )
        )
    return served


def serve_now(rt: Runtime, report: TickReport, model: str, *, wait: bool = True) -> serving.Served:
    """Converge `model` on a fresh read of the history and of Triton's index (after a state change)."""
    return converge(rt, report, rt.store.read.snapshot(), rt.admin.ready_versions(model), model, wait=wait)


def failed_candidate(store: StoreSnapshot, model: str, served: serving.Served) -> int | None:
    """The version to blame for a refused load: one Triton marks UNAVAILABLE, else the newest non-stable one."""
    stable = store.stable(model)
    suspects = sorted(v for v in served.wanted if stable is None or v != stable.version)
    marked = [v for v in suspects if v in served.unavailable]
    if marked:
        return marked[0]
    return suspects[-1] if suspects else None


def load_support_models(rt: Runtime, report: TickReport, world: World, model: str) -> None:
    """Load the tokenizer and ensemble of a text model once the model itself serves."""
    if not world.ready(model):
        return
    names = [name for name in world.catalogue.support if name.startswith(f"{model}_")]
    for outcome in serving.load_support(rt.admin, names, list(world.index)):
        if isinstance(outcome, TritonLoadFailed):
            report.fail(outcome)
        else:
            report.add("loaded", outcome, None, role="support")


def sweep_preflight_aliases(rt: Runtime, report: TickReport, world: World) -> None:
    """Unload preflight aliases left by a crash whose model has no version in preflight any more."""
    for entry in world.live_aliases():
        model = entry.model.removesuffix(PREFLIGHT_SUFFIX)
        if world.store.versions_of(model, State.preflight):
            continue  # its preflight runs again in this pass and cleans up after itself
        try:
            rt.admin.unload(entry.model)
            rt.repo.unlink_preflight(model)
        except ShepherdError as exc:
            report.fail(exc)
            continue
        report.add("unloaded", entry.model, entry.version, role="stale preflight alias")


# -- the lifecycle step of a model ----------------------------------------------------------------
def advance(rt: Runtime, report: TickReport, world: World, model: str) -> bool:
    """Move the model's candidate one step; True when a version changed state (serving must follow).

    A version in preflight is probed again; with none in preflight or canary, the oldest
    discovered version newer than the stable one starts its preflight. Canaries are moved by
    `probe` and `judge`.
    """
    store = world.store
    stable = store.stable(model)
    in_preflight = store.versions_of(model, State.preflight)
    if in_preflight:
        for record in in_preflight:
            run_preflight(rt, report, record, stable)
        return True
    waiting = store.versions_of(model, State.discovered)
    if store.versions_of(model, State.canary) or not waiting:
        return False
    candidate = waiting[0]
    if stable is not None and candidate.version < stable.version:
        verdict = Verdict(REJECT, f"older than the stable version {stable.version}")
        enter(rt, report, model, candidate.version, State.rejected, verdict=verdict)
        return True
    enter(rt, report, model, candidate.version, State.preflight, verdict=None)
    run_preflight(rt, report, candidate, stable)
    return True


def run_preflight(rt: Runtime, report: TickReport, record: VersionRecord, stable: VersionRecord | None) -> None:
    """Probe the candidate alone under its preflight alias (no client traffic), decide, act."""
    model, version = record.model, record.version
    policy = rt.settings.policy_for(model)
    golden, unprobed = preflight_inputs(rt, record)
    if golden is not None:
        try:
            with preflight_alias(rt, report, record) as alias:
                observe.observe_preflight(rt, alias=alias, record=record, golden=golden, policy=policy)
        except TritonLoadFailed as exc:
            fail(rt, report, model, version, exc)
            return
    earlier = [d for d in rt.store.read.decisions(model, version) if d.outcome == WAIT]
    verdict = decide_preflight(
        observe.preflight_evidence(rt, record) if golden is not None else None,
        policy,
        stable_quality=stable.quality_value if stable is not None else None,
        earlier_attempts=len(earlier),
        unprobed=unprobed,
    )
    if verdict.outcome == REJECT:
        enter(rt, report, model, version, State.rejected, verdict=verdict)
    elif verdict.outcome == PROMOTE and stable is None:
        promote(
            rt, report, model, version, verdict=Verdict(PROMOTE, f"first version: {verdict.reason}", verdict.checks)
        )
    elif verdict.outcome == PROMOTE and stable is not None:
        start_canary(rt, report, record, stable, verdict)
    else:
        record_wait(rt, report, record, verdict, rollout_id=None)


def preflight_inputs(rt: Runtime, record: VersionRecord) -> tuple[golden_sets.Golden | None, str]:
    """The golden set to probe the candidate with, or None and why it cannot be probed at all."""
    changed = integrity.changed_files(rt.repo, record)
    if changed:
        return None, f"its files differ from its manifest (sha256): {', '.join(changed)}"
    try:
        golden = golden_sets.golden_for(rt.repo, record.model, record.version)
    except BrokenGoldenSet as exc:
        return None, str(exc)
    return golden, "" if golden is not None else "no golden set to probe it with"


@contextmanager
def preflight_alias(rt: Runtime, report: TickReport, record: VersionRecord) -> Iterator[str]:
    """Serve `record` as `<model>__preflight` while the block runs; the alias is removed after, whatever happened.

    A load Triton refuses raises TritonLoadFailed out of the `with`, and a broken config.pbtxt its
    BrokenConfig, both after the clean-up: no alias folder or alias model is left behind.
    """
    alias = rt.repo.preflight_name(record.model)
    attempted = False
    try:
        rt.repo.link_preflight(record.model, record.version)
        config = rt.repo.preflight_config(record.model)
        attempted = True
        rt.admin.load_versions(alias, config, [record.version])
        yield alias
    finally:
        if attempted:
            try:
                rt.admin.unload(alias)
            except TritonError as exc:
                report.fail(exc)
        rt.repo.unlink_preflight(record.model)


def start_canary(
    rt: Runtime, report: TickReport, record: VersionRecord, stable: VersionRecord, verdict: Verdict
) -> None:
    """Enter canary and open its rollout against the stable version; the next converge loads it beside stable."""

    def open_rollout() -> dict[str, int]:
        return {"rollout": rt.store.lifecycle.start_rollout(record.model, record.version, stable.version)}

    enter(rt, report, record.model, record.version, State.canary, verdict=verdict, then=open_rollout)


def record_wait(
    rt: Runtime, report: TickReport, record: VersionRecord, verdict: Verdict, *, rollout_id: int | None
) -> None:
    """An undecided verdict changes no state: it is stored as the decision of this look, and reported."""
    policy = rt.settings.policy_for(record.model)
    rt.store.evidence.add_decision(
        record.model,
        record.version,
        Decision(
            outcome=verdict.outcome,
            reason=verdict.reason,
            checks=verdict.as_dict(),
            policy=policy.as_dict(),
            rollout_id=rollout_id,
        ),
    )
    report.add("waiting", record.model, record.version, reason=verdict.reason)


# -- canaries -------------------------------------------------------------------------------------
def probe(rt: Runtime, report: TickReport | None = None) -> TickReport:
    """Probe every canary beside its stable version (after making sure both serve)."""
    report = report or TickReport()
    with rt.lock:
        for_each(report, _canaries(rt, report), lambda canary: probe_canary(rt, report, *canary))
    return report


def probe_canary(
    rt: Runtime, report: TickReport, candidate: VersionRecord, stable: VersionRecord, rollout: RolloutRecord
) -> None:
    """Make sure both versions serve, then observe them side by side with the same golden inputs."""
    serve_now(rt, report, candidate.model)
    golden = golden_sets.golden_for(rt.repo, candidate.model, candidate.version)
    if golden is None:
        return  # preflight rejects a version without a golden set; the canary waits, then times out
    observed = observe.observe_canary(
        rt,
        candidate=candidate,
        stable=stable,
        rollout_id=rollout.id,
        golden=golden,
        policy=rt.settings.policy_for(candidate.model),
    )
    for error in observed.errors:
        report.fail(error)
    report.add("probed", candidate.model, candidate.version, stable=stable.version, agreement=observed.agreement)


def judge(rt: Runtime, report: TickReport | None = None, *, model: str | None = None) -> TickReport:
    """Judge every canary (of `model`, or of all models) on the evidence of its rollout so far."""
    report = report or TickReport()
    with rt.lock:
        for_each(report, _canaries(rt, report, model=model), lambda canary: judge_canary(rt, report, *canary))
    return report


def judge_canary(
    rt: Runtime, report: TickReport, candidate: VersionRecord, stable: VersionRecord, rollout: RolloutRecord
) -> Verdict:
    """Decide on a canary from every window of its rollout, and act on the decision."""
    model, version = candidate.model, candidate.version
    now = rt.now()
    cand_ev, stable_ev = observe.canary_evidence(rt, model, version, stable.version, rollout.id)
    verdict = decide_canary(
        cand_ev,
        stable_ev,
        rt.settings.policy_for(model),
        baked_seconds=(now - rollout.started_at).total_seconds(),
        now=now,
    )
    if verdict.outcome == ROLLBACK:
        roll_back(rt, report, model, version, verdict=verdict)
    elif verdict.outcome == PROMOTE:
        promote(rt, report, model, version, verdict=verdict)
    else:
        record_wait(rt, report, candidate, verdict, rollout_id=rollout.id)
    return verdict


def _canaries(
    rt: Runtime, report: TickReport, *, model: str | None = None
) -> list[tuple[VersionRecord, VersionRecord, RolloutRecord]]:
    """Each canary of an unpinned model with its stable version and open rollout, from one read of the history.

    A canary whose rollout was never opened (a crash right after it entered canary) gets it now.
    """
    try:
        store = rt.store.read.snapshot()
    except StoreError as exc:
        report.fail(exc)
        return []
    found = []
    for record in store.versions:
        if record.state != State.canary or (model is not None and record.model != model):
            continue
        stable = store.stable(record.model)
        if stable is None or store.pinned(record.model) is not None:
            continue
        rollout = store.open_rollout(record.model, record.version)
        if rollout is None:
            rt.store.lifecycle.start_rollout(record.model, record.version, stable.version)
            rollout = rt.store.read.open_rollout(record.model, record.version)
        if rollout is not None:
            found.append((record, stable, rollout))
    return found


# -- the state changes ----------------------------------------------------------------------------
def promote(
    rt: Runtime, report: TickReport, model: str, version: int, *, verdict: Verdict, actor: str = SYSTEM_ACTOR
) -> None:
    """Make the version the stable one; Triton serves it for requests naming no version at once."""

    def serve() -> dict[str, float]:
        served = serve_now(rt, report, model)
        if served.refused is not None:
            report.fail(served.refused)
        return {}

    enter(rt, report, model, version, State.promoted, verdict=verdict, actor=actor, then=serve)


def roll_back(
    rt: Runtime, report: TickReport, model: str, version: int, *, verdict: Verdict, actor: str = SYSTEM_ACTOR
) -> None:
    """Mark the version rolled back, send traffic back to stable at once, verify it is gone from Triton.

    Two moments are timed from the decision: traffic back (the load that drops the version) and
    the unload verified in Triton's index.
    """
    decided = time.monotonic()
    policy = rt.settings.policy_for(model)

    def take_down() -> dict[str, float]:
        served = serve_now(rt, report, model, wait=False)
        if served.refused is not None:
            report.fail(served.refused)
        timings = {"traffic_back_s": round(time.monotonic() - decided, 4)}
        gone = rt.admin.wait_gone(model, [version], timeout_s=policy.unload_wait_seconds)
        timings["unload_verified_s"] = round(time.monotonic() - decided, 4)
        if not gone:
            report.fail(TritonError(f"{model} version {version} still in Triton's index after rollback"))
        return timings

    enter(rt, report, model, version, State.rolled_back, verdict=verdict, actor=actor, then=take_down)


def fail(rt: Runtime, report: TickReport, model: str, version: int, refusal: TritonLoadFailed) -> None:
    """Triton could not load the version: it is failed, and the stable version keeps serving."""
    enter(rt, report, model, version, State.failed, verdict=Verdict(FAIL, f"Triton could not load it: {refusal}"))
