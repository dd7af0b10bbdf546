"""Injecting the faults of a schedule (``bench.soak.schedule``) into the running fleet.

One thread works through the schedule in order; each fault is undone (broker and server
started again, link and database restored, the filler deleted, the agent restarted) before
the next one starts. Faults that aim at an update (agent-kill, link-cut) wait up to 30 s for
an agent whose state dir shows one in progress, DOWNLOADING (``staging/*.part``) or VERIFIED
(the new artifact stored, the journal not yet switched), and land there; the counts tell how
many found one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.soak.clock import set_offset
from bench.soak.fleet import MODEL, Fleet
from bench.soak.schedule import Fault, FaultKind
from tests.harness import Agent

__all__ = ["FaultRunner", "update_phase"]

log = logging.getLogger(__name__)
_PHASE_WAIT_S = 30.0


def update_phase(state: Path, newest_sha: str) -> str:
    """Where an agent's update stands by its state dir: ``downloading``, ``verified`` or ``""``
    (none in progress)."""
    staging = state / "staging"
    with contextlib.suppress(OSError):
        if any(p.suffix == ".part" for p in staging.iterdir()):
            return "downloading"
    if newest_sha and (state / "models" / MODEL / f"{newest_sha}.tflite").exists():
        journal = state / "active.json"
        with contextlib.suppress(OSError):
            if newest_sha not in journal.read_text(encoding="utf-8"):
                return "verified"
    return ""


class FaultRunner:
    """Runs ``faults`` against ``fleet`` from ``t0`` (time.monotonic) on a thread."""

    def __init__(
        self, fleet: Fleet, faults: list[Fault], seed: int, newest_sha: Callable[[], str]
    ) -> None:
        self.fleet = fleet
        self.faults = faults
        self.injected: Counter[str] = Counter()
        self.detail: Counter[str] = Counter()
        self.errors: list[str] = []
        self._rng = random.Random(seed + 2)  # noqa: S311 - reproducible, not crypto
        self._newest = newest_sha
        self._thread: threading.Thread | None = None

    def start(self, t0: float, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(t0, stop), name="soak-faults",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(180)

    def _run(self, t0: float, stop: threading.Event) -> None:
        for fault in self.faults:
            if stop.wait(max(0.0, t0 + fault.at_s - time.monotonic())):
                return
            log.info("fault %s", fault.describe())
            try:
                with self.fleet.lock:  # the watcher restarts nothing while a fault holds
                    hit = self.inject(fault, stop)
            except Exception as exc:  # a fault that failed is reported, not fatal
                log.exception("fault %s failed", fault.describe())
                self.errors.append(f"{fault.describe()}: {exc}")
                continue
            if hit:
                self.injected[fault.kind.value] += 1
                label = fault.kind.value if hit == "-" else f"{fault.kind.value} {hit}"
                self.detail[label] += 1

    def inject(self, fault: Fault, stop: threading.Event) -> str:
        """Inject one fault and undo it; return what it hit ("" = skipped, counted nowhere;
        "-" = injected, nothing more to say)."""
        fleet, kind, hold = self.fleet, fault.kind, fault.hold_s
        if kind in (FaultKind.BROKER_RESTART, FaultKind.BROKER_LOSSY):
            if fleet.broker is None:
                return ""  # the embedded broker restarts with the server only
            fleet.restart_broker(persistent=kind is FaultKind.BROKER_RESTART, down_s=hold)
            return "-"
        if kind is FaultKind.SERVER_KILL:
            fleet.kill_server(hold)
            return "-"
        if kind is FaultKind.DB_CUT:
            if fleet.db_proxy is None:
                return ""
            fleet.db_proxy.cut()
            stop.wait(hold)
            fleet.db_proxy.restore()
            return "-"
        if kind is FaultKind.CLOCK_STEP:
            set_offset(fleet.clock_file, fault.offset_s)
            return f"to {fault.offset_s:+d} s"
        if kind is FaultKind.DISK_FULL:
            return self._fill_disk(hold, stop)
        if kind is FaultKind.AGENT_KILL:
            agent, phase = self._agent_in_update(stop)
            if agent is None:
                agent = self._rng.choice(fleet.agents)
            assert agent.proc is not None
            agent.stop(signal.SIGKILL)
            time.sleep(hold)
            fleet.start_agent(agent)
            return f"@{phase or 'idle'}"
        if kind is FaultKind.LINK_CUT:
            _agent, phase = self._agent_in_update(stop)
            fleet.link.cut()
            stop.wait(hold)
            fleet.link.restore()
            return f"@{phase or 'idle'}"
        raise ValueError(f"no injector for {kind}")

    def _agent_in_update(self, stop: threading.Event) -> tuple[Agent | None, str]:
        deadline = time.monotonic() + _PHASE_WAIT_S
        while time.monotonic() < deadline and not stop.is_set():
            agents = list(self.fleet.agents)
            self._rng.shuffle(agents)
            sha = self._newest()
            for agent in agents:
                phase = update_phase(agent.folder / "state", sha)
                if phase:
                    return agent, phase
            time.sleep(0.05)
        return None, ""

    def _fill_disk(self, hold: float, stop: threading.Event) -> str:
        agent = self.fleet.disk_agent
        if agent is None:
            return ""
        filler = agent.folder / "state" / "soak-filler"
        block = b"\0" * (256 * 1024)
        try:
            with filler.open("wb") as handle:
                while True:
                    handle.write(block)
                    handle.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        stop.wait(hold)
        filler.unlink(missing_ok=True)
        return "-"
