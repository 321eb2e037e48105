"""Who is looking at a console page: a session cookie (made on the login page) or a bearer token.

    who = principal(request)             # Principal(token_id, name, role) or None
    who.role in ("operator", "admin")    # may see and use the promote / rollback buttons

Pages need the viewer role (any live token); actions the operator role. A revoked token's sessions
end on their next request, as its bearer use does.
"""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request

from control_plane.api.auth import Principal
from control_plane.api.tokens import RANK, Tokens
from control_plane.console.session import COOKIE, Sessions
from control_plane.store.database import Database
from control_plane.store.models import ApiTokenRow


def live_token(db: Database, token_id: int) -> ApiTokenRow | None:
    """The token's row when it exists and is not revoked (detached: read its columns only)."""
    with db.tx(f"read API token {token_id}") as session:
        row = session.scalars(select(ApiTokenRow).where(ApiTokenRow.id == token_id)).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        session.expunge(row)
        return row


def principal(request: Request) -> Principal | None:
    """The owner of the request's bearer token or session cookie; None when neither is valid."""
    tokens: Tokens = request.app.state.tokens
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        record = tokens.verify(header[7:].strip())
        return Principal(record.id, record.name, record.role) if record is not None else None
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    sessions: Sessions = request.app.state.console_sessions
    rows: dict[int, ApiTokenRow] = {}

    def digest_of(token_id: int) -> str | None:
        row = live_token(tokens.db, token_id)
        if row is not None:
            rows[token_id] = row
        return row.token_sha256 if row is not None else None

    token_id = sessions.verify(cookie, digest_of=digest_of)
    if token_id is None:
        return None
    row = rows[token_id]
    return Principal(row.id, row.name, row.role)


def may(who: Principal | None, role: str) -> bool:
    return who is not None and RANK[who.role] >= RANK[role]
