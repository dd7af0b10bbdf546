"""Named admins and their tokens.

A token is shown once, at creation or rotation, and stored as its SHA-256 (a token is 32 random
bytes: a fast hash is enough, no password stretching). Each name holds one token at a time;
revoking a name ends it at once on this server and within :data:`CACHE_S` on every replica.

The bootstrap token (``DATA_DIR/admin.token``, made by ``init``) is for first setup: it works
while no named admin with the admin role exists, and once one does only while an operator on
the server host has re-enabled it (``edgefleet-server bootstrap-token --enable-for``), which
writes an expiry into the database that only a process with the database's credentials can.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from fleet_server.admins.roles import Role
from fleet_server.datadir import new_token
from fleet_server.errors import AlreadyExistsError, BadRequestError, ConflictError, NotFoundError
from fleet_server.storage.db import Database, hold_writes
from fleet_server.storage.schema import admins, settings

__all__ = [
    "BOOTSTRAP",
    "CACHE_S",
    "CERT_CN_PREFIX",
    "AdminRow",
    "AdminStore",
    "Identity",
    "check_name",
]

CACHE_S = 5.0  # how long a token's identity is trusted without asking the database again
BOOTSTRAP = "bootstrap-token"  # the bootstrap token's name in the audit log
TOKEN_PREFIX = "efa_"  # noqa: S105 - not a secret: what a named admin's token starts with
_BOOTSTRAP_KEY = "bootstrap_admin"  # settings: {"until": unix time it is re-enabled until}
_NAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,63}")
_USED_EVERY_S = 60  # last_used is written at most once a minute per admin
# An admin's client certificate names "edgefleet-admin:NAME": the colon keeps it apart from
# every device id, so no device certificate can stand for an admin (nor an admin's for a device).
CERT_CN_PREFIX = "edgefleet-admin:"


def check_name(name: str) -> str:
    """An admin's name: lowercase letters, digits and ``. _ @ + -`` (an email address fits),
    at most 64 characters, not :data:`BOOTSTRAP`.

    Raises:
        BadRequestError: anything else.
    """
    if not _NAME.fullmatch(name):
        raise BadRequestError(
            f"admin name {name[:80]!r} is not valid: lowercase letters, digits and . _ @ + -, "
            "starting with a letter or digit, at most 64 characters"
        )
    if name == BOOTSTRAP:
        # The audit log names the bootstrap token so: an admin of that name could act as
        # "the bootstrap token" there, and what it did be blamed on first setup.
        raise BadRequestError(f"admin name {name!r} is the bootstrap token's; choose another")
    return name


@dataclass(frozen=True)
class Identity:
    """Who is calling: a named admin, or the bootstrap token."""

    name: str
    role: Role
    bootstrap: bool = False


@dataclass(frozen=True)
class AdminRow:
    name: str
    role: Role
    created_at: int
    created_by: str
    revoked_at: int | None
    last_used_at: int | None
    cert_serial: str | None = None
    cert_not_after: int | None = None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminStore:
    def __init__(self, db: Database, bootstrap_token: str = "") -> None:
        self._engine = db.engine
        self._bootstrap = bootstrap_token
        self._lock = threading.Lock()
        # token digest -> (identity or None, when looked up); bounded by the admins that exist
        # and the wrong tokens tried (those are dropped first when it grows).
        self._cache: dict[str, tuple[Identity | None, float]] = {}
        self._used: dict[str, float] = {}
        self._bootstrap_state: tuple[bool, float] = (False, 0.0)

    # authentication ----------------------------------------------------------------------

    def authenticate(self, token: str, now: float | None = None) -> Identity | None:
        """The identity a bearer token stands for, or None."""
        if not token:
            return None
        now = time.time() if now is None else now
        if self._bootstrap and hmac.compare_digest(token.encode(), self._bootstrap.encode()):
            return (
                Identity(BOOTSTRAP, Role.ADMIN, bootstrap=True)
                if self.bootstrap_allowed(now)
                else None
            )
        digest = _digest(token)
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < CACHE_S:
            identity = cached[0]
        else:
            with self._engine.connect() as conn:
                row = conn.execute(
                    sa.select(admins.c.name, admins.c.role).where(
                        (admins.c.token_sha256 == digest) & admins.c.revoked_at.is_(None)
                    )
                ).first()
            identity = Identity(str(row[0]), Role(int(row[1]))) if row else None
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache = {k: v for k, v in self._cache.items() if v[0] is not None}
                self._cache[digest] = (identity, now)
        if identity is not None:
            self._note_use(identity.name, now)
        return identity

    def authenticate_certificate(
        self, common_name: str, serial: str, now: float | None = None
    ) -> Identity | None:
        """The admin a client certificate (verified by TLS against the fleet CA) stands for:
        its common name must be ``edgefleet-admin:NAME`` and its serial the one issued last to
        that active admin; anything else (a device's certificate, a replaced or a revoked
        admin's) is None."""
        if not common_name.startswith(CERT_CN_PREFIX) or not serial:
            return None
        name = common_name[len(CERT_CN_PREFIX) :]
        now = time.time() if now is None else now
        key = f"cert:{name}:{serial}"
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[1] < CACHE_S:
            identity = cached[0]
        else:
            with self._engine.connect() as conn:
                row = conn.execute(
                    sa.select(admins.c.role).where(
                        (admins.c.name == name)
                        & (admins.c.cert_serial == serial)
                        & admins.c.revoked_at.is_(None)
                    )
                ).first()
            identity = Identity(name, Role(int(row[0]))) if row else None
            with self._lock:
                self._cache[key] = (identity, now)
        if identity is not None:
            self._note_use(identity.name, now)
        return identity

    def set_certificate(self, name: str, serial: str, not_after: int) -> None:
        """Record the client certificate just issued to ``name``; the one before stops.

        Raises:
            NotFoundError: no such active admin.
        """
        with self._engine.begin() as conn:
            changed = conn.execute(
                admins.update()
                .where((admins.c.name == name) & admins.c.revoked_at.is_(None))
                .values(cert_serial=serial, cert_not_after=not_after)
            ).rowcount
        if not changed:
            raise NotFoundError(f"no admin {name} (or it is revoked)")
        self.forget()

    def is_bootstrap(self, token: str) -> bool:
        return bool(self._bootstrap) and hmac.compare_digest(
            token.encode(), self._bootstrap.encode()
        )

    def bootstrap_disabled_reason(self, now: float | None = None) -> str:
        """Why the bootstrap token is refused now ("" while it works)."""
        if self.bootstrap_allowed(time.time() if now is None else now):
            return ""
        return (
            "the bootstrap admin token is disabled: named admins exist (use your own token: "
            "'edgefleet admins add' makes one). On the server host, 'edgefleet-server "
            "bootstrap-token --enable-for 1h' enables it again for a while"
        )

    def bootstrap_allowed(self, now: float) -> bool:
        allowed, at = self._bootstrap_state
        if now - at < CACHE_S:
            return allowed
        with self._engine.connect() as conn:
            named = conn.execute(
                sa.select(sa.func.count()).where(
                    admins.c.revoked_at.is_(None) & (admins.c.role == int(Role.ADMIN))
                )
            ).scalar_one()
            until = _bootstrap_until(conn)
        allowed = named == 0 or until > now
        self._bootstrap_state = (allowed, now)
        return allowed

    def _note_use(self, name: str, now: float) -> None:
        with self._lock:
            if now - self._used.get(name, 0.0) < _USED_EVERY_S:
                return
            self._used[name] = now
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    admins.update().where(admins.c.name == name).values(last_used_at=int(now))
                )
        except sa.exc.OperationalError:
            pass  # a busy or absent database: only the "last used" column waits

    def forget(self) -> None:
        """Drop what is cached (after a change made here: it applies at once here)."""
        with self._lock:
            self._cache.clear()
        self._bootstrap_state = (False, 0.0)

    # management -------------------------------------------------------------------------

    def create(self, name: str, role: Role, by: str) -> str:
        """Add an admin; return its token (shown once).

        Raises:
            AlreadyExistsError: the name is taken (a revoked name too: names stay in the
                audit log, so one is never reused by another person).
        """
        check_name(name)
        token = TOKEN_PREFIX + new_token(32)
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    admins.insert().values(
                        name=name, role=int(role), token_sha256=_digest(token),
                        created_at=int(time.time()), created_by=by[:128],
                    )
                )  # fmt: skip
        except IntegrityError as exc:
            raise AlreadyExistsError(f"admin {name} exists (names are never reused)") from exc
        self.forget()
        return token

    def list(self) -> list[AdminRow]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(admins).order_by(admins.c.name)).all()
        return [
            AdminRow(r.name, Role(int(r.role)), int(r.created_at), r.created_by,
                     r.revoked_at, r.last_used_at, r.cert_serial, r.cert_not_after)
            for r in rows
        ]  # fmt: skip

    def rotate(self, name: str) -> str:
        """A new token for an admin; the old one stops working, and so does the admin's client
        certificate: a stolen token could have got one, and rotating is what one does after a
        theft (``admins cert`` issues a new one)."""
        token = TOKEN_PREFIX + new_token(32)
        with self._engine.begin() as conn:
            changed = conn.execute(
                admins.update()
                .where((admins.c.name == name) & admins.c.revoked_at.is_(None))
                .values(token_sha256=_digest(token), cert_serial=None, cert_not_after=None)
            ).rowcount
        if not changed:
            raise NotFoundError(f"no admin {name} (or it is revoked)")
        self.forget()
        return token

    def set_role(self, name: str, role: Role) -> None:
        self._change(name, role=role)

    def revoke(self, name: str) -> None:
        self._change(name, revoke=True)

    def _change(self, name: str, *, role: Role | None = None, revoke: bool = False) -> None:
        with self._engine.begin() as conn:
            hold_writes(conn)
            # Every active admin-role row is locked first, in one order: two revocations (or
            # demotions) of the last two admins at once on PostgreSQL each counted the other
            # as still there and both went through (locking only the changed row left the
            # count unguarded). Now the second waits for the first and counts after it.
            conn.execute(
                sa.select(admins.c.name)
                .where(admins.c.revoked_at.is_(None) & (admins.c.role == int(Role.ADMIN)))
                .order_by(admins.c.name)
                .with_for_update()
            ).all()
            row = conn.execute(
                sa.select(admins.c.role, admins.c.revoked_at)
                .where(admins.c.name == name)
                .with_for_update()
            ).first()
            if row is None or row[1] is not None:
                raise NotFoundError(f"no admin {name} (or it is revoked)")
            leaves_admins = int(row[0]) == Role.ADMIN and (revoke or role != Role.ADMIN)
            if leaves_admins:
                others = conn.execute(
                    sa.select(sa.func.count()).where(
                        admins.c.revoked_at.is_(None)
                        & (admins.c.role == int(Role.ADMIN))
                        & (admins.c.name != name)
                    )
                ).scalar_one()
                if others == 0:
                    raise ConflictError(
                        f"{name} is the last admin with the admin role: add another one first "
                        "(nobody could manage admins, revoke devices or recover keys)"
                    )
            values: dict[str, object] = (
                {"revoked_at": int(time.time())} if revoke else {"role": int(role or row[0])}
            )
            conn.execute(admins.update().where(admins.c.name == name).values(**values))
        self.forget()

    # the bootstrap token ----------------------------------------------------------------

    def enable_bootstrap(self, until: float) -> None:
        """Let the bootstrap token work until ``until`` (unix time) even with named admins:
        for the server host only (the CLI that calls this opens the database itself)."""
        value = json.dumps({"until": int(until)})
        with self._engine.begin() as conn:
            key = settings.c.key == _BOOTSTRAP_KEY
            if conn.execute(settings.update().where(key).values(value=value)).rowcount == 0:
                conn.execute(settings.insert().values(key=_BOOTSTRAP_KEY, value=value))
        self.forget()

    def bootstrap_until(self) -> int:
        with self._engine.connect() as conn:
            return _bootstrap_until(conn)


def _bootstrap_until(conn: sa.Connection) -> int:
    raw = conn.execute(sa.select(settings.c.value).where(settings.c.key == _BOOTSTRAP_KEY)).scalar()
    try:
        return int(json.loads(raw)["until"]) if raw else 0
    except (ValueError, KeyError, TypeError):
        return 0
