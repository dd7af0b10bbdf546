"""The soak's pure parts (bench.soak): the invariant check on hand-made observations and the
fault schedule's determinism. No process is started here."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from bench.soak.check import (
    AgentView,
    Ledger,
    RolloutRecord,
    SimView,
    account_messages,
    check,
    ledger_from_row,
    render_table,
)
from bench.soak.schedule import CI_FAULTS, FaultKind, parse_kinds, plan

EPOCH = "0123456789abcdef"


def ledger(**kw: Any) -> Ledger:
    base: dict[str, Any] = {"epoch": EPOCH, "highest": 100, "missing": (), "stored": 100,
                            "dropped": 0, "lost": 0, "source": "ledger"}  # fmt: skip
    return Ledger(**(base | kw))


def agent(**kw: Any) -> AgentView:
    base: dict[str, Any] = {
        "name": "soak-agent-0", "device_id": "soak-agent-0", "spool_epoch": EPOCH,
        "spool_seq": 100, "spool_dropped": 0, "spooled_seqs": (), "spool_bound": 2000,
        "ledger": ledger(), "served_version": "1.2.0", "journal_version": "1.2.0",
        "artifact_ok": True, "expected_sha_ok": True, "server_version": "1.2.0",
        "server_state": "INSTALLED", "server_active": "1.2.0", "target": "1.2.0",
        "staging_bytes": 0,
    }  # fmt: skip
    return AgentView(**(base | kw))


def judge(agents: list[AgentView], **kw: Any) -> list[str]:
    args: dict[str, Any] = {
        "sims": [SimView("sim-1", "1.2.0", "1.2.0", "INSTALLED", "1.2.0", "1.2.0")],
        "rollouts": [RolloutRecord(1, "1.1.0", bad=True, outcome="rolled-back", seconds=9.0),
                     RolloutRecord(2, "1.2.0", bad=False, outcome="completed", seconds=7.0)],
        "failures": [("sim-1", "1.1.0", "FAILED")],
    }  # fmt: skip
    args |= kw
    out = check(agents, args["sims"], args["rollouts"], args["failures"],
                bad_versions={"1.1.0"}, largest_artifact=1000, faults={"server-kill": 2},
                convergence_s=12.5)  # fmt: skip
    assert render_table(out)  # the table renders whatever the verdict
    return [f"{v.invariant}: {v.cause}" for v in out.violations]


def test_a_clean_run_passes_and_counts_the_expected_failure() -> None:
    assert judge([agent()]) == []
    out = check([agent()], [], [], [("sim-1", "1.1.0", "FAILED")], bad_versions={"1.1.0"},
                largest_artifact=1000, faults={}, convergence_s=None)  # fmt: skip
    assert out.failures_seen == {"failed expected": 1}
    assert json.loads(json.dumps(out.summary()))["ok"] is True


def test_every_message_sent_is_stored_dropped_or_still_held() -> None:
    # 100 sent: 90 stored, 4 dropped by the device's bound, 6 still in its spool.
    held = ledger(highest=94, stored=90, dropped=4)
    view = agent(ledger=held, spool_dropped=4, spooled_seqs=tuple(range(95, 101)))
    assert judge([view]) == []


def test_a_message_neither_stored_nor_dropped_nor_held_is_a_violation() -> None:
    view = agent(ledger=ledger(stored=99))
    assert judge([view]) == [
        "messages: 1 of 100 message(s) neither stored, dropped nor held by the device "
        "(stored 99, dropped 0, held 0)"
    ]


def test_todays_counters_show_a_false_duplicate_as_a_loss() -> None:
    # Today's server: seq 7 arrived after 8, was dropped as a duplicate and 7 counted lost.
    row = {"telemetry_epoch": EPOCH, "last_telemetry_seq": 100, "telemetry_count": 99,
           "telemetry_gaps": 1}  # fmt: skip
    parsed = ledger_from_row(row)
    assert parsed is not None and parsed.source == "counters"
    problems = judge([agent(ledger=parsed)])
    assert "messages: server gave up 1 message(s) as lost" in problems
    assert any("1 of 100 message(s) neither stored" in p for p in problems)


def test_the_ledger_column_wins_over_the_counters() -> None:
    spec = {"epoch": EPOCH, "highest": 50, "missing": [[10, 12]], "stored": 47, "dropped": 0,
            "lost": 0}  # fmt: skip
    row = {"telemetry_ledger": json.dumps(spec), "telemetry_epoch": "old", "telemetry_count": 3}
    parsed = ledger_from_row(row)
    assert parsed == Ledger(EPOCH, 50, ((10, 12),), 47, 0, 0, "ledger")
    # The missing range is still awaited: the device holds it, so nothing is unexplained.
    account = account_messages("d", epoch=EPOCH, sent=50, device_dropped=0,
                               spooled=[10, 11, 12], ledger=parsed)  # fmt: skip
    assert (account.held, account.missing, account.duplicates) == (3, 0, 0)
    assert ledger_from_row({"telemetry_ledger": None, "telemetry_epoch": EPOCH}) is None
    with pytest.raises(ValueError, match="not the documented JSON"):
        ledger_from_row({"telemetry_ledger": '{"epoch": "x"}'})


def test_more_stored_than_sent_and_a_foreign_epoch_are_violations() -> None:
    assert judge([agent(ledger=ledger(stored=101))]) == [
        "messages: 1 more stored than sent (101 of 100): duplicates counted"
    ]
    assert judge([agent(ledger=ledger(epoch="feedfacefeedface"))]) == [
        f"messages: server's epoch feedfacefeedface is not the spool's {EPOCH}"
    ]
    assert judge([agent(ledger=ledger(dropped=3, stored=97), spool_dropped=1)]) == [
        "messages: server counts 3 dropped, the device only 1"
    ]


def test_serving_convergence_and_bounds() -> None:
    problems = judge([agent(served_version="", journal_version="1.1.0", artifact_ok=False,
                            spooled_seqs=tuple(range(1, 12)), spool_bound=10,
                            staging_bytes=2001)])  # fmt: skip
    assert problems[:2] == [
        "serving: local API serves nothing ready, not 1.2.0",
        "serving: journal's 1.1.0 artifact is missing or does not match its hash",
    ]
    assert "converged: device runs 1.1.0, the server asks 1.2.0" in problems
    assert "spool-bound: 11 messages spooled, bound 10" in problems
    assert any(p.startswith("staging-bound: staging holds 2001 bytes") for p in problems)
    stale = [SimView("sim-1", "1.2.0", "1.1.0", "INSTALLED", "1.1.0", "1.2.0"),
             SimView("sim-2", "1.2.0", "1.2.0", "INSTALLED", "1.2.0", "1.2.0")]  # fmt: skip
    assert judge([agent()], sims=stale) == [
        "converged: e.g. sim-1: device runs 1.2.0, the server thinks it serves 1.1.0"
    ]


def test_converged_is_what_the_server_asks_of_each_device_and_what_it_knows() -> None:
    # The 30-minute run of 2026-11-30: the last attempt was a bad release, refused; the device
    # serves what the server asks of it and the server knows. Converged.
    refused = agent(server_version="1.1.0", server_state="FAILED")
    assert judge([refused]) == []
    # An aborted rollout leaves some devices on its version: they are asked for it (the
    # rollout itself, which did not end, is a violation of its own).
    kept = agent(target="1.3.0", served_version="1.3.0", journal_version="1.3.0",
                 server_version="1.3.0", server_active="1.3.0")  # fmt: skip
    timed_out = RolloutRecord(3, "1.3.0", bad=False, outcome="aborted (timed out)", seconds=150)
    ended = [RolloutRecord(2, "1.2.0", bad=False, outcome="completed", seconds=7.0), timed_out]
    assert judge([kept], rollouts=ended) == [
        "rollout-ended: good release 1.3.0 aborted (timed out) after 150 s"
    ]
    # An attempt of a good release the server still shows in flight is not the truth.
    assert judge([agent(server_version="1.3.0", server_state="DOWNLOADING")]) == [
        "converged: device runs 1.2.0, the server's last update report says 1.3.0 DOWNLOADING"
    ]
    # A failure of a good release is not accepted as a last report either.
    assert judge([agent(server_version="1.3.0", server_state="FAILED")]) == [
        "converged: device runs 1.2.0, the server's last update report says 1.3.0 FAILED"
    ]
    assert judge([agent(server_active="1.1.0")]) == [
        "converged: device runs 1.2.0, the server thinks it serves 1.1.0"
    ]
    assert judge([agent(target="1.1.0", served_version="1.1.0", journal_version="1.1.0")]) \
        == ["targets: the server asks 1.1.0 of 1, not 1.2.0, whose rollout completed and was "
            "the last to change the fleet",
            "converged: the server asks bad release 1.1.0 of it"]  # fmt: skip


def test_failures_of_good_releases_and_bad_releases_that_complete_are_violations() -> None:
    problems = judge(
        [agent()],
        failures=[("soak-agent-0", "1.2.0", "ROLLED_BACK")],
        rollouts=[RolloutRecord(1, "1.1.0", bad=True, outcome="completed", seconds=5.0),
                  RolloutRecord(2, "1.2.0", bad=False, outcome="paused", seconds=5.0)],
    )  # fmt: skip
    assert problems == [
        "no-false-rollback: ROLLED_BACK on good release 1.2.0",
        "bad-release-stopped: bad release 1.1.0 completed",
        "no-false-rollback: good release 1.2.0 ended paused",
    ]


def test_the_schedule_is_a_function_of_its_seed() -> None:
    kinds = parse_kinds("all", postgres=True)
    first = plan(600, kinds, seed=19)
    assert first == plan(600, kinds, seed=19)
    assert first != plan(600, kinds, seed=20)
    assert {f.kind for f in first} == set(FaultKind)  # ten minutes hold every kind
    for before, after in itertools.pairwise(first):
        assert after.at_s >= before.at_s + before.hold_s  # no two faults overlap
    assert all(f.at_s >= 60 and f.at_s + f.hold_s <= 540 for f in first)


def test_the_ci_schedule_injects_each_of_its_kinds_within_two_minutes() -> None:
    faults = plan(120, parse_kinds("ci", postgres=False), seed=19)
    assert {f.kind for f in faults} == set(CI_FAULTS)


def test_fault_names_are_checked() -> None:
    assert parse_kinds("server-kill,disk-full", postgres=False) == (
        FaultKind.SERVER_KILL,
        FaultKind.DISK_FULL,
    )
    with pytest.raises(ValueError, match="unknown fault 'disk-ful'"):
        parse_kinds("disk-ful", postgres=False)
    with pytest.raises(ValueError, match="db-cut needs --db postgres"):
        parse_kinds("db-cut", postgres=False)
    assert FaultKind.DB_CUT not in parse_kinds("all", postgres=False)


def test_an_agent_whose_telemetry_stopped_is_a_violation() -> None:
    # Issue 19: after a brief disk-full the telemetry loop ended for the process's life.
    assert judge([agent(numbered_while_settling=0)]) == [
        "telemetry-alive: its spool numbered no message while the fleet settled: telemetry stopped"
    ]
    assert judge([agent(numbered_while_settling=12)]) == []
