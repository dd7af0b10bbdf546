"""A rollout's states and the one table that moves it: the table's properties, and the store
following it (hypothesis walks of admin and controller events over a real SQLite file)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import ConflictError
from fleet_server.registry.store import DeviceStore
from fleet_server.rollouts.states import (
    IN_EFFECT,
    LIVE,
    TRANSITIONS,
    Event,
    RolloutState,
    next_state,
    sources,
)
from fleet_server.rollouts.store import RolloutStore
from fleet_server.storage.db import Database

S = RolloutState
ADMIN = (Event.PAUSE, Event.RESUME, Event.ABORT)


def test_superseded_is_final_and_only_a_resume_or_a_scheduled_start_runs_again() -> None:
    assert not [e for (s, e) in TRANSITIONS if s == S.SUPERSEDED]
    into_running = {(s, e) for (s, e), to in TRANSITIONS.items() if to == S.RUNNING}
    assert into_running == {(S.PAUSED, Event.RESUME), (S.SCHEDULED, Event.START)}
    # Nothing goes back to scheduled but a resume of a rollout paused before its start.
    assert not [to for to in TRANSITIONS.values() if to == S.SCHEDULED]
    assert next_state(S.PAUSED, Event.RESUME, started=False) == S.SCHEDULED
    # A rolled-back rollout stays rolled back until a deployment supersedes it.
    assert [e for (s, e) in TRANSITIONS if s == S.ROLLED_BACK] == [Event.SUPERSEDE]
    # Every state but the final one is in effect; only scheduled, running and paused are live.
    assert set(S) - IN_EFFECT == {S.SUPERSEDED}
    assert {S.SCHEDULED, S.RUNNING, S.PAUSED} == LIVE


@given(st.sampled_from(list(S)), st.sampled_from(list(Event)))
def test_the_table_and_its_refusals_agree(state: RolloutState, event: Event) -> None:
    to = next_state(state, event)
    assert (to is not None) == (state in sources(event))
    if to is not None:
        assert to in S
        # Nothing leaves the set of rollouts in effect except a supersession.
        assert to in IN_EFFECT or event == Event.SUPERSEDE


def _store(folder: Path) -> tuple[Database, RolloutStore, int]:
    db = Database(f"sqlite:///{folder / 'fleet.db'}")
    db.create_schema()
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", 0))
    DeviceStore(db).add_device("cam", "t", {}, {})
    rollouts = RolloutStore(db, catalog)
    row = rollouts.create(
        model_name="m",
        version="1.0.0",
        selector={},
        waves=["100%"],
        success_threshold=0.9,
        failure_threshold=0.1,
        max_concurrent=0,
        device_timeout_s=60,
        created_by="test",
    )
    return db, rollouts, row.rollout_id


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([*ADMIN, Event.SUPERSEDE, Event.ROLL_BACK]), max_size=8))
def test_the_store_moves_rollouts_exactly_as_the_table_says(events: list[Event]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db, rollouts, rollout_id = _store(Path(folder))
        expected = S.RUNNING
        for event in events:
            to = next_state(expected, event)
            try:
                if event in ADMIN:
                    rollouts.transition(rollout_id, event, f"{event} by test")
                elif event == Event.SUPERSEDE:
                    rollouts.supersede("m")
                else:
                    rollouts.set_rollback(rollout_id, b"rollback", "rolled back by test")
            except ConflictError as exc:
                assert to is None, f"{event} refused in {expected}: {exc}"
                assert f"is {expected}" in str(exc)
            else:
                # A supersession of a superseded rollout finds nothing to do, and says nothing.
                assert to is not None or (event == Event.SUPERSEDE and expected == S.SUPERSEDED)
                expected = to or expected
            assert rollouts.get(rollout_id).state == expected
        db.close()


def test_a_refused_admin_event_names_the_states_it_needs(tmp_path: Path) -> None:
    db, rollouts, rollout_id = _store(tmp_path)
    with pytest.raises(ConflictError, match=r"is running; this needs it paused"):
        rollouts.transition(rollout_id, Event.RESUME, "resume")
    rollouts.transition(rollout_id, Event.ABORT, "abort")
    with pytest.raises(
        ConflictError, match=r"is aborted; this needs it scheduled, running or paused$"
    ):
        rollouts.transition(rollout_id, Event.PAUSE, "pause")
    db.close()


def test_a_deploy_without_force_ends_no_rollout_that_started_after_its_check(
    tmp_path: Path,
) -> None:
    # Deploy checks for live rollouts, then supersedes: one started in between (another admin)
    # was ended silently. Without --force, the supersession spares live rollouts.
    db, rollouts, rollout_id = _store(tmp_path)
    assert rollouts.supersede("m", spare_live=True) == []
    assert rollouts.get(rollout_id).state == S.RUNNING
    rollouts.transition(rollout_id, Event.PAUSE, "pause")
    assert rollouts.supersede("m", spare_live=True) == []  # paused is live too
    assert rollouts.supersede("m") == [rollout_id]  # --force
    assert rollouts.get(rollout_id).state == S.SUPERSEDED
    db.close()
