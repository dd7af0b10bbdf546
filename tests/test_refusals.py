"""The server's bookkeeping of refused releases, without processes: which devices a clear goes
to, which pending clears a check-in settles, what a check-in may report, and the store on
SQLite and PostgreSQL (schema 21). The real agent and server are in test_refusal_clear.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent.updates import plan
from fleet_server.admin_cli import main
from fleet_server.registry.refusals import (
    CLEAR_TTL_S,
    PendingClear,
    RefusalStore,
    clear_targets,
    refusals_of,
    settled,
)
from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from protos import device_pb2
from protos.refusals import MAX_REFUSALS, covers

A, B = "a" * 64, "b" * 64
NOW = 1_900_000_000


def clear(model: str, sha: str = "", at: int = NOW, device: str = "d") -> PendingClear:
    return PendingClear(device, model, sha, "admin-token@test", at)


def test_a_clear_covers_its_model_or_an_old_refusal_without_one() -> None:
    assert covers("colors", "", "colors", A)  # every release of the model
    assert covers("colors", A, "colors", A)
    assert not covers("colors", B, "colors", A)
    assert not covers("shapes", "", "colors", A)  # never another model's refusal
    # A refusal an older agent kept without its model counts for any model (as the agent's
    # own journal clears it: plan.cleared uses the same rule).
    assert covers("shapes", A, "", A)
    assert not covers("shapes", B, "", A)


def test_a_clear_goes_only_to_devices_that_refuse_what_it_names() -> None:
    candidates = {
        "lab-1": (("colors", A),),
        "lab-2": (("colors", B), ("shapes", A)),
        "lab-3": (("shapes", A),),
        "old": None,
        "migrated": (("", A),),
    }
    every = clear_targets(candidates, "colors", "")
    assert every.device_ids == ("lab-1", "lab-2", "migrated")
    assert every.unreported == ("old",) and every.unmatched == ("lab-3",)
    one = clear_targets(candidates, "colors", A)
    assert one.device_ids == ("lab-1", "migrated")
    assert clear_targets(candidates, "other", "").device_ids == ("migrated",)
    nothing = clear_targets({"lab-3": (("shapes", A),)}, "colors", "")
    assert nothing.device_ids == () and nothing.unmatched == ("lab-3",)


def test_a_check_in_settles_the_clears_it_shows_done_and_the_expired_ones() -> None:
    pending = [clear("colors"), clear("shapes", A), clear("old", at=NOW - CLEAR_TTL_S - 1)]
    # Still refusing colors and shapes A: only the expired one goes.
    still = (("colors", B), ("shapes", A))
    assert settled(pending, still, NOW) == [pending[2]]
    # The colors refusal is gone: its clear is done; shapes A still waits.
    assert settled(pending, (("shapes", A),), NOW) == [pending[0], pending[2]]
    # A device that does not report refusals settles nothing but what expired.
    assert settled(pending, None, NOW) == [pending[2]]
    assert settled(pending, (), NOW) == pending


def test_what_a_check_in_may_report_is_bounded_and_checked() -> None:
    assert refusals_of(device_pb2.CheckInRequest()) is None  # an older agent
    assert refusals_of(device_pb2.CheckInRequest(refused=device_pb2.RefusalList())) == ()
    bad = [
        device_pb2.Refusal(model_name="colors", sha256="A" * 64),  # upper case
        device_pb2.Refusal(model_name="colors", sha256="a" * 63),
        device_pb2.Refusal(model_name="../etc", sha256=A),
        device_pb2.Refusal(model_name="x" * 65, sha256=A),
    ]
    good = [device_pb2.Refusal(model_name="colors", sha256=B), device_pb2.Refusal(sha256=A)]
    request = device_pb2.CheckInRequest(refused=device_pb2.RefusalList(refusals=bad + good * 2))
    assert refusals_of(request) == (("", A), ("colors", B))
    flood = [device_pb2.Refusal(model_name=f"m{i}", sha256=A) for i in range(10 * MAX_REFUSALS)]
    request = device_pb2.CheckInRequest(refused=device_pb2.RefusalList(refusals=flood))
    assert len(refusals_of(request) or ()) == MAX_REFUSALS


def test_a_refused_release_can_be_installed_again_once_its_refusal_is_cleared() -> None:
    # After a refused rollback the anti-rollback floor (release 2) belonged to no artifact: the
    # same release, cleared, was then refused as "a different artifact than the one installed
    # under the same release", so a clear could never bring it back.
    good = plan.Entry("1.0.0", 1, A, f"{A}.tflite")
    bad = plan.Entry("1.1.0", 2, B, f"{B}.tflite")
    journal = plan.activated(plan.activated(plan.Journal(), "colors", good), "colors", bad)
    journal, restored = plan.rolled_back(journal, "colors")
    assert restored is not None and restored.sha256 == A
    # The floor stays at release 2 and belongs to the release rolled back from.
    assert (restored.release_counter, restored.floor_sha256) == (2, B)
    offer = plan.Offer("colors", "1.1.0", B)
    assert plan.decide(journal, offer) is plan.Decision.REFUSE
    assert plan.decide(plan.cleared(journal, "shapes"), offer) is plan.Decision.REFUSE
    assert plan.decide(plan.cleared(journal, "colors", A), offer) is plan.Decision.REFUSE
    assert plan.decide(plan.cleared(journal, "colors"), offer) is plan.Decision.INSTALL
    assert plan.decide(plan.cleared(journal, "colors", B), offer) is plan.Decision.INSTALL


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[Database, DeviceStore, RefusalStore]]:
    db = Database(db_url)
    db.create_schema()
    yield db, DeviceStore(db), RefusalStore(db)
    db.close()


def test_the_store_records_reports_and_settles_clears(
    stores: tuple[Database, DeviceStore, RefusalStore],
) -> None:
    db, devices, refusals = stores
    device = devices.add_device("pi", "token", {}, {})
    assert devices.get_device(device).refusals is None  # never reported
    assert refusals.check_in(device, (("colors", A),), record=True, now=NOW) == []
    assert devices.get_device(device).refusals == (("colors", A),)

    before = db.generation()
    refusals.request([device], "colors", "", "admin-token@one", NOW)
    assert db.generation() == before + 1  # every cached answer must make room for it
    refusals.request([device], "colors", "", "admin-token@two", NOW + 5)  # asked again
    (pending,) = refusals.pending(device)
    assert (pending.requested_by, pending.requested_at) == ("admin-token@two", NOW + 5)

    # A check-in that still reports the refusal keeps the clear (a lost answer, a repeat).
    generation = db.generation()
    assert refusals.check_in(device, (("colors", A),), record=False, now=NOW + 6) == [pending]
    assert db.generation() == generation
    # Once it reports the refusal gone, the clear is done: no answer carries it any more.
    assert refusals.check_in(device, (), record=True, now=NOW + 7) == []
    assert refusals.pending(device) == []
    assert db.generation() == generation + 1
    assert devices.get_device(device).refusals == ()


def test_expired_clears_are_dropped_when_another_is_asked_for(
    stores: tuple[Database, DeviceStore, RefusalStore],
) -> None:
    _db, devices, refusals = stores
    old, new = devices.add_device("old", "t1", {}, {}), devices.add_device("new", "t2", {}, {})
    refusals.request([old], "colors", A, "admin-token@x", NOW - CLEAR_TTL_S - 10)
    refusals.request([new], "colors", "", "admin-token@x", NOW)
    assert refusals.pending(old) == []
    assert [c.device_id for c in refusals.pending(new)] == [new]


def test_a_version_20_database_gains_refusals_and_keeps_its_devices(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_server.storage import db as db_module

    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 20)
    db = Database(db_url)
    db.create_schema()
    with db.engine.begin() as conn:  # the tables as version 20 made them
        conn.execute(sa.text("DROP TABLE refusal_clears"))
        conn.execute(sa.text("ALTER TABLE devices DROP COLUMN refusals"))
    device = DeviceStore(db).add_device("pi", "token", {"site": "lab"}, {})
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 21)
    db.create_schema()
    row = DeviceStore(db).get_device(device)
    assert row.labels == {"site": "lab"} and row.refusals is None
    RefusalStore(db).request([device], "colors", "", "admin-token@x", NOW)
    assert len(RefusalStore(db).pending(device)) == 1
    db.close()


@pytest.mark.parametrize(
    ("words", "code"),
    [
        (("dev", "--model", "colors", "--sha256", "not-hex"), 1),
        (("dev", "--model", "colors", "--sha256", "abc"), 1),  # too short for a prefix
        (("--selector", "site=lab", "--model", "colors", "--sha256", "abcdef12"), 1),
        (("--model", "colors"), 2),  # neither a device nor a selector
        (("dev", "--selector", "site=lab", "--model", "colors"), 2),  # both
        (("dev",), 2),  # no model
    ],
    ids=lambda w: " ".join(w) if isinstance(w, tuple) else str(w),
)
def test_a_bad_clear_is_one_line_before_anything_is_sent(
    words: tuple[str, ...], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"not needed: the request is refused before it is sent\n")
    common = ["--server", "127.0.0.1:1", "--token", "t", "--ca-file", str(ca), "--timeout", "2"]
    try:
        got = main([*common, "devices", "clear-refusal", *words])
    except SystemExit as exc:  # argparse: a usage error
        got = int(exc.code or 0)
    assert got == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("edgefleet"), err
    if code == 1:
        assert len(err) == 1 and "unreachable" not in err[0], err
