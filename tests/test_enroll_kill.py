"""Enrollment that survives a kill, ghost devices, and serving whatever is wrong with enrolling
(issue 18, parts 3 and 4). Real processes: a fleet server, agents killed with SIGKILL; the test
stands between the agent and the server's enrollment port to hold the server's answer back.

- A kill after the server answered Enroll and before the agent saved its identity: the restarted
  agent asks with the same key and gets the same identity; the server has one device.
- A device that enrolled and never checked in is deleted after ``--ghost-device-after`` and the
  deletion is audited; a device that checked in once stays.
- An agent whose enrollment settings are broken (the fleet CA file is missing) serves the model
  in its store, says what is wrong once, and enrolls as soon as the file is there.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from cryptography import x509

from agent.identity import new_key_and_csr
from fleet_server.datadir import DataDir
from fleet_server.simulator import SimDevice
from fleet_server.storage.db import Database
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from tests.harness import Agent, Server, make_agent, start, wait_for
from tests.oip import infer
from tests.test_identity import enroll_raw, new_token
from tests.test_lifecycle import NotifySocket
from tests.test_routing import push_digits, ready

pytestmark = pytest.mark.slow


class HeldEnrollment(pb_grpc.DeviceServiceServicer):
    """The server's enrollment port as the agent sees it, through the test: every Enroll goes on
    to the real server; while ``hold`` is set, the server's answer stays here (the agent waits
    for it until it is killed) and ``answered`` is set."""

    def __init__(self, server: Server) -> None:
        credentials = grpc.ssl_channel_credentials(server.ca_file.read_bytes())
        self._channel = grpc.secure_channel(server.address, credentials)
        self._server = pb_grpc.DeviceServiceStub(self._channel)
        self.hold = threading.Event()
        self.answered = threading.Event()
        self.requests: list[pb.EnrollRequest] = []
        self.answers: list[pb.EnrollResponse] = []

    def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:  # noqa: N802
        self.requests.append(request)
        try:
            answer: pb.EnrollResponse = self._server.Enroll(request, timeout=10)
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details())
        self.answers.append(answer)
        if self.hold.is_set():
            self.answered.set()
            while context.is_active():  # until the agent is gone
                time.sleep(0.02)
        return answer

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def held(server_factory: Callable[..., Server]) -> Iterator[tuple[Server, HeldEnrollment, str]]:
    """A server, the test in front of its enrollment port, and that front's address."""
    server = server_factory(None)
    key_pem, cert_pem = DataDir.open(server.data_dir).ca().server_credentials(["127.0.0.1"])
    front = HeldEnrollment(server)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_DeviceServiceServicer_to_server(front, grpc_server)
    port = grpc_server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)])
    )
    grpc_server.start()
    yield server, front, f"127.0.0.1:{port}"
    grpc_server.stop(grace=None)
    front.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[NotifySocket]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def _first_checkin(server: Server, device_id: str) -> int | None:
    """When the server recorded the device's first check-in (None: never)."""
    db = Database(DataDir.open(server.data_dir).db_url)
    try:
        with db.engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT first_checkin_at FROM devices WHERE device_id = :d"),
                {"d": device_id},
            ).scalar()
    finally:
        db.close()


def test_a_kill_after_the_server_answered_enrollment_costs_the_device_nothing(
    tmp_path: Path, held: tuple[Server, HeldEnrollment, str]
) -> None:
    server, front, address = held
    token = new_token(server)  # single use: the old agent was refused with it on restart
    agent = make_agent(tmp_path, "cam-k", server)
    text = agent.config.read_text().replace(server.address, address)
    agent.config.write_text(text.replace(server.enrollment_token(), token))
    state = agent.folder / "state"

    front.hold.set()
    agent.start()
    assert front.answered.wait(30), f"no enrollment reached the server:\n{agent.output()}"
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    (answer,) = front.answers
    # The server has answered and spent the token; the agent saved no identity, only its key.
    assert not (state / "identity.json").exists()
    assert (state / "enrollment" / "device.key").stat().st_mode & 0o777 == 0o600
    assert [d["device_id"] for d in server.devices()] == [answer.device_id]

    front.hold.clear()
    started = time.monotonic()
    agent.start()
    assert agent.proc is not None
    now = agent.proc
    wait_for("the agent to enroll again", lambda: "enrolled as" in now.output(), timeout=30)
    wait_for("the first check-in", lambda: _first_checkin(server, answer.device_id), timeout=30)
    took = time.monotonic() - started
    first, again = (x509.load_pem_x509_csr(r.csr_pem).public_key() for r in front.requests)
    assert first == again, "the retry asked with another key"
    identity = json.loads((state / "identity.json").read_text())
    assert identity["device_id"] == answer.device_id
    assert identity["certificate"].encode() == answer.certificate_pem  # the same certificate
    assert [d["device_id"] for d in server.devices()] == [answer.device_id]
    assert not (state / "enrollment").exists()
    assert "enrollment again (same token and key" in server.proc.output()
    assert "not enrolled" not in agent.output()
    print(f"re-enrolled and checked in {took:.1f} s after the restart")


