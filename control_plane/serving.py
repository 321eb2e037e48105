"""Serving: make Triton serve exactly the wanted versions of a model, and say what it could not do.

Why apart from deciding: a load that Triton refuses is a fact, not a decision. This module
loads, unloads and waits, and returns what happened (`Served`); the reconciler decides what a
refused load means (which version to mark failed) and writes it down. Nothing here reads or
writes the history, so there is no call cycle between serving and the lifecycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tritonclient.grpc.model_config_pb2 import ModelConfig

from control_plane.errors import TritonLoadFailed
from control_plane.triton_admin import IndexEntry, TritonAdmin

FRESH_PARAMETER = "shepherd_fresh"  # set on a reload so Triton loads afresh (an unchanged config is skipped)


@dataclass(frozen=True)
class Served:
    """The outcome of one `converge`: what was loaded or unloaded, how long it took, what failed."""

    model: str
    wanted: frozenset[int]
    before: frozenset[int]
    changed: bool = False
    seconds: float = 0.0
    refused: TritonLoadFailed | None = None
    unavailable: frozenset[int] = field(default_factory=frozenset)  # versions Triton marks UNAVAILABLE
    lingering: frozenset[int] = field(default_factory=frozenset)  # released but still live after the wait

    @property
    def released(self) -> frozenset[int]:
        return self.before - self.wanted


def converge(
    admin: TritonAdmin,
    model: str,
    wanted: Iterable[int],
    *,
    live: Iterable[int],
    config: Callable[[], ModelConfig],
    wait_s: float | None,
    reload: bool = False,
) -> Served:
    """Serve exactly `wanted` (nothing when empty); `live` is what the index said was READY.

    With `reload`, the load is sent even when `wanted` already serves, with a config that differs
    by one parameter (`shepherd_fresh`): Triton skips a load whose config and files are unchanged
    (seen on 2.51: same stub processes), but reloads on a changed config, loading the versions
    afresh beside the running ones and swapping them in. That is how a canary's baseline replicas
    get a stable version as fresh as the candidate (Kayenta's fresh baseline), without a gap.

    The load itself moves request routing atomically (Triton's load is all-or-nothing: a refused
    load leaves the versions loaded before serving). With `wait_s`, poll the index until released
    versions are really gone; a rollback passes None and waits itself, to time both moments.
    `config` is only read when a load is needed.
    """
    target, before = frozenset(wanted), frozenset(live)
    if target == before and not (reload and target):
        return Served(model, target, before)
    started = time.monotonic()
    if not target:
        admin.unload(model)
        return Served(model, target, before, changed=True, seconds=time.monotonic() - started)
    try:
        override = config()
        if reload:
            override.parameters[FRESH_PARAMETER].string_value = str(time.time_ns())
        admin.load_versions(model, override, target)
    except TritonLoadFailed as exc:
        unavailable = frozenset(
            e.version
            for e in admin.index()
            if e.model == model and e.version in target and e.state == "UNAVAILABLE" and e.version is not None
        )
        return Served(model, target, before, refused=exc, unavailable=unavailable)
    # Triton loads the versions of a `specific` policy that it finds and skips missing folders
    # without an error (seen on 2.51: a replica whose repository lacks the candidate "loads" it in
    # 12 ms and serves stable only). A wanted version that is not READY now was refused.
    absent = target - admin.ready_versions(model)
    if absent:
        refusal = TritonLoadFailed(
            f"{model} versions {sorted(absent)} are not READY on {admin.grpc_url} after their load "
            "(missing from that replica's model repository?)"
        )
        return Served(model, target, before, refused=refusal, unavailable=frozenset(absent))
    lingering: frozenset[int] = frozenset()
    released = before - target
    if released and wait_s is not None and not admin.wait_gone(model, released, timeout_s=wait_s):
        lingering = released & admin.live_versions(model)
    return Served(model, target, before, changed=True, seconds=time.monotonic() - started, lingering=lingering)


def load_support(admin: TritonAdmin, names: Iterable[str], index: list[IndexEntry]) -> list[str | TritonLoadFailed]:
    """Plain loads of the support models (tokenizer, ensemble) not yet READY: each name loaded, or the refusal."""
    outcomes: list[str | TritonLoadFailed] = []
    for name in names:
        if admin.ready_versions(name, index):
            continue
        try:
            admin.load(name)
            outcomes.append(name)
        except TritonLoadFailed as exc:
            outcomes.append(exc)
    return outcomes
