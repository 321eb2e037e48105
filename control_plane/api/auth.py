"""Who is asking: the bearer token of each request, checked against the tokens in SQL.

    @router.get("/status")
    def status(who: Viewer) -> ...                      # any live token
    @router.post(".../promote")
    def promote(who: Operator) -> ...                   # operator or admin; `who.name` is the actor

No token, a malformed, unknown or revoked one: 401 with `WWW-Authenticate: Bearer`. A live token
whose role is below the one the route needs: 403. The answer never says which of the 401 cases
it was, and no token is ever logged (only its id and owner's name, which are not secrets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control_plane.api.tokens import Tokens

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A token from `shepherd token create --name NAME --role viewer|operator|admin`.",
)


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: str


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def require(role: str) -> Callable[..., Principal]:
    """A dependency that lets through a live token of `role` or above, and says who it belongs to."""

    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        if credentials is None:
            raise unauthorized("no bearer token: send `Authorization: Bearer <token>`")
        tokens: Tokens = request.app.state.tokens
        record = tokens.verify(credentials.credentials)
        if record is None:
            raise unauthorized("the token is not valid (unknown, malformed or revoked)")
        if not record.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"this needs the {role} role; token {record.id} is {record.role}"
            )
        return Principal(token_id=record.id, name=record.name, role=record.role)

    check.__name__ = f"require_{role}"
    return check


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