def test_a_ghost_device_is_deleted_and_audited_and_a_checked_in_one_stays(
    server_factory: Callable[..., Server],
) -> None:
    after = 4  # > the 2 s in which the server writes check-ins in batches
    server = server_factory(None, extra=("--ghost-device-after", str(after)))
    alive = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "alive")
    alive.check_in()
    _key, csr = new_key_and_csr("ghost")
    ghost = enroll_raw(server, server.enrollment_token(), "ghost", csr).device_id
    enrolled = time.monotonic()
    assert sorted(d["device_id"] for d in server.devices()) == ["alive", ghost]

    wait_for(
        "the ghost to go",
        lambda: [d["device_id"] for d in server.devices()] == ["alive"],
        timeout=after + 20,
    )
    gone = time.monotonic() - enrolled
    entries = json.loads(server.admin("audit", "--json").stdout)
    (entry,) = [e for e in entries if e["action"] == "DeleteGhostDevice"]
    assert entry["target"] == ghost and entry["ok"] and entry["actor"] == "server"
    assert "never checked in" in json.loads(entry["detail"])["reason"]
    assert f"deleted device {ghost}" in server.proc.output()
    assert gone >= after - 1, f"deleted {gone:.1f} s after enrolling"
    alive.check_in()  # the device that checked in was older than the ghost, and stays
    alive.close()
    print(f"ghost deleted {gone:.1f} s after enrolling (--ghost-device-after {after})")


def _start_debug(agent: Agent, env: dict[str, str]) -> Agent:
    """Start the agent logging at debug level (its retries without news are debug lines)."""
    cmd = [sys.executable, "-m", "agent.cli", "--log-level", "debug", "run"]
    log = agent.folder / f"agent-{int(time.time() * 1000)}.log"
    agent.proc = start([*cmd, "--config", str(agent.config)], log, env=env)
    return agent


def test_an_agent_that_cannot_enroll_serves_its_models_and_enrolls_once_the_file_is_there(
    tmp_path: Path, server_factory: Callable[..., Server], systemd: NotifySocket
) -> None:
    server = server_factory(None)
    push_digits(server)
    agent = make_agent(tmp_path, "cam-s", server).start()
    ready(agent, "digits")
    assert agent.stop() == 0
    # The device keeps its models but not its identity (re-imaged, or moved to another fleet),
    # and its config names a fleet CA file that is not there.
    state = agent.folder / "state"
    for name in ("identity.json", "device.key", "device.crt", "fleet-ca.crt"):
        (state / name).unlink()
    ca_file = agent.folder / "fleet-ca.crt"
    agent.config.write_text(agent.config.read_text().replace(str(server.ca_file), str(ca_file)))

    started = time.monotonic()
    _start_debug(agent, {"NOTIFY_SOCKET": str(systemd.path)})
    sample = np.zeros((1, 64), np.float32)
    wait_for("digits served", lambda: infer(agent.socket, "digits", "pixels", sample), timeout=30)
    served = time.monotonic() - started
    problem = f"server.ca_file {ca_file} does not exist"
    wait_for("the problem in the log", lambda: problem in agent.output(), timeout=10)
    systemd.wait("READY=1")
    systemd.wait(f"STATUS=serving 1 model(s): digits 1.0.0 (cpu); not enrolled: {problem}")
    # A reload that changes the token but not the CA: tried again at once, the same problem
    # is not logged again.
    agent.config.write_text(agent.config.read_text().replace(server.enrollment_token(), "other"))
    assert agent.proc is not None
    agent.proc.popen.send_signal(signal.SIGHUP)
    wait_for("a retry", lambda: "still not enrolled" in agent.output(), timeout=20)
    assert agent.output().count("_enroll: not enrolled: ") == 1, agent.output()
    assert agent.proc.popen.poll() is None

    # The operator fixes the config (the right token back) and puts the CA file in place.
    right = f'"{server.enrollment_token()}"'
    agent.config.write_text(agent.config.read_text().replace('"other"', right))
    agent.proc.popen.send_signal(signal.SIGHUP)
    fixed = time.monotonic()
    ca_file.write_bytes(server.ca_file.read_bytes())
    assert agent.proc is not None
    now = agent.proc  # this start's log: the first start enrolled too
    wait_for("the enrollment", lambda: "enrolled as" in now.output(), timeout=30)
    took = time.monotonic() - fixed
    assert len(server.devices()) == 2  # its earlier identity, and this one
    serving = "STATUS=serving 1 model(s): digits 1.0.0 (cpu)"  # and nothing more
    wait_for("the problem gone from STATUS", lambda: serving in systemd.lines(since=fixed))
    assert infer(agent.socket, "digits", "pixels", sample)
    assert agent.stop() == 0
    print(f"served {served:.1f} s after start; enrolled {took:.1f} s after the fix")
