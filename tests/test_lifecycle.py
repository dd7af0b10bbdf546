"""The agent as a systemd service: sd_notify against a real NOTIFY_SOCKET datagram socket
(READY only once serving, watchdog pings that stop when a real interpreter is wedged, STOPPING
on SIGTERM), SIGTERM under load, SIGHUP reloading a setting, journald logging."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.harness import Agent, Server, make_agent, wait_for
from tests.oip import infer

pytestmark = pytest.mark.slow


class NotifySocket:
    """A datagram socket standing in for systemd: every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, since: float = 0.0) -> list[str]:
        return [line for t, m in list(self.messages) if t >= since for line in m.splitlines()]

    def wait(self, line: str, since: float = 0.0, timeout: float = 60) -> float:
        """When a message with this line arrived (after ``since``)."""

        def seen() -> float | None:
            for t, m in list(self.messages):
                if t >= since and (
                    line in m.splitlines() or any(x.startswith(line) for x in m.splitlines())
                ):
                    return t
            return None

        return wait_for(f"sd_notify {line!r}", seen, timeout=timeout, interval=0.05)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def deploy(server: Server, models: Path) -> None:
    server.admin("models", "push", str(models / "heavy_float.tflite"), "--name", "heavy",
                 "--version", "1.0.0", "--deploy")  # fmt: skip
    server.admin("models", "push", str(models / "spin_float.tflite"), "--name", "spin",
                 "--version", "1.0.0", "--deploy")  # fmt: skip


def heavy_input() -> np.ndarray:
    return np.zeros((1, 224, 224, 3), np.float32)


def test_ready_only_once_serving_watchdog_stops_when_wedged_and_stopping_on_sigterm(
    tmp_path: Path,
    server_factory: Callable[..., Server],
    color_models: Path,
    notify: NotifySocket,
) -> None:
    server = server_factory(None)
    deploy(server, color_models)
    agent = make_agent(tmp_path, "svc-1", server)
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}

    # First start: nothing installed yet, so ready at once, and it says so.
    agent.start(env=env)
    notify.wait("READY=1")
    assert "STATUS=up; no model assigned yet" in notify.lines()
    notify.wait("STATUS=serving 2 model(s)")
    assert agent.stop() == 0
    assert "STOPPING=1" in notify.lines()

    # Second start: the models were active, so READY means they serve already.
    since = time.monotonic()
    agent.start(env=env)
    notify.wait("READY=1", since=since)
    scores, _ = infer(agent.socket, "heavy", "image", heavy_input())  # no wait, no retry
    assert scores.shape == (1, 10)
    ready_status = next(x for x in notify.lines(since) if x.startswith("STATUS="))
    assert ready_status.startswith("STATUS=serving 2 model(s)")
    first_ping = notify.wait("WATCHDOG=1", since=since)
    time.sleep(2.5)
    assert notify.lines(first_ping).count("WATCHDOG=1") >= 3  # every 0.5 s

    # Wedge a real interpreter: this request never finishes.
    with pytest.raises(grpc.RpcError) as stuck:
        stuck_input = np.full((1,), 1e31, np.float32)
        channel = grpc.insecure_channel(f"unix:{agent.socket}")
        from protos import inference_pb2 as pb
        from protos import inference_pb2_grpc as pb_grpc

        request = pb.ModelInferRequest(model_name="spin")
        request.inputs.add(name="x", datatype="FP32", shape=[1])
        request.raw_input_contents.append(stuck_input.tobytes())
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=1)
    assert stuck.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wedged_at = notify.wait("STATUS=wedged: model spin has 1 request(s) in flight", timeout=20)
    time.sleep(2.0)
    assert "WATCHDOG=1" not in notify.lines(wedged_at)  # systemd would now restart it
    assert agent.proc is not None
    agent.proc.popen.send_signal(signal.SIGKILL)  # as systemd does after WatchdogSec
    agent.proc.popen.wait()


