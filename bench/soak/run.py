"""One soak run: start the fleet, load it, inject the schedule's faults, let it settle, observe
and judge (``bench.soak.check``). ``main`` is ``python -m bench.soak``."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from agent.updates.store import ModelStore
from bench.processes import log_tails
from bench.soak.check import (
    AgentView,
    SimView,
    check,
    disagreement,
    ledger_from_row,
    render_table,
)
from bench.soak.clock import set_offset
from bench.soak.faults import FaultRunner
from bench.soak.fleet import MODEL, Fleet, FleetOptions, SimLoop, proc_alive
from bench.soak.releases import ReleaseDriver
from bench.soak.schedule import parse_kinds, plan
from fleet_server.catalog.store import CatalogStore
from fleet_server.rollouts.desired import targets_for
from fleet_server.rollouts.store import RolloutStore
from fleet_server.storage.db import Database
from protos import inference_pb2, telemetry_pb2
from protos import inference_pb2_grpc as oip_grpc
from tests.harness import Agent, wait_for

__all__ = ["main"]

log = logging.getLogger("bench.soak")
MAX_MINUTES = 240.0
_MIN_SETTLE_S = 15.0  # long enough to see every agent's telemetry go on after the faults


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0, help="load and faults (default 10)")
    p.add_argument("--seed", type=int, default=19, help="fault schedule and choices (19)")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--broker", choices=("mosquitto", "embedded"), default="mosquitto")
    p.add_argument("--agents", type=int, default=5, help="real agents (default 5)")
    p.add_argument("--sims", type=int, default=300, help="simulated devices (default 300)")
    p.add_argument("--faults", default="all", help="all, ci, or kinds separated by commas")
    p.add_argument("--settle", type=float, default=120.0,
                   help="seconds for the last rollout to end, then as many for the fleet to "
                   "settle (max 600)")  # fmt: skip
    p.add_argument("--bad-share", type=float, default=0.25, help="share of bad releases")
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--keep", action="store_true", help="keep the run folder (logs, state)")
    args = p.parse_args(argv)
    if not 0.5 <= args.minutes <= MAX_MINUTES:
        p.error(f"--minutes must be within 0.5..{MAX_MINUTES:.0f}")
    if not 1 <= args.agents <= 20 or not 0 <= args.sims <= 2000:
        p.error("--agents must be within 1..20 and --sims within 0..2000")
    if not 10 <= args.settle <= 600 or not 0 <= args.bad_share <= 0.5:
        p.error("--settle must be within 10..600 and --bad-share within 0..0.5")
    try:
        args.kinds = parse_kinds(args.faults, postgres=args.db == "postgres")
    except ValueError as exc:
        p.error(str(exc))
    return args


class _StoppedError(Exception):
    """SIGTERM or SIGHUP: end the run the way Ctrl-C does, cleaning up."""


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise _StoppedError(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every invariant holds, 1 on a violation, 2 when it broke."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s soak %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-soak-"))
    log.info("run folder %s, seed %d, faults %s", folder, args.seed,
             ",".join(k.value for k in args.kinds))  # fmt: skip
    fleet = Fleet(folder, FleetOptions(args.agents, args.sims, args.broker, args.db))
    try:
        return _run(args, fleet)
    except (KeyboardInterrupt, _StoppedError) as exc:
        log.error("interrupted (%s); stopping everything", exc or "Ctrl-C")
        return 130
    except Exception:
        log.exception("the soak broke before its check; the processes' logs follow")
        print(log_tails(folder, lines=25), file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cleanup must not be interrupted
        fleet.close()
        if args.keep:
            log.info("kept %s", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _run(args: argparse.Namespace, fleet: Fleet) -> int:
    folder = fleet.folder
    fleet.create_database()
    if args.broker == "mosquitto":
        fleet.start_broker()
    fleet.start_server()
    releases = ReleaseDriver(fleet, folder, args.seed, bad_share=args.bad_share)
    first = releases.push(deploy=True)
    fleet.enroll_sims()
    stop = threading.Event()
    sims = SimLoop(fleet, stop)
    sims.start()
    fleet.add_agents()
    log.info("waiting for %d agents and %d simulated devices to install %s", args.agents,
             args.sims, first)  # fmt: skip
    wait_for(f"every device to install {first}", lambda: _converged(fleet, set()), timeout=300,
             interval=2.0)  # fmt: skip
    faults = plan(args.minutes * 60, args.kinds, args.seed)
    for fault in faults:
        log.info("planned: %s", fault.describe())
    runner = FaultRunner(fleet, faults, args.seed, lambda: releases.hashes.get(
        releases.records[-1].version if releases.records else first, ""))  # fmt: skip
    failures: set[tuple[str, str, str]] = set()
    crashes: list[str] = []
    t0 = time.monotonic()
    runner.start(t0, stop)
    releases.start(stop)
    with _watching(fleet, failures, crashes):
        stop.wait(args.minutes * 60)
        log.info("fault phase over: stopping the faults, settling for up to %.0f s", args.settle)
        stop.set()
        runner.join()
        releases.join()
        set_offset(fleet.clock_file, 0)
        settle_start = time.monotonic()
        restart_sims = threading.Event()
        sims.join()
        failures |= sims.failed
        sims = SimLoop(fleet, restart_sims)
        sims.start()  # the simulated devices keep checking in while the fleet settles
        # The last rollout ends first (within --settle), then the fleet gets --settle of its
        # own to converge, and telemetry is watched for at least _MIN_SETTLE_S of it.
        releases.finish(args.settle)
        window = time.monotonic()
        numbered = {a.name: _spool_seq(a) for a in fleet.agents}
        convergence = _settle(fleet, releases.bad, window + args.settle, settle_start)
        time.sleep(max(0.0, window + _MIN_SETTLE_S - time.monotonic()))
        served = {a.name: _served_version(a) for a in fleet.agents}
        numbered = {a.name: _spool_seq(a) - numbered[a.name] for a in fleet.agents}
    restart_sims.set()
    sims.join()
    fleet.stop_agents()
    time.sleep(5.0)  # the ingest stores what the agents published last
    failures |= sims.failed
    targets = _targets(fleet)
    agents = [
        replace(_agent_view(fleet, a, served[a.name], releases.hashes, targets),
                numbered_while_settling=numbered[a.name])
        for a in fleet.agents
    ]  # fmt: skip
    outcome = check(
        agents,
        _sim_views(fleet, targets),
        releases.records,
        failures,
        bad_versions=releases.bad,
        largest_artifact=releases.largest_artifact,
        faults=dict(runner.detail),
        convergence_s=convergence,
    )
    for what in crashes + [f"fault not injected: {e}" for e in runner.errors]:
        outcome.violations.append(_violation("processes", what))
    for error in releases.errors:
        outcome.violations.append(_violation("releases", error))
    print(render_table(outcome), flush=True)
    summary = outcome.summary() | {
        "seed": args.seed, "minutes": args.minutes, "db": args.db, "broker": args.broker,
        "agents": args.agents, "sims": args.sims, "sim_checkin_errors": sims.errors,
        "faults_planned": len(faults),
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if outcome.violations:
        print("\nlogs of the run (tails):", file=sys.stderr)
        print(log_tails(folder, lines=15), file=sys.stderr, flush=True)
        return 1
    return 0


def _violation(invariant: str, cause: str) -> Any:
    from bench.soak.check import Violation  # noqa: PLC0415 - keeps the import list short

    return Violation(invariant, "harness", cause)


@contextlib.contextmanager
def _watching(
    fleet: Fleet, failures: set[tuple[str, str, str]], crashes: list[str]
) -> Iterator[None]:
    """While the run goes on: record every FAILED or ROLLED_BACK report the server stores, and
    restart (as systemd would) any agent or server that died by itself, recording it."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(2.0):
            with contextlib.suppress(Exception):
                rows = fleet.rows("SELECT device_id, version, state FROM device_models WHERE "
                                  "model_name = :m AND state IN ('FAILED', 'ROLLED_BACK')",
                                  m=MODEL)  # fmt: skip
                failures.update((r["device_id"], r["version"], r["state"]) for r in rows)
            if not fleet.lock.acquire(blocking=False):
                continue  # a fault is restarting something right now
            try:
                _restart_the_dead(fleet, crashes)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("cannot restart a dead process: %s", exc)
            finally:
                fleet.lock.release()

    thread = threading.Thread(target=watch, name="soak-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(30)


def _restart_the_dead(fleet: Fleet, crashes: list[str]) -> None:
    for agent in fleet.agents:
        if agent.proc is not None and not proc_alive(agent.proc):
            code = agent.proc.popen.returncode
            if code != -signal.SIGKILL:
                crashes.append(f"{agent.name} exited by itself with status {code}")
                log.warning("%s exited with status %s; restarting it", agent.name, code)
            fleet.start_agent(agent)
    server = fleet.server
    if server is not None and not proc_alive(server.proc):
        code = server.proc.popen.returncode
        if code != -signal.SIGKILL:
            crashes.append(f"the server exited by itself with status {code}")
        fleet.start_server()


def _server_models(fleet: Fleet) -> dict[str, tuple[str, str, str]]:
    """Per device: the server's last update report (version, state) and the version it knows
    the device serves."""
    rows = fleet.rows("SELECT device_id, version, state, active_version FROM device_models "
                      "WHERE model_name = :m", m=MODEL)  # fmt: skip
    return {r["device_id"]: (str(r["version"]), str(r["state"]), str(r["active_version"] or ""))
            for r in rows}  # fmt: skip


def _targets(fleet: Fleet) -> dict[str, str]:
    """Per device: the version the server asks of it (its deployment, overridden by the
    rollouts that reached it), computed by the server's own code from its database."""
    db = Database(fleet.read_url)
    try:
        catalog = CatalogStore(db)
        rollouts = RolloutStore(db, catalog)
        deployments = catalog.deployments()
        ids = [fleet.device_id(a) for a in fleet.agents] + [s.device_id for s in fleet.sims]
        found = {d: targets_for(deployments, rollouts.desired_rows(d)).get(MODEL) for d in ids}
    finally:
        db.engine.dispose()
    return {d: t.version if t is not None else "" for d, t in found.items()}


def _journal_version(agent: Agent) -> str:
    with contextlib.suppress(Exception):
        entry = ModelStore(agent.folder / "state").active().get(MODEL)
        return entry.version if entry else ""
    return ""


def _converged(fleet: Fleet, bad: set[str]) -> bool:
    """Every device runs what the server asks of it, and the server knows."""
    server = _server_models(fleet)
    targets = _targets(fleet)
    runs = {fleet.device_id(a): _journal_version(a) for a in fleet.agents}
    runs |= {s.device_id: s.running.get(MODEL, "") for s in fleet.sims}
    return not any(
        disagreement(running, server.get(d, ("", "", "")), targets.get(d, ""), bad)
        for d, running in runs.items()
    )


def _caught_up(fleet: Fleet) -> bool:
    """The server stored (about) everything each agent's spool numbered so far."""
    rows = {r["device_id"]: r for r in fleet.rows("SELECT * FROM devices")}
    for agent in fleet.agents:
        epoch, seq, _dropped, _seqs = _spool(agent.folder / "state" / "spool.db")
        ledger = ledger_from_row(rows.get(fleet.device_id(agent), {}))
        if ledger is None or ledger.epoch != epoch or ledger.highest < seq - 3:
            return False
    return True


def _settle(fleet: Fleet, bad: set[str], deadline: float, start: float) -> float | None:
    """Wait until every device runs what the server asks of it and the agents' messages are
    stored; return the seconds convergence took (None: not within the deadline)."""
    converged_at: float | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if converged_at is None and _converged(fleet, bad):
                converged_at = time.monotonic()
                log.info("converged after %.1f s", converged_at - start)
            if converged_at is not None and _caught_up(fleet):
                break
        time.sleep(2.0)
    return None if converged_at is None else round(converged_at - start, 1)


def _served_version(agent: Agent) -> str:
    """The version the agent's local OIP API answers ready for ("" = none)."""
    with grpc.insecure_channel(f"unix:{agent.socket}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        try:
            meta = stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name=MODEL), timeout=5)
            for version in meta.versions:
                ready = stub.ModelReady(
                    inference_pb2.ModelReadyRequest(name=MODEL, version=version), timeout=5
                )
                if ready.ready:
                    return str(version)
        except grpc.RpcError as exc:
            log.warning("%s: OIP API: %s", agent.name, exc.code())
    return ""


