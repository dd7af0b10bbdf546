"""Review of issue 19's ledger: what the agent forgets on the server's word."""

from __future__ import annotations

from agent.telemetry.spool import Delivery
from fleet_server.telemetry.sequence import Ledger, Verdict


def test_the_acknowledgement_never_covers_what_the_server_did_not_store() -> None:
    """Two replicas on one shared subscription take turns (the broker's round robin); one
    stalls (its database retrying, a kill -9 and restart) while the other stores every other
    number. Past 64 missing ranges the oldest are given up; the Delivery built from the ledger
    then says "stored" for them, so the agent forgets reports, and update events it never
    drops, that the server never stored; when the stalled replica's copies arrive they are
    discarded as duplicates."""
    ledger = Ledger()
    for seq in range(1, 300, 2):  # the replica that runs: the odd numbers
        ledger, _ = ledger.receive("e", seq)
    stored = set(range(1, 300, 2))
    for seq in range(2, 300, 2):  # the stalled one catches up: the even numbers
        ledger, verdict = ledger.receive("e", seq)
        if verdict != Verdict.DUPLICATE:
            stored.add(seq)
    delivery = Delivery(ledger.epoch, ledger.highest, ledger.missing)
    forgotten_unstored = [s for s in range(1, 300) if delivery.stored(s) and s not in stored]
    assert forgotten_unstored == []
