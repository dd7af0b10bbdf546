"""Devices, their enrollment tokens and certificates, and what each reports about its models."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fleet_server.errors import AlreadyExistsError, AuthError, BadRequestError, NotFoundError
from fleet_server.registry.ca import IssuedCert
from fleet_server.registry.presence import presence
from fleet_server.registry.refusals import RefusalKey, decode
from fleet_server.storage.db import Database, bump_generation, hold_writes
from fleet_server.storage.schema import (
    benchmarks,
    deliveries,
    device_events,
    device_logs,
    device_models,
    devices,
    downloads,
    enrollment_tokens,
    enrollments,
    refusal_clears,
    retired_certificates,
    rollout_devices,
    telemetry_history,
    usage,
)

__all__ = [
    "REPEAT_WINDOW_S",
    "DeviceModelRow",
    "DeviceRow",
    "DeviceStore",
    "Enrollment",
    "Ghost",
    "token_digest",
]

# How long after an enrollment the same token and public key get the same answer again.
REPEAT_WINDOW_S = 600
_BOOTSTRAP = "bootstrap"  # the enrollments row's token for the data dir's reusable token
# Every table with a row per device: a deleted ghost leaves nothing behind (rollouts assign
# ghosts too; the rest is there for safety, a ghost has sent nothing).
_DEVICE_TABLES = (
    enrollments,
    refusal_clears,  # a clear by label selector may have chosen a ghost
    rollout_devices,
    device_models,
    device_events,
    usage,
    telemetry_history,
    benchmarks,
    deliveries,
    downloads,
    device_logs,  # a request may wait for a device that never checked in
)


@dataclass(frozen=True)
class DeviceModelRow:
    model_name: str
    version: str
    state: str
    detail: str
    updated_at: int
    active_version: str | None = None


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    name: str
    labels: dict[str, str]
    capabilities: dict[str, Any]
    enrolled_at: int
    last_seen: int
    last_telemetry: dict[str, Any] | None
    last_telemetry_at: int | None
    models: tuple[DeviceModelRow, ...]
    revoked_at: int | None = None
    online_state: str | None = None
    online_at: int | None = None
    telemetry_count: int = 0
    telemetry_gaps: int = 0
    telemetry_ledger: str | None = None  # JSON: fleet_server/telemetry/sequence.py
    # The releases it refuses, as its last check-in reported them (None: it does not report).
    refusals: tuple[RefusalKey, ...] | None = None

    def presence(self, now: float) -> str:
        """revoked, offline, stopped or online (see :mod:`fleet_server.registry.presence`)."""
        return presence(
            state=self.online_state,
            state_at=self.online_at,
            last_seen=self.last_seen,
            last_report_at=self.last_telemetry_at,
            revoked=self.revoked_at is not None,
            now=now,
        )


@dataclass(frozen=True)
class Enrollment:
    """What an enrollment gave: the device's id and certificate; ``repeated``: the answer of an
    earlier request with the same token and key, given again."""

    device_id: str
    issued: IssuedCert
    repeated: bool


@dataclass(frozen=True)
class Ghost:
    """A device deleted because it enrolled and was never heard of again."""

    device_id: str
    name: str
    enrolled_at: int
    labels: dict[str, str]


def _first(at: Any) -> Any:
    """``first_checkin_at`` after a check-in at ``at``: set once, then kept."""
    return sa.func.coalesce(devices.c.first_checkin_at, at)


def _repeat(conn: sa.Connection, token_key: str, key_sha256: str, now: int) -> Enrollment | None:
    """The answer of this token's enrollment with this key, if it is recent and its
    certificate is still the device's (not revoked, not renewed since)."""
    row = conn.execute(
        sa.select(enrollments.c.device_id, enrollments.c.certificate, devices.c.cert_serial)
        .add_columns(devices.c.cert_not_after)
        .join(devices, devices.c.device_id == enrollments.c.device_id)
        .where(
            (enrollments.c.token_sha256 == token_key)
            & (enrollments.c.key_sha256 == key_sha256)
            & (enrollments.c.at >= now - REPEAT_WINDOW_S)
            & (devices.c.cert_serial == enrollments.c.cert_serial)
            & devices.c.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    issued = IssuedCert(row.certificate.encode(), row.cert_serial, int(row.cert_not_after))
    return Enrollment(row.device_id, issued, repeated=True)


def token_digest(token: str) -> str:
    """What is stored instead of a device token."""
    return hashlib.sha256(token.encode()).hexdigest()


class DeviceStore:
    """Queries over devices, enrollment tokens and device models."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def add_device(
        self,
        name: str,
        token: str,
        labels: Mapping[str, str],
        capabilities: Mapping[str, Any],
    ) -> str:
        """Register a device under a unique id derived from ``name``, without a certificate
        (seeding a database; devices enroll with :meth:`enroll`); return the id."""
        with self._engine.begin() as conn:
            hold_writes(conn)
            return self._insert_device(
                conn, name, labels, capabilities, int(time.time()), token=token
            )

    def enroll(
        self,
        name: str,
        *,
        token: str | None,
        key_sha256: str,
        labels: Mapping[str, str],
        capabilities: Mapping[str, Any],
        certify: Callable[[str], IssuedCert],
    ) -> Enrollment:
        """Enroll a device in one transaction: spend one use of ``token`` (None: the data
        dir's reusable bootstrap token), register the device under a unique id derived from
        ``name`` with the token's labels over its own, and record the certificate
        ``certify(device_id)`` issues. A failure at any step (the database, the CA) leaves
        nothing: no device without a certificate, no use of the token spent.

        The same token with the same public key (``key_sha256``, of a CSR whose signature
        verified) within :data:`REPEAT_WINDOW_S` of its first use is a repeat (the device did
        not get or keep the answer): it gets that enrollment's device and certificate again and
        spends nothing, as long as the device is not revoked and has not renewed since. Two
        identical requests at once get the same answer.

        Raises:
            AuthError: the token is unknown, expired or used up (and this is no repeat).
            AlreadyExistsError: no free id near ``name`` (retry).
        """

        def attempt() -> Enrollment:
            return self._enroll(
                name,
                token=token,
                key_sha256=key_sha256,
                labels=labels,
                capabilities=capabilities,
                certify=certify,
            )

        try:
            return attempt()
        except sa.exc.IntegrityError:
            # PostgreSQL: an identical request committed the same (token, key) first while
            # this one waited for it; now it is a repeat.
            return attempt()

    def _enroll(
        self,
        name: str,
        *,
        token: str | None,
        key_sha256: str,
        labels: Mapping[str, str],
        capabilities: Mapping[str, Any],
        certify: Callable[[str], IssuedCert],
    ) -> Enrollment:
        now = int(time.time())
        token_key = token_digest(token) if token is not None else _BOOTSTRAP
        with self._engine.begin() as conn:
            hold_writes(conn)  # SQLite: one enrollment at a time, so the free id stays free
            conn.execute(enrollments.delete().where(enrollments.c.at < now - REPEAT_WINDOW_S))
            repeat = _repeat(conn, token_key, key_sha256, now)
            if repeat is not None:
                return repeat
            merged = dict(labels)
            if token is not None:
                key = enrollment_tokens.c.token_sha256 == token_key
                spent = conn.execute(
                    enrollment_tokens.update()
                    .where(
                        key
                        & (enrollment_tokens.c.uses_left > 0)
                        & (enrollment_tokens.c.expires_at > now)
                    )
                    .values(uses_left=enrollment_tokens.c.uses_left - 1)
                )
                if spent.rowcount != 1:
                    # PostgreSQL: the first use may have committed while this waited for it.
                    repeat = _repeat(conn, token_key, key_sha256, now)
                    if repeat is not None:
                        return repeat
                    raise AuthError(
                        "enrollment token is unknown, expired or used up; ask the fleet admin "
                        "for a new one ('edgefleet tokens create')"
                    )
                stored = conn.execute(sa.select(enrollment_tokens.c.labels).where(key)).scalar()
                merged |= json.loads(stored or "{}")
            device_id = self._insert_device(conn, name, merged, capabilities, now)
            issued = certify(device_id)
            conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(cert_serial=issued.serial, cert_not_after=issued.not_after)
            )
            conn.execute(
                enrollments.insert().values(
                    token_sha256=token_key,
                    key_sha256=key_sha256,
                    device_id=device_id,
                    cert_serial=issued.serial,
                    certificate=issued.pem.decode(),
                    at=now,
                )
            )
            bump_generation(conn)
        return Enrollment(device_id, issued, repeated=False)

    @staticmethod
    def _insert_device(
        conn: sa.Connection,
        name: str,
        labels: Mapping[str, str],
        capabilities: Mapping[str, Any],
        now: int,
        *,
        token: str = "",
    ) -> str:
        """Insert a device under the first free id of ``name``, ``name-2``, ...; a concurrent
        enrollment of the same name (PostgreSQL) makes it try the next one."""
        for _attempt in range(20):
            taken = {
                r[0]
                for r in conn.execute(
                    sa.select(devices.c.device_id).where(devices.c.device_id.like(f"{name}%"))
                )
            }
            device_id = name
            suffix = 2
            while device_id in taken:
                device_id = f"{name[:58]}-{suffix}"
                suffix += 1
            try:
                with conn.begin_nested():
                    conn.execute(
                        devices.insert().values(
                            device_id=device_id,
                            name=name,
                            # No bearer token: devices use certificates. A random digest keeps
                            # the column's uniqueness without one.
                            token_sha256=token_digest(token or secrets.token_urlsafe(32)),
                            labels=json.dumps(dict(labels), sort_keys=True),
                            capabilities=json.dumps(dict(capabilities), sort_keys=True),
                            enrolled_at=now,
                            last_seen=now,
                        )
                    )
            except sa.exc.IntegrityError:
                continue
            return device_id
        raise AlreadyExistsError(f"could not find a free device id for {name!r}; retry")

    def set_certificate(self, device_id: str, serial: str, not_after: int) -> None:
        """Make this certificate the device's only valid one."""
        with self._engine.begin() as conn:
            conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(cert_serial=serial, cert_not_after=not_after)
            )
            bump_generation(conn)

    def device_certificate(self, device_id: str) -> tuple[str | None, bool] | None:
        """(current certificate serial, revoked) of a device, or None when unknown."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(devices.c.cert_serial, devices.c.revoked_at).where(
                    devices.c.device_id == device_id
                )
            ).first()
        return None if row is None else (row[0], row[1] is not None)

    def add_enrollment_token(
        self,
        token: str,
        *,
        ttl_s: int,
        uses: int,
        labels: Mapping[str, str],
        note: str,
        created_by: str,
    ) -> int:
        """Store a token (as its digest); return when it expires."""
        now = int(time.time())
        with self._engine.begin() as conn:
            conn.execute(
                enrollment_tokens.insert().values(
                    token_sha256=token_digest(token),
                    created_at=now,
                    expires_at=now + ttl_s,
                    uses_left=uses,
                    labels=json.dumps(dict(labels), sort_keys=True),
                    note=note[:255],
                    created_by=created_by[:128],
                )
            )
        return now + ttl_s

    def list_enrollment_tokens(self) -> list[dict[str, Any]]:
        """Every token (digests only), newest first."""
        with self._engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(enrollment_tokens).order_by(enrollment_tokens.c.created_at.desc())
                )
                .mappings()
                .all()
            )
        return [dict(r) | {"labels": json.loads(r["labels"])} for r in rows]

    def revoke_enrollment_token(self, digest_prefix: str) -> int:
        """Use up every token whose digest starts with ``digest_prefix``; return how many.

        Raises:
            BadRequestError: the prefix is shorter than 8 characters.
        """
        if len(digest_prefix) < 8:
            raise BadRequestError("give at least 8 characters of the token id")
        with self._engine.begin() as conn:
            result = conn.execute(
                enrollment_tokens.update()
                .where(enrollment_tokens.c.token_sha256.like(f"{digest_prefix.lower()}%"))
                .values(uses_left=0)
            )
        return int(result.rowcount)

    def set_labels(
        self, device_id: str, set_labels: Mapping[str, str], remove: Sequence[str]
    ) -> None:
        """Change a device's labels.

        Raises:
            NotFoundError: no such device.
        """
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(devices.c.labels).where(devices.c.device_id == device_id)
            ).first()
            if row is None:
                raise NotFoundError(f"device {device_id!r} is not enrolled")
            labels = json.loads(row[0])
            labels.update(set_labels)
            for key in remove:
                labels.pop(key, None)
            conn.execute(
                devices.update()
                .where(devices.c.device_id == device_id)
                .values(labels=json.dumps(labels, sort_keys=True))
            )
            bump_generation(conn)  # routing policies select devices by label

    def revoked_certificates(self) -> list[tuple[str, int]]:
        """(certificate serial, revoked at) of every revoked device and deleted ghost (for the
        CRL)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(devices.c.cert_serial, devices.c.revoked_at).where(
                    devices.c.revoked_at.is_not(None) & devices.c.cert_serial.is_not(None)
                )
            ).all()
            retired = conn.execute(
                sa.select(retired_certificates.c.cert_serial, retired_certificates.c.retired_at)
            ).all()
        return [(str(serial), int(at)) for serial, at in [*rows, *retired]]

    def revoke(self, device_id: str) -> None:
        """Refuse a device's credentials from now on (idempotent).

        Raises:
            NotFoundError: no such device.
        """
        with self._engine.begin() as conn:
            result = conn.execute(
                devices.update()
                .where((devices.c.device_id == device_id) & devices.c.revoked_at.is_(None))
                .values(revoked_at=int(time.time()))
            )
            bump_generation(conn)
            if result.rowcount == 0:
                exists = conn.execute(
                    sa.select(devices.c.device_id).where(devices.c.device_id == device_id)
                ).first()
                if exists is None:
                    raise NotFoundError(f"device {device_id!r} is not enrolled")

    def delete_ghosts(self, enrolled_before: int, limit: int = 100) -> list[Ghost]:
        """Delete up to ``limit`` devices enrolled before ``enrolled_before`` that were never
        heard of since: no check-in, no telemetry or MQTT state, no update report; revoked
        ones stay (their certificate belongs in the CRL). Each goes with its rows in every
        table, its certificate into the CRL, its enrollment's token use given back, in one
        transaction that re-checks the condition under a lock, so a device whose first
        check-in is written meanwhile is not deleted. Returns what was deleted."""
        ghost = (
            devices.c.first_checkin_at.is_(None)
            & devices.c.revoked_at.is_(None)
            & devices.c.last_telemetry_at.is_(None)
            & devices.c.online_state.is_(None)
            & (devices.c.enrolled_at < enrolled_before)
            & ~sa.exists().where(device_models.c.device_id == devices.c.device_id)
        )
        query = (
            sa.select(devices.c.device_id, devices.c.name, devices.c.enrolled_at, devices.c.labels)
            .where(ghost)
            .order_by(devices.c.enrolled_at, devices.c.device_id)
            .limit(limit)
        )
        with self._engine.connect() as conn:  # usually none: no write lock for nothing
            if conn.execute(query.limit(1)).first() is None:
                return []
        with self._engine.begin() as conn:
            hold_writes(conn)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(of=devices)
            rows = conn.execute(query).all()
            ids = [r.device_id for r in rows]
            if not ids:
                return []
            now = int(time.time())
            # The enrollment a ghost spent gives its use back (the agent killed before it saved
            # its identity enrolls again with it); its certificate goes into the CRL.
            spent = conn.execute(
                sa.select(enrollments.c.token_sha256).where(
                    enrollments.c.device_id.in_(ids) & (enrollments.c.token_sha256 != _BOOTSTRAP)
                )
            ).all()
            for (token,) in spent:
                conn.execute(
                    enrollment_tokens.update()
                    .where(enrollment_tokens.c.token_sha256 == token)
                    .values(uses_left=enrollment_tokens.c.uses_left + 1)
                )
            serials = conn.execute(
                sa.select(devices.c.device_id, devices.c.cert_serial).where(
                    devices.c.device_id.in_(ids) & devices.c.cert_serial.is_not(None)
                )
            ).all()
            if serials:
                conn.execute(
                    retired_certificates.insert(),
                    [
                        {"cert_serial": serial, "device_id": device, "retired_at": now}
                        for device, serial in serials
                    ],
                )
            for table in _DEVICE_TABLES:
                conn.execute(table.delete().where(table.c.device_id.in_(ids)))
            conn.execute(devices.delete().where(devices.c.device_id.in_(ids)))
            bump_generation(conn)
        return [Ghost(r.device_id, r.name, int(r.enrolled_at), json.loads(r.labels)) for r in rows]

    def get_device(self, device_id: str) -> DeviceRow:
        """One device with its models.

        Raises:
            NotFoundError: no such device.
        """
        for row in self.list_devices(device_id=device_id):
            return row
        raise NotFoundError(f"device {device_id!r} is not enrolled")

    def record_check_ins(self, seen: Mapping[str, tuple[int, str | None]]) -> None:
        """Write batched check-ins: device -> (last seen, new capabilities JSON or None)."""
        plain: dict[int, list[str]] = {}
        with_caps = []
        for device_id, (at, caps) in seen.items():
            if caps is None:
                plain.setdefault(at, []).append(device_id)
            else:
                with_caps.append({"d": device_id, "t": at, "c": caps})
        with self._engine.begin() as conn:
            for at, ids in plain.items():
                for start in range(0, len(ids), 500):
                    conn.execute(
                        devices.update()
                        .where(devices.c.device_id.in_(ids[start : start + 500]))
                        .values(last_seen=at, first_checkin_at=_first(at))
                    )
            if with_caps:
                conn.execute(
                    devices.update()
                    .where(devices.c.device_id == sa.bindparam("d"))
                    .values(
                        last_seen=sa.bindparam("t"),
                        capabilities=sa.bindparam("c"),
                        first_checkin_at=_first(sa.bindparam("t")),
                    ),
                    with_caps,
                )

    def set_device_model(
        self, device_id: str, model_name: str, version: str, state: str, detail: str
    ) -> None:
        """Upsert what a device reports about one model."""
        now = int(time.time())
        with self._engine.begin() as conn:
            key = (device_models.c.device_id == device_id) & (
                device_models.c.model_name == model_name
            )
            updated = conn.execute(
                device_models.update()
                .where(key)
                .values(version=version, state=state, detail=detail[:1024], updated_at=now)
            )
            if updated.rowcount == 0:
                conn.execute(
                    device_models.insert().values(
                        device_id=device_id,
                        model_name=model_name,
                        version=version,
                        state=state,
                        detail=detail[:1024],
                        updated_at=now,
                    )
                )

    def set_active_version(self, device_id: str, model_name: str, version: str) -> None:
        """Record what a device serves (from a check-in), keeping its last update report."""
        now = int(time.time())
        with self._engine.begin() as conn:
            key = (device_models.c.device_id == device_id) & (
                device_models.c.model_name == model_name
            )
            # Serving the version it was installing: installed, whether or not its report
            # made it here (an agent killed right after the switch sends none).
            installing = (device_models.c.version == version) & device_models.c.state.in_(
                ("DOWNLOADING", "VERIFIED")
            )
            updated = conn.execute(
                device_models.update()
                .where(key)
                .values(
                    active_version=version,
                    state=sa.case((installing, "INSTALLED"), else_=device_models.c.state),
                )
            )
            if updated.rowcount == 0:
                conn.execute(
                    device_models.insert().values(
                        device_id=device_id,
                        model_name=model_name,
                        version=version,
                        state="INSTALLED",
                        detail="serving",
                        updated_at=now,
                        active_version=version,
                    )
                )

    def list_devices(
        self, device_id: str | None = None, *, after: str = "", limit: int | None = None
    ) -> list[DeviceRow]:
        """Every device (or the one named) with its per-model state, by id; or one page of
        them: at most ``limit`` devices whose ids sort after ``after``."""
        query = sa.select(devices).order_by(devices.c.device_id)
        models_query = sa.select(device_models).order_by(device_models.c.model_name)
        if device_id is not None:
            query = query.where(devices.c.device_id == device_id)
            models_query = models_query.where(device_models.c.device_id == device_id)
        if after:
            query = query.where(devices.c.device_id > after)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            if limit is not None:  # only this page's devices' models
                models_query = models_query.where(
                    device_models.c.device_id.in_([r["device_id"] for r in rows])
                )
            states = conn.execute(models_query).mappings().all()
        by_device: dict[str, list[DeviceModelRow]] = {}
        for s in states:
            by_device.setdefault(s["device_id"], []).append(
                DeviceModelRow(
                    s["model_name"],
                    s["version"],
                    s["state"],
                    s["detail"],
                    s["updated_at"],
                    s["active_version"],
                )
            )
        return [
            DeviceRow(
                device_id=r["device_id"],
                name=r["name"],
                labels=json.loads(r["labels"]),
                capabilities=json.loads(r["capabilities"]),
                enrolled_at=r["enrolled_at"],
                last_seen=r["last_seen"],
                last_telemetry=json.loads(r["last_telemetry"]) if r["last_telemetry"] else None,
                last_telemetry_at=r["last_telemetry_at"],
                models=tuple(by_device.get(r["device_id"], ())),
                revoked_at=r["revoked_at"],
                online_state=r["online_state"],
                online_at=r["online_at"],
                telemetry_count=int(r["telemetry_count"] or 0),
                telemetry_gaps=int(r["telemetry_gaps"] or 0),
                telemetry_ledger=r["telemetry_ledger"],
                refusals=decode(r["refusals"]),
            )
            for r in rows
        ]
