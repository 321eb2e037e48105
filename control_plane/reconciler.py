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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from builders.errors import BuilderError
from builders.repository import PREFLIGHT_SUFFIX
from control_plane import golden as golden_sets
from control_plane import integrity, observe, serving, serving_manifest, strategies
from control_plane.errors import (
    BrokenGoldenSet,
    StoreError,
    TritonAccessDenied,
    TritonError,
    TritonLoadFailed,
    TritonUnreachable,
)
from control_plane.events import enter
from control_plane.fleet import Replica
from control_plane.judging import FAIL, PROMOTE, REJECT, ROLLBACK, WAIT, Verdict, decide_canary, decide_preflight
from control_plane.live_metrics import LiveMetrics
from control_plane.live_metrics import live_metrics as make_live_metrics
from control_plane.policy import Policy
from control_plane.report import TickReport
from control_plane.runtime import Runtime
from control_plane.store.lifecycle import SYSTEM_ACTOR
from control_plane.store.models import State
from control_plane.store.records import Decision, RolloutRecord, RolloutStepRecord, StoreSnapshot, VersionRecord
from control_plane.world import (
    ReplicaView,
    World,
    desired_versions,
    manifest_dict,
    read_indexes,
    read_world,
    refreshed,
)
from shepherd_errors import ShepherdError

__all__ = ["TickReport", "judge", "probe", "promote", "reconcile", "roll_back", "tick"]

# Errors after which the rest of a pass cannot go on: Triton or the history is gone, or refuses shepherd.
FATAL = (TritonUnreachable, TritonAccessDenied, StoreError)
T = TypeVar("T")
R = TypeVar("R")


# -- one pass -------------------------------------------------------------------------------------
def tick(rt: Runtime) -> TickReport:
    """One full cycle: reconcile, probe, judge (what `shepherd tick` runs).

    The history is read once when the pass has nothing to do: probe and judge reuse the snapshot
    reconcile read as long as no step before them acted (an action may have changed the history).
    """
    report = TickReport()
    world = reconcile_world(rt, report)
    unchanged = world.store if world is not None and not report.actions else None
    probe(rt, report, store=unchanged)
    judge(rt, report, store=unchanged if not report.actions else None)
    return report


def reconcile(rt: Runtime, report: TickReport | None = None) -> TickReport:
    """Discover versions, make Triton serve what the history says, and move each model's candidate one step.

    A model whose files or history are broken is reported and skipped; the others go on.
    """
    report = report or TickReport()
    reconcile_world(rt, report)
    return report


def reconcile_world(rt: Runtime, report: TickReport) -> World | None:
    """`reconcile`, returning the world read at the start of the pass (None when none could be read)."""
    with rt.lock:
        try:
            world = read_world(rt)
        except ShepherdError as exc:  # no Triton, no history, no fleet or no repository: nothing to reconcile
            report.fail(exc)
            return None
        try:
            record_fleet_health(rt, report, world)
        except StoreError as exc:
            report.fail(exc)
            return None
        sweep_preflight_aliases(rt, report, world)
        # Models are independent: what is done to one changes no row or index entry of another,
        # so each starts from the world read at the start of the pass.
        for_each(report, world.catalogue.kinds, lambda model: reconcile_model(rt, report, world, model))
        serving_manifest.record(rt.repo.root, report, world)  # what the replicas' readiness checks demand
    return world


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


# -- the fleet ------------------------------------------------------------------------------------
def record_fleet_health(rt: Runtime, report: TickReport, world: World) -> None:
    """Report every unreachable replica; write a replica's health to the history when it changed."""
    changes = []
    for view in world.replicas:
        if view.error is not None:
            report.fail(view.error)
        known = world.store.replicas.get(view.name)
        if known is None or known.reachable != view.reachable or known.grpc != view.replica.grpc:
            changes.append(
                (view.name, view.replica.grpc, view.replica.metrics, view.reachable, str(view.error or "") or None)
            )
            if known is not None:
                report.add("replica " + ("back" if view.reachable else "down"), view.name, None)
    present = {v.name for v in world.replicas}
    for name, known in world.store.replicas.items():
        if name not in present and known.reachable:  # it left the fleet (a DNS record gone, a list edited)
            changes.append((name, known.grpc, known.metrics, False, "no longer in the fleet"))
            report.add("replica gone", name, None)
    rt.store.fleet.record_health(changes)


