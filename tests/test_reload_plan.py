"""What a config reload applies to a running agent (``plan_reload``, pure): routing overrides,
the cloud endpoint, the telemetry interval and the enrollment settings at once; every other
setting only after a restart, and the message says which."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, CloudSection, DeviceSection, RoutingSection
from agent.daemon import plan_reload

BASE = AgentConfig()

# One change per section, each different from the defaults.
CHANGES = {
    "routing": lambda c: replace(c, routing={"digits": RoutingSection(policy="cascade")}),
    "cloud": lambda c: replace(c, cloud=CloudSection(url="grpcs://cloud.example:443")),
    "interval": lambda c: replace(c, telemetry=replace(c.telemetry, interval_s=0.5)),
    "telemetry": lambda c: replace(c, telemetry=replace(c.telemetry, mqtt_url="mqtt://b:1883")),
    "agent": lambda c: replace(c, agent=replace(c.agent, state_dir=Path("/elsewhere"))),
    "server": lambda c: replace(c, server=replace(c.server, address="other:8443")),
    "enrollment": lambda c: replace(
        c,
        server=replace(
            c.server,
            enrollment_token="t",  # noqa: S106 - a test token
            ca_file=Path("/etc/fleet-ca.crt"),
        ),
    ),
    "inference": lambda c: replace(c, inference=replace(c.inference, workers=7)),
    "updates": lambda c: replace(c, updates=replace(c.updates, keep_versions=5)),
    "device": lambda c: replace(c, device=DeviceSection(timezone="Europe/Berlin")),
}


@given(st.sets(st.sampled_from(sorted(CHANGES))))
def test_only_the_live_settings_change_and_the_rest_is_named(changed: set[str]) -> None:
    new = BASE
    for name in sorted(changed):
        new = CHANGES[name](new)
    plan = plan_reload(BASE, new)
    # Applied at once: exactly these settings come from the new file.
    assert plan.config.routing == new.routing
    assert plan.config.device == new.device  # the time zone, reported at the next check-in
    assert plan.config.cloud == new.cloud
    assert plan.config.telemetry.interval_s == new.telemetry.interval_s
    assert plan.cloud_changed == ("cloud" in changed)
    # The enrollment settings too (read at each enrollment attempt: a fix takes effect).
    assert plan.config.server.enrollment_token == new.server.enrollment_token
    assert plan.config.server.ca_file == new.server.ca_file
    # Everything else keeps running as it started, and the message says it waits for a restart.
    restart = sorted(changed & {"telemetry", "agent", "server", "inference", "updates"})
    unenrolled = replace(plan.config.server, enrollment_token="", ca_file=None)
    assert unenrolled == BASE.server
    for section in ("agent", "api", "inference", "hardware", "updates"):
        assert getattr(plan.config, section) == getattr(BASE, section)
    assert plan.config.telemetry.mqtt_url == BASE.telemetry.mqtt_url
    message = "; ".join(plan.changes)
    if restart:
        assert plan.changes[-1].endswith("changed: they apply after a restart"), message
        assert all(f"[{s}]" in plan.changes[-1] for s in restart), message
    else:
        assert "restart" not in message
    assert ("telemetry every 0.5 s" in message) == ("interval" in changed)
    assert ("enrollment token and CA" in message) == ("enrollment" in changed)
    assert ("time zone Europe/Berlin" in message) == ("device" in changed)


def test_the_message_names_the_overrides_it_applied() -> None:
    routing = {f"m{i:02d}": RoutingSection(policy="cloud") for i in range(10)}
    plan = plan_reload(BASE, replace(BASE, routing=routing))
    assert plan.changes == (
        "10 routing override(s) ("
        + ", ".join(f"m{i:02d} cloud" for i in range(8))
        + " and 2 more)",
    )
    assert plan_reload(BASE, BASE).changes == ("0 routing override(s)",)
    cleared = plan_reload(replace(BASE, cloud=CloudSection(url="grpc://c:1")), BASE)
    assert cleared.cloud_changed and "cloud from the server" in cleared.changes
