"""Kill-safe enrollment in the registry, on SQLite and PostgreSQL (issue 18): the same token with
the same public key gets the same identity again for 10 minutes, identical requests at once make
one device, and ghost devices (enrolled, never heard of since) are deleted and audited while a
device that checked in once never is."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.identity import new_key_and_csr
from fleet_server.audit.store import AuditLog
from fleet_server.errors import AuthError, BadRequestError
from fleet_server.registry.ca import FleetCA, IssuedCert, public_key_sha256
from fleet_server.registry.ghosts import GhostReaper, sweep_interval
from fleet_server.registry.store import REPEAT_WINDOW_S, DeviceStore, Enrollment
from fleet_server.storage.db import Database
from fleet_server.storage.schema import device_events, enrollments, refusal_clears


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.create_schema()
    yield db
    db.close()


@pytest.fixture
def devices(db: Database) -> DeviceStore:
    return DeviceStore(db)


def _issued(device_id: str) -> IssuedCert:
    """A distinct certificate per call, as the CA issues them (a new serial each time)."""
    return IssuedCert(
        f"pem of {device_id} {secrets.token_hex(4)}".encode(), secrets.token_hex(8), 2
    )


def _enroll(devices: DeviceStore, token: str | None, key: str, name: str = "cam") -> Enrollment:
    return devices.enroll(
        name, token=token, key_sha256=key, labels={}, capabilities={}, certify=_issued
    )


def _token(devices: DeviceStore, token: str, uses: int = 1) -> None:
    devices.add_enrollment_token(token, ttl_s=60, uses=uses, labels={}, note="", created_by="t")


def test_only_the_holder_of_a_key_can_ask_with_it() -> None:
    _key, csr_pem = new_key_and_csr("cam")
    _other_key, other_pem = new_key_and_csr("cam")
    csr, other = (FleetCA.check_csr(p, expected_cn="cam") for p in (csr_pem, other_pem))
    assert public_key_sha256(csr) == public_key_sha256(x509.load_pem_x509_csr(csr_pem))
    assert public_key_sha256(csr) != public_key_sha256(other)
    # Someone who saw the token and the CSR but has no key puts that key in a CSR of theirs:
    # the signature (made with their own key) does not verify, and the CSR is refused.
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    theirs = other.public_bytes(serialization.Encoding.DER)
    forged = theirs.replace(
        other.public_key().public_bytes(*spki), csr.public_key().public_bytes(*spki)
    )
    assert forged != theirs
    forged_pem = x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(BadRequestError, match="signature does not verify"):
        FleetCA.check_csr(forged_pem, expected_cn="cam")


def test_a_repeat_with_the_same_token_and_key_gets_the_same_identity(
    db: Database, devices: DeviceStore
) -> None:
    _token(devices, "once")
    key = secrets.token_hex(32)
    first = _enroll(devices, "once", key)
    again = _enroll(devices, "once", key, name="renamed-meanwhile")
    assert not first.repeated and again.repeated
    assert (again.device_id, again.issued) == (first.device_id, first.issued)
    assert [d.device_id for d in devices.list_devices()] == [first.device_id]
    # Another key with the used token is refused, as before.
    with pytest.raises(AuthError, match="used up"):
        _enroll(devices, "once", secrets.token_hex(32))
    # A multi-use token: a repeat spends nothing; another key spends one and is another device.
    _token(devices, "thrice", uses=3)
    other = secrets.token_hex(32)
    assert (
        _enroll(devices, "thrice", other).device_id == _enroll(devices, "thrice", other).device_id
    )
    assert _enroll(devices, "thrice", secrets.token_hex(32)).device_id == "cam-3"
    assert sorted(t["uses_left"] for t in devices.list_enrollment_tokens()) == [0, 1]
    # The bootstrap token (None) the same way.
    boot = secrets.token_hex(32)
    assert _enroll(devices, None, boot).device_id == _enroll(devices, None, boot).device_id
    assert len(devices.list_devices()) == 4

    # A revoked device gets nothing again.
    devices.revoke(first.device_id)
    with pytest.raises(AuthError):
        _enroll(devices, "once", key)
    # Ten minutes after the first use, a repeat is refused as any use of a spent token.
    _token(devices, "late")
    late_key = secrets.token_hex(32)
    _enroll(devices, "late", late_key, name="late")
    with db.engine.begin() as conn:
        conn.execute(enrollments.update().values(at=enrollments.c.at - REPEAT_WINDOW_S - 1))
    with pytest.raises(AuthError, match="used up"):
        _enroll(devices, "late", late_key, name="late")
    # Expired records are not kept.
    _enroll(devices, None, secrets.token_hex(32), name="later")
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(enrollments)).scalar() == 1


def test_a_renewed_device_gets_no_old_certificate_again(devices: DeviceStore) -> None:
    _token(devices, "once")
    key = secrets.token_hex(32)
    first = _enroll(devices, "once", key)
    devices.set_certificate(first.device_id, "fe" * 8, 3)
    with pytest.raises(AuthError):
        _enroll(devices, "once", key)


@pytest.mark.parametrize("uses", [1, 8])
def test_identical_enrollments_at_once_make_one_device(devices: DeviceStore, uses: int) -> None:
    _token(devices, "shared", uses=uses)
    key = secrets.token_hex(32)
    answers: list[Enrollment] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def enroll() -> None:
        start.wait()
        try:
            answers.append(_enroll(devices, "shared", key))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=enroll) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {(a.device_id, a.issued) for a in answers} == {(answers[0].device_id, answers[0].issued)}
    assert sum(not a.repeated for a in answers) == 1
    assert [d.device_id for d in devices.list_devices()] == ["cam"]
    assert [t["uses_left"] for t in devices.list_enrollment_tokens()] == [uses - 1]


def test_only_devices_never_heard_of_are_ghosts(db: Database, devices: DeviceStore) -> None:
    ids = {
        name: _enroll(devices, None, secrets.token_hex(32), name=name).device_id
        for name in ("ghost", "checked", "revoked", "telemetry", "reported", "online")
    }
    now = int(time.time())
    devices.record_check_ins({ids["checked"]: (now, None)})
    devices.revoke(ids["revoked"])
    devices.set_device_model(ids["reported"], "m", "1.0.0", "DOWNLOADING", "")
    with db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE devices SET last_telemetry_at = 1 WHERE device_id = :d"),
            {"d": ids["telemetry"]},
        )
        conn.execute(
            sa.text("UPDATE devices SET online_state = 'offline' WHERE device_id = :d"),
            {"d": ids["online"]},
        )
        conn.execute(
            device_events.insert().values(
                device_id=ids["ghost"], at=now, seq=1, model_name="m", version="1.0.0",
                state="x", detail="", stored_at=now,
            )
        )  # fmt: skip
        conn.execute(  # an operator's clear by label selector chose it
            refusal_clears.insert().values(
                device_id=ids["ghost"], model_name="m", sha256="", requested_by="admin",
                requested_at=now,
            )
        )  # fmt: skip
    # Not old enough yet: nothing.
    assert devices.delete_ghosts(enrolled_before=now - 10) == []
    (ghost,) = devices.delete_ghosts(enrolled_before=now + 10)
    assert ghost.device_id == ids["ghost"] and ghost.name == "ghost"
    assert sorted(d.device_id for d in devices.list_devices()) == sorted(
        v for k, v in ids.items() if k != "ghost"
    )
    with db.engine.connect() as conn:
        for table in (enrollments, device_events, refusal_clears):
            left = conn.execute(
                sa.select(sa.func.count()).where(table.c.device_id == ids["ghost"])
            ).scalar()
            assert left == 0, table.name
    # A check-in keeps the first one.
    devices.record_check_ins({ids["checked"]: (now + 99, '{"arch": "x"}')})
    with db.engine.connect() as conn:
        first = conn.execute(
            sa.text("SELECT first_checkin_at FROM devices WHERE device_id = :d"),
            {"d": ids["checked"]},
        ).scalar()
    assert first == now
    assert devices.delete_ghosts(enrolled_before=now + 10**6) == []


def test_the_reaper_audits_each_ghost(db: Database, devices: DeviceStore) -> None:
    audit = AuditLog(db)
    for i in range(3):
        _enroll(devices, None, secrets.token_hex(32), name=f"g{i}")
    reaper = GhostReaper(devices, audit, after_s=3600)
    assert reaper.sweep() == []  # an hour has not passed
    deleted = reaper.sweep(now=time.time() + 3601)
    assert sorted(g.device_id for g in deleted) == ["g0", "g1", "g2"]
    entries = [e for e in audit.entries() if e.action == "DeleteGhostDevice"]
    assert sorted(e.target for e in entries) == ["g0", "g1", "g2"]
    assert all(e.ok and e.actor == "server" for e in entries)
    assert "never checked in" in json.loads(entries[0].detail)["reason"]
    assert devices.list_devices() == []
    assert (sweep_interval(3600), sweep_interval(2), sweep_interval(86400)) == (60, 1, 60)


def test_devices_from_before_the_upgrade_are_never_ghosts(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_server.storage import db as db_module

    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 21)
    db = Database(db_url)
    db.create_schema()
    with db.engine.begin() as conn:  # the devices table as version 21 made it
        conn.execute(sa.text("DROP TABLE enrollments"))
        conn.execute(sa.text("ALTER TABLE devices DROP COLUMN first_checkin_at"))
        conn.execute(
            sa.text(
                "INSERT INTO devices (device_id, name, token_sha256, labels, capabilities, "
                "enrolled_at, last_seen, telemetry_count, telemetry_gaps) "
                "VALUES ('old', 'old', 'x', '{}', '{}', 5, 5, 0, 0)"
            )
        )
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 22)
    db.create_schema()
    devices = DeviceStore(db)
    assert devices.delete_ghosts(enrolled_before=int(time.time())) == []
    assert [d.device_id for d in devices.list_devices()] == ["old"]
    db.close()
