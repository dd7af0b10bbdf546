"""Rollouts and their devices in the database.

Every change to a rollout happens in one transaction that first locks the rollout's row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serializes writers), so several server
replicas ticking the same rollout cannot advance a wave, or start a scheduled rollout, twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from fleet_server.audit.store import record
from fleet_server.catalog.store import CatalogStore
from fleet_server.errors import BadRequestError, ConflictError, NotFoundError
from fleet_server.rollouts.assign import assign, outside_windows
from fleet_server.rollouts.members import BATCH, insert_devices, matching, replan
from fleet_server.rollouts.notices import announce
from fleet_server.rollouts.outcomes import Outcome, apply_update, record_outcome
from fleet_server.rollouts.plan import (
    TELEMETRY_FAILURE,
    Counts,
    Decision,
    HealthGate,
    assign_waves,
    decide,
    parse_waves,
    wave_targets,
)
from fleet_server.rollouts.schedule import check_start, iso_utc, start
from fleet_server.rollouts.states import (
    IN_EFFECT,
    LIVE,
    TICKING,
    DeviceState,
    Event,
    RolloutState,
    either,
    next_state,
    sources,
)
from fleet_server.rollouts.window_store import WindowStore, windows_in
from fleet_server.rollouts.windows import Window
from fleet_server.storage.db import Database, bump_generation, hold_writes
from fleet_server.storage.schema import deployments, models, releases, rollout_devices, rollouts

__all__ = [
    "BATCH",
    "DesiredRow",
    "FailureRow",
    "RolloutRow",
    "RolloutStore",
    "WaveRow",
]

_FAILURES_SHOWN = 20


@dataclass(frozen=True)
class WaveRow:
    index: int
    target: int
    counts: Counts
    stalled: int = 0
    unhealthy: int = 0  # failed by the telemetry health gate
    outside_window: int = 0  # of the waiting: held by a closed maintenance window now


@dataclass(frozen=True)
class FailureRow:
    device_id: str
    wave: int
    detail: str


@dataclass(frozen=True)
class RolloutRow:
    rollout_id: int
    model_name: str
    version: str
    previous_version: str | None
    selector: dict[str, str]
    waves: list[str]
    success_threshold: float
    failure_threshold: float
    max_concurrent: int
    device_timeout_s: int
    state: RolloutState
    current_wave: int
    reason: str
    created_at: int
    updated_at: int
    created_by: str
    rollback_envelope: bytes | None = None
    forgiven_failures: int = 0
    wave_status: tuple[WaveRow, ...] = field(default=())
    health_gate: HealthGate = field(default_factory=HealthGate)
    failures: tuple[FailureRow, ...] = field(default=())
    start_at: int | None = None  # when it starts (None: it started when created)
    started_at: int | None = None  # when it did (None: not yet)


@dataclass(frozen=True)
class DesiredRow:
    """One rollout's say about what a device runs."""

    rollout_id: int
    model_name: str
    version: str
    rollout_state: RolloutState
    device_state: DeviceState
    rollback_envelope: bytes | None


def _row(
    r: Any, wave_status: tuple[WaveRow, ...] = (), failures: tuple[FailureRow, ...] = ()
) -> RolloutRow:
    return RolloutRow(
        rollout_id=int(r["rollout_id"]),
        model_name=r["model_name"],
        version=r["version"],
        previous_version=r["previous_version"],
        selector=json.loads(r["selector"]),
        waves=json.loads(r["waves"]),
        success_threshold=float(r["success_threshold"]),
        failure_threshold=float(r["failure_threshold"]),
        max_concurrent=int(r["max_concurrent"]),
        device_timeout_s=int(r["device_timeout_s"]),
        state=RolloutState(r["state"]),
        current_wave=int(r["current_wave"]),
        reason=r["reason"],
        created_at=int(r["created_at"]),
        updated_at=int(r["updated_at"]),
        created_by=r["created_by"],
        rollback_envelope=bytes(r["rollback_envelope"]) if r["rollback_envelope"] else None,
        forgiven_failures=int(r["forgiven_failures"] or 0),
        wave_status=wave_status,
        health_gate=HealthGate.from_json(r["health_gate"]),
        failures=failures,
        start_at=None if r["start_at"] is None else int(r["start_at"]),
        started_at=None if r["started_at"] is None else int(r["started_at"]),
    )


def in_effect(row: DesiredRow) -> bool:
    """Whether a rollout assignment decides what the device runs.

    Waiting devices keep what they had; an aborted rollout keeps only the devices that had
    installed it; a rolled-back one sends every device it reached to the rollback manifest.
    """
    if row.rollout_state not in IN_EFFECT or row.device_state == DeviceState.WAITING:
        return False
    aborted = row.rollout_state == RolloutState.ABORTED
    return not (aborted and row.device_state != DeviceState.INSTALLED)


class RolloutStore:
    """Queries over rollouts and rollout devices."""

    def __init__(
        self, db: Database, catalog: CatalogStore, windows: WindowStore | None = None
    ) -> None:
        self._engine = db.engine
        self._catalog = catalog
        self.windows = windows or WindowStore(db)

    # creation and reading --------------------------------------------------------------------

    def create(
        self,
        *,
        model_name: str,
        version: str,
        selector: Mapping[str, str],
        waves: Sequence[str],
        success_threshold: float,
        failure_threshold: float,
        max_concurrent: int,
        device_timeout_s: int,
        created_by: str,
        allow_empty: bool = False,
        health_gate: HealthGate | None = None,
        start_at: int | None = None,
        now: int | None = None,
    ) -> RolloutRow:
        """Create a running rollout over the devices matching ``selector`` now, or with
        ``start_at`` (unix seconds) a scheduled one, which the controller starts then (planned
        afresh over the devices matching at that time).

        Raises:
            BadRequestError: bad waves, thresholds or start time.
            NotFoundError: no such model version.
            ConflictError: another rollout of the model is scheduled, running or paused.
            BadRequestError: no device matches and ``allow_empty`` is not set.
        """
        parsed = parse_waves(waves)
        for name, value in (("success", success_threshold), ("failure", failure_threshold)):
            if not 0 <= value <= 1:
                raise BadRequestError(f"{name} threshold {value} is outside 0..1")
        now = int(time.time()) if now is None else now
        if start_at is not None:
            check_start(start_at, now)
        self._catalog.get_model(model_name, version)
        with self._engine.begin() as conn:
            # Two creates of one model are ordered here: one finds the other's live rollout.
            hold_writes(conn)
            conn.execute(
                sa.select(releases.c.version)
                .where(releases.c.model_name == model_name)
                .with_for_update()
            ).all()
            # Still there under that lock, which a deletion of the version takes too: it went
            # first (refused here) or waits and then sees this rollout (and refuses).
            if (
                conn.execute(
                    sa.select(models.c.variant).where(
                        (models.c.model_name == model_name) & (models.c.version == version)
                    )
                ).first()
                is None
            ):
                raise NotFoundError(f"model {model_name} version {version} does not exist")
            live = conn.execute(
                sa.select(rollouts.c.rollout_id, rollouts.c.version, rollouts.c.state).where(
                    (rollouts.c.model_name == model_name) & rollouts.c.state.in_(sorted(LIVE))
                )
            ).first()
            if live is not None:
                raise ConflictError(
                    f"rollout {live[0]} of {model_name} ({live[1]}) is still {live[2]}; abort "
                    "it or let it complete first"
                )
            previous = self._previous_version(conn, model_name)
            result = conn.execute(
                rollouts.insert().values(
                    model_name=model_name,
                    version=version,
                    previous_version=previous if previous != version else None,
                    selector=json.dumps(dict(selector), sort_keys=True),
                    waves=json.dumps([str(w) for w in parsed]),
                    success_threshold=success_threshold,
                    failure_threshold=failure_threshold,
                    max_concurrent=max_concurrent,
                    device_timeout_s=device_timeout_s,
                    state=RolloutState.RUNNING if start_at is None else RolloutState.SCHEDULED,
                    current_wave=0,
                    reason="" if start_at is None else f"scheduled for {iso_utc(start_at)}",
                    created_at=now,
                    updated_at=now,
                    created_by=created_by[:128],
                    forgiven_failures=0,
                    health_gate=(health_gate or HealthGate()).to_json(),
                    start_at=start_at,
                    started_at=now if start_at is None else None,
                )
            )
            key = result.inserted_primary_key
            if key is None:  # pragma: no cover - every dialect we support returns it
                raise ConflictError("the database did not return the new rollout's id")
            rollout_id = int(key[0])
            targets = matching(conn, selector)
            if not targets and not allow_empty:
                wanted = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
                raise BadRequestError(
                    f"no enrolled device matches {wanted or 'the selector'}; check the labels "
                    "('edgefleet devices list'), or allow an empty rollout that devices "
                    "matching later will join"
                )
            insert_devices(conn, rollout_id, assign_waves(rollout_id, targets, parsed), now)
            bump_generation(conn)
        return self.get(rollout_id)

    @staticmethod
    def _previous_version(conn: sa.Connection, model_name: str) -> str | None:
        """What devices were told to run before: the newest completed rollout, else the
        fleet-wide deployment."""
        row = conn.execute(
            sa.select(rollouts.c.version)
            .where(
                (rollouts.c.model_name == model_name) & (rollouts.c.state == RolloutState.COMPLETED)
            )
            .order_by(rollouts.c.rollout_id.desc())
            .limit(1)
        ).first()
        if row is not None:
            return str(row[0])
        row = conn.execute(
            sa.select(deployments.c.version).where(deployments.c.model_name == model_name)
        ).first()
        return None if row is None else str(row[0])

    def get(self, rollout_id: int, now: int | None = None) -> RolloutRow:
        """One rollout with per-wave counts.

        Raises:
            NotFoundError: no such rollout.
        """
        now = int(time.time()) if now is None else now
        with self._engine.connect() as conn:
            r = (
                conn.execute(sa.select(rollouts).where(rollouts.c.rollout_id == rollout_id))
                .mappings()
                .first()
            )
            if r is None:
                raise NotFoundError(f"rollout {rollout_id} does not exist")
            waves = self._wave_status(conn, _row(r), now, windows_in(conn))
            failures = self._failures(conn, rollout_id)
        return _row(r, tuple(waves), failures)

    def list_rollouts(self, model_name: str = "") -> list[RolloutRow]:
        """Every rollout (of one model, when named), newest first, with per-wave counts."""
        query = sa.select(rollouts).order_by(rollouts.c.rollout_id.desc())
        if model_name:
            query = query.where(rollouts.c.model_name == model_name)
        now = int(time.time())
        with self._engine.connect() as conn:
            windows = windows_in(conn)
            result = []
            for r in conn.execute(query).mappings().all():
                result.append(_row(r, tuple(self._wave_status(conn, _row(r), now, windows))))
        return result

    @staticmethod
    def _failures(conn: sa.Connection, rollout_id: int) -> tuple[FailureRow, ...]:
        rows = conn.execute(
            sa.select(rollout_devices.c.device_id, rollout_devices.c.wave, rollout_devices.c.detail)
            .where(
                (rollout_devices.c.rollout_id == rollout_id)
                & (rollout_devices.c.state == DeviceState.FAILED)
            )
            .order_by(rollout_devices.c.updated_at.desc(), rollout_devices.c.device_id)
            .limit(_FAILURES_SHOWN)
        ).all()
        return tuple(FailureRow(str(d), int(w), str(t or "")) for d, w, t in rows)

    @staticmethod
    def _wave_status(
        conn: sa.Connection, rollout: RolloutRow, now: int, windows: Sequence[Window] = ()
    ) -> list[WaveRow]:
        """Per wave: its devices' states, and (with ``windows``, for a rollout that tells
        devices to update now) how many of the waiting ones a closed window holds."""
        c = rollout_devices.c

        def count_where(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
            return sa.func.sum(sa.case((condition, 1), else_=0))

        bake_s = 0 if rollout.health_gate.disabled else rollout.health_gate.bake_s
        rows = conn.execute(
            sa.select(
                c.wave,
                c.state,
                sa.func.count(),
                count_where(
                    (c.state == DeviceState.ASSIGNED)
                    & (c.assigned_at < now - rollout.device_timeout_s)
                ),
                count_where((c.state == DeviceState.INSTALLED) & (c.updated_at <= now - bake_s)),
                count_where(
                    (c.state == DeviceState.FAILED) & c.detail.startswith(TELEMETRY_FAILURE)
                ),
            )
            .where(c.rollout_id == rollout.rollout_id)
            .group_by(c.wave, c.state)
        ).all()
        per_wave: dict[int, dict[str, int]] = {}
        extra: dict[int, list[int]] = {}
        for wave, state, count, *more in rows:
            per_wave.setdefault(int(wave), {})[str(state)] = int(count)
            sums = extra.setdefault(int(wave), [0, 0, 0])
            for i, value in enumerate(more):
                sums[i] += int(value or 0)
        total = sum(sum(v.values()) for v in per_wave.values())
        targets = wave_targets(parse_waves(rollout.waves), total)
        done = rollout.state == RolloutState.COMPLETED
        up_to = len(targets) - 1 if done else rollout.current_wave
        telling = done or rollout.state == RolloutState.RUNNING
        held = outside_windows(conn, rollout.rollout_id, up_to, windows, now) if telling else {}
        result = []
        for index, target in enumerate(targets):
            states = per_wave.get(index, {})
            stalled, baked, unhealthy = extra.get(index, [0, 0, 0])
            counts = Counts(
                devices=sum(states.values()),
                waiting=states.get(DeviceState.WAITING, 0),
                assigned=states.get(DeviceState.ASSIGNED, 0),
                installed=states.get(DeviceState.INSTALLED, 0),
                failed=states.get(DeviceState.FAILED, 0),
                baked=baked,
            )
            result.append(WaveRow(index, target, counts, stalled, unhealthy, held.get(index, 0)))
        return result

    # admin transitions -----------------------------------------------------------------------

    def transition(self, rollout_id: int, event: Event, reason: str) -> RolloutRow:
        """Move a rollout on by an admin's ``event`` (see :data:`states.TRANSITIONS`).

        Raises:
            NotFoundError: no such rollout.
            ConflictError: the event may not happen in the rollout's state.
        """
        with self._engine.begin() as conn:
            state = self._lock(conn, rollout_id)
            started = conn.execute(
                sa.select(rollouts.c.started_at).where(rollouts.c.rollout_id == rollout_id)
            ).scalar_one()
            to = next_state(state, event, started=started is not None)
            if to is None:
                allowed = either(sources(event))
                raise ConflictError(f"rollout {rollout_id} is {state}; this needs it {allowed}")
            if to != state:
                values: dict[str, Any] = {}
                if to == RolloutState.RUNNING:
                    # Resuming accepts the failures seen so far; only new ones can pause again.
                    values["forgiven_failures"] = conn.execute(
                        sa.select(sa.func.count()).where(
                            (rollout_devices.c.rollout_id == rollout_id)
                            & (rollout_devices.c.state == DeviceState.FAILED)
                        )
                    ).scalar_one()
                now = int(time.time())
                conn.execute(
                    rollouts.update()
                    .where(rollouts.c.rollout_id == rollout_id)
                    .values(state=to, reason=reason[:1024], updated_at=now, **values)
                )
                announce(conn, rollout_id, to, reason[:1024], by="admin", now=now)
                bump_generation(conn)
        return self.get(rollout_id)

    def set_rollback(self, rollout_id: int, envelope: bytes, reason: str) -> RolloutRow:
        """Send every device the rollout reached to a root-signed rollback manifest."""
        with self._engine.begin() as conn:
            state = self._lock(conn, rollout_id)
            if next_state(state, Event.ROLL_BACK) is None:
                raise ConflictError(f"rollout {rollout_id} is {state} already")
            conn.execute(
                rollouts.update()
                .where(rollouts.c.rollout_id == rollout_id)
                .values(
                    state=RolloutState.ROLLED_BACK,
                    reason=reason[:1024],
                    rollback_envelope=envelope,
                    updated_at=int(time.time()),
                )
            )
            announce(conn, rollout_id, RolloutState.ROLLED_BACK, reason[:1024], by="admin",
                     now=int(time.time()))  # fmt: skip
            bump_generation(conn)
        return self.get(rollout_id)

    def supersede(self, model_name: str, *, spare_live: bool = False) -> list[int]:
        """A fleet-wide deployment replaces every rollout of the model; return their ids. With
        ``spare_live``, a running or paused one is left as it is: one the deploy's caller did
        not agree to end (it started after the caller's check) goes on."""
        ending = IN_EFFECT - LIVE if spare_live else IN_EFFECT
        with self._engine.begin() as conn:
            hold_writes(conn)
            ids = [
                int(r[0])
                for r in conn.execute(
                    sa.select(rollouts.c.rollout_id)
                    .where(
                        (rollouts.c.model_name == model_name) & rollouts.c.state.in_(sorted(ending))
                    )
                    .with_for_update()
                )
            ]
            if ids:
                conn.execute(
                    rollouts.update()
                    .where(rollouts.c.rollout_id.in_(ids))
                    .values(
                        state=RolloutState.SUPERSEDED,
                        reason="a fleet-wide deployment replaced it",
                        updated_at=int(time.time()),
                    )
                )
                bump_generation(conn)
        return ids

    def versions_in_effect(self) -> set[tuple[str, str]]:
        """(model, version) of every rollout whose assignments may decide what a device runs."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(rollouts.c.model_name, rollouts.c.version)
                .where(rollouts.c.state.in_(sorted(IN_EFFECT)))
                .distinct()
            ).all()
        return {(str(r[0]), str(r[1])) for r in rows}

    @staticmethod
    def _lock(conn: sa.Connection, rollout_id: int) -> RolloutState:
        hold_writes(conn)  # SQLite: FOR UPDATE below is a no-op there
        row = conn.execute(
            sa.select(rollouts.c.state).where(rollouts.c.rollout_id == rollout_id).with_for_update()
        ).first()
        if row is None:
            raise NotFoundError(f"rollout {rollout_id} does not exist")
        return RolloutState(row[0])

    # the controller ----------------------------------------------------------------------------

    def ticking(self, now: int | None = None) -> list[int]:
        """Rollouts the controller looks after: live ones, completed ones (late joiners), and
        scheduled ones whose start time has come."""
        now = int(time.time()) if now is None else now
        due = (rollouts.c.state == RolloutState.SCHEDULED) & (rollouts.c.start_at <= now)
        query = sa.select(rollouts.c.rollout_id).where(rollouts.c.state.in_(sorted(TICKING)) | due)
        with self._engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(query.order_by(rollouts.c.rollout_id))]

    def tick(self, rollout_id: int, now: int | None = None) -> tuple[Decision, list[str]]:
        """One controller step: start a scheduled rollout whose time has come, or add late
        joiners, judge the current wave, advance, complete or pause, and assign waiting devices
        (inside their maintenance windows) up to the concurrency cap.

        Returns the decision and the devices assigned now (to nudge).
        """
        now = int(time.time()) if now is None else now
        with self._engine.begin() as conn:
            state = self._lock(conn, rollout_id)
            r = _row(
                conn.execute(sa.select(rollouts).where(rollouts.c.rollout_id == rollout_id))
                .mappings()
                .one()
            )
            if state == RolloutState.SCHEDULED:
                return self._start(conn, r, now)
            if state not in TICKING:
                return Decision("wait"), []
            waves = parse_waves(r.waves)
            last = len(waves) - 1
            joiners = matching(conn, r.selector, exclude_rollout=rollout_id)
            insert_devices(conn, rollout_id, dict.fromkeys(joiners, last), now)
            if state == RolloutState.PAUSED:
                return Decision("wait", r.reason), []
            current = r.current_wave
            decision = Decision("wait")
            if state == RolloutState.RUNNING:
                counts = [w.counts for w in self._wave_status(conn, r, now)]
                decision = decide(
                    counts,
                    current,
                    r.success_threshold,
                    r.failure_threshold,
                    r.forgiven_failures,
                )
                values: dict[str, Any] = {}
                if decision.action == "advance":
                    current += 1
                    values = {"current_wave": current, "reason": f"wave {current} started"}
                elif decision.action == "complete":
                    values = {
                        "state": next_state(state, Event.COMPLETE),
                        "reason": "every wave reached its threshold",
                    }
                elif decision.action == "pause":
                    latest = self._failures(conn, rollout_id)[:1]
                    reason = decision.reason + "".join(
                        f"; latest: {f.device_id}: {f.detail or 'failed'}" for f in latest
                    )
                    values = {"state": next_state(state, Event.GATE), "reason": reason[:1024]}
                if values:
                    conn.execute(
                        rollouts.update()
                        .where(rollouts.c.rollout_id == rollout_id)
                        .values(updated_at=now, **values)
                    )
                if "state" in values:
                    announce(conn, rollout_id, values["state"], values["reason"],
                             by="controller", now=now)  # fmt: skip
                if decision.action == "pause":
                    return decision, []
            up_to = last if state == RolloutState.COMPLETED else current
            assigned = self._tell(conn, r, up_to, now)
            if assigned or decision.action != "wait":
                bump_generation(conn)
        return decision, assigned

    def _start(self, conn: sa.Connection, r: RolloutRow, now: int) -> tuple[Decision, list[str]]:
        """Start a scheduled rollout whose time has come (in the step's transaction, under its
        row lock: one replica starts it, once): plan it over the devices matching now, audit
        it, and tell the first wave."""
        begun = start(r.start_at if r.start_at is not None else r.created_at, now)
        if not begun.due:  # this replica's clock is behind the one that listed it as due
            return Decision("wait", begun.reason), []
        devices_now = replan(conn, r.rollout_id, r.selector, parse_waves(r.waves), now)
        running = next_state(RolloutState.SCHEDULED, Event.START)
        conn.execute(
            rollouts.update()
            .where(rollouts.c.rollout_id == r.rollout_id)
            .values(state=running, reason=begun.reason[:1024], started_at=now, updated_at=now)
        )
        detail = {"model": r.model_name, "version": r.version, "devices": devices_now,
                  "start_at": iso_utc(r.start_at or now), "late_s": begun.late_s}  # fmt: skip
        record(conn, "server", "StartScheduledRollout", f"rollout {r.rollout_id}",
               json.dumps(detail, sort_keys=True), ok=True, at=now)  # fmt: skip
        assigned = self._tell(conn, r, 0, now)
        bump_generation(conn)
        return Decision("start", f"{begun.reason}, over {devices_now} device(s)"), assigned

    @staticmethod
    def _tell(conn: sa.Connection, r: RolloutRow, up_to_wave: int, now: int) -> list[str]:
        return assign(
            conn,
            rollout_id=r.rollout_id,
            model_name=r.model_name,
            version=r.version,
            up_to_wave=up_to_wave,
            max_concurrent=r.max_concurrent,
            device_timeout_s=r.device_timeout_s,
            windows=windows_in(conn),
            now=now,
        )

    # what devices see and say ------------------------------------------------------------------

    def desired_rows(self, device_id: str) -> list[DesiredRow]:
        """The rollouts that reached a device, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    rollouts.c.rollout_id,
                    rollouts.c.model_name,
                    rollouts.c.version,
                    rollouts.c.state,
                    rollout_devices.c.state,
                    rollouts.c.rollback_envelope,
                )
                .select_from(rollout_devices.join(rollouts))
                .where(rollout_devices.c.device_id == device_id)
                .order_by(rollouts.c.rollout_id)
            ).all()
        return [
            DesiredRow(
                int(a), str(b), str(c), RolloutState(d), DeviceState(e), bytes(f) if f else None
            )
            for a, b, c, d, e, f in rows
        ]

    def report(
        self,
        device_id: str,
        model_name: str,
        version: str,
        outcome: DeviceState,
        detail: str = "",
    ) -> None:
        """Record a device's update outcome in the live rollouts of that model and version.

        ``outcome`` is INSTALLED or FAILED; a failure after an install (a health rollback)
        counts as a failure. An install starts the health gate's count afresh.
        """
        with self._engine.begin() as conn:
            record_outcome(conn, device_id, model_name, version, outcome, detail, int(time.time()))

    def apply_update(self, outcome: Outcome) -> bool:
        """Record an update step a device reported (see :func:`outcomes.apply_update`)."""
        with self._engine.begin() as conn:
            return apply_update(conn, outcome, int(time.time()))
