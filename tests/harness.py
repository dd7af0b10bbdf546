"""Real processes for the tests: mosquitto, the fleet server, agents. No mocks.

Each helper starts a real process on free ports in a temporary folder and stops it with SIGTERM
(or SIGKILL when a test asks for it).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import paho.mqtt.client as paho

from fleet_server.errors import FleetError
from fleet_server.simulator import SimFleet
from protos import telemetry_pb2
from protos.topics import commands_topic, device_topic

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
_T = TypeVar("_T")


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "4m") mounted at ``path`` (we run as root), for tests
    of a full disk; unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte with a file of zeros; return it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (64 * 1024, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(size))
    return filler


def model_variant(model: bytes, description: str) -> bytes:
    """The same network with another description: a valid model with a hash of its own (each
    release of a test or a soak needs a distinct artifact)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tflite_schema

    parsed = tflite_schema.ModelT.InitFromPackedBuf(model, 0)
    parsed.description = description.encode()
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(parsed.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, probe: Callable[[], _T | None], timeout: float = 30.0, interval: float = 0.2
) -> _T:
    """Poll ``probe`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last failure
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_cli(
    *args: str, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts (by module) and capture its output."""
    modules = {
        "edgefleet": "fleet_server.admin_cli",
        "edgefleet-server": "fleet_server.cli",
        "edgefleet-agent": "agent.cli",
    }
    cmd = [sys.executable, "-m", modules[args[0]], *args[1:]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}"
        )
    return result


@dataclass
class Proc:
    """A started process with its log file."""

    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait; SIGKILL if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def start(
    cmd: list[str],
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    *,
    user: tuple[int, int] | None = None,
) -> Proc:
    """Start ``cmd`` with stdout and stderr going to ``log`` (and ``env`` added), as ``user``
    (uid, gid) when given."""
    handle = log.open("wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    as_user: dict[str, Any] = {}
    if user is not None and os.geteuid() == 0:
        as_user = {"user": user[0], "group": user[1], "extra_groups": []}
        cmd, env = reachable_python(cmd, env)
    popen = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env, **as_user
    )
    handle.close()
    proc = Proc(popen, log)
    STARTED.append(proc)
    return proc


# Every process start() started, for conftest's clean-up of what a failed test left running.
STARTED: list[Proc] = []


