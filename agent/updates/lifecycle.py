"""The lifecycle journal at work: ``agent.updates.plan`` decides, this keeps it on disk.

One ``Lifecycle`` per agent process, shared by the start-up, the update loop and the stop. It
reads the journal, applies one ``plan`` event, and writes the result back atomically, under a
lock (the update loop and the process's stop both write). It also keeps the serving clocks of
the watched models: each serves for ``monotonic() - since`` in this run, checkpointed into the
journal every ``checkpoint_s`` and at a clean stop, so health windows add up serving time
across restarts without ever reading the wall clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import AgentError
from agent.updates import plan
from agent.updates.health import HealthPolicy
from agent.updates.store import ModelStore

__all__ = ["Lifecycle", "boot_id"]

log = logging.getLogger(__name__)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot of the machine (Linux's random boot id; "" where there is none)."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


class Lifecycle:
    """The journal of one agent process (see the module docstring)."""

    def __init__(
        self,
        store: ModelStore,
        policy: HealthPolicy,
        *,
        boot: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        checkpoint_s: float = 10.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self._boot = boot_id() if boot is None else boot
        self._monotonic = monotonic
        self._checkpoint_s = checkpoint_s
        self._lock = threading.RLock()
        self._since: dict[str, float] = {}  # watched model -> serving since (monotonic)
        self._started = False

    def journal(self) -> plan.Journal:
        """The journal as it is on disk.

        Raises:
            AgentError: it cannot be read.
        """
        return self.store.journal()

    def _apply(self, event: Callable[[plan.Journal], plan.Journal]) -> plan.Journal:
        with self._lock:
            before = self.store.journal()
            after = event(before)
            if after != before:
                self.store.save(after)
            return after

    # the run -------------------------------------------------------------------------------

    def start(self) -> list[plan.Rollback | plan.Refused]:
        """This run begins: attribute how the last one ended; return the crash loops to roll
        back (before anything loads)."""
        with self._lock:
            self._started = True
            try:
                journal = self.store.journal()
            except AgentError as exc:  # bit rot: a device must not stop serving over it
                journal = self.store.quarantine(exc)
            if not self._boot:
                log.warning("this machine has no boot id: deaths of the agent are not "
                            "attributed to models (no crash-loop rollbacks)")  # fmt: skip
            last = journal.run
            journal, rollbacks = plan.started(journal, boot=self._boot, policy=self.policy)
            if journal.newer:
                log.error("the update journal was written by a newer agent (format %d): "
                          "serving its models, refusing updates", journal.newer)  # fmt: skip
                return []  # serve its models, touch nothing
            try:
                self.store.save(journal)
            except OSError as exc:  # a full or read-only disk must not stop the serving
                log.error("cannot record this run in the update journal (%s): a crash in it "
                          "will not be attributed, no rollback happens now", exc)  # fmt: skip
                return []
        if not last.clean and last.boot and last.boot != self._boot and journal.health:
            log.warning(
                "the device restarted without stopping the agent (a power cut?); not counted "
                "against the models in their health windows"
            )
        elif not last.clean and last.boot == self._boot and (last.serving or last.loading):
            what = ", ".join(sorted({*last.serving, *([last.loading[0]] if last.loading else [])}))
            log.warning("the agent's last run ended abnormally while %s served or loaded", what)
        return rollbacks

    def stop(self) -> None:
        """The agent stops through its own code: checkpoint the serving time, mark the run
        clean. Never raises (a stop must finish); a failure only costs the serving time."""
        try:
            with self._lock:
                if not self._started:
                    return  # stopped before it started: the last run stays as it ended
                journal = self.store.journal()
                if journal.newer:
                    return
                journal, _ = self._checkpointed(journal, force=True)
                self.store.save(plan.stopped(journal))
        except Exception as exc:  # noqa: BLE001 - logged; the next start counts this run
            log.error("cannot mark the clean stop in the update journal: %s", exc)

    # markers -------------------------------------------------------------------------------

    def watched(self, name: str) -> bool:
        """Whether ``name`` is in a health window (or on trial): its markers matter."""
        journal = self.store.journal()
        return name in journal.health or name in journal.trials

    def _mark(self, event: Callable[[plan.Journal], plan.Journal]) -> None:
        """Record a marker; a journal that cannot be written (full disk, a newer agent's
        format) costs only the attribution of a death, never the serving."""
        try:
            self._apply(event)
        except (AgentError, OSError) as exc:
            log.warning("cannot record a lifecycle marker: %s", exc)

    def loading(self, name: str, sha256: str, version: str) -> None:
        """``name``'s release ``sha256`` is about to load: a death now is blamed on it."""
        self._mark(lambda j: plan.loading(j, name, sha256, version))

    def serving(self, name: str) -> None:
        """``name`` serves: its serving clock runs (and, watched, a death now is blamed on
        it). Writes nothing for a trusted model."""
        with self._lock:
            journal = self.store.journal()
            loading = journal.run.loading is not None and journal.run.loading[0] == name
            if name not in journal.health and not loading:
                return
            self._mark(lambda j: plan.serving(j, name))
            if name in journal.health:
                self._since[name] = self._monotonic()

    def trial_ended(self, name: str) -> None:
        """A trial of ``name`` ended without a death (failed, refused or postponed)."""
        self._mark(lambda j: plan.trial_ended(j, name))

    # outcomes ------------------------------------------------------------------------------

    def activated(self, name: str, entry: plan.Entry) -> None:
        """``entry`` is active (its health window opens when it has a last-known-good)."""
        with self._lock:
            self._apply(lambda j: plan.activated(j, name, entry))
            self._since[name] = self._monotonic()
        self.store.prune(name)

    def recovered(self, name: str, entry: plan.Entry) -> None:
        """A root-signed recovery made ``entry`` active (see ``plan.recovered``)."""
        with self._lock:
            self._apply(lambda j: plan.recovered(j, name, entry))
            self._since.pop(name, None)  # no window: nothing to go back to
        self.store.prune(name)

    def rolled_back(self, name: str, *, refuse: bool = True) -> plan.Entry | None:
        """The last-known-good of ``name`` is active again (see ``plan.rolled_back``)."""
        restored: list[plan.Entry | None] = []

        def event(journal: plan.Journal) -> plan.Journal:
            journal, good = plan.rolled_back(journal, name, refuse=refuse)
            restored.append(good)
            return journal

        with self._lock:
            self._apply(event)
            self._since.pop(name, None)
        return restored[-1]

    def passed(self, name: str) -> None:
        """``name`` passed its health window."""
        with self._lock:
            self._apply(lambda j: plan.passed(j, name))
            self._since.pop(name, None)

    def settle_floor(self, name: str, release_counter: int, keyids: tuple[str, ...] = ()) -> None:
        """See ``plan.settled_floor``."""
        self._apply(lambda j: plan.settled_floor(j, name, release_counter, keyids))

    def clear_refusal(self, name: str, sha256: str = "") -> bool:
        """Forget the refusal of ``name``'s release ``sha256`` (every one of ``name``
        without it); True when there was one."""
        before = self.store.journal()
        return self._apply(lambda j: plan.cleared(j, name, sha256)) != before

    # serving time --------------------------------------------------------------------------

    def served_s(self, name: str, journal: plan.Journal | None = None) -> float:
        """How long ``name``'s watched release has served, in every run together."""
        journal = journal if journal is not None else self.store.journal()
        window = journal.health.get(name)
        if window is None:
            return 0.0
        since = self._since.get(name)
        return window.served_s + (self._monotonic() - since if since is not None else 0.0)

    def checkpoint(self) -> None:
        """Write the serving time of the watched models when enough has accumulated.

        Raises:
            AgentError, OSError: the journal cannot be read or written; no serving time is
                lost (it is written at the next checkpoint that succeeds).
        """
        with self._lock:
            journal = self.store.journal()
            after, moved = self._checkpointed(journal, force=False)
            if after != journal:
                self.store.save(after)
            self._since.update(moved)

    def _checkpointed(
        self, journal: plan.Journal, *, force: bool
    ) -> tuple[plan.Journal, dict[str, float]]:
        """The journal with the serving time so far, and the serving clocks to restart once
        it is written (not before: a failed write must not lose the time)."""
        now = self._monotonic()
        moved = {}
        for name, since in list(self._since.items()):
            if name not in journal.health:
                del self._since[name]
                continue
            if force or now - since >= self._checkpoint_s:
                journal = plan.served(journal, name, self.served_s(name, journal))
                moved[name] = now
        return journal, moved
