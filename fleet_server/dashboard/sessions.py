"""The dashboard's sessions: a random id in a cookie, a CSRF token for its forms, and the
person's own admin token, with which the dashboard calls the admin API (so the role and the
audit entries are the person's). The token is checked again at every request
(``ServerContext.admins.authenticate``): a revoked admin's session ends at once.

Kept in memory only: a restart logs everyone out. Bounded: at most :data:`MAX_SESSIONS`
(the oldest goes first), each for at most :data:`SESSION_S`.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from fleet_server.admins.roles import Role, required_role

__all__ = ["MAX_SESSIONS", "SESSION_S", "Person", "Sessions"]

SESSION_S = 12 * 3600
MAX_SESSIONS = 10_000
_MAX_FLASH = 2000  # characters of a message shown once on the next page


@dataclass(frozen=True)
class Person:
    """Who is logged in, as the admin API sees them at this request."""

    name: str
    role: Role
    session: str
    csrf: str
    token: str  # their admin token: never rendered, never logged

    def may(self, method: str) -> bool:
        """Whether the role can call an admin method (``CreateRollout``): the admin API's own
        table decides; the dashboard only hides what would be refused."""
        return self.role >= required_role(method)


@dataclass
class _Entry:
    csrf: str
    expires: float
    token: str
    flash: str = ""


class Sessions:
    """Thread-safe: the dashboard's request threads share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, _Entry] = {}

    def create(self, token: str, now: float | None = None) -> tuple[str, str]:
        """A new session for ``token``: its id (for the cookie) and its CSRF token."""
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = time.time() if now is None else now
        with self._lock:
            self._by_id = {k: v for k, v in self._by_id.items() if v.expires > now}
            while len(self._by_id) >= MAX_SESSIONS:  # dicts keep insertion order: oldest first
                del self._by_id[next(iter(self._by_id))]
            self._by_id[session] = _Entry(csrf, now + SESSION_S, token)
        return session, csrf

    def get(self, session: str, now: float | None = None) -> tuple[str, str] | None:
        """The session's (CSRF token, admin token) while it lasts, else None."""
        now = time.time() if now is None else now
        with self._lock:
            entry = self._by_id.get(session)
            if entry is None or entry.expires <= now:
                self._by_id.pop(session, None)
                return None
            return entry.csrf, entry.token

    def csrf(self, session: str) -> str | None:
        found = self.get(session)
        return found[0] if found else None

    def token(self, session: str) -> str:
        found = self.get(session)
        return found[1] if found else ""

    def flash(self, session: str, text: str) -> None:
        """Show ``text`` once, on the session's next page (not in the URL: a link cannot put
        words on the dashboard)."""
        with self._lock:
            entry = self._by_id.get(session)
            if entry is not None:
                entry.flash = text[:_MAX_FLASH]

    def take_flash(self, session: str) -> str:
        with self._lock:
            entry = self._by_id.get(session)
            if entry is None:
                return ""
            text, entry.flash = entry.flash, ""
            return text

    def drop(self, session: str) -> None:
        with self._lock:
            self._by_id.pop(session, None)
