"""`edgefleet-server run` when it cannot start, and when it is killed: one clear line and exit
1, nothing left running (real server processes, a real broker, real sockets in the way)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ports import EXIT_PORT_IN_USE
from tests.harness import REPO, free_port, run_cli, start, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "server"
    run_cli("edgefleet-server", "init", "--data-dir", str(folder))
    return folder


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on (without SO_REUSEPORT, so nobody can share it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run(data_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(data_dir)]
    return subprocess.run(
        [*cmd, *options], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "case",
    [
        "grpc port taken",
        "broker port taken",
        "cloud CA unreadable",
        "bad MQTT URL",
        "database unreachable",
        "database never answers",
        "database URL unreadable",
    ],
)
def test_a_server_that_cannot_start_says_why_in_one_line(
    data_dir: Path, taken_port: int, broker_url: str, case: str
) -> None:
    # Start stops what it started; stopping a part that never started (the rollout
    # controller's thread, the embedded broker's closed loop) raised, so the operator got
    # two tracebacks instead of the reason, and the parts after it were never stopped.
    options = {
        "grpc port taken": ["--listen", f"127.0.0.1:{taken_port}", "--mqtt-url", broker_url],
        "broker port taken": [
            "--listen", "127.0.0.1:0", "--mqtt-listen", f"127.0.0.1:{taken_port}",
        ],
        "cloud CA unreadable": [
            "--listen", "127.0.0.1:0", "--mqtt-url", broker_url,
            "--cloud-url", "grpcs://127.0.0.1:1", "--cloud-ca-file", str(data_dir / "nothing.pem"),
        ],
        "bad MQTT URL": ["--listen", "127.0.0.1:0", "--mqtt-url", "htp://127.0.0.1:1883"],
        # PostgreSQL not up yet at boot: the driver's exception came out as two tracebacks.
        "database unreachable": [
            "--listen", "127.0.0.1:0", "--mqtt-url", broker_url,
            "--db-url", f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/fleet",
        ],
        # A server that accepts the connection and says nothing (a hung host, a firewall that
        # swallows): the start waited for ever. Now it gives up after the connect timeout.
        "database never answers": [
            "--listen", "127.0.0.1:0", "--mqtt-url", broker_url,
            "--db-url", f"postgresql+psycopg://postgres:secret@127.0.0.1:{taken_port}/fleet",
        ],
        "database URL unreadable": [
            "--listen", "127.0.0.1:0", "--mqtt-url", broker_url, "--db-url", "postgres//fleet",
        ],
    }[case]  # fmt: skip
    result = _run(data_dir, *options)
    # A port another process holds has its own exit status (the unit's RestartPreventExitStatus).
    expected = EXIT_PORT_IN_USE if case.endswith("port taken") else 1
    assert result.returncode == expected, result.stderr
    # (amqtt logs its own traceback of a failed bind; none may run through our code.)
    assert f'File "{REPO / "fleet_server"}' not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edgefleet-server: error: "), result.stderr
    assert "secret" not in result.stderr  # a database password


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_worker_processes_do_not_outlive_a_killed_main_process(
    data_dir: Path, tmp_path: Path, broker_url: str
) -> None:
    # Workers serve the device port beside the main process. When the main one is killed
    # (kill -9, the OOM killer) outside systemd's cgroup, they kept serving as orphans, and a
    # restarted server (new code, new settings) shared its device port with them.
    ready = tmp_path / "ready.json"
    proc = start(
        [
            sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(data_dir),
            "--listen", "127.0.0.1:0", "--mqtt-url", broker_url, "--workers", "3",
            "--ready-file", str(ready),
        ],
        tmp_path / "server.log",
    )  # fmt: skip
    wait_for("the server", lambda: ready.exists() or proc.popen.poll() is not None)
    assert json.loads(ready.read_text())["pid"] == proc.popen.pid, proc.output()
    workers = wait_for("two workers", lambda: len(_children(proc.popen.pid)) == 2 or None)
    assert workers
    workers_pids = _children(proc.popen.pid)
    proc.stop(signal.SIGKILL)
    try:
        wait_for(
            "the workers to exit after the main process died",
            lambda: not any(_alive(p) for p in workers_pids),
            timeout=15,
        )
    finally:
        for pid in workers_pids:  # do not leave orphans behind a failing test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
