"""The audit log: who changed what in the fleet, failed attempts included."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from fleet_server.storage.db import Database
from fleet_server.storage.schema import audit_log

__all__ = ["AuditLog", "AuditRow", "record"]


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: int
    actor: str
    action: str
    target: str
    detail: str
    ok: bool
    error: str


def record(
    conn: sa.Connection,
    actor: str,
    action: str,
    target: str,
    detail: str,
    *,
    ok: bool,
    error: str = "",
    at: int | None = None,
) -> None:
    """Append one entry in the caller's transaction: it commits with what it records, or
    neither does (the server's own steps, which several replicas may try at once)."""
    conn.execute(
        audit_log.insert().values(
            at=int(time.time()) if at is None else at,
            actor=actor[:128],
            action=action[:64],
            target=target[:255],
            detail=detail[:8192],
            ok=ok,
            error=error[:1024],
        )
    )


class AuditLog:
    """Appends to and reads the audit log."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def append(
        self, actor: str, action: str, target: str, detail: str, *, ok: bool, error: str = ""
    ) -> None:
        """Append one entry to the audit log."""
        with self._engine.begin() as conn:
            record(conn, actor, action, target, detail, ok=ok, error=error)

    def entries(self, limit: int = 100, before_id: int = 0) -> list[AuditRow]:
        """Newest first."""
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(max(1, limit))
        if before_id:
            query = query.where(audit_log.c.id < before_id)
        with self._engine.connect() as conn:
            return [AuditRow(**r) for r in conn.execute(query).mappings().all()]
