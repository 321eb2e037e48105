"""`shepherd promote|rollback|pin ... --server URL`: the manual actions through a running `shepherd serve`.

    report = remote_action("https://shepherd.example", "promote", "intent", 7, reason="hotfix")

The token comes from SHEPHERD_TOKEN (never from the command line, where `ps` would show it). The
answer is the same TickReport a local action returns, so the CLI prints it the same way and exits
with the same codes: an error the server met while acting keeps its type and exit code; a refused
token is ApiAccessDenied (71); no answer, or one that is not shepherd's, is ApiError (70).
"""

from __future__ import annotations

import functools
import os
from typing import Any
from urllib.parse import quote

import httpx

from control_plane.errors import ApiAccessDenied, ApiError, ConfigError
from control_plane.report import TickReport
from shepherd_errors import ShepherdError

TOKEN_ENV = "SHEPHERD_TOKEN"
TIMEOUT_S = 120.0  # a promotion waits for Triton's loads: minutes at worst, never forever
ACTIONS = ("promote", "rollback", "pin", "unpin")


class RemoteError(ApiError):
    """An error the server met while acting; `remote_error` gives it the server's type name and exit code."""


@functools.cache
def _remote_class(name: str, exit_code: int) -> type[RemoteError]:
    return type(name, (RemoteError,), {"exit_code": exit_code, "__module__": __name__})


def remote_error(name: str, message: str, exit_code: int) -> ShepherdError:
    """The server's error as one here, with its type name and exit code (for `--json` and `$?`)."""
    safe = name if name.isidentifier() else "RemoteError"
    return _remote_class(safe, int(exit_code))(message)


def _path(action: str, model: str, version: int | None) -> tuple[str, dict[str, Any]]:
    name = quote(model, safe="")
    if action in ("promote", "rollback"):
        return f"/api/v1/models/{name}/versions/{version}/{action}", {}
    if action == "pin":
        return f"/api/v1/models/{name}/pin", {"version": version}
    return f"/api/v1/models/{name}/unpin", {}


def _refused(response: httpx.Response) -> ShepherdError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (401, 403):
        detail = body.get("detail") if isinstance(body, dict) else response.reason_phrase
        return ApiAccessDenied(f"{response.request.url.host}: the token was refused ({response.status_code}): {detail}")
    if isinstance(body, dict) and {"detail", "error", "exit_code"} <= body.keys():
        return remote_error(str(body["error"]), str(body["detail"]), int(body["exit_code"]))
    return ApiError(f"{response.request.url}: unexpected answer {response.status_code}: {response.text[:200]!r}")


def remote_action(
    server: str,
    action: str,
    model: str,
    version: int | None,
    *,
    reason: str,
    token: str | None = None,
    timeout_s: float = TIMEOUT_S,
) -> TickReport:
    """Ask the API at `server` to do `action`; returns what it did as a TickReport."""
    if action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"--server {server!r}: give the API's URL, e.g. http://127.0.0.1:8080")
    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        raise ApiAccessDenied(f"no API token: set {TOKEN_ENV} to a token from `shepherd token create`")
    path, body = _path(action, model, version)
    url = server.rstrip("/") + path
    try:
        response = httpx.post(
            url, json={**body, "reason": reason}, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:  # the message names the URL, never the headers
        raise ApiError(f"cannot reach the shepherd API at {server}: {exc}") from exc
    if not response.is_success:
        raise _refused(response)
    try:
        answer = response.json()
        report = TickReport(actions=[dict(a) for a in answer["actions"]])
        for error in answer["errors"]:
            report.errors.append(remote_error(str(error["type"]), str(error["message"]), int(error["exit_code"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiError(f"{url}: an answer that is not shepherd's: {response.text[:200]!r}") from exc
    return report
