"""The soak's invariant check: observations in, violations (each with its cause) and a table out.

Pure: the harness gathers what the server's database, each agent's state dir and its local
inference API say (``AgentView``, ``SimView``, ``RolloutRecord``) and ``check`` judges them.
Message accounting reads the server's per-device ledger (``devices.telemetry_ledger``, JSON for
the device's current epoch: epoch, highest, missing ranges, stored, dropped, lost) and, on a
server without that column, today's counters (``telemetry_epoch``, ``last_telemetry_seq``,
``telemetry_count``, ``telemetry_gaps``) in ``ledger_from_row``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "AgentView",
    "Ledger",
    "MessageAccount",
    "Outcome",
    "RolloutRecord",
    "SimView",
    "Violation",
    "account_messages",
    "check",
    "disagreement",
    "ledger_from_row",
    "render_table",
]

# A device's state in the server's view of one model (device_pb2 state names).
ROLLED_BACK, FAILED, INSTALLED = "ROLLED_BACK", "FAILED", "INSTALLED"


@dataclass(frozen=True)
class Ledger:
    """What the server stored of one device's messages in its current epoch."""

    epoch: str
    highest: int  # the highest sequence number stored
    missing: tuple[tuple[int, int], ...]  # ranges still awaited, inclusive
    stored: int  # distinct sequence numbers stored
    dropped: int  # given up because the device said it no longer holds them
    lost: int  # given up by the server's bound (or, on today's server, a sequence jump)
    source: str  # "ledger" (devices.telemetry_ledger) or "counters" (today's columns)

    def covers(self, seq: int) -> bool:
        """Whether ``seq`` is stored (or given up): at or below the highest, not missing."""
        return seq <= self.highest and not any(lo <= seq <= hi for lo, hi in self.missing)


def ledger_from_row(row: Mapping[str, Any]) -> Ledger | None:
    """The ledger of one ``devices`` row; None when the server never stored a message of it.

    Raises:
        ValueError: the ledger column holds something that is not the documented JSON.
    """
    raw = row.get("telemetry_ledger")
    if raw:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        try:
            missing = tuple((int(lo), int(hi)) for lo, hi in data.get("missing", []))
            return Ledger(
                epoch=str(data["epoch"]),
                highest=int(data["highest"]),
                missing=missing,
                stored=int(data["stored"]),
                dropped=int(data.get("dropped", 0)),
                lost=int(data.get("lost", 0)),
                source="ledger",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"telemetry_ledger {raw!r} is not the documented JSON: {exc}") from exc
    if "telemetry_ledger" in row or not row.get("telemetry_epoch"):
        return None
    # Today's counters: the count of messages stored over the device's life and the numbers
    # its sequence jumps skipped; no ranges, nothing the device said it dropped.
    return Ledger(
        epoch=str(row["telemetry_epoch"]),
        highest=int(row.get("last_telemetry_seq") or 0),
        missing=(),
        stored=int(row.get("telemetry_count") or 0),
        dropped=0,
        lost=int(row.get("telemetry_gaps") or 0),
        source="counters",
    )


@dataclass(frozen=True)
class MessageAccount:
    """One real agent's messages in its spool's epoch: sent = stored + dropped + held + missing."""

    device: str
    epoch: str
    sent: int  # the last sequence number the spool assigned
    stored: int
    dropped: int  # counted as dropped by the device, on the server
    device_dropped: int  # what the device's spool says it dropped
    held: int  # still in the device's spool and not yet stored: on their way
    lost: int  # given up by the server
    missing: int  # neither stored, dropped nor held: unexplained
    duplicates: int  # stored more often than sent


def account_messages(
    device: str,
    *,
    epoch: str,
    sent: int,
    device_dropped: int,
    spooled: Iterable[int],
    ledger: Ledger | None,
) -> MessageAccount:
    """Balance what one agent's spool sent (``sent``, the sequence numbers still ``spooled``)
    against the server's ``ledger`` of the same device."""
    spooled = set(spooled)
    if ledger is None or ledger.epoch != epoch:
        stored = dropped = lost = 0
        held = len(spooled)
    else:
        stored, dropped, lost = ledger.stored, ledger.dropped, ledger.lost
        held = sum(1 for seq in spooled if not ledger.covers(seq))
    balance = sent - stored - dropped - held
    return MessageAccount(
        device=device,
        epoch=epoch,
        sent=sent,
        stored=stored,
        dropped=dropped,
        device_dropped=device_dropped,
        held=held,
        lost=lost,
        missing=max(0, balance),
        duplicates=max(0, -balance),
    )