def reachable_python(cmd: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """``cmd`` for an unprivileged user: a venv's interpreter that lives in root's home (pyenv
    here) cannot be run by nobody, so the system's interpreter of the same minor version runs
    instead, on the venv's packages."""
    if not cmd or not cmd[0].endswith(("/python", "/python3")):
        return cmd, env
    venv = Path(cmd[0]).parent.parent
    binary = Path(cmd[0]).resolve()
    if all(p.stat().st_mode & 0o001 for p in binary.parents):
        return cmd, env
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / minor
    packages = venv / "lib" / minor / "site-packages"
    if not system.exists() or not packages.is_dir():
        raise RuntimeError(f"{binary} is out of nobody's reach and there is no {system} to "
                           f"run {packages} with")  # fmt: skip
    env = env | {"PYTHONPATH": os.pathsep.join([str(packages), str(REPO)])}
    return [str(system), *cmd[1:]], env


def run_as_app_user(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end as ``app_user()``, its output captured as text."""
    cmd, env = reachable_python(cmd, dict(os.environ))
    uid, gid = app_user()
    if os.geteuid() != 0:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env, user=uid, group=gid, extra_groups=[])  # fmt: skip


def app_user() -> tuple[int, int]:
    """Who runs what must not be root (the agent refuses shared memory as root) and the local
    apps that use it: nobody when the tests run as root, else the tests' own user."""
    return (65534, 65534) if os.geteuid() == 0 else (os.geteuid(), os.getegid())


@contextlib.contextmanager
def app_folder(prefix: str) -> Iterator[Path]:
    """A folder ``app_user()`` owns and can reach (pytest's tmp_path sits in a folder only
    root may enter); removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    os.chown(folder, *app_user())
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def give_to_app_user(*paths: Path) -> None:
    """Hand files and folders (recursively) to ``app_user()``."""
    uid, gid = app_user()
    for path in paths:
        for each in [path, *(path.rglob("*") if path.is_dir() else ())]:
            os.chown(each, uid, gid, follow_symlinks=False)


@dataclass
class Mosquitto:
    """A private mosquitto broker for one test session."""

    port: int
    proc: Proc
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def start_mosquitto(
    folder: Path,
    port: int = 0,
    *,
    persistent: bool = False,
    host: str = "127.0.0.1",
    wrap: Callable[[list[str]], list[str]] = list,
) -> Mosquitto:
    """Start mosquitto on a free port (or ``port``) with its own config; ``persistent`` keeps
    sessions and queued messages across a restart, as a production broker should. ``host`` and
    ``wrap`` put it on another address, in another network namespace (tests/netns.py)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    persistence = (
        f"persistence true\npersistence_location {folder}/\nautosave_interval 1\n"
        if persistent
        else "persistence false\n"
    )
    conf.write_text(
        f"listener {port} {host}\n"
        # Started as root, mosquitto would switch to its own user, which cannot write its
        # persistence file into the test's private folder: stay the user that runs the tests.
        f"user {getpass.getuser()}\n"
        "allow_anonymous true\n"
        f"{persistence}"
        # mosquitto drops QoS 1 messages past 1000 queued for a slow subscriber by default.
        "max_queued_messages 0\n"
        "log_dest stdout\n",
        encoding="utf-8",
    )
    proc = start(wrap([binary, "-c", str(conf)]), folder / f"mosquitto-{time.time_ns()}.log")
    wait_for(
        f"mosquitto on port {port}",
        lambda: port_open(port, host) or proc.popen.poll() is not None,
    )
    if proc.popen.poll() is not None:
        raise AssertionError(f"mosquitto exited:\n{proc.output()}")
    return Mosquitto(port, proc, host)


@dataclass
class Server:
    """A running fleet server process and its data dir."""

    data_dir: Path
    proc: Proc
    port: int
    mqtt_url: str
    device_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the admin CLI against this server."""
        return run_cli(
            "edgefleet",
            "--server",
            self.address,
            "--data-dir",
            str(self.data_dir),
            *args,
            check=check,
        )

    def devices(self) -> list[dict[str, Any]]:
        """``edgefleet devices list --json``, parsed."""
        return list(json.loads(self.admin("devices", "list", "--json").stdout))

    def enrollment_token(self) -> str:
        return (self.data_dir / "enrollment.token").read_text(encoding="utf-8").strip()

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca" / "ca.crt"

    @property
    def root_key_dir(self) -> Path:
        """Where ``init`` wrote the root keys (beside the data dir, as by default)."""
        return self.data_dir.with_name(self.data_dir.name + ".root-keys")

    def sim_fleet(self) -> SimFleet:
        """Where simulated devices enroll."""
        return SimFleet(self.address, self.ca_file.read_bytes())


def scrape_metrics(folder: Path, data_dir: Path | None = None, token: str | None = None) -> str:
    """The server's Prometheus text from its ``--metrics-listen`` port (its ready file is in
    ``folder``): HTTPS with the fleet CA, and an admin token (default: the bootstrap token of
    ``data_dir``, which defaults to ``folder / "server"``)."""
    data_dir = data_dir or folder / "server"
    port = json.loads((folder / "server-ready.json").read_text())["metrics_port"]
    token = token or (data_dir / "admin.token").read_text().strip()
    context = ssl.create_default_context(cafile=str(data_dir / "ca" / "ca.crt"))
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310 - https, built here
        return str(response.read().decode())


def start_server(
    folder: Path,
    mqtt_url: str | None,
    db_url: str | None = None,
    extra: Sequence[str] = (),
    data_dir: Path | None = None,
) -> Server:
    """``edgefleet-server init`` + ``run`` on free ports; wait until it serves.

    ``data_dir`` lets a second replica share the first one's keys and tokens.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or folder / "server"
    if not (data_dir / "fleet.json").exists():
        run_cli("edgefleet-server", "init", "--data-dir", str(data_dir))
    ready = folder / "server-ready.json"
    ready.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "fleet_server.cli",
        "run",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready),
    ]
    cmd += list(extra)
    if db_url:
        cmd += ["--db-url", db_url]
    if mqtt_url:
        cmd += ["--mqtt-url", mqtt_url]
    elif "--mqtt-listen" not in extra:
        cmd += ["--mqtt-listen", "127.0.0.1:0"]
    proc = start(cmd, folder / "server.log")
    info = wait_for(
        "the fleet server to be ready",
        lambda: json.loads(ready.read_text()) if ready.exists() else proc.popen.poll() is not None,
    )
    assert isinstance(info, dict), f"server exited:\n{proc.output()}"
    return Server(
        data_dir, proc, int(info["grpc_port"]), str(info["mqtt_url"]), int(info["device_port"])
    )


