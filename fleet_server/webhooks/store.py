"""Webhooks, their outbox and the delivery log, in the database.

:func:`record` adds events to the outbox in the caller's transaction, one row per webhook that
wants the event's type: what happened and the notice of it commit together, so an event a
server recorded is delivered even when that server is killed the next instant (by another
replica, or by itself once it runs again). An event id recorded twice for one webhook (two
replicas noticing the same offline device) is kept once.

Several server processes may send: :meth:`WebhookStore.claim` leases a row to one of them
(``UPDATE ... WHERE`` the row is due and not leased: of two replicas racing for it, one
updates it), :meth:`WebhookStore.finish` records the attempt and releases it. A process that
dies holding a lease loses it when the lease ends, and the row is sent again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from fleet_server.errors import AlreadyExistsError, BadRequestError, DataDirError, NotFoundError
from fleet_server.storage.db import Database
from fleet_server.storage.schema import webhook_attempts, webhook_outbox, webhooks
from fleet_server.webhooks.events import Event, EventType
from fleet_server.webhooks.policy import (
    KEEP_S,
    MAX_PENDING,
    MAX_WEBHOOKS,
    DeliveryState,
    Next,
)

__all__ = [
    "Attempt",
    "Claimed",
    "Delivery",
    "Webhook",
    "WebhookStore",
    "WebhookSummary",
    "record",
]

_BATCH = 500
_ERROR = 255  # characters of an attempt's error kept


@dataclass(frozen=True)
class Webhook:
    webhook_id: int
    name: str
    url: str
    events: tuple[str, ...]  # empty: every type
    allow_http: bool
    ca_pem: str | None
    created_at: int
    created_by: str
    dropped: int
    secret: str = field(repr=False)  # signs deliveries; never listed


@dataclass(frozen=True)
class WebhookSummary:
    """A webhook and how its deliveries go (within the log's 7 days)."""

    webhook: Webhook
    pending: int
    delivered: int
    failed: int
    last_delivered_at: int
    last_status: int  # of the latest attempt; 0: none, or no answer
    last_error: str


@dataclass(frozen=True)
class Attempt:
    attempt: int
    at: int
    status: int
    error: str
    duration_ms: int


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to one webhook, with its attempts."""

    outbox_id: int
    webhook: str
    event_id: str
    event_type: str
    created_at: int
    state: DeliveryState
    attempts: int
    next_at: float
    updated_at: int
    log: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to one process for its next attempt, with what it takes to send it."""

    outbox_id: int
    webhook_id: int
    event_id: str
    event_type: str
    data: dict[str, Any]
    created_at: int
    attempts: int  # made before this one
    url: str
    ca_pem: str | None
    allow_http: bool
    secret: str = field(repr=False)


def _insert_ignoring_repeats(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on (event_id, webhook_id), which both databases have:
    replicas recording the same event at once both succeed, and one row is kept."""
    from sqlalchemy.dialects import postgresql, sqlite  # noqa: PLC0415

    inserts: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
    if conn.dialect.name not in inserts:
        raise DataDirError(f"{conn.dialect.name} is not supported (SQLite or PostgreSQL)")
    statement = inserts[conn.dialect.name](webhook_outbox).on_conflict_do_nothing(
        index_elements=["event_id", "webhook_id"]
    )
    for start in range(0, len(rows), _BATCH):
        conn.execute(statement, list(rows[start : start + _BATCH]))


def _rows(event: Event, webhook_ids: Iterable[int]) -> list[dict[str, Any]]:
    data = json.dumps(dict(event.data), sort_keys=True, separators=(",", ":"))
    return [
        {
            "event_id": event.id,
            "webhook_id": webhook_id,
            "event_type": str(event.type),
            "data": data,
            "created_at": event.at,
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "next_at": float(event.at),
            "lease_owner": None,
            "lease_until": None,
            "updated_at": event.at,
        }
        for webhook_id in webhook_ids
    ]


def record(conn: sa.Connection, events: Iterable[Event]) -> int:
    """Add ``events`` to the outbox in the caller's transaction, for every webhook that wants
    their type; return how many deliveries that makes (none without a webhook)."""
    events = list(events)
    if not events:
        return 0
    wanted = [
        (int(webhook_id), set(json.loads(types or "[]")))
        for webhook_id, types in conn.execute(sa.select(webhooks.c.webhook_id, webhooks.c.events))
    ]
    rows = []
    for event in events:
        rows += _rows(event, [w for w, types in wanted if not types or event.type in types])
    _insert_ignoring_repeats(conn, rows)
    return len(rows)


def _webhook(r: Any) -> Webhook:
    return Webhook(
        webhook_id=int(r["webhook_id"]),
        name=str(r["name"]),
        url=str(r["url"]),
        events=tuple(json.loads(r["events"] or "[]")),
        allow_http=bool(r["allow_http"]),
        ca_pem=r["ca_pem"],
        created_at=int(r["created_at"]),
        created_by=str(r["created_by"]),
        dropped=int(r["dropped"] or 0),
        secret=str(r["secret"]),
    )


class WebhookStore:
    """Webhooks (configuration), the outbox of their deliveries and the delivery log."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    # configuration -----------------------------------------------------------------------------

    def add(
        self,
        *,
        name: str,
        url: str,
        secret: str,
        events: Sequence[EventType],
        allow_http: bool,
        ca_pem: str | None,
        created_by: str,
        now: int,
    ) -> Webhook:
        """Add a webhook (its values already checked).

        Raises:
            AlreadyExistsError: one of that name exists.
            BadRequestError: there are :data:`MAX_WEBHOOKS` already.
        """
        with self._engine.begin() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(webhooks)).scalar_one()
            if count >= MAX_WEBHOOKS:
                raise BadRequestError(
                    f"there are {count} webhooks, the most a server keeps; remove one first"
                )
            taken = conn.execute(sa.select(webhooks.c.webhook_id).where(webhooks.c.name == name))
            if taken.first() is not None:
                raise AlreadyExistsError(
                    f"a webhook named {name!r} exists; remove it first to replace it"
                )
            try:
                conn.execute(
                    webhooks.insert().values(
                        name=name,
                        url=url,
                        secret=secret,
                        events=json.dumps([str(e) for e in events]),
                        allow_http=allow_http,
                        ca_pem=ca_pem,
                        created_at=now,
                        created_by=created_by[:128],
                        dropped=0,
                    )
                )
            except sa.exc.IntegrityError as exc:  # added by another admin at the same moment
                raise AlreadyExistsError(f"a webhook named {name!r} exists") from exc
        return self.get(name)

    def wanted(self) -> set[EventType]:
        """The event types some webhook wants (what is worth looking for)."""
        with self._engine.connect() as conn:
            lists = conn.execute(sa.select(webhooks.c.events)).scalars().all()
        wanted: set[EventType] = set()
        for types in lists:
            names = {str(t) for t in EventType}
            known = [EventType(t) for t in json.loads(types or "[]") if t in names]
            wanted.update(known or EventType)
        return wanted

    def get(self, name: str) -> Webhook:
        """Raises NotFoundError when there is no webhook of that name."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(webhooks).where(webhooks.c.name == name)).mappings()
            found = row.first()
        if found is None:
            raise NotFoundError(f"no webhook named {name!r} ('edgefleet webhooks list')")
        return _webhook(found)

    def remove(self, name: str) -> int:
        """Remove a webhook with its deliveries and their log; return how many were pending.

        Raises:
            NotFoundError: no webhook of that name.
        """
        webhook = self.get(name)
        with self._engine.begin() as conn:
            key = webhook_outbox.c.webhook_id == webhook.webhook_id
            pending = conn.execute(
                sa.select(sa.func.count()).where(key & (webhook_outbox.c.state == "pending"))
            ).scalar_one()
            conn.execute(
                webhook_attempts.delete().where(
                    webhook_attempts.c.outbox_id.in_(sa.select(webhook_outbox.c.id).where(key))
                )
            )
            conn.execute(webhook_outbox.delete().where(key))
            conn.execute(webhooks.delete().where(webhooks.c.webhook_id == webhook.webhook_id))
        return int(pending)

    def summaries(self) -> list[WebhookSummary]:
        """Every webhook, by name, with its deliveries' counts."""
        with self._engine.connect() as conn:
            hooks = [
                _webhook(r)
                for r in conn.execute(sa.select(webhooks).order_by(webhooks.c.name)).mappings()
            ]
            counts: dict[tuple[int, str], int] = {}
            for webhook_id, state, count in conn.execute(
                sa.select(
                    webhook_outbox.c.webhook_id, webhook_outbox.c.state, sa.func.count()
                ).group_by(webhook_outbox.c.webhook_id, webhook_outbox.c.state)
            ):
                counts[(int(webhook_id), str(state))] = int(count)
            result = []
            for hook in hooks:
                key = webhook_outbox.c.webhook_id == hook.webhook_id
                delivered_at = conn.execute(
                    sa.select(sa.func.max(webhook_outbox.c.updated_at)).where(
                        key & (webhook_outbox.c.state == DeliveryState.DELIVERED)
                    )
                ).scalar_one()
                last = conn.execute(
                    sa.select(webhook_attempts.c.status, webhook_attempts.c.error)
                    .join(webhook_outbox, webhook_outbox.c.id == webhook_attempts.c.outbox_id)
                    .where(key)
                    .order_by(webhook_attempts.c.id.desc())
                    .limit(1)
                ).first()
                result.append(
                    WebhookSummary(
                        webhook=hook,
                        pending=counts.get((hook.webhook_id, DeliveryState.PENDING), 0),
                        delivered=counts.get((hook.webhook_id, DeliveryState.DELIVERED), 0),
                        failed=counts.get((hook.webhook_id, DeliveryState.FAILED), 0),
                        last_delivered_at=int(delivered_at or 0),
                        last_status=int(last[0]) if last is not None else 0,
                        last_error=str(last[1]) if last is not None else "",
                    )
                )
        return result

    # events --------------------------------------------------------------------------------------

    def record(self, events: Iterable[Event]) -> int:
        """:func:`record` in a transaction of its own."""
        with self._engine.begin() as conn:
            return record(conn, events)

    def record_for(self, name: str, event: Event) -> None:
        """Send ``event`` to the named webhook only, whatever types it asks for (a test).

        Raises:
            NotFoundError: no webhook of that name.
        """
        webhook = self.get(name)
        with self._engine.begin() as conn:
            _insert_ignoring_repeats(conn, _rows(event, [webhook.webhook_id]))

    # sending -------------------------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_s: float,
        limit: int,
        per_webhook: int,
        busy: Mapping[int, int] | None = None,
    ) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries to ``owner`` until ``now + lease_s``, at most
        ``per_webhook`` of one webhook counting the ``busy`` ones it is sending (webhook id ->
        how many), so one slow receiver cannot hold every sender; the least busy webhooks
        first, one delivery of each in turn, each webhook's oldest due first."""
        if limit <= 0:
            return []
        taken = dict(busy or {})
        o = webhook_outbox.c
        free = o.lease_until.is_(None) | (o.lease_until < now)
        due = (o.state == DeliveryState.PENDING) & (o.next_at <= now) & free
        with self._engine.begin() as conn:
            # Each webhook's oldest due deliveries: a receiver with a backlog does not keep
            # the others' waiting behind it.
            hooks = [
                int(webhook_id)
                for (webhook_id,) in conn.execute(
                    sa.select(o.webhook_id)
                    .where(due)
                    .group_by(o.webhook_id)
                    .order_by(sa.func.min(o.next_at))
                )
            ]
            # The least busy first, then one delivery per webhook in turn: two receivers that
            # hang, each with a backlog, took every free sender as soon as one came free (the
            # oldest due went first) and a working receiver waited for their whole backlogs.
            hooks.sort(key=lambda hook: taken.get(hook, 0))
            queues: list[list[int]] = []
            for webhook_id in hooks:
                allowance = min(per_webhook - taken.get(webhook_id, 0), limit)
                if allowance <= 0:
                    continue
                queues.append(
                    [
                        int(r[0])
                        for r in conn.execute(
                            sa.select(o.id)
                            .where(due & (o.webhook_id == webhook_id))
                            .order_by(o.next_at, o.id)
                            .limit(allowance)
                        )
                    ]
                )
            chosen: list[int] = []
            for turn in range(max((len(q) for q in queues), default=0)):
                for outbox_id in (q[turn] for q in queues if turn < len(q)):
                    if len(chosen) >= limit:
                        break
                    # Of replicas racing for the row, the first to update it gets it; the
                    # others' WHERE no longer matches once it commits.
                    won = conn.execute(
                        webhook_outbox.update()
                        .where((o.id == outbox_id) & due)
                        .values(lease_owner=owner, lease_until=now + lease_s)
                    ).rowcount
                    if won:
                        chosen.append(outbox_id)
            if not chosen:
                return []
            rows = conn.execute(
                sa.select(
                    o.id, o.webhook_id, o.event_id, o.event_type, o.data, o.created_at,
                    o.attempts, webhooks.c.url, webhooks.c.ca_pem, webhooks.c.allow_http,
                    webhooks.c.secret,
                )
                .join(webhooks, webhooks.c.webhook_id == o.webhook_id)
                .where(o.id.in_(chosen))
                .order_by(o.next_at, o.id)
            ).all()  # fmt: skip
        return [
            Claimed(
                outbox_id=int(r[0]),
                webhook_id=int(r[1]),
                event_id=str(r[2]),
                event_type=str(r[3]),
                data=json.loads(r[4]),
                created_at=int(r[5]),
                attempts=int(r[6]),
                url=str(r[7]),
                ca_pem=r[8],
                allow_http=bool(r[9]),
                secret=str(r[10]),
            )
            for r in rows
        ]

    def release(self, owner: str) -> int:
        """Give up ``owner``'s leases (a server stopping): another process, or this one once
        it runs again, sends those deliveries without waiting for the leases to end."""
        o = webhook_outbox.c
        with self._engine.begin() as conn:
            return int(
                conn.execute(
                    webhook_outbox.update()
                    .where((o.lease_owner == owner) & (o.state == DeliveryState.PENDING))
                    .values(lease_owner=None, lease_until=None)
                ).rowcount
            )

    def finish(
        self,
        claimed: Claimed,
        owner: str,
        outcome: Next,
        *,
        status: int,
        error: str,
        duration_ms: int,
        now: float,
    ) -> bool:
        """Record an attempt of a claimed delivery and what follows it (delivered, the next
        attempt's time, or given up); False when the lease was lost meanwhile (the webhook was
        removed, or the lease ran out and another process took the row)."""
        o = webhook_outbox.c
        with self._engine.begin() as conn:
            updated = conn.execute(
                webhook_outbox.update()
                .where((o.id == claimed.outbox_id) & (o.lease_owner == owner))
                .values(
                    state=outcome.state,
                    attempts=o.attempts + 1,
                    next_at=outcome.next_at or now,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=int(now),
                )
            ).rowcount
            if not updated:
                return False
            conn.execute(
                webhook_attempts.insert().values(
                    outbox_id=claimed.outbox_id,
                    attempt=claimed.attempts + 1,
                    at=int(now),
                    status=status,
                    error=error[:_ERROR],
                    duration_ms=max(0, min(duration_ms, 2**31 - 1)),
                )
            )
        return True

    # the log -------------------------------------------------------------------------------------

    def deliveries(self, name: str = "", event_id: str = "", limit: int = 50) -> list[Delivery]:
        """The latest deliveries (of one webhook, of one event), newest first, with attempts.

        Raises:
            NotFoundError: ``name`` is no webhook's.
        """
        o = webhook_outbox.c
        query = (
            sa.select(
                o.id, webhooks.c.name, o.event_id, o.event_type, o.created_at, o.state,
                o.attempts, o.next_at, o.updated_at,
            )
            .join(webhooks, webhooks.c.webhook_id == o.webhook_id)
            .order_by(o.id.desc())
            .limit(max(1, min(limit, 1000)))
        )  # fmt: skip
        if name:
            query = query.where(o.webhook_id == self.get(name).webhook_id)
        if event_id:
            query = query.where(o.event_id == event_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            log: dict[int, list[Attempt]] = {}
            ids = [int(r[0]) for r in rows]
            for start in range(0, len(ids), _BATCH):
                a = webhook_attempts.c
                for outbox_id, *values in conn.execute(
                    sa.select(a.outbox_id, a.attempt, a.at, a.status, a.error, a.duration_ms)
                    .where(a.outbox_id.in_(ids[start : start + _BATCH]))
                    .order_by(a.id)
                ):
                    log.setdefault(int(outbox_id), []).append(Attempt(*values))
        return [
            Delivery(
                outbox_id=int(r[0]),
                webhook=str(r[1]),
                event_id=str(r[2]),
                event_type=str(r[3]),
                created_at=int(r[4]),
                state=DeliveryState(r[5]),
                attempts=int(r[6]),
                next_at=float(r[7]),
                updated_at=int(r[8]),
                log=tuple(log.get(int(r[0]), ())),
            )
            for r in rows
        ]

    def pending(self) -> dict[str, int]:
        """Pending deliveries by webhook name (every webhook, zeros too)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(webhooks.c.name, sa.func.count(webhook_outbox.c.id))
                .select_from(
                    webhooks.outerjoin(
                        webhook_outbox,
                        (webhook_outbox.c.webhook_id == webhooks.c.webhook_id)
                        & (webhook_outbox.c.state == DeliveryState.PENDING),
                    )
                )
                .group_by(webhooks.c.name)
            ).all()
        return {str(name): int(count) for name, count in rows}

    def prune(self, now: float, max_pending: int = MAX_PENDING) -> dict[str, int]:
        """Keep the outbox and the log bounded: drop the oldest pending deliveries of a webhook
        beyond ``max_pending`` (counted in its ``dropped``), and delete attempts and finished
        deliveries older than :data:`KEEP_S`. Return the drops by webhook name."""
        o = webhook_outbox.c
        dropped: dict[str, int] = {}
        with self._engine.begin() as conn:
            over = conn.execute(
                sa.select(webhooks.c.webhook_id, webhooks.c.name, sa.func.count(o.id))
                .join(webhook_outbox, o.webhook_id == webhooks.c.webhook_id)
                .where(o.state == DeliveryState.PENDING)
                .group_by(webhooks.c.webhook_id, webhooks.c.name)
                .having(sa.func.count(o.id) > max_pending)
            ).all()
            for webhook_id, name, count in over:
                excess = int(count) - max_pending
                oldest = [
                    int(r[0])
                    for r in conn.execute(
                        sa.select(o.id)
                        .where((o.webhook_id == webhook_id) & (o.state == DeliveryState.PENDING))
                        .order_by(o.created_at, o.id)
                        .limit(excess)
                    )
                ]
                for start in range(0, len(oldest), _BATCH):
                    conn.execute(
                        webhook_outbox.update()
                        .where(o.id.in_(oldest[start : start + _BATCH]))
                        .values(state=DeliveryState.DROPPED, updated_at=int(now))
                    )
                conn.execute(
                    webhooks.update()
                    .where(webhooks.c.webhook_id == webhook_id)
                    .values(dropped=webhooks.c.dropped + len(oldest))
                )
                dropped[str(name)] = len(oldest)
        cutoff = int(now - KEEP_S)
        while True:  # in batches: a big backlog never holds the write lock for long
            with self._engine.begin() as conn:
                ids = [
                    int(r[0])
                    for r in conn.execute(
                        sa.select(o.id)
                        .where((o.state != DeliveryState.PENDING) & (o.updated_at < cutoff))
                        .limit(_BATCH)
                    )
                ]
                if ids:
                    conn.execute(
                        webhook_attempts.delete().where(webhook_attempts.c.outbox_id.in_(ids))
                    )
                    conn.execute(webhook_outbox.delete().where(o.id.in_(ids)))
                conn.execute(webhook_attempts.delete().where(webhook_attempts.c.at < cutoff))
            if len(ids) < _BATCH:
                return dropped