@dataclass(frozen=True)
class AgentView:
    """What the harness saw of one real agent at the end."""

    name: str
    device_id: str
    spool_epoch: str
    spool_seq: int
    spool_dropped: int
    spooled_seqs: tuple[int, ...]
    spool_bound: int
    ledger: Ledger | None
    served_version: str  # the version its local OIP API answers ready for ("" = none)
    journal_version: str  # the active version its journal names
    artifact_ok: bool  # the journal's artifact is on disk and hashes to the journal's sha256
    expected_sha_ok: bool  # ...and that hash is the one pushed for that version
    server_version: str  # the server's last update report of the device: its version...
    server_state: str  # ...and state
    server_active: str  # the version the server last heard the device serves
    target: str  # the version the server's deployment and rollouts ask of the device
    staging_bytes: int
    numbered_while_settling: int = -1  # messages the spool numbered while the fleet settled


@dataclass(frozen=True)
class SimView:
    """One simulated device at the end: what it runs and what the server says."""

    device_id: str
    running: str
    server_version: str
    server_state: str
    server_active: str
    target: str


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout the harness started and how it ended."""

    rollout_id: int
    version: str
    bad: bool  # a deliberately bad release
    outcome: str  # completed, rolled-back, aborted (timed out), paused, running
    seconds: float


@dataclass(frozen=True)
class Violation:
    """An invariant that does not hold, with its one-line cause."""

    invariant: str
    subject: str
    cause: str

    def line(self) -> str:
        return f"VIOLATION {self.invariant} [{self.subject}]: {self.cause}"


@dataclass
class Outcome:
    """The verdict and the numbers of the table."""

    violations: list[Violation] = field(default_factory=list)
    accounts: list[MessageAccount] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    rollouts: dict[str, int] = field(default_factory=dict)
    failures_seen: dict[str, int] = field(default_factory=dict)
    convergence_s: float | None = None
    targets: dict[str, int] = field(default_factory=dict)  # version the server asks -> devices

    def summary(self) -> dict[str, Any]:
        """The JSON summary (``--json``)."""
        return {
            "ok": not self.violations,
            "targets": self.targets,
            "convergence_s": self.convergence_s,
            "faults": self.faults,
            "rollouts": self.rollouts,
            "update_failures_seen": self.failures_seen,
            "messages": [asdict(a) for a in self.accounts],
            "violations": [asdict(v) for v in self.violations],
        }


def check(
    agents: Sequence[AgentView],
    sims: Sequence[SimView],
    rollouts: Sequence[RolloutRecord],
    failures: Iterable[tuple[str, str, str]],
    *,
    bad_versions: Iterable[str],
    largest_artifact: int,
    faults: Mapping[str, int],
    convergence_s: float | None,
) -> Outcome:
    """Judge the end of a run. ``failures`` are the (device, version, state) FAILED or
    ROLLED_BACK reports seen during it; those of a bad release are expected.

    Converged means: each device runs the version the server asks of it (its deployment,
    overridden by the rollouts that reached it; never a bad release), the server knows it
    serves that version, and its last update report says so, or says a bad release failed.
    What the server asks is checked against the harness's own record where that decides it:
    after a good release completed (and only bad ones, rolled back, followed), every device.
    Every rollout must end: a good one completed, a bad one stopped by its failure gate."""
    bad = set(bad_versions)
    out = Outcome(faults=dict(faults), convergence_s=convergence_s)
    asked = Counter([a.target for a in agents] + [s.target for s in sims])
    out.targets = dict(sorted(asked.items()))
    v = out.violations.append
    settled = _settled_version(rollouts)
    if settled is not None and set(asked) - {settled}:
        others = {k: n for k, n in asked.items() if k != settled}
        v(Violation("targets", f"{sum(others.values())} device(s)",
                    f"the server asks {_counts(others)}, not {settled}, whose rollout "
                    "completed and was the last to change the fleet"))  # fmt: skip
    for agent in agents:
        who = agent.name
        if agent.served_version != agent.target:
            v(Violation("serving", who, f"local API serves {agent.served_version or 'nothing'}"
                        f" ready, not {agent.target}"))  # fmt: skip
        if not agent.artifact_ok:
            v(Violation("serving", who, f"journal's {agent.journal_version or 'no'} artifact is "
                        "missing or does not match its hash"))  # fmt: skip
        elif not agent.expected_sha_ok:
            v(Violation("serving", who, f"journal's {agent.journal_version} artifact is not the "
                        "one pushed for that version"))  # fmt: skip
        server = (agent.server_version, agent.server_state, agent.server_active)
        why = disagreement(agent.journal_version, server, agent.target, bad)
        if why:
            v(Violation("converged", who, why))
        if agent.numbered_while_settling == 0:
            v(Violation("telemetry-alive", who, "its spool numbered no message while the fleet "
                        "settled: telemetry stopped"))  # fmt: skip
        if len(agent.spooled_seqs) > agent.spool_bound:
            v(Violation("spool-bound", who, f"{len(agent.spooled_seqs)} messages spooled, "
                        f"bound {agent.spool_bound}"))  # fmt: skip
        if agent.staging_bytes > 2 * largest_artifact:
            v(Violation("staging-bound", who, f"staging holds {agent.staging_bytes} bytes, over "
                        f"2x the largest artifact ({largest_artifact})"))  # fmt: skip
        account = account_messages(
            agent.device_id,
            epoch=agent.spool_epoch,
            sent=agent.spool_seq,
            device_dropped=agent.spool_dropped,
            spooled=agent.spooled_seqs,
            ledger=agent.ledger,
        )
        out.accounts.append(account)
        _judge_messages(who, account, agent.ledger, v)
    wrong = [
        (s, why)
        for s in sims
        if (
            why := disagreement(
                s.running, (s.server_version, s.server_state, s.server_active), s.target, bad
            )
        )
    ]
    if wrong:
        s, why = wrong[0]
        v(Violation("converged", f"{len(wrong)} of {len(sims)} simulated",
                    f"e.g. {s.device_id}: {why}"))  # fmt: skip
    seen: Counter[str] = Counter()
    for device, version, state in set(failures):
        expected = version in bad
        seen[f"{state.lower()} {'expected' if expected else 'unexpected'}"] += 1
        if not expected:
            v(Violation("no-false-rollback", device, f"{state} on good release {version}"))
    out.failures_seen = dict(sorted(seen.items()))
    outcomes: Counter[str] = Counter()
    for r in rollouts:
        outcomes[f"{'bad' if r.bad else 'good'} {r.outcome}"] += 1
        if not r.bad and r.outcome in {"rolled-back", "paused"}:
            v(Violation("no-false-rollback", f"rollout {r.rollout_id}",
                        f"good release {r.version} ended {r.outcome}"))  # fmt: skip
        if r.bad and r.outcome == "completed":
            v(Violation("bad-release-stopped", f"rollout {r.rollout_id}",
                        f"bad release {r.version} completed"))  # fmt: skip
        if r.outcome not in _ENDED:  # a stalled rollout is a defect, whatever devices run
            v(Violation("rollout-ended", f"rollout {r.rollout_id}",
                        f"{'bad' if r.bad else 'good'} release {r.version} {r.outcome} after "
                        f"{r.seconds:.0f} s"))  # fmt: skip
    out.rollouts = dict(sorted(outcomes.items()))
    return out


# How the driver's rollouts may end (a good one paused or rolled back, a bad one completed, are
# violations of their own); anything else (aborted (timed out), running, missing) did not end.
_ENDED = {"completed", "rolled-back", "paused"}


def _settled_version(rollouts: Sequence[RolloutRecord]) -> str | None:
    """The version every device is asked for when the records decide it: the last good release
    that completed, when nothing but bad releases rolled back came after it; else None."""
    settled = None
    for r in rollouts:
        if r.outcome == "completed" and not r.bad:
            settled = r.version
        elif not (r.bad and r.outcome == "rolled-back"):
            settled = None  # a rollout that ended otherwise may leave the fleet split
    return settled


def _counts(asked: Mapping[str, int]) -> str:
    return ", ".join(f"{ver or 'nothing'} of {n}" for ver, n in sorted(asked.items()))


def disagreement(runs: str, server: tuple[str, str, str], target: str, bad: set[str]) -> str:
    """Why one device has not converged ("" when it has): what it ``runs``, the server's view
    (its last update report's version and state, and the version it knows the device serves)
    and what the server asks of it (``target``)."""
    version, state, active = server
    if target in bad:
        return f"the server asks bad release {target} of it"
    if runs != target:
        return f"device runs {runs or 'nothing'}, the server asks {target or 'nothing'}"
    if active != target:
        return f"device runs {runs}, the server thinks it serves {active or 'nothing'}"
    if (version, state) == (target, INSTALLED):
        return ""
    if version in bad and state in {FAILED, ROLLED_BACK}:
        return ""  # the last attempt was a bad release, refused: the report stays the truth
    return f"device runs {runs}, the server's last update report says {version} {state}"


def _judge_messages(who: str, a: MessageAccount, ledger: Ledger | None, v: Any) -> None:
    if ledger is None:
        v(Violation("messages", who, f"server stored no message of epoch {a.epoch}"))
        return
    if ledger.epoch != a.epoch:
        v(Violation("messages", who, f"server's epoch {ledger.epoch} is not the spool's "
                    f"{a.epoch}"))  # fmt: skip
        return
    if a.lost:
        v(Violation("messages", who, f"server gave up {a.lost} message(s) as lost"))
    if a.missing:
        v(Violation("messages", who, f"{a.missing} of {a.sent} message(s) neither stored, "
                    f"dropped nor held by the device (stored {a.stored}, dropped {a.dropped}, "
                    f"held {a.held})"))  # fmt: skip
    if a.duplicates:
        v(Violation("messages", who, f"{a.duplicates} more stored than sent ({a.stored} of "
                    f"{a.sent}): duplicates counted"))  # fmt: skip
    if a.dropped > a.device_dropped:
        v(Violation("messages", who, f"server counts {a.dropped} dropped, the device only "
                    f"{a.device_dropped}"))  # fmt: skip


def render_table(out: Outcome) -> str:
    """The table printed at the end of a run."""
    lines = ["== faults injected =="]
    lines += [f"  {kind:16} {n:5d}" for kind, n in sorted(out.faults.items())] or ["  none"]
    lines.append("== messages (real agents, per epoch) ==")
    head = ("device", "sent", "stored", "dropped", "dev-drop", "held", "lost", "missing", "dups")
    lines.append("  {:22} {:>7} {:>7} {:>7} {:>8} {:>5} {:>5} {:>7} {:>5}".format(*head))
    total = Counter[str]()
    for a in out.accounts:
        row = (a.sent, a.stored, a.dropped, a.device_dropped, a.held, a.lost, a.missing,
               a.duplicates)  # fmt: skip
        lines.append("  {:22} {:7d} {:7d} {:7d} {:8d} {:5d} {:5d} {:7d} {:5d}".format(
            a.device[:22], *row))  # fmt: skip
        total.update(dict(zip(head[1:], row, strict=True)))
    lines.append("  {:22} {:7d} {:7d} {:7d} {:8d} {:5d} {:5d} {:7d} {:5d}".format(
        "total", *(total[h] for h in head[1:])))  # fmt: skip
    lines.append("== updates ==")
    lines += [f"  rollouts {k:24} {n:5d}" for k, n in out.rollouts.items()] or ["  no rollouts"]
    lines += [f"  device {k:26} {n:5d}" for k, n in out.failures_seen.items()]
    conv = "never" if out.convergence_s is None else f"{out.convergence_s:.1f} s"
    asked = ", ".join(f"{n} on {ver or 'nothing'}" for ver, n in out.targets.items())
    lines.append(f"  the server asks: {asked or 'nothing'}; converged after faults: {conv}")
    lines.append(f"== verdict: {'PASS' if not out.violations else 'FAIL'} "
                 f"({len(out.violations)} violation(s)) ==")  # fmt: skip
    lines += [f"  {x.line()}" for x in out.violations]
    return "\n".join(lines)