@dataclass
class Agent:
    """A running agent process."""

    name: str
    folder: Path
    config: Path
    proc: Proc | None = None

    @property
    def socket(self) -> Path:
        return self.folder / "oip.sock"

    def start(
        self,
        env: dict[str, str] | None = None,
        *,
        as_app_user: bool = False,
        wrap: Callable[[list[str]], list[str]] = list,
    ) -> Agent:
        """Start the agent (as ``app_user()`` with ``as_app_user``: its folder must be one
        that user can reach, see ``make_app_agent``; ``wrap``: in a network namespace)."""
        cmd = wrap([sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)])
        log = self.folder / f"agent-{int(time.time() * 1000)}.log"
        self.proc = start(cmd, log, env=env, user=app_user() if as_app_user else None)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        return self.proc.stop(sig)

    def output(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.folder.glob("agent-*.log"))
        )


def active_version(agent: Agent, model: str) -> str:
    """The version of ``model`` the agent's journal says is active ("" for none)."""
    journal = agent.folder / "state" / "active.json"
    if not journal.exists():
        return ""
    entry = json.loads(journal.read_text()).get("models", {}).get(model)
    return str(entry["version"]) if entry else ""


def make_agent(
    folder: Path,
    name: str,
    server: Server,
    *,
    checkin_s: float = 1.0,
    telemetry_s: float = 1.0,
    metrics_port: int = 0,
    extra: str = "",
    timeout_s: float = 5.0,
    stall_timeout_s: float = 30.0,
) -> Agent:
    """Write an agent config for ``server`` in its own folder (not started)."""
    home = folder / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "agent.toml"
    config.write_text(
        f"""
[agent]
name = "{name}"
state_dir = "state"

[server]
address = "{server.address}"
enrollment_token = "{server.enrollment_token()}"
ca_file = "{server.ca_file}"
checkin_interval_s = {checkin_s}
timeout_s = {timeout_s}
stall_timeout_s = {stall_timeout_s}

[api]
socket = "oip.sock"
metrics_listen = "{f"127.0.0.1:{metrics_port}" if metrics_port else ""}"

[telemetry]
interval_s = {telemetry_s}
{extra}
""",
        encoding="utf-8",
    )
    return Agent(name, home, config)


def make_app_agent(folder: Path, name: str, server: Server, **kwargs: Any) -> Agent:
    """``make_agent`` in an ``app_folder`` for an agent run as ``app_user()``: the server's
    CA is copied in (the server's folder is root's) and everything handed to that user."""
    agent = make_agent(folder, name, server, **kwargs)
    ca = agent.folder / "ca.pem"
    shutil.copyfile(server.ca_file, ca)
    text = agent.config.read_text(encoding="utf-8")
    agent.config.write_text(text.replace(f'"{server.ca_file}"', f'"{ca}"'), encoding="utf-8")
    give_to_app_user(agent.folder)
    return agent


