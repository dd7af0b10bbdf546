"""The soak's real processes and their restarts: mosquitto, the fleet server, PostgreSQL's
database, real agents (one on a small tmpfs, one on a shifted wall clock) and simulated devices.

Everything listens on 127.0.0.1 on fixed ports picked free at the start, so a restarted broker
or server comes back where its clients look for it. ``Fleet.close`` stops and removes all of
it (processes, the tmpfs mount, the PostgreSQL database); the caller runs it in ``finally``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa

from bench.soak.clock import ENV_FILE, build_shim, set_offset
from bench.soak.proxy import CutProxy
from fleet_server.simulator import SimDevice
from tests.harness import (
    Agent,
    Mosquitto,
    Proc,
    Server,
    free_port,
    make_agent,
    port_open,
    run_cli,
    start,
    start_mosquitto,
    wait_for,
)

__all__ = ["Fleet", "FleetOptions", "SimLoop"]

log = logging.getLogger(__name__)
PG_ADMIN_URL = "postgresql+psycopg://{user}@127.0.0.1:5432/postgres"
ADMIN_RETRY_S = 150.0  # an admin command is retried this long while the server is away
MODEL = "soak"  # the model name every rollout of the run ships
DISK_MB = 12  # the disk-full agent's state dir: models, staging and spool fit; a filler not


@dataclass(frozen=True)
class FleetOptions:
    """What the fleet is made of."""

    agents: int
    sims: int
    broker: str  # "mosquitto" or "embedded"
    db: str  # "sqlite" or "postgres"
    telemetry_s: float = 1.0
    checkin_s: float = 2.0
    spool_max: int = 2000
    download_kbps: int = 256  # an artifact takes ~2 s to arrive: kills and cuts land in it


def _two_free_ports() -> int:
    """A port P with P and P+1 free (the server's admin port and its device port)."""
    for _ in range(50):
        port = free_port()
        if port < 65000 and not port_open(port + 1):
            with contextlib.suppress(OSError), __import__("socket").socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
                return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


class Fleet:
    """The processes of one run, in ``folder``."""

    def __init__(self, folder: Path, options: FleetOptions) -> None:
        self.folder = folder
        self.options = options
        self.port = _two_free_ports()
        self.device_port = self.port + 1
        self.mqtt_port = free_port()
        self.broker: Mosquitto | None = None
        self.broker_persistent = True
        self.server: Server | None = None
        self.db_url = f"sqlite:///{folder / 'server' / 'fleet.db'}"
        self.read_url = self.db_url
        self._pg_admin: sa.Engine | None = None
        self._pg_name = ""
        self.db_proxy: CutProxy | None = None
        # The agents reach the device port through this proxy (link cuts); simulated devices
        # dial the port itself, so a cut hits the real downloads only.
        self.link = CutProxy(("127.0.0.1", self.device_port))
        self.agents: list[Agent] = []
        self.device_ids: dict[str, str] = {}
        self.disk_agent: Agent | None = None
        self.clock_agent: Agent | None = None
        self.clock_file = folder / "clock-offset"
        self._shim: Path | None = None
        self._mounts: list[Path] = []
        self.sims: list[SimDevice] = []
        self.fail_versions: set[str] = set()  # simulated devices fail these (bad releases)
        self._engine: sa.Engine | None = None
        self.lock = threading.Lock()  # one restart at a time (faults vs. the watcher)
        self.started: list[Proc] = []  # every process ever started, for the final sweep
        self.closing = False  # set by close: a fault thread still running starts nothing

    # ---------------------------------------------------------------- database
    def create_database(self) -> None:
        """For ``--db postgres``: a database of its own, reached through a cuttable proxy.

        Raises:
            RuntimeError: PostgreSQL on 127.0.0.1:5432 does not answer for root or postgres.
        """
        if self.options.db != "postgres":
            return
        self._pg_name = f"edgefleet_soak_{secrets.token_hex(4)}"
        errors = []
        for user in ("postgres", "root"):
            engine = sa.create_engine(PG_ADMIN_URL.format(user=user), isolation_level="AUTOCOMMIT")
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text(f'CREATE DATABASE "{self._pg_name}"'))
            except sa.exc.OperationalError as exc:
                errors.append(f"{user}: {exc.orig}")
                engine.dispose()
                continue
            self._pg_admin = engine
            self.db_proxy = CutProxy(("127.0.0.1", 5432))
            base = f"postgresql+psycopg://{user}@127.0.0.1:{{}}/{self._pg_name}"
            self.db_url = base.format(self.db_proxy.port)
            self.read_url = base.format(5432)
            return
        raise RuntimeError(f"PostgreSQL on 127.0.0.1:5432 refused: {'; '.join(errors)}")

    def engine(self) -> sa.Engine:
        """The harness's own read connection to the server's database (never cut)."""
        if self._engine is None:
            self._engine = sa.create_engine(self.read_url)
        return self._engine

    def rows(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a read-only query on the server's database."""
        with self.engine().connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]

    # ---------------------------------------------------------------- broker
    def start_broker(self, *, persistent: bool = True) -> None:
        """Start (or restart) mosquitto on the run's port; without ``persistent`` it starts
        with nothing saved and keeps nothing."""
        self._refuse_when_closing("mosquitto")
        folder = self.folder / "mosquitto"
        if not persistent:
            (folder / "mosquitto.db").unlink(missing_ok=True)
        self.broker = start_mosquitto(folder, self.mqtt_port, persistent=persistent)
        self.started.append(self.broker.proc)
        self.broker_persistent = persistent

    def restart_broker(self, *, persistent: bool, down_s: float) -> None:
        """SIGTERM (saves its state) or SIGKILL (loses it) the broker, wait, start it again."""
        assert self.broker is not None
        self.broker.proc.stop(signal.SIGTERM if persistent else signal.SIGKILL)
        time.sleep(down_s)
        self.start_broker(persistent=persistent)

    # ---------------------------------------------------------------- server
    def start_server(self) -> Server:
        """Start the fleet server on the run's fixed ports and wait until it serves."""
        self._refuse_when_closing("the server")
        folder = self.folder
        data_dir = folder / "server"
        if not (data_dir / "fleet.json").exists():
            run_cli("edgefleet-server", "init", "--data-dir", str(data_dir))
        ready = folder / "server-ready.json"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(data_dir),
               "--listen", f"127.0.0.1:{self.port}",
               "--device-advertise", f"127.0.0.1:{self.link.port}",
               "--rollout-interval", "0.5", "--db-url", self.db_url,
               "--ready-file", str(ready)]  # fmt: skip
        if self.options.broker == "mosquitto":
            cmd += ["--mqtt-url", f"mqtt://127.0.0.1:{self.mqtt_port}"]
        else:
            cmd += ["--mqtt-listen", f"127.0.0.1:{self.mqtt_port}"]
        proc = start(cmd, self._log("server"))
        self.started.append(proc)
        info = wait_for(
            "the fleet server to be ready",
            lambda: json.loads(ready.read_text()) if ready.exists() else proc.popen.poll(),
            timeout=90,
        )
        if isinstance(info, dict):
            self.server = Server(data_dir, proc, self.port, str(info["mqtt_url"]), self.device_port)
            return self.server
        raise RuntimeError(f"the fleet server exited with status {proc.popen.poll()}")

    def kill_server(self, down_s: float) -> None:
        """SIGKILL the server, wait ``down_s``, start it again on the same ports."""
        assert self.server is not None
        self.server.proc.stop(signal.SIGKILL)
        time.sleep(down_s)
        self.start_server()

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The admin CLI against the server, retried as an operator would while the server
        restarts or its database is cut (the longest cut is 60 s; the CLI then says "the fleet
        database is busy or unreachable; retry")."""
        assert self.server is not None
        result = self.server.admin(*args, check=False)
        deadline = time.monotonic() + ADMIN_RETRY_S
        while time.monotonic() < deadline:
            said = result.stderr + result.stdout
            if result.returncode == 0 or not ("UNAVAILABLE" in said or "unreachable" in said):
                break
            time.sleep(2.0)
            result = self.server.admin(*args, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"edgefleet {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    # ---------------------------------------------------------------- agents
    def add_agents(self) -> None:
        """Configure and start the real agents: agent-0 on a tmpfs, agent-1 with a shifted
        clock (when there are two or more), all through the link proxy."""
        assert self.server is not None
        o = self.options
        extra = (
            f"spool_max_messages = {o.spool_max}\n[updates]\nmax_download_kbps = "
            f"{o.download_kbps}\nhealth_window_s = 5.0\nhealth_min_requests = 1000000\n"
        )
        self._shim = build_shim(self.folder)
        set_offset(self.clock_file, 0)
        for i in range(o.agents):
            agent = make_agent(self.folder / "agents", f"soak-agent-{i}", self.server,
                               checkin_s=o.checkin_s, telemetry_s=o.telemetry_s, extra=extra,
                               timeout_s=5.0, stall_timeout_s=8.0)  # fmt: skip
            if i == 0:
                self._mount_tmpfs(agent.folder / "state")
                self.disk_agent = agent
            if i == 1:
                self.clock_agent = agent
            self.agents.append(agent)
            self.start_agent(agent)

    def agent_env(self, agent: Agent) -> dict[str, str]:
        if agent is self.clock_agent and self._shim is not None:
            return {"LD_PRELOAD": str(self._shim), ENV_FILE: str(self.clock_file)}
        return {}

    def start_agent(self, agent: Agent) -> None:
        self._refuse_when_closing(agent.name)
        if proc_alive(agent.proc):
            raise RuntimeError(f"{agent.name} is running already; refusing a second one")
        agent.start(env=self.agent_env(agent))
        assert agent.proc is not None
        self.started.append(agent.proc)

    def device_id(self, agent: Agent) -> str:
        """The agent's device id, from its identity (empty before it enrolled)."""
        if agent.name not in self.device_ids:
            path = agent.folder / "state" / "identity.json"
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.device_ids[agent.name] = json.loads(path.read_text())["device_id"]
        return self.device_ids.get(agent.name, "")

    def _mount_tmpfs(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        cmd = [_tool("mount"), "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(path)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        self._mounts.append(path)

    # ---------------------------------------------------------------- simulated devices
    def enroll_sims(self) -> None:
        """Enroll the simulated devices (four at a time) and point them at the device port."""
        assert self.server is not None
        fleet, token = self.server.sim_fleet(), self.server.enrollment_token()

        def one(i: int) -> SimDevice:
            device = SimDevice.enroll(fleet, token, f"soak-sim-{i:04d}",
                                      fail_versions=self.fail_versions)  # fmt: skip
            device.reconnect(f"127.0.0.1:{self.device_port}")
            return device

        with ThreadPoolExecutor(4) as pool:
            self.sims = list(pool.map(one, range(self.options.sims)))

    # ---------------------------------------------------------------- the end
    def stop_agents(self) -> None:
        for agent in self.agents:
            if agent.proc is not None:
                agent.stop()

    def close(self) -> None:
        """Stop everything this run started and remove what it created; never raises."""
        self.closing = True
        steps: list[tuple[str, Callable[[], object]]] = [
            ("agents", self.stop_agents),
            ("simulated devices", self._close_sims),
            ("server", lambda: self.server and self.server.proc.stop()),
            ("broker", lambda: self.broker and self.broker.proc.stop()),
            ("leftover processes", self._kill_leftovers),
            ("link proxy", self.link.close),
            ("database proxy", self._close_db_proxy),
            ("harness engine", self._dispose_engine),
            ("tmpfs", self._unmount),
            ("database", self._drop_database),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("cleanup of the %s failed", what)

    def _refuse_when_closing(self, what: str) -> None:
        if self.closing:
            raise RuntimeError(f"not starting {what}: the run is ending")

    def _kill_leftovers(self) -> None:
        for proc in self.started:
            if proc.popen.poll() is None:
                proc.stop(signal.SIGKILL)

    def _close_sims(self) -> None:
        for sim in self.sims:
            sim.close()

    def _close_db_proxy(self) -> None:
        if self.db_proxy is not None:
            self.db_proxy.close()

    def _dispose_engine(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _unmount(self) -> None:
        for path in self._mounts:
            subprocess.run([_tool("umount"), "-l", str(path)], check=False, capture_output=True,
                           timeout=30)  # fmt: skip
        self._mounts.clear()

    def _drop_database(self) -> None:
        if self._pg_admin is None:
            return
        with self._pg_admin.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n"), {"n": self._pg_name},
            )  # fmt: skip
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self._pg_name}"'))
        self._pg_admin.dispose()
        self._pg_admin = None

    def _log(self, name: str) -> Path:
        log_file = self.folder / f"{name}.log"
        n = 1
        while log_file.exists():
            n += 1
            log_file = self.folder / f"{name}-{n}.log"
        return log_file


@dataclass
class SimLoop:
    """Checks every simulated device in, one after the other, until stopped; counts errors
    (the server may be down under a fault: a device then tries again next round)."""

    fleet: Fleet
    stop: threading.Event
    period_s: float = 4.0
    rounds: int = 0
    errors: int = 0
    failed: set[tuple[str, str, str]] = field(default_factory=set)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="soak-sims", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            for device in self.fleet.sims:
                if self.stop.is_set():
                    return
                try:
                    device.check_in()
                except grpc.RpcError:
                    self.errors += 1
                for name, version in device.failed:
                    self.failed.add((device.device_id, version, "FAILED"))
                    del name
            self.rounds += 1
            self.stop.wait(max(0.0, self.period_s - (time.monotonic() - began)))


def _tool(name: str) -> str:
    """The full path of a system tool (mount, umount)."""
    return shutil.which(name) or f"/usr/bin/{name}"


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def proc_alive(proc: Proc | None) -> bool:
    return proc is not None and proc.popen.poll() is None
