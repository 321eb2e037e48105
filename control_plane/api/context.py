"""What a request reaches: the runtime the app was made with (settings, the history, Triton)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from control_plane.api.schemas import ErrorBody
from control_plane.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route (all with the same body)."""
    meaning = {
        400: "The body is not JSON.",
        401: "No token, or not a valid one.",
        403: "The token's role does not allow this.",
        404: "No such model, version, rollout or token.",
        409: "The version's state does not allow this move.",
        422: "A parameter or the body is not valid.",
        502: "Triton or the fleet failed the request.",
        503: "The history database cannot be reached.",
    }
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


READ_ERRORS = errors(401, 403, 404, 422, 503)
ACTION_ERRORS = errors(400, 401, 403, 404, 409, 422, 502, 503)