class DeviceCommands:
    """The test as the server's command side on the broker: publish commands to one device and
    collect its acknowledgements from its events topic."""

    def __init__(self, broker_url: str, state_dir: Path) -> None:
        identity = json.loads((state_dir / "identity.json").read_text())
        fleet, device = identity["fleet_id"], identity["device_id"]
        self.device_id = device
        self.topic = commands_topic(fleet, device)
        self.acks: dict[str, telemetry_pb2.CommandAck] = {}
        self.online = threading.Event()
        self.births = 0  # "online" states seen: one per (re)connect of the device's session
        self._lock = threading.Lock()
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self._events = device_topic(fleet, device, "events")
        self._state = device_topic(fleet, device, "state")
        self.client.subscribe([(self._events, 1), (self._state, 1)])
        self.client.loop_start()

    def _on_message(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic == self._state:
            state = telemetry_pb2.DeviceState.FromString(bytes(message.payload))
            if state.state == "online":
                self.births += 1
                self.online.set()
            return
        event = telemetry_pb2.DeviceEvent.FromString(bytes(message.payload))
        if event.HasField("ack"):
            with self._lock:
                self.acks[event.ack.id] = event.ack

    def send(self, kind: str, command_id: str, device_id: str | None = None) -> None:
        """A command to this device (or, with ``device_id``, one addressed to another)."""
        command = telemetry_pb2.Command(
            id=command_id,
            kind=kind,
            issued_unix_ms=int(time.time() * 1000),
            device_id=self.device_id if device_id is None else device_id,
        )
        self.publish(command.SerializeToString())

    def publish(self, payload: bytes) -> None:
        """Put any bytes on the device's commands topic (as a hostile or broken sender would)."""
        self.client.publish(self.topic, payload, qos=1).wait_for_publish(10)

    def ack(self, command_id: str) -> telemetry_pb2.CommandAck | None:
        with self._lock:
            return self.acks.get(command_id)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def seed_devices(db_url: str, count: int, model_name: str = "m") -> None:
    """Put ``count`` devices straight into a server's database (for dashboard tests and
    benchmarks at fleet scale): two hardware classes (every other one with an Edge TPU), 20
    sites, one installed model each, a tenth offline."""
    import sqlalchemy as sa

    from fleet_server.storage.db import Database
    from fleet_server.storage.schema import device_models, devices

    now = int(time.time())
    caps = [
        json.dumps({"arch": "aarch64", "edgetpu_count": 1, "libedgetpu": True}),
        json.dumps({"arch": "x86_64"}),
    ]
    db = Database(db_url)
    with db.engine.begin() as conn:
        conn.execute(
            devices.insert(),
            [
                {
                    "device_id": f"dev-{i:05d}",
                    "name": f"dev-{i:05d}",
                    "token_sha256": f"{i:064x}",
                    "labels": json.dumps({"site": f"s{i % 20}"}),
                    "capabilities": caps[i % 2],
                    "enrolled_at": now,
                    "last_seen": now,
                    "online_state": "online" if i % 10 else "offline",
                    "telemetry_count": 0,
                    "telemetry_gaps": 0,
                }
                for i in range(count)
            ],
        )
        conn.execute(
            device_models.insert(),
            [
                {
                    "device_id": f"dev-{i:05d}",
                    "model_name": model_name,
                    "version": "1.0.0",
                    "state": "INSTALLED",
                    "detail": "",
                    "updated_at": now,
                    "active_version": "1.0.0",
                }
                for i in range(count)
            ],
        )
        conn.execute(sa.text("ANALYZE"))
    db.close()


def seed_history(
    db_url: str, device_ids: str | Sequence[str], model_name: str = "m", *, hours: int = 24
) -> list[dict[str, Any]]:
    """Put devices' telemetry history of the last ``hours`` (every 5-minute bucket) straight
    into a server's database, with errors in every 24th bucket; return one device's rows."""
    from fleet_server.storage.db import Database
    from fleet_server.telemetry.history import HISTORY_BUCKET_S
    from fleet_server.telemetry.store import IngestBatch, TelemetryStore

    now = int(time.time()) // HISTORY_BUCKET_S * HISTORY_BUCKET_S
    count = hours * 3600 // HISTORY_BUCKET_S
    ids = [device_ids] if isinstance(device_ids, str) else list(device_ids)
    db = Database(db_url)
    telemetry = TelemetryStore(db)
    for device_id in ids:
        rows: list[dict[str, Any]] = [
            {
                "device_id": device_id,
                "model_name": model_name,
                "bucket": now - (count - 1 - k) * HISTORY_BUCKET_S,
                "requests": 100 + (k % 12) * 10,
                "errors": 3 if k % 24 == 0 else 0,
                "cloud_requests": k % 5,
                "p50_ms": 1.5,
                "p95_ms": 3.0 + (k % 7) * 0.5,
            }
            for k in range(count)
        ]
        telemetry.record_mqtt_batch(IngestBatch(history=rows))  # as the ingest writes them
    db.close()
    return rows


def together(calls: Sequence[Callable[[], object]]) -> list[str]:
    """Run the calls at once, one thread each, released by one barrier: each one's "ok", its
    gRPC status code name (``FAILED_PRECONDITION``) or its error's class (``ConflictError``)."""
    barrier = threading.Barrier(len(calls))
    outcome = [""] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            calls[i]()
            outcome[i] = "ok"
        except grpc.RpcError as exc:
            outcome[i] = exc.code().name
        except FleetError as exc:
            outcome[i] = type(exc).__name__

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome
