"""Issue 22 item 4: a port or socket is never shared by accident. grpcio binds with
SO_REUSEPORT by default, so a second server or agent on a port in use used to start without an
error and take half the connections. Now the second one exits with 73 (the units'
RestartPreventExitStatus) and a message naming the port, and the first keeps every
connection."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.ports import (
    EXIT_PORT_IN_USE,
    NotASocketError,
    access_problem,
    held_by_another,
    held_by_itself,
    unix_socket_in_use,
)
from tests.harness import Server, free_port, run_cli, start, wait_for


def test_a_listener_with_so_reuseport_holds_its_port_and_a_closed_one_does_not() -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    address = f"127.0.0.1:{holder.getsockname()[1]}"
    try:
        assert held_by_another(address)
    finally:
        holder.close()
    assert not held_by_another(address)
    assert not held_by_another("127.0.0.1:0")  # any free port
    assert not held_by_another("unix:/run/x.sock")


def test_a_socket_file_nobody_listens_on_is_not_in_use(tmp_path: Path) -> None:
    path = tmp_path / "oip.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    assert unix_socket_in_use(path)
    # A busy listener (its backlog full: a connect gets EAGAIN) is in use, not stale.
    filler = socket.socket(socket.AF_UNIX)
    filler.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        filler.connect(str(path))
    busy = tmp_path / "busy.sock"
    backlog = socket.socket(socket.AF_UNIX)
    backlog.bind(str(busy))
    backlog.listen(0)
    fillers = []
    for _ in range(4):
        extra = socket.socket(socket.AF_UNIX)
        extra.setblocking(False)
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            extra.connect(str(busy))
        fillers.append(extra)
    assert unix_socket_in_use(busy)
    for extra in [filler, *fillers]:
        extra.close()
    backlog.close()
    listener.close()  # a killed agent leaves the file
    assert path.is_socket() and not unix_socket_in_use(path)
    assert not unix_socket_in_use(tmp_path / "absent.sock")


def test_an_ipv4_holder_of_the_port_holds_it_for_a_dual_stack_listener_too() -> None:
    # "[::]:port" binds both families (grpcio, uvicorn): a process on 0.0.0.0:port is in the
    # way. The probe used to bind IPv6 only and saw no holder.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("0.0.0.0", 0))  # noqa: S104 - the wildcard is the point
    holder.listen()
    try:
        assert held_by_another(f"[::]:{holder.getsockname()[1]}")
    finally:
        holder.close()


def test_a_socket_path_that_holds_something_else_is_named_and_never_replaced(
    tmp_path: Path,
) -> None:
    file, fifo, link = tmp_path / "file.sock", tmp_path / "fifo.sock", tmp_path / "link.sock"
    file.write_text("someone's data")
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "elsewhere")
    for path in (file, fifo, link):
        with pytest.raises(NotASocketError, match=f"api.rest_socket {path} exists and is not a"):
            unix_socket_in_use(path, "api.rest_socket")
    assert file.read_text() == "someone's data" and fifo.exists() and link.is_symlink()


@pytest.mark.slow
def test_a_port_held_by_a_worker_of_the_configured_service_is_its_own(tmp_path: Path) -> None:
    # A server's --workers are its children, started without --config: check-config read
    # their port as another process's.
    config, other = tmp_path / "server.toml", tmp_path / "other.toml"
    config.write_text("")
    worker = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
    )
    main = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.PIPE, "
        "text=True)\nprint(p.stdout.readline().strip(), p.pid, flush=True); p.wait()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", main, "--config", str(config)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    port, child = parent.stdout.readline().split()
    try:
        address = f"127.0.0.1:{port}"
        assert held_by_another(address)
        assert held_by_itself(address, config)
        assert not held_by_itself(address, other)
    finally:
        os.kill(int(child), signal.SIGKILL)
        parent.kill()
        parent.wait()


@pytest.mark.slow
def test_a_second_server_on_a_port_in_use_exits_73_and_the_first_keeps_every_call(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    port = free_port()
    # Its device port any free one: the default (port + 1) may be a port another process
    # holds by then (seen once in CI: an outgoing connection's ephemeral port).
    first = server_factory(
        None, extra=("--listen", f"127.0.0.1:{port}", "--device-listen", "127.0.0.1:0")
    )
    run_cli("edgefleet-server", "init", "--data-dir", str(tmp_path / "second"))
    second = subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(tmp_path / "second"),
         "--listen", f"127.0.0.1:{port}", "--device-listen", "127.0.0.1:0",
         "--mqtt-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert second.returncode == EXIT_PORT_IN_USE, second.stderr
    assert f"--listen 127.0.0.1:{port} is in use by another process" in second.stderr
    assert "Traceback" not in second.stderr
    for _ in range(10):  # every call reaches the first server (its token, its certificate)
        first.admin("models", "list")
    # check-config says so before a start would.
    toml = tmp_path / "server.toml"
    toml.write_text(
        f'[server]\ndata_dir = "{tmp_path / "second"}"\nlisten = "127.0.0.1:{port}"\n'
        'mqtt_listen = "127.0.0.1:0"\ndevice_listen = "127.0.0.1:0"\n'
    )
    checked = run_cli("edgefleet-server", "check-config", "--config", str(toml), check=False)
    assert checked.returncode == 1, checked.stdout
    assert f"listen 127.0.0.1:{port} is in use by another process" in checked.stderr


def agent_config(folder: Path, name: str, *, listen: str, socket_path: Path) -> Path:
    """An agent that serves without a fleet (no server to enroll with): enough to bind."""
    home = folder / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "agent.toml"
    config.write_text(
        f"""
[agent]
name = "{name}"
state_dir = "state"

[server]
address = "127.0.0.1:1"
enrollment_token = "none"
ca_file = "absent.crt"

[api]
socket = "{socket_path}"
listen = "{listen}"
""",
        encoding="utf-8",
    )
    return config


@pytest.mark.slow
def test_a_second_agent_on_a_port_or_socket_in_use_exits_73(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    shared = tmp_path / "oip.sock"
    config = agent_config(tmp_path, "first", listen=listen, socket_path=shared)
    first = start([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                  tmp_path / "first.log")  # fmt: skip
    try:
        wait_for("the first agent to serve", lambda: "local inference API on" in first.output())
        for name, port, path in (
            ("same-port", listen, tmp_path / "other.sock"),
            ("same-socket", f"127.0.0.1:{free_port()}", shared),
        ):
            again = agent_config(tmp_path, name, listen=port, socket_path=path)
            second = subprocess.run(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(again)],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert second.returncode == EXIT_PORT_IN_USE, (name, second.stderr)
            assert "is in use by another process" in second.stderr, second.stderr
        # The first agent still owns both: its socket file was not replaced.
        assert unix_socket_in_use(shared) and held_by_another(listen)
        # check-config knows the running agent's own port from another process's.
        own = run_cli("edgefleet-agent", "check-config", "--config", str(config), check=False)
        assert "in use" not in own.stderr, own.stderr
        other = tmp_path / "same-port" / "agent.toml"
        theirs = run_cli("edgefleet-agent", "check-config", "--config", str(other), check=False)
        assert f"api.listen {listen} is in use by another process" in theirs.stderr
        assert first.popen.poll() is None
    finally:
        first.stop()


def test_access_is_judged_for_the_service_user_by_every_folder_on_the_way(tmp_path: Path) -> None:
    # nobody (65534) exists on Debian; pytest's tmp_path is root's (0700 on the way).
    private = tmp_path / "token"
    private.write_text("t")
    private.chmod(0o600)
    assert "nobody cannot" in access_problem(private, "nobody")
    assert access_problem(private, "root") == ""
    assert "no user" in access_problem(private, "no-such-user-here")


@pytest.mark.slow
def test_check_config_names_what_the_service_user_cannot_read_and_ports_held(
    tmp_path: Path,
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    listen = f"127.0.0.1:{holder.getsockname()[1]}"
    config = agent_config(tmp_path, "checked", listen=listen, socket_path=tmp_path / "x.sock")
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o600)
    text = config.read_text().replace(
        'enrollment_token = "none"', f'enrollment_token_file = "{token}"'
    )
    config.write_text(text.replace('ca_file = "absent.crt"', f'ca_file = "{token}"'))
    try:
        checked = run_cli("edgefleet-agent", "check-config", "--config", str(config),
                          "--user", "nobody", check=False)  # fmt: skip
    finally:
        holder.close()
    assert checked.returncode == 1, checked.stdout
    # pytest's folders are root's alone: nobody stops at the first one, said once.
    assert checked.stderr.count("nobody cannot enter /tmp/pytest-of-") == 1, checked.stderr
    assert f"api.listen {listen} is in use by another process" in checked.stderr
