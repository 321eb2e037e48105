"""Browser sessions for the console: a signed cookie made from a token pasted once on the login page.

    sessions = Sessions.from_env()                    # SHEPHERD_SESSION_SECRET, else a secret of this process
    cookie = sessions.issue(token_id=3, digest=row_digest)
    sessions.verify(cookie, digest_of=lambda token_id: ...)   # -> (token_id, expires) or None
    sessions.csrf(cookie)                              # the form field every POST of this session carries

The cookie is `<token id>.<expiry, unix seconds>.<HMAC-SHA256>`, never the token itself. Its key is
derived from a server secret AND the token's stored SHA-256, so:
- revoking the token ends every session made from it at once (its row is read on each request and a
  revoked one is refused, as for a bearer token);
- a copy of the database alone cannot forge a cookie (the server secret is not in it), and the
  secret alone cannot either (the digest is not in it);
- several `shepherd serve` replicas accept each other's cookies when they share
  SHEPHERD_SESSION_SECRET (at least 32 characters); without it each process makes its own at start,
  so a restart or another replica asks for the token again.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Path
/console, Secure when the request came over https, and lasts `LIFETIME`. Every state-changing form
also carries a CSRF token, an HMAC of the cookie, checked with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from control_plane.errors import ConfigError

COOKIE = "shepherd_session"
SECRET_ENV = "SHEPHERD_SESSION_SECRET"
LIFETIME_S = 12 * 3600
MIN_SECRET = 32
_SHAPE = re.compile(r"(\d{1,12})\.(\d{1,12})\.([0-9a-f]{64})")


@dataclass(frozen=True)
class Sessions:
    secret: bytes = field(repr=False)
    lifetime_s: int = LIFETIME_S

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Sessions:
        """The shared secret of SHEPHERD_SESSION_SECRET, or a random one for this process only."""
        value = (env if env is not None else dict(os.environ)).get(SECRET_ENV, "")
        if not value:
            return cls(secrets.token_bytes(32))
        if len(value) < MIN_SECRET:
            raise ConfigError(f"{SECRET_ENV}: at least {MIN_SECRET} characters (e.g. `openssl rand -hex 32`)")
        return cls(value.encode("utf-8"))

    def _key(self, digest: str) -> bytes:
        return hmac.new(self.secret, b"session:" + digest.encode("ascii"), hashlib.sha256).digest()

    def _sign(self, token_id: int, expires: int, digest: str) -> str:
        return hmac.new(self._key(digest), f"{token_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def issue(self, *, token_id: int, digest: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.lifetime_s)
        return f"{token_id}.{expires}.{self._sign(token_id, expires, digest)}"

    def verify(self, cookie: str, *, digest_of: Callable[[int], str | None], now: float | None = None) -> int | None:
        """The token id of a well-formed, unexpired, correctly signed cookie whose token is live; else None.

        `digest_of(token_id)` returns the stored SHA-256 of a live token, None for an unknown or revoked one.
        """
        found = _SHAPE.fullmatch(cookie or "")
        if found is None:
            return None
        token_id, expires, signature = int(found.group(1)), int(found.group(2)), found.group(3)
        if expires < (time.time() if now is None else now):
            return None
        digest = digest_of(token_id)
        if digest is None:
            return None
        return token_id if hmac.compare_digest(signature, self._sign(token_id, expires, digest)) else None

    def csrf(self, cookie: str) -> str:
        """The anti-forgery value of a session: bound to its cookie, so it dies with it."""
        return hmac.new(self.secret, b"csrf:" + cookie.encode("ascii", "replace"), hashlib.sha256).hexdigest()

    def csrf_ok(self, cookie: str, given: str) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(cookie), given)
