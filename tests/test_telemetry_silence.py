"""An agent that cannot publish says so, once, after three report intervals (at least a minute),
and once when it is back; the agent maps these calls to its systemd STATUS."""

from __future__ import annotations

from agent.telemetry.silence import SilenceWatch


def test_silence_is_told_once_after_a_minute_and_its_end_once() -> None:
    said: list[str | None] = []
    watch = SilenceWatch(said.append, now=0.0)

    def at(now: float, *, connected: bool = False, interval_s: float = 10.0) -> None:
        watch.update(
            connected=connected, now=now, interval_s=interval_s, endpoint="mqtts://f:8883",
            spooled=5,
        )  # fmt: skip

    for now in (0, 10, 30, 59):  # interval 10 s: 3 intervals = 30 s, but at least 60 s
        at(now)
    assert said == [] and not watch.silent
    for now in (60, 61, 300, 3600):
        at(now)
    assert watch.silent and len(said) == 1 and "cannot publish to mqtts://f:8883" in str(said[0])
    at(3601, connected=True)
    at(3602, connected=True)
    assert not watch.silent and said[1:] == [None]
    at(3663)  # silent again for a minute: said again
    assert len(said) == 3
    watch.close()
    assert said[-1] is None


def test_a_long_interval_waits_three_intervals() -> None:
    said: list[str | None] = []
    watch = SilenceWatch(said.append, now=0.0)
    watch.update(connected=False, now=359, interval_s=120, endpoint="x", spooled=0)
    assert said == []
    watch.update(connected=False, now=360, interval_s=120, endpoint="x", spooled=0)
    assert len(said) == 1
