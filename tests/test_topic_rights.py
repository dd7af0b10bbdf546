"""Who may publish and subscribe where: one definition (protos.topics) for the embedded broker's
checks and the shipped mosquitto ACL, which must be exactly what it generates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protos.topics import (
    DEVICE_RIGHTS,
    ROOT,
    is_server_identity,
    may_publish,
    may_subscribe,
    mosquitto_acl,
    retain_allowed,
    server_identity,
)
from tests.harness import REPO

SHIPPED = REPO / "packaging" / "mosquitto" / "edgefleet.acl"
SERVER = server_identity("main")


def test_the_shipped_acl_is_the_generated_one() -> None:
    assert SHIPPED.read_text() == mosquitto_acl("default", ["main"]), (
        "regenerate packaging/mosquitto/edgefleet.acl from "
        "protos.topics.mosquitto_acl('default', ['main'])"
    )


def test_a_device_has_its_own_topics_and_nothing_else() -> None:
    own = f"{ROOT}/f/cam1"
    assert all(may_publish("cam1", f"{own}/{k}", "f") for k in ("telemetry", "events", "state"))
    assert may_subscribe("cam1", f"{own}/commands", "f")
    # Not a command (to itself or anyone), not another device's topics, not a wildcard.
    assert not may_publish("cam1", f"{own}/commands", "f")
    assert not may_publish("cam1", f"{ROOT}/f/cam2/telemetry", "f")
    assert not may_subscribe("cam1", f"{ROOT}/f/cam2/commands", "f")
    assert not may_subscribe("cam1", f"{own}/telemetry", "f")
    for wild in (f"{ROOT}/#", f"{ROOT}/f/+/commands", "#", f"{own}/#", "$share/g/#"):
        assert not may_subscribe("cam1", wild, "f")
    assert not may_publish("cam1", f"{ROOT}/f/+/telemetry", "f")
    # A made-up fleet level would be a namespace of its own (retained messages without end).
    assert not may_publish("cam1", f"{ROOT}/f2/cam1/telemetry", "f")
    assert not may_subscribe("cam1", f"{ROOT}/f2/cam1/commands", "f")


def test_only_state_is_retained() -> None:
    assert retain_allowed(f"{ROOT}/f/cam1/state")
    assert not retain_allowed(f"{ROOT}/f/cam1/telemetry")
    assert not retain_allowed(f"{ROOT}/f/cam1/events") and not retain_allowed("x")


def test_a_server_reads_the_fleet_and_alone_sends_commands() -> None:
    assert is_server_identity(SERVER) and not is_server_identity("edgefleet:server")
    assert not is_server_identity("cam1") and not is_server_identity("edgefleet:server:a/b")
    assert may_subscribe(SERVER, f"{ROOT}/f/+/telemetry", "f")
    assert may_subscribe(SERVER, f"$share/ingest/{ROOT}/f/+/events", "f")
    assert may_subscribe(SERVER, f"{ROOT}/f/#", "f")
    assert not may_subscribe(SERVER, f"{ROOT}/#", "f")  # another fleet's is not its own
    assert not may_subscribe(SERVER, "#", "f") and not may_subscribe(SERVER, "$SYS/#", "f")
    assert may_publish(SERVER, f"{ROOT}/f/cam1/commands", "f")
    assert not may_publish(SERVER, f"{ROOT}/f/cam1/telemetry", "f")  # no speaking for a device


_LEVEL = st.sampled_from(["f", "cam1", "cam2", "+", "#", "", "edgefleet:server:main", "x y"])
_KIND = st.sampled_from([*DEVICE_RIGHTS, "other", "+", "#"])


@given(st.sampled_from(["cam1", "cam2", SERVER, "edgefleet:server", "", "+"]), _LEVEL, _LEVEL,
       _KIND)  # fmt: skip
def test_nobody_reaches_outside_the_rules(
    identity: str, fleet: str, device: str, kind: str
) -> None:
    topic = f"{ROOT}/{fleet}/{device}/{kind}"
    if may_publish(identity, topic, "f"):
        assert "+" not in topic and "#" not in topic and fleet == "f"
        if is_server_identity(identity):
            assert kind == "commands"
        else:
            assert device == identity and DEVICE_RIGHTS[kind] == "write"
    if may_subscribe(identity, topic, "f") and not is_server_identity(identity):
        assert device == identity and kind == "commands" and fleet == "f"
    if may_subscribe(identity, topic, "f") or may_publish(identity, topic, "f"):
        assert fleet == "f"