def _spool(path: Path) -> tuple[str, int, int, tuple[int, ...]]:
    """A spool's epoch, last sequence number, dropped count and the numbers it still holds."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        seqs = []
        for kind, payload in db.execute("SELECT kind, payload FROM messages"):
            parsed: Any = (telemetry_pb2.TelemetryReport() if kind == "telemetry"
                           else telemetry_pb2.DeviceEvent())  # fmt: skip
            parsed.ParseFromString(bytes(payload))
            seqs.append(int(parsed.seq))
    finally:
        db.close()
    return str(meta["epoch"]), int(meta["seq"]), int(meta.get("dropped", 0)), tuple(seqs)


def _spool_seq(agent: Agent) -> int:
    """The last sequence number the agent's spool assigned (-1: unreadable)."""
    try:
        return _spool(agent.folder / "state" / "spool.db")[1]
    except (sqlite3.Error, OSError, KeyError):
        return -1


def _agent_view(
    fleet: Fleet, agent: Agent, served: str, hashes: dict[str, str], targets: dict[str, str]
) -> AgentView:
    state = agent.folder / "state"
    epoch, seq, dropped, seqs = _spool(state / "spool.db")
    device_id = fleet.device_id(agent)
    rows = fleet.rows("SELECT * FROM devices WHERE device_id = :d", d=device_id)
    server = _server_models(fleet).get(device_id, ("", "", ""))
    entry = ModelStore(state).active().get(MODEL)
    artifact_ok = expected_ok = False
    if entry is not None:
        path = ModelStore(state).artifact_path(MODEL, entry.sha256)
        artifact_ok = path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == (
            entry.sha256
        )
        expected_ok = hashes.get(entry.version) == entry.sha256
    staging = sum(p.stat().st_size for p in (state / "staging").glob("*") if p.is_file())
    return AgentView(
        name=agent.name,
        device_id=device_id,
        spool_epoch=epoch,
        spool_seq=seq,
        spool_dropped=dropped,
        spooled_seqs=seqs,
        spool_bound=fleet.options.spool_max,
        ledger=ledger_from_row(rows[0]) if rows else None,
        served_version=served,
        journal_version=entry.version if entry else "",
        artifact_ok=artifact_ok,
        expected_sha_ok=expected_ok,
        server_version=server[0],
        server_state=server[1],
        server_active=server[2],
        target=targets.get(device_id, ""),
        staging_bytes=staging,
    )


def _sim_views(fleet: Fleet, targets: dict[str, str]) -> list[SimView]:
    server = _server_models(fleet)
    views = []
    for sim in fleet.sims:
        version, state, active = server.get(sim.device_id, ("", "", ""))
        running = sim.running.get(MODEL, "")
        views.append(SimView(sim.device_id, running, version, state, active,
                             targets.get(sim.device_id, "")))  # fmt: skip
    return views
