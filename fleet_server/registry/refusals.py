"""Refused releases: what each device reports refusing, and the clears operators ask for.

A device that rolled a release back (a crash loop, a failed health window) or was crashed by it
while loading refuses that release, by (model name, sha256), until an operator clears it. Its
check-ins report its refusals; ``edgefleet devices clear-refusal`` records a pending clear per
device, which every check-in answer of that device carries (it is part of the answer's state
version, so a cached "unchanged" answer cannot hide it) until a check-in reports no refusal the
clear covers, or for :data:`CLEAR_TTL_S`. A lost answer or a repeated check-in costs nothing: a
device forgets a refusal once, and a clear of nothing changes nothing.

The decisions are pure functions over values (:func:`clear_targets`, :func:`settled`);
:class:`RefusalStore` keeps the reports and the pending clears.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from fleet_server.storage.db import Database, add_rows, bump_generation
from fleet_server.storage.schema import devices, refusal_clears
from protos import device_pb2
from protos.names import is_name, is_sha256
from protos.refusals import MAX_REFUSALS, covers

__all__ = [
    "CLEAR_TTL_S",
    "ClearTargets",
    "PendingClear",
    "RefusalKey",
    "RefusalStore",
    "clear_targets",
    "decode",
    "encode",
    "refusals_of",
    "settled",
]

CLEAR_TTL_S = 7 * 86400  # a clear no check-in confirmed in a week is dropped
# (model name, sha256); a model name of "" is a refusal an older agent kept without it.
RefusalKey = tuple[str, str]


@dataclass(frozen=True)
class PendingClear:
    """A clear asked for and not confirmed yet by a check-in of its device."""

    device_id: str
    model_name: str
    sha256: str  # "" = every refused release of the model
    requested_by: str
    requested_at: int

    def covers(self, refusal: RefusalKey) -> bool:
        return covers(self.model_name, self.sha256, *refusal)


@dataclass(frozen=True)
class ClearTargets:
    """Which devices a clear goes to, and the others: those that have not reported their
    refusals (an agent too old to) and those that report none the clear covers."""

    device_ids: tuple[str, ...]
    unreported: tuple[str, ...]
    unmatched: tuple[str, ...]


def refusals_of(request: device_pb2.CheckInRequest) -> tuple[RefusalKey, ...] | None:
    """The refusals a check-in reports, sorted, without invalid or repeated ones, at most
    ``MAX_REFUSALS``; None when its agent does not report refusals."""
    if not request.HasField("refused"):
        return None
    found = {
        (r.model_name, r.sha256)
        for r in request.refused.refusals[:MAX_REFUSALS]
        if (not r.model_name or is_name(r.model_name)) and is_sha256(r.sha256)
    }
    return tuple(sorted(found))


def encode(refusals: tuple[RefusalKey, ...] | None) -> str | None:
    """The stored form of a device's reported refusals (``devices.refusals``)."""
    return None if refusals is None else json.dumps([list(r) for r in refusals])


def decode(stored: str | None) -> tuple[RefusalKey, ...] | None:
    """A device's reported refusals from their stored form; a damaged one reads as none."""
    if stored is None:
        return None
    try:
        items = json.loads(stored)
        return tuple((str(model), str(sha)) for model, sha in items)
    except (ValueError, TypeError):
        return ()


def clear_targets(
    candidates: Mapping[str, tuple[RefusalKey, ...] | None], model_name: str, sha256: str
) -> ClearTargets:
    """Of the candidate devices (id -> the refusals it last reported, None: never), the ones a
    clear of ``model_name``'s release ``sha256`` ("" = every one) would change anything on."""
    targets, unreported, unmatched = [], [], []
    for device_id, refusals in sorted(candidates.items()):
        if refusals is None:
            unreported.append(device_id)
        elif any(covers(model_name, sha256, *r) for r in refusals):
            targets.append(device_id)
        else:
            unmatched.append(device_id)
    return ClearTargets(tuple(targets), tuple(unreported), tuple(unmatched))


def settled(
    pending: Sequence[PendingClear], refusals: tuple[RefusalKey, ...] | None, now: int
) -> list[PendingClear]:
    """The pending clears a check-in reporting ``refusals`` settles: those it shows done (it
    reports no refusal they cover) and the expired ones. An agent that does not report refusals
    settles only expired ones."""
    return [
        c
        for c in pending
        if now - c.requested_at > CLEAR_TTL_S
        or (refusals is not None and not any(c.covers(r) for r in refusals))
    ]


class RefusalStore:
    """Reported refusals (a column of ``devices``) and pending clears (``refusal_clears``)."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def check_in(
        self,
        device_id: str,
        refusals: tuple[RefusalKey, ...] | None,
        *,
        record: bool,
        now: int,
    ) -> list[PendingClear]:
        """What a check-in that reports ``refusals`` does here, in one transaction: record them
        (with ``record``: they may differ from what is stored), drop the clears they settle
        (see :func:`settled`), and return the clears still pending, oldest first."""
        with self._engine.begin() as conn:
            if record:
                conn.execute(
                    devices.update()
                    .where(
                        (devices.c.device_id == device_id)
                        & devices.c.refusals.is_distinct_from(encode(refusals))
                    )
                    .values(refusals=encode(refusals))
                )
            pending = self._pending(conn, device_id)
            done = settled(pending, refusals, now)
            for clear in done:
                # Only the clear this check-in saw: one asked for again since stays.
                conn.execute(
                    refusal_clears.delete().where(
                        (refusal_clears.c.device_id == device_id)
                        & (refusal_clears.c.model_name == clear.model_name)
                        & (refusal_clears.c.sha256 == clear.sha256)
                        & (refusal_clears.c.requested_at == clear.requested_at)
                    )
                )
            if done:
                # Every server's cached answer for this device still carries the clear.
                bump_generation(conn)
        return [c for c in pending if c not in done]

    def request(
        self, device_ids: Sequence[str], model_name: str, sha256: str, requested_by: str, now: int
    ) -> None:
        """Ask these devices to forget the refusal of ``model_name``'s release ``sha256`` ("" =
        every one) at their next check-in; a clear asked for again keeps the newer asker and
        time. Expired clears of every device go."""
        rows = [
            {
                "device_id": device_id,
                "model_name": model_name,
                "sha256": sha256,
                "requested_by": requested_by[:128],
                "requested_at": now,
            }
            for device_id in device_ids
        ]
        with self._engine.begin() as conn:
            conn.execute(
                refusal_clears.delete().where(refusal_clears.c.requested_at < now - CLEAR_TTL_S)
            )
            newer = {"requested_by": _newer, "requested_at": _newer}
            for start in range(0, len(rows), 500):
                add_rows(conn, refusal_clears, rows[start : start + 500], combine=newer)
            bump_generation(conn)  # the devices' answers change

    def pending(self, device_id: str) -> list[PendingClear]:
        """A device's pending clears, oldest first."""
        with self._engine.connect() as conn:
            return self._pending(conn, device_id)

    @staticmethod
    def _pending(conn: sa.Connection, device_id: str) -> list[PendingClear]:
        rows = conn.execute(
            sa.select(refusal_clears)
            .where(refusal_clears.c.device_id == device_id)
            .order_by(refusal_clears.c.requested_at, refusal_clears.c.model_name)
        ).mappings()
        return [PendingClear(**r) for r in rows]


def _newer(_stored: object, new: object) -> object:
    return new
