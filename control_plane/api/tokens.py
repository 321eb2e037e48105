"""The API's bearer tokens in SQL: each is made once, shown once, and kept only as its SHA-256.

    tokens = Tokens(store.db)
    made = tokens.create(name="alice", role="operator", created_by="cli:root")
    print(made.token)                       # the only time the token exists outside its holder
    tokens.verify(made.token)               # -> TokenRecord(name="alice", role="operator", ...)
    tokens.revoke(made.record.id)

Why SHA-256 and not a password hash (bcrypt, argon2): a slow hash protects secrets a person chose
against offline guessing; a token here is 32 random bytes (256 bits), which nobody can guess, so a
fast hash loses nothing and keeps each request cheap. The stored digest is found by an indexed
lookup and then compared with `hmac.compare_digest`. A revoked token stays as a row, so the audit
trail keeps who held the name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from control_plane.errors import ConfigError
from control_plane.store.database import Database
from control_plane.store.lifecycle import SYSTEM_ACTOR
from control_plane.store.models import API_ROLES, ApiTokenRow

PREFIX = "shp_"  # lets secret scanners and the log masking recognise a shepherd token
ROLES = API_ROLES  # viewer < operator < admin
RANK = {role: rank for rank, role in enumerate(ROLES)}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
TOKEN = re.compile(r"shp_[A-Za-z0-9_-]{43}")
USED_EVERY = timedelta(seconds=60)  # last_used_at is written at most once a minute per token


@dataclass(frozen=True)
class TokenRecord:
    id: int
    name: str
    role: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiTokenRow) -> TokenRecord:
        return cls(
            id=row.id,
            name=row.name,
            role=row.role,
            created_at=row.created_at,
            created_by=row.created_by,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )

    def allows(self, role: str) -> bool:
        """True when this token's role is `role` or above it."""
        return RANK[self.role] >= RANK[role]


@dataclass(frozen=True)
class NewToken:
    record: TokenRecord
    token: str = field(repr=False)  # a secret: never in a repr, a log line or the history


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """A token's owner: what the audit trail records as the actor of every action made with it."""
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"token name {name!r}: 1 to 100 letters, digits or . _ @ + - (a person or a system, e.g. alice, ci-deploy)"
        )
    if name == SYSTEM_ACTOR:
        raise ConfigError(f"token name {name!r} is the control plane's own actor name; choose another")
    return name


def check_role(role: str) -> str:
    if role not in RANK:
        raise ConfigError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


class Tokens:
    """Create, list, revoke and verify API tokens; each method is one short transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, *, name: str, role: str, created_by: str) -> NewToken:
        check_name(name)
        check_role(role)
        token = PREFIX + secrets.token_urlsafe(32)
        with self.db.tx(f"create an API token for {name}") as session:
            row = ApiTokenRow(
                name=name, role=role, token_sha256=digest(token), created_at=self.db.now(), created_by=created_by
            )
            session.add(row)
            session.flush()
            return NewToken(TokenRecord.from_row(row), token)

    def list(self, *, revoked: bool = True) -> list[TokenRecord]:
        """Every token (without revoked ones when `revoked` is False), oldest first."""
        query = select(ApiTokenRow).order_by(ApiTokenRow.id)
        if not revoked:
            query = query.where(ApiTokenRow.revoked_at.is_(None))
        with self.db.tx("list API tokens") as session:
            return [TokenRecord.from_row(row) for row in session.scalars(query)]

    def get(self, token_id: int) -> TokenRecord | None:
        with self.db.tx(f"read API token {token_id}") as session:
            row = session.get(ApiTokenRow, token_id)
            return TokenRecord.from_row(row) if row is not None else None

    def revoke(self, token_id: int) -> TokenRecord | None:
        """Revoke the token (revoking it again changes nothing); None when there is no such token."""
        with self.db.tx(f"revoke API token {token_id}") as session:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = self.db.now()
            return TokenRecord.from_row(row)

    def verify(self, token: str) -> TokenRecord | None:
        """The live token's record, or None for anything else (malformed, unknown, revoked)."""
        if not TOKEN.fullmatch(token):
            return None
        wanted = digest(token)
        with self.db.tx("check an API token") as session:
            row = session.scalars(select(ApiTokenRow).where(ApiTokenRow.token_sha256 == wanted)).one_or_none()
            if row is None or not hmac.compare_digest(row.token_sha256, wanted) or row.revoked_at is not None:
                return None
            now = self.db.now()
            if row.last_used_at is None or now - row.last_used_at >= USED_EVERY:
                row.last_used_at = now
            return TokenRecord.from_row(row)
