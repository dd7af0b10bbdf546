"""The proving ground of issue 19: a soak that shows nothing a device reports is lost or
misread under faults (``make soak``, ``make soak-ci``).

Run it::

    python -m bench.soak --minutes 10                       # make soak
    python -m bench.soak --minutes 2 --agents 3 --sims 100 --faults ci   # make soak-ci
    python -m bench.soak --db postgres --broker embedded --seed 7 --json soak.json

It starts, in a temporary folder on loopback: a real fleet server (SQLite, or with ``--db
postgres`` a database of its own on 127.0.0.1:5432 reached through a proxy the harness can cut,
dropped at the end), a private mosquitto (or the server's embedded broker), real agents with a
1 s telemetry interval, each with its own state dir, reaching the device port through a proxy,
and simulated devices (``fleet_server.simulator``) checking in through the real device API. It
rolls out releases of a small real model back to back with ``edgefleet rollouts``, a share of
them deliberately bad (their smoke test fails on every device; the rollout pauses at its
failure gate and is rolled back: an expected rollback). Meanwhile it injects the faults of a
schedule drawn from ``--seed`` (``bench.soak.schedule``):

- ``broker-restart``: mosquitto stopped (it saves its persistence file) and started again;
- ``broker-lossy``: mosquitto SIGKILLed and started without its persistence file: everything it
  had acknowledged but not delivered is gone;
- ``server-kill``: the fleet server SIGKILLed and started again (the embedded broker with it);
- ``db-cut`` (PostgreSQL runs): every connection to the database reset, new ones refused, for
  20-60 s;
- ``agent-kill``: an agent SIGKILLed while its state dir shows an update DOWNLOADING or
  VERIFIED (or, when none shows within 30 s, wherever it is), then started again;
- ``disk-full``: agent 0's state dir is a 12 MB tmpfs; a filler file fills it, then goes;
- ``link-cut``: the agents' link to the device port reset while a download runs;
- ``clock-step``: agent 1's wall clock stepped (an LD_PRELOAD shim, ``bench.soak.clock``;
  monotonic clocks untouched), every other step back to the true time.

Then it stops injecting, lets the fleet settle (``--settle``, bounded), and checks
(``bench.soak.check``): every agent serves a verified model of the version the last good
rollout asked for; server and devices agree on versions; per agent and epoch, messages
stored + counted as dropped by the device + still held by the device = sent (the spool's last
sequence number), with none lost or duplicated; no unexpected FAILED or ROLLED_BACK; spools
within their bound; staging within 2x the largest artifact. It prints a table (and
``--json``), one line per violation with its cause and the tails of the processes' logs, and
exits 1 on a violation (2 when the harness itself broke). Everything it started is stopped and
removed at the end, also on Ctrl-C or SIGTERM; ``--keep`` keeps the run folder.
"""

__all__: list[str] = []
