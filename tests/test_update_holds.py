"""Refused updates are tried again with backoff, not held until a restart (issue 18).

A manifest judged expired while the wall clock ran ahead, or an artifact that did not verify
and was repaired on the server, must heal by itself: the updater holds a refused release for
1 minute, doubling to 1 hour, and reports it once per reason. Real updater, journal, engine
and client (whose server is unreachable, so each attempt after verification fails there).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.client import DeviceClient
from agent.identity import Identity
from agent.inference.engine import Engine, EngineOptions
from agent.updates.health import HealthPolicy
from agent.updates.lifecycle import Lifecycle
from agent.updates.store import ModelStore
from agent.updates.updater import Updater
from protos import device_pb2
from tests.harness import small_disk
from tests.test_verify import NOW, RELEASE, SIGNER, manifest, trust_in


def _updater(
    root: Path,
    reports: list[device_pb2.StatusReport],
    clock: Callable[[], float],
    monotonic: Callable[[], float],
) -> tuple[Updater, DeviceClient]:
    """A real updater whose reports are collected (its server is unreachable)."""
    client = DeviceClient("127.0.0.1:9", timeout_s=0.5)
    client.on_report = lambda r: not reports.append(r)  # type: ignore[func-returns-value]
    identity = Identity("d", "fleet", trust_in(RELEASE), "", "", b"", b"", b"")
    updater = Updater(
        lifecycle=Lifecycle(ModelStore(root), HealthPolicy(), boot="b"),
        engine=Engine(EngineOptions()),
        client=client,
        identity=identity,
        clock=clock,
        monotonic=monotonic,
    )
    return updater, client


def test_a_manifest_refused_under_a_clock_that_ran_ahead_is_tried_again(tmp_path: Path) -> None:
    wall, mono = [NOW + 30 * 86400], [1000.0]  # a month ahead: the manifest looks expired
    reports: list[device_pb2.StatusReport] = []
    updater, client = _updater(tmp_path, reports, lambda: wall[0], lambda: mono[0])
    envelope = SIGNER.sign(manifest())

    def failures() -> list[str]:
        return [r.detail for r in reports if r.state == device_pb2.FAILED]

    updater.apply([envelope])
    assert len(failures()) == 1 and "expired" in failures()[0]
    for _ in range(5):  # every check-in in the next minute: held, and not reported again
        mono[0] += 10
        updater.apply([envelope])
    assert len(reports) == 1
    wall[0] = NOW  # NTP fixes the clock
    mono[0] += 11  # the hold (60 s) is over
    updater.apply([envelope])
    # Verified now: the attempt goes on to the download (whose server is not there).
    assert [r.state for r in reports[1:]] == [device_pb2.DOWNLOADING, device_pb2.FAILED]
    assert "expired" not in failures()[1]
    tried = len(reports)
    updater.apply([envelope])  # held again, for twice as long: 120 s
    mono[0] += 100
    updater.apply([envelope])
    assert len(reports) == tried
    mono[0] += 21
    updater.apply([envelope])  # tried again; the same reason is not reported twice, nor the
    assert len(reports) == tried  # same download
    client.close()


@pytest.mark.slow
def test_a_wait_for_disk_space_is_reported_once_with_its_reason(tmp_path: Path) -> None:
    """A release too big for the disk left (a real 4 MiB tmpfs): DOWNLOADING with the reason,
    once, however many check-ins wait (not an event at each); no FAILED; a new release is
    reported again."""
    with small_disk(tmp_path / "small", "4m") as store:
        _wait_for_space(store)


def _wait_for_space(tmp_path: Path) -> None:
    reports: list[device_pb2.StatusReport] = []
    updater, client = _updater(tmp_path, reports, lambda: NOW, lambda: 1000.0)
    free = shutil.disk_usage(tmp_path).free
    envelope = SIGNER.sign(manifest(size=free))  # twice this is needed: never fits
    for _ in range(5):
        updater.apply([envelope])
    assert [r.state for r in reports] == [device_pb2.DOWNLOADING, device_pb2.DOWNLOADING]
    assert "waiting: not enough disk" in reports[1].detail
    bigger = SIGNER.sign(manifest(size=free, version="1.0.1", release_counter=6))
    updater.apply([bigger])
    assert [r.version for r in reports[2:]] == ["1.0.1", "1.0.1"]
    client.close()