def test_sigterm_under_load_loses_no_accepted_request_and_no_telemetry(
    tmp_path: Path, server_factory: Callable[..., Server], color_models: Path
) -> None:
    server = server_factory(None)
    server.admin("models", "push", str(color_models / "heavy_float.tflite"), "--name", "heavy",
                 "--version", "1.0.0", "--deploy")  # fmt: skip
    agent: Agent = make_agent(tmp_path, "svc-2", server, telemetry_s=60).start()
    wait_for(  # exactly one request succeeds here (failures never reach the model)
        "heavy to serve",
        lambda: infer(agent.socket, "heavy", "image", heavy_input())[0] is not None,
        timeout=60,
    )
    stop_at = threading.Event()
    results: list[tuple[float, str]] = []

    def client() -> None:
        while True:
            sent = time.monotonic()
            try:
                infer(agent.socket, "heavy", "image", heavy_input())
                results.append((sent, "OK"))
            except grpc.RpcError as exc:
                results.append((sent, exc.code().name))
                if stop_at.is_set():
                    return
            if stop_at.is_set() and time.monotonic() - stop_at_time[0] > 1:
                return

    stop_at_time = [0.0]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client) for _ in range(8)]
        time.sleep(2.0)
        assert agent.proc is not None
        stop_at_time[0] = time.monotonic()
        agent.proc.popen.send_signal(signal.SIGTERM)
        stop_at.set()
        for f in futures:
            f.result(timeout=60)
        code = agent.proc.popen.wait(timeout=60)
    assert code == 0
    before = [status for sent, status in results if sent < stop_at_time[0] - 0.05]
    assert before and set(before) == {"OK"}, set(before)  # accepted before SIGTERM: all served
    served = 1 + sum(1 for _, status in results if status == "OK")

    def last_report() -> bool:
        (device,) = server.devices()
        models = (device.get("last_telemetry") or {}).get("models", [])
        return any(int(m.get("requests", 0)) == served for m in models)

    # The final report (spooled at shutdown, published before exit) counts every served one.
    wait_for(f"a final report counting all {served} requests", last_report, timeout=30)


def test_sighup_applies_a_changed_setting(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    server = server_factory(None)
    agent = make_agent(tmp_path, "svc-3", server, telemetry_s=30).start()

    def count() -> int:
        (device,) = server.devices()
        return int(device.get("telemetry_count", 0))

    wait_for("the agent enrolled", server.devices, timeout=60)
    text = agent.config.read_text().replace("interval_s = 30", "interval_s = 0.5")
    assert text != agent.config.read_text()
    agent.config.write_text(text)
    assert agent.proc is not None
    agent.proc.popen.send_signal(signal.SIGHUP)
    wait_for("the reload", lambda: "telemetry every 0.5 s" in agent.output(), timeout=30)
    start = count()
    wait_for("reports every 0.5 s", lambda: count() >= start + 4, timeout=15)
    # A broken file is refused and the agent goes on.
    agent.config.write_text(text + "\n[bogus]\n")
    agent.proc.popen.send_signal(signal.SIGHUP)
    wait_for("the refusal", lambda: "reload refused, nothing changed" in agent.output(), 30)
    assert agent.proc.popen.poll() is None
    assert agent.stop() == 0


def test_journald_gets_priorities_without_timestamps(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import logging; from agent.systemd import journal_logging; "
        "print(journal_logging(logging.INFO), flush=True); "
        "logging.getLogger('agent.x').warning('disk low'); "
        "logging.getLogger('agent.y').info('fine')"
    )
    log = tmp_path / "journal.txt"
    for matching in (True, False):
        with log.open("wb") as out:
            stat = os.fstat(out.fileno())
            stream = f"{stat.st_dev}:{stat.st_ino}" if matching else "1:2"
            env = dict(os.environ, JOURNAL_STREAM=stream)
            subprocess.run(
                [sys.executable, "-c", code], stdout=out, stderr=out, env=env, check=True,
                timeout=60,
            )  # fmt: skip
        lines = log.read_text().splitlines()
        if matching:  # stderr is the journal: priority prefixes, no timestamps
            assert lines == ["True", "<4>agent.x: disk low", "<6>agent.y: fine"]
        else:  # JOURNAL_STREAM inherited but stderr elsewhere: plain logging
            assert lines[0] == "False"


def test_the_server_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, notify: NotifySocket
) -> None:
    import subprocess
    import sys

    from tests.harness import start

    data = tmp_path / "data"
    subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "init", "--data-dir", str(data)], check=True
    )
    proc = start(
        [sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(data),
         "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"],
        tmp_path / "server.log",
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"},
    )  # fmt: skip
    ready = notify.wait("READY=1")
    assert any(x.startswith("STATUS=serving: gRPC") for x in notify.lines())
    notify.wait("WATCHDOG=1", since=ready)
    assert proc.stop() == 0
    assert "STOPPING=1" in notify.lines()
