"""Issue 22 item 2, notifications, without a server process: the delivery decisions (URLs,
retries, give-up, signature, payload), the outbox on both databases (fan-out, one row per
event and webhook, leases between replicas, the 7-day log and the cap), and every kind of event
recorded where it happens and delivered to a real HTTP receiver in this process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import AlreadyExistsError, BadRequestError
from fleet_server.notify.watch import budget_events, expiry_events, offline_events
from fleet_server.notify.worker import WebhookNotifier
from fleet_server.registry.store import DeviceStore
from fleet_server.renewal.status import ExpiryWatch
from fleet_server.rollouts.health import HealthSample, HealthStore
from fleet_server.rollouts.outcomes import Outcome
from fleet_server.rollouts.states import Event as RolloutEvent
from fleet_server.rollouts.store import RolloutStore
from fleet_server.routing.prices import Prices
from fleet_server.routing.store import RoutingRow, RoutingStore
from fleet_server.storage.db import Database
from fleet_server.telemetry.store import IngestBatch, TelemetryStore
from fleet_server.webhooks.events import Event, EventType, body, event_id, parse_types
from fleet_server.webhooks.policy import (
    GIVE_UP_AFTER_S,
    KEEP_S,
    MAX_DELAY_S,
    DeliveryState,
    after_attempt,
    backoff,
    check_url,
    shown_url,
)
from fleet_server.webhooks.signature import check_secret, new_secret, sign, verify
from fleet_server.webhooks.store import WebhookStore
from protos import device_pb2 as pb
from tests.test_expiry_watch import status_at
from tests.webhook_receiver import Receiver

DAY = 86400
SECRET = "s3cret-for-the-tests-0123456789"  # noqa: S105 - the test receivers' secret


# decisions ---------------------------------------------------------------------------------------


def test_a_webhook_url_is_https_without_credentials_and_never_link_local() -> None:
    assert check_url(" https://hooks.example.com/x?t=1 ", allow_http=False) == (
        "https://hooks.example.com/x?t=1"
    )
    with pytest.raises(BadRequestError, match="--allow-http"):
        check_url("http://hooks.example.com/x", allow_http=False)
    assert check_url("http://10.0.0.5:8080/x", allow_http=True)
    refused = {
        "https://ops:hunter2@hooks.example.com/x": "must not carry credentials",
        "https://169.254.169.254/latest/meta-data": "link-local",
        "https://[::ffff:169.254.169.254]/x": "link-local",
        "https://0.0.0.0/x": "not a host",
        "ftp://hooks.example.com/x": "not ftp scheme",
        "https:///x": "names a host",
        "https://hooks.example.com:99999/x": "port",
        "https://hooks.example.com/x#frag": "fragment",
        "https://hooks.example.com/a b": "printable ASCII",
        "https://" + "a" * 3000: "2048",
    }
    for url, why in refused.items():
        with pytest.raises(BadRequestError, match=why):
            check_url(url, allow_http=True)
    assert shown_url("https://h.example/x?token=abc") == "https://h.example/x?…"


@given(st.integers(1, 200), st.floats(0.1, 3600), st.floats(0, 1, exclude_max=True))
def test_retries_back_off_with_jitter_up_to_an_hour(attempt: int, first: float, r: float) -> None:
    delay = backoff(attempt, first, r)
    ceiling = min(MAX_DELAY_S, first * 2 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling <= MAX_DELAY_S
    assert backoff(attempt + 1, first, r) >= delay  # never shorter with the same jitter


def test_a_delivery_is_given_up_once_its_event_is_a_day_old() -> None:
    now = 1_000_000.0
    retry = after_attempt(ok=False, attempts=3, created_at=now - 60, now=now, first_s=10, rand=0)
    assert retry.state == DeliveryState.PENDING and retry.next_at == now + 20
    # A receiver's Retry-After is honoured when longer, up to the cap.
    later = after_attempt(
        ok=False, attempts=1, created_at=now, now=now, first_s=10, rand=0, retry_after=9e9
    )
    assert later.next_at == now + MAX_DELAY_S
    old = after_attempt(
        ok=False, attempts=30, created_at=now - GIVE_UP_AFTER_S, now=now, first_s=10, rand=0
    )
    assert old.state == DeliveryState.FAILED and "30 attempt(s)" in old.reason
    done = after_attempt(ok=True, attempts=1, created_at=now - 9e9, now=now, first_s=10, rand=0)
    assert done.state == DeliveryState.DELIVERED


def test_the_signature_covers_the_timestamp_and_the_body() -> None:
    payload = body(event_id="e1", event_type="webhook.test", at=0, data={}, fleet_id="f")
    now = time.time()
    signature = sign(SECRET, int(now), payload)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify(SECRET, str(int(now)), signature, payload, now)
    assert not verify(SECRET, str(int(now)), signature, payload + b" ", now)  # changed body
    assert not verify(SECRET, str(int(now) + 1), signature, payload, now)  # changed time
    assert not verify("another-secret-0123456", str(int(now)), signature, payload, now)
    assert not verify(SECRET, str(int(now)), signature, payload, now + 301)  # a replay
    assert not verify(SECRET, "soon", signature, payload, now)
    assert new_secret() != new_secret() and len(check_secret(new_secret())) > 40
    for bad in ("short", "x" * 300, "has a space in it ok"):
        with pytest.raises(BadRequestError):
            check_secret(bad)


def test_the_payload_is_version_1_canonical_json_in_utc() -> None:
    data = {"b": 1, "a": "é"}
    raw = body(event_id="e1", event_type="rollout.paused", at=1_700_000_000, data=data,
               fleet_id="f")  # fmt: skip
    assert raw == body(event_id="e1", event_type="rollout.paused", at=1_700_000_000,
                       data=dict(reversed(data.items())), fleet_id="f")  # fmt: skip
    assert json.loads(raw) == {
        "version": 1,
        "id": "e1",
        "type": "rollout.paused",
        "time": "2023-11-14T22:13:20Z",
        "fleet_id": "f",
        "data": data,
    }
    assert raw.isascii() and b" " not in raw
    assert event_id("a", 1) == event_id("a", 1) != event_id("a", 2)
    assert parse_types(["device.offline", "rollout.paused", "device.offline"]) == [
        EventType.DEVICE_OFFLINE,
        EventType.ROLLOUT_PAUSED,
    ]
    with pytest.raises(BadRequestError, match=r"known: rollout\.paused"):
        parse_types(["rollout.pasued"])


# the outbox --------------------------------------------------------------------------------------


def _db(url: str) -> Database:
    db = Database(url)
    db.create_schema()
    return db


def _add(store: WebhookStore, name: str, url: str, events: tuple[EventType, ...] = ()) -> None:
    store.add(name=name, url=url, secret=SECRET, events=list(events), allow_http=True,
              ca_pem=None, created_by="test", now=int(time.time()))  # fmt: skip


def test_events_go_to_the_webhooks_that_want_them_once_per_event(db_url: str) -> None:
    db = _db(db_url)
    store = WebhookStore(db)
    assert store.record([Event(EventType.ROLLOUT_PAUSED, {})]) == 0  # nobody listens: nothing
    _add(store, "all", "http://127.0.0.1:9/a")
    _add(store, "rollouts", "http://127.0.0.1:9/b", (EventType.ROLLOUT_PAUSED,))
    with pytest.raises(AlreadyExistsError):
        _add(store, "all", "http://127.0.0.1:9/c")
    offline = Event(EventType.DEVICE_OFFLINE, {"device_id": "d"}, id=event_id("x"))
    assert store.record([Event(EventType.ROLLOUT_PAUSED, {"rollout_id": 1}), offline]) == 3
    store.record([offline])  # another replica noticed it too
    rows = store.deliveries()
    assert sorted((d.webhook, d.event_type) for d in rows) == [
        ("all", "device.offline"),
        ("all", "rollout.paused"),
        ("rollouts", "rollout.paused"),
    ]
    assert {s.webhook.name: s.pending for s in store.summaries()} == {"all": 2, "rollouts": 1}
    assert SECRET not in repr(store.get("all"))  # the secret is never in a log line
    assert store.remove("all") == 2
    assert [d.webhook for d in store.deliveries()] == ["rollouts"]
    db.close()


def test_replicas_lease_each_delivery_to_one_of_them(db_url: str) -> None:
    first, second = _db(db_url), Database(db_url)
    stores = [WebhookStore(first), WebhookStore(second)]
    _add(stores[0], "ops", "http://127.0.0.1:9/a")
    stores[0].record([Event(EventType.WEBHOOK_TEST, {"n": n}) for n in range(40)])
    now = time.time() + 1
    got: list[list[int]] = [[], []]

    def take(i: int) -> None:
        while batch := stores[i].claim(f"replica-{i}", now=now, lease_s=60, limit=3,
                                       per_webhook=3):  # fmt: skip
            got[i] += [c.outbox_id for c in batch]

    threads = [threading.Thread(target=take, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(got[0]) + len(got[1]) == 40 and not set(got[0]) & set(got[1])
    # A replica that stops hands its leases back: the other takes them at once.
    assert stores[0].release("replica-0") == len(got[0])
    again = stores[1].claim("replica-1", now=now, lease_s=60, limit=100, per_webhook=100)
    assert sorted(c.outbox_id for c in again) == sorted(got[0])
    # A lease that ran out (its process died) is taken again.
    assert stores[1].claim("replica-1", now=now + 61, lease_s=60, limit=100, per_webhook=100)
    first.close()
    second.close()


def test_the_log_is_kept_7_days_and_the_outbox_is_capped(db_url: str) -> None:
    db = _db(db_url)
    store = WebhookStore(db)
    _add(store, "ops", "http://127.0.0.1:9/a")
    start = 1_800_000_000
    store.record([Event(EventType.WEBHOOK_TEST, {"n": n}, at=start + n) for n in range(5)])
    claimed = store.claim("me", now=start + 10, lease_s=60, limit=2, per_webhook=2)
    for delivery in claimed:
        done = after_attempt(ok=True, attempts=1, created_at=start, now=start + 10, first_s=1,
                             rand=0)  # fmt: skip
        assert store.finish(delivery, "me", done, status=200, error="", duration_ms=5,
                            now=start + 10)  # fmt: skip
    assert store.prune(start + 6 * DAY) == {}
    assert len(store.deliveries()) == 5
    # Three pending ones, cap 1: the two oldest are dropped, counted, and still listed.
    assert store.prune(start + 6 * DAY, max_pending=1) == {"ops": 2}
    states = sorted(str(d.state) for d in store.deliveries())
    assert states == ["delivered", "delivered", "dropped", "dropped", "pending"]
    assert store.summaries()[0].webhook.dropped == 2
    # Seven days after they finished, delivered and dropped ones are gone with their attempts.
    store.prune(start + 6 * DAY + KEEP_S + 1)
    assert [str(d.state) for d in store.deliveries()] == ["pending"]
    db.close()


# delivery to a real receiver -----------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Database, WebhookStore]]:
    db = _db(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield db, WebhookStore(db)
    db.close()


def test_a_receiver_failing_twice_gets_the_event_at_the_third_attempt(
    fleet: tuple[Database, WebhookStore],
) -> None:
    _, store = fleet
    with Receiver(SECRET, [500, 503]) as receiver:
        _add(store, "ops", receiver.url())
        notifier = WebhookNotifier(store, "fleet-a", timeout_s=5, retry_after_s=10)
        event = Event(EventType.WEBHOOK_TEST, {"hello": "world"})
        store.record([event])
        clock = time.time()
        for step in range(3):  # each retry waits 5-10 s, then 10-20 s: step the clock past it
            assert notifier.send_due(clock + step * 30) == 1
            assert notifier.send_due(clock + step * 30) == 0  # not due again yet
        got = receiver.wait_for(3)
        assert [r.answered for r in got] == [500, 503, 200]
        assert all(r.signature_ok for r in got)
        assert [r.headers["X-EdgeFleet-Delivery-Attempt"] for r in got] == ["1", "2", "3"]
        assert {r.body for r in got} == {got[0].body}  # the same bytes every time
        assert {r.headers["X-EdgeFleet-Event-Id"] for r in got} == {event.id}
        assert got[0].payload["data"] == {"hello": "world"}
        assert got[0].payload["fleet_id"] == "fleet-a"
        (delivery,) = store.deliveries()
        assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 3
        assert [(a.attempt, a.status, a.error) for a in delivery.log] == [
            (1, 500, "HTTP 500"),
            (2, 503, "HTTP 503"),
            (3, 200, ""),
        ]


def test_a_receiver_that_hangs_is_cut_off_and_tried_again(
    fleet: tuple[Database, WebhookStore],
) -> None:
    _, store = fleet
    with Receiver(SECRET, ["hang"]) as receiver:
        _add(store, "ops", receiver.url())
        notifier = WebhookNotifier(store, "f", timeout_s=1, retry_after_s=0.1)
        store.record([Event(EventType.WEBHOOK_TEST, {})])
        started = time.monotonic()
        notifier.send_due()
        assert time.monotonic() - started < 30  # the deadline, not the receiver, ended it
        wait = time.time() + 1
        notifier.send_due(wait)
        (delivery,) = store.deliveries()
        assert [a.error for a in delivery.log] == ["no answer within 1 s", ""]
        assert delivery.state == DeliveryState.DELIVERED


def test_redirects_are_not_followed_and_refused_addresses_not_dialled(
    fleet: tuple[Database, WebhookStore],
) -> None:
    _, store = fleet
    with Receiver(SECRET, [302]) as receiver:
        _add(store, "ops", receiver.url())
        notifier = WebhookNotifier(store, "f", timeout_s=2, retry_after_s=1)
        store.record([Event(EventType.WEBHOOK_TEST, {})])
        notifier.send_due()
        (delivery,) = store.deliveries()
        assert delivery.state == DeliveryState.PENDING
        assert "redirects are not followed" in delivery.log[0].error
    store.remove("ops")
    # The sender checks the address it resolved, whatever the stored URL says (the API
    # refuses this URL; a name can resolve there later).
    _add(store, "meta", "http://169.254.169.254/latest/meta-data")
    store.record([Event(EventType.WEBHOOK_TEST, {})])
    notifier.send_due()
    (delivery,) = store.deliveries()
    assert "link-local" in delivery.log[0].error and delivery.log[0].duration_ms < 1000


def _deliver(
    store: WebhookStore, receiver: Receiver, count: int, now: float | None = None
) -> list[dict[str, Any]]:
    WebhookNotifier(store, "f", timeout_s=5).send_due(now)
    got = receiver.wait_for(count)
    assert all(r.signature_ok for r in got)
    return [r.payload for r in got]


def _rollout(db: Database, devices: int = 1) -> tuple[RolloutStore, int, list[str]]:
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", 0))
    ids = [DeviceStore(db).add_device(f"cam-{i}", f"t{i}", {}, {}) for i in range(devices)]
    rollouts = RolloutStore(db, catalog)
    row = rollouts.create(model_name="m", version="1.0.0", selector={}, waves=["100%"],
                          success_threshold=1.0, failure_threshold=0.5, max_concurrent=0,
                          device_timeout_s=60, created_by="test")  # fmt: skip
    rollouts.tick(row.rollout_id)  # every device told to update
    return rollouts, row.rollout_id, ids


def test_a_rollout_paused_by_its_health_gate_and_a_refused_update_are_told(
    fleet: tuple[Database, WebhookStore],
) -> None:
    db, store = fleet
    with Receiver(SECRET) as receiver:
        _add(store, "ops", receiver.url())
        rollouts, rollout_id, (good, bad) = _rollout(db, devices=2)
        for device in (good, bad):
            rollouts.apply_update(Outcome(device, "m", "1.0.0", pb.INSTALLED))
        # The good one's telemetry breaks the gate: 40% errors.
        HealthStore(db).record_health([HealthSample(rollout_id, good, 100, 40, 10.0)])
        rollouts.apply_update(Outcome(bad, "m", "1.0.0", pb.ROLLED_BACK, "crash loop", "e", 7))
        rollouts.apply_update(Outcome(bad, "m", "1.0.0", pb.ROLLED_BACK, "crash loop", "e", 7))
        rollouts.tick(rollout_id)
        assert rollouts.get(rollout_id).state == "paused"
        refused, paused = _deliver(store, receiver, 2)
        assert refused["type"] == "update.refused"  # once, though its report came twice
        assert refused["data"] == {"device_id": bad, "name": "cam-1", "model": "m",
                                   "version": "1.0.0", "state": "ROLLED_BACK",
                                   "detail": "crash loop"}  # fmt: skip
        assert paused["type"] == "rollout.paused"
        data = paused["data"]
        assert (data["rollout_id"], data["model"], data["version"], data["by"]) == (
            rollout_id, "m", "1.0.0", "controller")  # fmt: skip
        assert "error rate 40.0%" in str(data["reason"])
        # An admin's abort ends it without completing: rollout.failed.
        rollouts.transition(rollout_id, RolloutEvent.ABORT, "aborted by test")
        (_, _, failed) = _deliver(store, receiver, 3)
        assert failed["type"] == "rollout.failed"
        assert failed["data"]["state"] == "aborted" and failed["data"]["by"] == "admin"


def test_a_completed_rollout_is_told(fleet: tuple[Database, WebhookStore]) -> None:
    db, store = fleet
    with Receiver(SECRET) as receiver:
        _add(store, "done", receiver.url(), (EventType.ROLLOUT_COMPLETED,))
        rollouts, rollout_id, (device,) = _rollout(db)
        rollouts.apply_update(Outcome(device, "m", "1.0.0", pb.INSTALLED))
        rollouts.tick(rollout_id)
        (completed,) = _deliver(store, receiver, 1)
        assert completed["type"] == "rollout.completed"
        assert completed["data"]["reason"] == "every wave reached its threshold"


def test_a_device_offline_beyond_the_threshold_is_told_once(
    fleet: tuple[Database, WebhookStore],
) -> None:
    db, store = fleet
    devices = DeviceStore(db)
    silent = devices.add_device("silent", "t1", {"site": "lab"}, {})
    chatty = devices.add_device("chatty", "t2", {}, {})
    gone = devices.add_device("gone", "t3", {}, {})
    devices.revoke(gone)
    heard = int(time.time())
    with Receiver(SECRET) as receiver:
        _add(store, "ops", receiver.url(), (EventType.DEVICE_OFFLINE,))
        assert offline_events(db, now=heard + 600, after_s=900) == []  # not long enough yet
        later = heard + 1000
        devices.record_check_ins({chatty: (later - 5, None)})
        found = offline_events(db, now=later, after_s=900)
        assert [e.data["device_id"] for e in found] == [silent]
        for _ in range(3):  # every look, on every replica, finds it again: kept once
            store.record(offline_events(db, now=later + 60, after_s=900))
        (offline,) = _deliver(store, receiver, 1, now=later + 60)
        assert offline["type"] == "device.offline" and offline["id"] == found[0].id
        assert offline["data"]["name"] == "silent"
        assert offline["data"]["labels"] == {"site": "lab"}
        assert offline["data"]["threshold_s"] == 900
        assert len(store.deliveries()) == 1
        # A device unheard for longer than the log is kept is not told (again).
        assert offline_events(db, now=heard + 7 * DAY, after_s=900) == []


def test_a_reached_budget_is_told_once_a_day(fleet: tuple[Database, WebhookStore]) -> None:
    db, store = fleet
    routing = RoutingStore(db)
    routing.set_prices(Prices(cloud_per_request=0.01))
    routing.set(RoutingRow("m", {}, "cascade", threshold=0.6, max_spend_per_day=1.0), "t")
    devices = DeviceStore(db)
    spender, saver = (devices.add_device(n, f"t{n}", {}, {}) for n in ("spender", "saver"))
    TelemetryStore(db).record_mqtt_batch(
        IngestBatch(usage={(spender, "m", "cascade"): [100, 100, 50.0, 100, 0.995],
                           (saver, "m", "cascade"): [100, 100, 50.0, 10, 0.1]})
    )  # fmt: skip
    with Receiver(SECRET) as receiver:
        _add(store, "costs", receiver.url(), (EventType.BUDGET_REACHED,))
        now = time.time()
        store.record(budget_events(db, routing, now=now))
        store.record(budget_events(db, routing, now=now + 60))
        (reached,) = _deliver(store, receiver, 1)
        assert reached["type"] == "budget.reached"
        data = reached["data"]
        assert (data["device_id"], data["model"], data["budget_usd"]) == (spender, "m", 1.0)
        assert data["spent_usd"] == pytest.approx(0.995)
        assert len(store.deliveries()) == 1


def test_what_expires_within_30_days_is_told_beside_the_hook(
    fleet: tuple[Database, WebhookStore],
) -> None:
    _, store = fleet
    now = time.time()
    watch = ExpiryWatch(
        lambda _now: status_at(now, keylist_days=12),
        "fleet-a",
        notify=lambda due: store.record(expiry_events(due)),
    )
    with Receiver(SECRET) as receiver:
        _add(store, "keys", receiver.url(), (EventType.EXPIRY_DUE,))
        watch.check(now)
        watch.check(now + 600)  # the next pass, the same day: kept once
        (due,) = _deliver(store, receiver, 1)
        assert due["type"] == "expiry.due"
        assert due["data"]["kind"] == "key list" and due["data"]["days_left"] == 12
        assert due["data"]["state"] == "expiring" and "keys rotate" in due["data"]["advice"]


def test_the_receiver_in_the_docs_takes_a_delivery_and_refuses_a_forgery_or_a_replay(
    fleet: tuple[Database, WebhookStore],
) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "notifications.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'SECRET = b"whsec_..."' in code
    code = code.replace('b"whsec_..."', repr(SECRET.encode()))
    namespace: dict[str, Any] = {"__name__": "docs_receiver"}
    exec(compile(code, "docs/notifications.md", "exec"), namespace)  # noqa: S102 - our own docs
    server = ThreadingHTTPServer(("127.0.0.1", 0), namespace["Receiver"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _, store = fleet
    try:
        _add(store, "doc", f"http://127.0.0.1:{server.server_address[1]}/")
        store.record([Event(EventType.WEBHOOK_TEST, {"from": "the docs"})])
        WebhookNotifier(store, "f", timeout_s=5).send_due()
        (delivery,) = store.deliveries()
        assert delivery.state == DeliveryState.DELIVERED and delivery.log[0].status == 204
    finally:
        server.shutdown()
        server.server_close()
    check = namespace["check"]
    payload = body(event_id="e-1", event_type="webhook.test", at=0, data={}, fleet_id="f")
    now = int(time.time())

    def headers(at: int, signature: str) -> dict[str, str]:
        return {"X-EdgeFleet-Timestamp": str(at), "X-EdgeFleet-Signature": signature}

    assert check(headers(now, sign(SECRET, now, payload)), payload)["id"] == "e-1"
    assert check(headers(now, sign(SECRET, now, payload)), payload) == {}  # a repeat
    with pytest.raises(ValueError, match="stale"):
        check(headers(now - 3600, sign(SECRET, now - 3600, payload)), payload)
    with pytest.raises(ValueError, match="bad signature"):
        check(headers(now, sign("another-secret-0123456", now, payload)), payload)


def test_the_notifier_looks_only_for_what_some_webhook_wants(
    fleet: tuple[Database, WebhookStore],
) -> None:
    _, store = fleet
    looked: list[str] = []

    def look(kind: EventType) -> tuple[EventType, Any]:
        def watcher(now: float) -> list[Event]:
            looked.append(kind)
            return [Event(kind, {"now": now}, id=event_id(kind, int(now) // 86400))]

        return kind, watcher

    notifier = WebhookNotifier(
        store, "f", watchers=[look(EventType.DEVICE_OFFLINE), look(EventType.BUDGET_REACHED)]
    )
    assert notifier.look() == 0 and looked == []  # no webhook: a big fleet is not scanned
    _add(store, "costs", "http://127.0.0.1:9/", (EventType.BUDGET_REACHED,))
    assert notifier.look() == 1 and looked == [EventType.BUDGET_REACHED]
    _add(store, "all", "http://127.0.0.1:9/")
    notifier.look()
    assert looked[1:] == [EventType.DEVICE_OFFLINE, EventType.BUDGET_REACHED]
    assert sorted((d.webhook, d.event_type) for d in store.deliveries()) == [
        ("all", "budget.reached"),
        ("all", "device.offline"),
        ("costs", "budget.reached"),
    ]
