"""An agent that cannot publish says so, once, after three report intervals (at least a minute),
and once when it is back; the systemd status follows (the agent maps these calls to STATUS=)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.config import AgentConfig
from agent.daemon._state import AgentState
from agent.daemon._telemetry import TelemetryLoop


@dataclass
class Link:
    """What the loop reads of its MQTT publisher: whether it is connected, and where to."""

    connected: bool = False
    endpoint: str = "mqtts://fleet:8883"


def loop(said: list[str | None]) -> TelemetryLoop:
    none: Any = None
    return TelemetryLoop(
        state=AgentState(AgentConfig(), none),
        store=none,
        engine=none,
        router=none,
        probe=none,
        active=none,
        on_command=none,
        started=0.0,
        on_silence=said.append,
    )


def test_silence_is_told_once_after_a_minute_and_its_end_once() -> None:
    said: list[str | None] = []
    telemetry, link = loop(said), Link()
    judge: Any = telemetry._judge_silence
    silent = False
    for seconds in (0, 10, 30, 59):  # interval 10 s: 3 intervals = 30 s, but at least 60 s
        silent = judge(link, seconds, silent, 5)
    assert said == [] and not silent
    for seconds in (60, 61, 300):
        silent = judge(link, seconds, silent, 5)
    assert silent and len(said) == 1 and "cannot publish to mqtts://fleet:8883" in str(said[0])
    link.connected = True
    silent = judge(link, 0, silent, 0)
    silent = judge(link, 0, silent, 0)
    assert not silent and said[1:] == [None]


def test_a_long_interval_waits_three_intervals() -> None:
    said: list[str | None] = []
    telemetry, link = loop(said), Link()
    config = telemetry._state.config
    telemetry._state.config = replace(config, telemetry=replace(config.telemetry, interval_s=120))
    assert not telemetry._judge_silence(link, 359, False, 0)  # type: ignore[arg-type]
    assert telemetry._judge_silence(link, 360, False, 0)  # type: ignore[arg-type]
