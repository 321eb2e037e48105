"""Action routes (operator): promote, rollback, pin and unpin, through control_plane.manual, as the CLI.

The actor recorded in `manual_actions` and `transitions` is the token's owner, never a name sent in
the request. Each action runs under the runtime's lock, so it never interleaves with a pass of a
scheduler in the same process (`shepherd serve --run`), and it is counted on /metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, status

from control_plane import manual
from control_plane.api import metrics, queries
from control_plane.api.auth import Operator, Principal
from control_plane.api.context import ACTION_ERRORS, RuntimeDep
from control_plane.api.reads import ModelName, VersionNumber
from control_plane.api.schemas import ActionIn, ActionResult, PinIn
from control_plane.report import TickReport
from control_plane.runtime import Runtime
from shepherd_errors import ShepherdError

router = APIRouter(prefix="/api/v1/models/{model}", tags=["actions"], responses=ACTION_ERRORS)
log = logging.getLogger("shepherd.api")


def _on_disk(rt: Runtime, model: str, version: int | None = None) -> bool:
    """True when the repository has the model (and the version folder); a repository that cannot be read has none."""
    try:
        return model in rt.repo.models() and (version is None or version in rt.repo.versions(model))
    except ShepherdError:
        return False


def _need(rt: Runtime, model: str, version: int | None) -> None:
    """404 for a model, or a version, neither in the history nor in the repository."""
    if not queries.model_known(rt.store.db, model) and not _on_disk(rt, model):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no model {model!r} in the history or the repository")
    if version is not None and rt.store.read.get_version(model, version) is None and not _on_disk(rt, model, version):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{model} version {version} is not known")


def _act(
    rt: Runtime, who: Principal, model: str, version: int | None, what: str, action: Callable[[], TickReport]
) -> ActionResult:
    _need(rt, model, version)
    log.info("%s by %s (token %s)", what, who.name, who.token_id)
    report = action()
    metrics.observe_report(report)
    return ActionResult.model_validate(report.as_dict())


@router.post("/versions/{version}/promote", summary="Make a version the stable one now")
def promote(rt: RuntimeDep, who: Operator, model: ModelName, version: VersionNumber, body: ActionIn) -> ActionResult:
    return _act(
        rt,
        who,
        model,
        version,
        f"promote {model} v{version}",
        lambda: manual.manual_promote(rt, model, version, actor=who.name, reason=body.reason),
    )


@router.post("/versions/{version}/rollback", summary="Unload a version; it is never loaded again automatically")
def rollback(rt: RuntimeDep, who: Operator, model: ModelName, version: VersionNumber, body: ActionIn) -> ActionResult:
    return _act(
        rt,
        who,
        model,
        version,
        f"rollback {model} v{version}",
        lambda: manual.manual_rollback(rt, model, version, actor=who.name, reason=body.reason),
    )


@router.post("/pin", summary="Serve only one version and pause the model's rollouts")
def pin(rt: RuntimeDep, who: Operator, model: ModelName, body: PinIn) -> ActionResult:
    return _act(
        rt,
        who,
        model,
        body.version,
        f"pin {model} v{body.version}",
        lambda: manual.manual_pin(rt, model, body.version, actor=who.name, reason=body.reason),
    )


@router.post("/unpin", summary="Remove the pin; the model's rollouts resume")
def unpin(rt: RuntimeDep, who: Operator, model: ModelName, body: ActionIn) -> ActionResult:
    return _act(
        rt,
        who,
        model,
        None,
        f"unpin {model}",
        lambda: manual.manual_pin(rt, model, None, actor=who.name, reason=body.reason),
    )