def parallel(items: Sequence[T], step: Callable[[T], R]) -> list[R]:
    """`step` over `items` at once (one thread each, at most 8): replicas are converged side by side."""
    if len(items) <= 1:
        return [step(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(step, items))


def fleet_now(rt: Runtime) -> tuple[ReplicaView, ...]:
    """The fleet's replicas with a fresh index each (after a state change)."""
    return read_indexes(rt, rt.settings.fleet.resolve())


# -- serving --------------------------------------------------------------------------------------
def serve_model(rt: Runtime, report: TickReport, world: World, model: str) -> World:
    """Converge every reachable replica to the model's desired versions there; a candidate a replica
    cannot load is failed (it fails only that step: stable keeps serving everywhere), then retried."""
    for _ in range(len(world.store.versions_of(model)) + 1):
        served = converge_fleet(rt, report, world.store, world.reachable, model, wait=True)
        refused = [s for s in served if s.refused is not None]
        if not refused:
            return refreshed(rt, world) if any(s.changed for s in served) else world
        culprit = next((c for c in (failed_candidate(world.store, model, s) for s in refused) if c is not None), None)
        if culprit is None:
            for s in refused:
                report.fail(s.refused)  # type: ignore[arg-type]
            return world
        fail(rt, report, model, culprit, refused[0].refused)  # type: ignore[arg-type]
        world = refreshed(rt, world)
    return world


def converge_fleet(
    rt: Runtime,
    report: TickReport,
    store: StoreSnapshot,
    views: Sequence[ReplicaView],
    model: str,
    *,
    wait: bool,
    reload: Iterable[str] = (),
) -> list[serving.Served]:
    """Converge `model` on every replica in `views` at once; those named in `reload` load stable afresh."""
    fresh = set(reload)
    now = rt.now()

    def one(view: ReplicaView) -> serving.Served:
        try:
            return converge(rt, report, store, view, model, wait=wait, reload=view.name in fresh)
        except TritonUnreachable as exc:  # it went away mid-pass: reported; the others go on
            report.fail(exc)
            return serving.Served(model, frozenset(), frozenset())

    def settled(view: ReplicaView) -> bool:
        wanted = desired_versions(store, model, rt.settings, now, view.name)
        return view.name not in fresh and wanted == view.ready(model)

    # An idle pass starts no thread: only replicas with something to load or unload are converged.
    calm = [v for v in views if settled(v)]
    busy = [v for v in views if not settled(v)]
    outcomes = {v.name: serving.Served(model, frozenset(v.ready(model)), frozenset(v.ready(model))) for v in calm}
    outcomes.update(zip((v.name for v in busy), parallel(busy, one), strict=True))
    return [outcomes[v.name] for v in views]


def converge(
    rt: Runtime,
    report: TickReport,
    store: StoreSnapshot,
    view: ReplicaView,
    model: str,
    *,
    wait: bool,
    reload: bool = False,
) -> serving.Served:
    """One converge of `model` on one replica to what `store` wants there, reported."""
    policy = rt.settings.policy_for(model)
    served = serving.converge(
        rt.admin_for(view.replica),
        model,
        desired_versions(store, model, rt.settings, rt.now(), view.name),
        live=view.ready(model),
        config=lambda: rt.repo.read_config(model),
        wait_s=policy.unload_wait_seconds if wait else None,
        reload=reload,
    )
    if served.changed:
        action = (
            "reloaded" if reload and served.wanted == served.before else ("loaded" if served.wanted else "unloaded")
        )
        report.add(
            action,
            model,
            None,
            replica=view.name,
            versions=sorted(served.wanted or served.before),
            seconds=round(served.seconds, 3),
        )
    if served.lingering:
        report.fail(
            TritonError(
                f"{model} versions {sorted(served.lingering)} still loaded on replica {view.name} "
                f"{policy.unload_wait_seconds:g} s after their unload"
            )
        )
    return served


def serve_now(
    rt: Runtime, report: TickReport, model: str, *, wait: bool = True, reload: Iterable[str] = ()
) -> list[serving.Served]:
    """Converge `model` on every replica, on a fresh read of the history and of each replica's index."""
    views = [v for v in fleet_now(rt) if v.reachable]
    return converge_fleet(rt, report, rt.store.read.snapshot(), views, model, wait=wait, reload=reload)


def serve_or_fail(
    rt: Runtime, report: TickReport, model: str, *, wait: bool = True, reload: Iterable[str] = ()
) -> list[serving.Served]:
    """`serve_now`, and a candidate some replica refused to load is failed at once (stable keeps
    serving everywhere, the next converge unloads it wherever it did load)."""
    served = serve_now(rt, report, model, wait=wait, reload=reload)
    refused = [s for s in served if s.refused is not None]
    if not refused:
        return served
    store = rt.store.read.snapshot()
    culprit = next((c for c in (failed_candidate(store, model, s) for s in refused) if c is not None), None)
    record = store.get(model, culprit) if culprit is not None else None
    if record is None or record.state != State.canary:
        for s in refused:
            report.fail(s.refused)  # type: ignore[arg-type]
        return served
    fail(rt, report, model, record.version, refused[0].refused)  # type: ignore[arg-type]
    return serve_now(rt, report, model)


def failed_candidate(store: StoreSnapshot, model: str, served: serving.Served) -> int | None:
    """The version to blame for a refused load: one Triton marks UNAVAILABLE, else the newest non-stable one."""
    stable = store.stable(model)
    suspects = sorted(v for v in served.wanted if stable is None or v != stable.version)
    marked = [v for v in suspects if v in served.unavailable]
    if marked:
        return marked[0]
    return suspects[-1] if suspects else None


def load_support_models(rt: Runtime, report: TickReport, world: World, model: str) -> None:
    """Load the tokenizer and ensemble of a text model on each replica where the model itself serves."""
    names = [name for name in world.catalogue.support if name.startswith(f"{model}_")]
    if not names:
        return
    for view in world.reachable:
        if not view.ready(model):
            continue
        for outcome in serving.load_support(rt.admin_for(view.replica), names, list(view.index or ())):
            if isinstance(outcome, TritonLoadFailed):
                report.fail(outcome)
            else:
                report.add("loaded", outcome, None, role="support", replica=view.name)


def sweep_preflight_aliases(rt: Runtime, report: TickReport, world: World) -> None:
    """Unload preflight aliases left by a crash whose model has no version in preflight any more."""
    for view in world.reachable:
        for entry in view.live_aliases():
            model = entry.model.removesuffix(PREFLIGHT_SUFFIX)
            if world.store.versions_of(model, State.preflight):
                continue  # its preflight runs again in this pass and cleans up after itself
            try:
                rt.admin_for(view.replica).unload(entry.model)
                rt.repo.unlink_preflight(model)
            except ShepherdError as exc:
                report.fail(exc)
                continue
            report.add("unloaded", entry.model, entry.version, role="stale preflight alias", replica=view.name)


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
            run_preflight(rt, report, world, record, stable)
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
    if stable is not None:
        # Stable's live window before the cut-over starts now (bluegreen compares the candidate with it).
        for error in live_metrics(rt).mark(model, [v.replica for v in world.reachable]):
            report.fail(error)
    run_preflight(rt, report, world, candidate, stable)
    return True


def live_metrics(rt: Runtime) -> LiveMetrics:
    return make_live_metrics(rt.settings.metrics, rt.store, timeout_s=rt.settings.defaults.metrics_timeout_seconds)


def run_preflight(
    rt: Runtime, report: TickReport, world: World, record: VersionRecord, stable: VersionRecord | None
) -> None:
    """Probe the candidate alone under its preflight alias on one replica (no client traffic), decide, act.

    `world.reachable[-1]`: canary and baseline roles go to the first replicas in fleet order, so
    the alias's extra load never sits on a replica about to be judged.
    """
    model, version = record.model, record.version
    policy = rt.settings.policy_for(model)
    golden, unprobed = preflight_inputs(rt, record)
    if golden is not None:
        replica = world.reachable[-1].replica
        try:
            with preflight_alias(rt, report, record, replica) as alias:
                observe.observe_preflight(rt, alias=alias, record=record, golden=golden, policy=policy, replica=replica)
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
        start_canary(rt, report, world, record, stable, verdict)
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
def preflight_alias(rt: Runtime, report: TickReport, record: VersionRecord, replica: Replica) -> Iterator[str]:
    """Serve `record` as `<model>__preflight` on `replica` while the block runs; the alias is removed after.

    A load Triton refuses raises TritonLoadFailed out of the `with`, and a broken config.pbtxt its
    BrokenConfig, both after the clean-up: no alias folder or alias model is left behind.
    """
    alias = rt.repo.preflight_name(record.model)
    admin = rt.admin_for(replica)
    attempted = False
    try:
        rt.repo.link_preflight(record.model, record.version)
        config = rt.repo.preflight_config(record.model)
        attempted = True
        admin.load_versions(alias, config, [record.version])
        yield alias
    finally:
        if attempted:
            try:
                admin.unload(alias)
            except TritonError as exc:
                report.fail(exc)
        rt.repo.unlink_preflight(record.model)


# -- strategies (control_plane/strategies.py plans each step) ----------------------------------
def start_canary(
    rt: Runtime, report: TickReport, world: World, record: VersionRecord, stable: VersionRecord, verdict: Verdict
) -> None:
    """Enter canary, open its rollout and record its first step, then put the replicas in their roles.

    Canary: the candidate loads on the canary replicas while the baseline replicas reload stable,
    at the same moment. Bluegreen: stable's live window since the preflight began and a probe of it
    under all traffic are stored as step 0; then the cut-over (step 1) loads the candidate everywhere.
    """
    model = record.model
    policy = rt.settings.policy_for(model)
    plan = strategies.first_step(policy, [v.name for v in world.reachable])
    current = rt.store.read.get_version(model, record.version)
    preflight_started = current.state_changed_at if current is not None else record.state_changed_at

    def open_rollout() -> dict[str, Any]:
        rollout = rt.store.lifecycle.start_rollout(model, record.version, stable.version)
        step = add_step(rt, report, record, rollout, 0, plan)
        if plan.strategy == "bluegreen":
            cut_over(rt, report, record, stable, rollout, step, since=preflight_started)
        else:
            serve_or_fail(rt, report, model, reload=step.replicas("baseline"))
        return {"rollout": rollout}

    enter(rt, report, model, record.version, State.canary, verdict=verdict, then=open_rollout)


def cut_over(
    rt: Runtime,
    report: TickReport,
    record: VersionRecord,
    stable: VersionRecord,
    rollout: int,
    step: RolloutStepRecord,
    *,
    since: datetime,
) -> None:
    """Blue-green: store stable's pre-cut-over window (step 0), record step 1 and load the candidate everywhere."""
    model = record.model
    golden = golden_sets.golden_for(rt.repo, model, record.version)
    views = {v.name: v.replica for v in fleet_now(rt) if v.reachable}
    # Stable served alone before the preflight too: a window shorter than Prometheus can read
    # reaches back to min_window_seconds, still all before the cut-over.
    since = min(since, rt.now() - timedelta(seconds=rt.settings.metrics.min_window_s))
    if golden is not None:
        observed = observe.observe_baseline(
            rt,
            stable=stable,
            rollout_id=rollout,
            step=step,
            golden=golden,
            policy=rt.settings.policy_for(model),
            replicas=views,
            live=live_metrics(rt),
            since=since,
        )
        for error in observed.errors:
            report.fail(error)
    add_step(rt, report, record, rollout, 1, strategies.cut_over(list(views)))
    serve_or_fail(rt, report, model, wait=False)


def add_step(
    rt: Runtime, report: TickReport, record: VersionRecord, rollout: int, number: int, plan: strategies.StepPlan
) -> RolloutStepRecord:
    """Record a step's plan (every replica's role) in the history, and report it."""
    step = rt.store.fleet.add_step(
        rollout, number, strategy=plan.strategy, share=plan.share, roles=plan.roles, reason=plan.reason
    )
    report.add(
        "step",
        record.model,
        record.version,
        step=number,
        strategy=plan.strategy,
        share=round(plan.share, 3),
        roles=plan.roles,
    )
    return step


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
def probe(rt: Runtime, report: TickReport | None = None, *, store: StoreSnapshot | None = None) -> TickReport:
    """Probe every canary: its candidate and stable sides, over the same seconds (after making sure both serve).

    `store`: a snapshot of the history still current (read now when None)."""
    report = report or TickReport()
    with rt.lock:
        for_each(report, _canaries(rt, report, store=store), lambda canary: probe_canary(rt, report, *canary))
    return report


def probe_canary(
    rt: Runtime,
    report: TickReport,
    candidate: VersionRecord,
    stable: VersionRecord,
    rollout: RolloutRecord,
    step: RolloutStepRecord,
) -> None:
    """Make sure every replica serves its role's versions, then observe both sides with the same golden inputs."""
    serve_or_fail(rt, report, candidate.model)
    if (
        record := rt.store.read.get_version(candidate.model, candidate.version)
    ) is None or record.state != State.canary:
        return  # a replica refused it: failed
    golden = golden_sets.golden_for(rt.repo, candidate.model, candidate.version)
    if golden is None:
        return  # preflight rejects a version without a golden set; the canary waits, then times out
    if step.strategy == "bluegreen" and step.share < 1:
        return  # a cut-over that did not finish: judge_canary finishes it
    replicas = {v.name: v.replica for v in fleet_now(rt) if v.reachable}
    observed = observe.observe_step(
        rt,
        candidate=candidate,
        stable=stable,
        rollout_id=rollout.id,
        step=step,
        golden=golden,
        policy=rt.settings.policy_for(candidate.model),
        replicas=replicas,
        live=live_metrics(rt),
    )
    for error in observed.errors:
        report.fail(error)
    report.add(
        "probed",
        candidate.model,
        candidate.version,
        stable=stable.version,
        step=step.step,
        agreement=observed.agreement,
    )


def judge(
    rt: Runtime, report: TickReport | None = None, *, model: str | None = None, store: StoreSnapshot | None = None
) -> TickReport:
    """Judge every canary (of `model`, or of all models) on the evidence of its current step.

    `store`: a snapshot of the history still current (read now when None)."""
    report = report or TickReport()
    with rt.lock:
        canaries = _canaries(rt, report, model=model, store=store)
        for_each(report, canaries, lambda canary: judge_canary(rt, report, *canary))
    return report


def judge_canary(
    rt: Runtime,
    report: TickReport,
    candidate: VersionRecord,
    stable: VersionRecord,
    rollout: RolloutRecord,
    step: RolloutStepRecord,
) -> Verdict | None:
    """Decide on the canary's current step from every window of it, and act.

    A passing step that is not the last widens the canary (the next step's roles are recorded and
    served); the last one promotes (every replica). A failing step rolls back every canary replica
    at once. The bake time counts from the step's start, the time limit from the rollout's.
    """
    model, version = candidate.model, candidate.version
    if step.strategy == "bluegreen" and step.share < 1:
        cut_over(rt, report, candidate, stable, rollout.id, step, since=step.started_at)
        return None
    now = rt.now()
    policy = rt.settings.policy_for(model)
    cand_ev, stable_ev = observe.canary_evidence(rt, model, version, stable.version, rollout.id, step)
    verdict = decide_canary(
        cand_ev,
        stable_ev,
        replace(policy, max_canary_seconds=_remaining_limit(policy, rollout, step)),
        baked_seconds=(now - step.started_at).total_seconds(),
        now=now,
    )
    if verdict.outcome == ROLLBACK:
        roll_back(rt, report, model, version, verdict=verdict)
    elif (
        verdict.outcome == PROMOTE
        and step.strategy == "canary"
        and next_canary_step(rt, report, candidate, rollout, step, verdict)
    ):
        pass
    elif verdict.outcome == PROMOTE:
        promote(rt, report, model, version, verdict=verdict)
    else:
        record_wait(rt, report, candidate, verdict, rollout_id=rollout.id)
    return verdict


def _remaining_limit(policy: Policy, rollout: RolloutRecord, step: RolloutStepRecord) -> float | None:
    """The rollout's time limit as seen from the step's start (the judge counts from the step)."""
    if policy.max_canary_seconds is None:
        return None
    spent = (step.started_at - rollout.started_at).total_seconds()
    return max(policy.bake_seconds, policy.max_canary_seconds - max(0.0, spent))


def next_canary_step(
    rt: Runtime,
    report: TickReport,
    candidate: VersionRecord,
    rollout: RolloutRecord,
    step: RolloutStepRecord,
    verdict: Verdict,
) -> bool:
    """Widen a passing canary to its next step; False when this was the last step (promote)."""
    names = [v.name for v in fleet_now(rt) if v.reachable]
    policy = rt.settings.policy_for(candidate.model)
    index = strategies.next_size(policy, len(names), len(step.replicas("canary")))
    if index is None:
        return False  # the last step passed: promote
    if len(names) < 3:  # more steps were planned, but the fleet cannot hold them now: evidence is missing
        verdict = Verdict(
            WAIT,
            f"step {step.step + 1} passed, but {len(names)} reachable replica(s) cannot hold the next step",
            verdict.checks,
        )
        record_wait(rt, report, candidate, verdict, rollout_id=rollout.id)
        return True
    plan = strategies.canary_step(policy, names, index)
    new = add_step(rt, report, candidate, rollout.id, step.step + 1, plan)
    record_wait(
        rt,
        report,
        candidate,
        Verdict(WAIT, f"step {step.step + 1} passed, widening: {verdict.reason}", verdict.checks),
        rollout_id=rollout.id,
    )
    serve_or_fail(rt, report, candidate.model, reload=new.replicas("baseline"))
    return True


def _canaries(
    rt: Runtime, report: TickReport, *, model: str | None = None, store: StoreSnapshot | None = None
) -> list[tuple[VersionRecord, VersionRecord, RolloutRecord, RolloutStepRecord]]:
    """Each canary of an unpinned model with its stable version, open rollout and current step, from one read.

    A canary whose rollout or first step was never recorded (a crash right after it entered
    canary, or a history from before fleets) gets them now.
    """
    if store is None:
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
        step = store.step(rollout.id) if rollout is not None else None
        if rollout is None or step is None:
            rollout_id = rt.store.lifecycle.start_rollout(record.model, record.version, stable.version)
            try:
                names = [v.name for v in fleet_now(rt) if v.reachable]
            except ShepherdError as exc:  # no fleet to place it on now: the next pass tries again
                report.fail(exc)
                continue
            plan = strategies.first_step(rt.settings.policy_for(record.model), names)
            step = add_step(rt, report, record, rollout_id, 0, plan)
            rollout = rt.store.read.open_rollout(record.model, record.version)
        if rollout is not None:
            found.append((record, stable, rollout, step))
    return found


# -- the state changes ----------------------------------------------------------------------------
def promote(
    rt: Runtime, report: TickReport, model: str, version: int, *, verdict: Verdict, actor: str = SYSTEM_ACTOR
) -> None:
    """Make the version the stable one; every replica serves it for requests naming no version at once."""

    def serve() -> dict[str, float]:
        for served in serve_now(rt, report, model):
            if served.refused is not None:
                report.fail(served.refused)
        return {}

    enter(rt, report, model, version, State.promoted, verdict=verdict, actor=actor, then=serve)


def roll_back(
    rt: Runtime, report: TickReport, model: str, version: int, *, verdict: Verdict, actor: str = SYSTEM_ACTOR
) -> None:
    """Mark the version rolled back, send traffic back to stable on every replica at once, verify it is gone.

    Two moments are timed from the decision: traffic back (the loads that drop the version, on
    all replicas in parallel) and the unload verified in every replica's index.
    """
    decided = time.monotonic()
    policy = rt.settings.policy_for(model)

    def take_down() -> dict[str, float]:
        views = [v for v in fleet_now(rt) if v.reachable]
        for served in converge_fleet(rt, report, rt.store.read.snapshot(), views, model, wait=False):
            if served.refused is not None:
                report.fail(served.refused)
        timings = {"traffic_back_s": round(time.monotonic() - decided, 4)}
        gone = parallel(
            views,
            lambda v: rt.admin_for(v.replica).wait_gone(model, [version], timeout_s=policy.unload_wait_seconds),
        )
        timings["unload_verified_s"] = round(time.monotonic() - decided, 4)
        for view, ok in zip(views, gone, strict=True):
            if not ok:
                report.fail(
                    TritonError(f"{model} version {version} still in replica {view.name}'s index after rollback")
                )
        return timings

    enter(rt, report, model, version, State.rolled_back, verdict=verdict, actor=actor, then=take_down)


def fail(rt: Runtime, report: TickReport, model: str, version: int, refusal: TritonLoadFailed) -> None:
    """A replica could not load the version: it is failed, and the stable version keeps serving everywhere."""
    enter(rt, report, model, version, State.failed, verdict=Verdict(FAIL, f"Triton could not load it: {refusal}"))
