"""Token management over the API (admin): list, create and revoke tokens.

The first admin token comes from `shepherd token create --role admin` on a host that reaches the
database; after that, tokens can be managed here. A created token is in the answer once and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from control_plane.api.auth import Admin
from control_plane.api.context import errors
from control_plane.api.schemas import TokenCreated, TokenIn, TokenOut
from control_plane.api.tokens import Tokens

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], responses=errors(400, 401, 403, 404, 422, 503))
log = logging.getLogger("shepherd.api")
TokenId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _tokens(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


@router.get("", summary="Every token (the tokens themselves are not kept)")
def list_tokens(request: Request, who: Admin) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in _tokens(request).list()]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a token; the answer holds it, once")
def create_token(request: Request, who: Admin, body: TokenIn) -> TokenCreated:
    made = _tokens(request).create(name=body.name, role=body.role, created_by=who.name)
    log.info("API token %s (%s, %s) created by %s", made.record.id, made.record.name, made.record.role, who.name)
    return TokenCreated.model_validate({**TokenOut.model_validate(made.record).model_dump(), "token": made.token})


@router.delete("/{token_id}", summary="Revoke a token (it stays listed, with the time it was revoked)")
def revoke_token(request: Request, who: Admin, token_id: TokenId) -> TokenOut:
    record = _tokens(request).revoke(token_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no API token {token_id}")
    log.info("API token %s (%s) revoked by %s", record.id, record.name, who.name)
    return TokenOut.model_validate(record)
