"""Rollout admin actions that race: two operators (or a script run twice) at the same instant,
on one server or on two replicas over one PostgreSQL database. Real server processes; the calls
go straight to the admin API from two threads released together."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import pytest

from fleet_server.simulator import SimDevice
from protos import admin_pb2 as pb
from protos import admin_pb2_grpc as pb_grpc
from tests.harness import Server, together

pytestmark = pytest.mark.slow

ROUNDS = 12
# The controller stays out of the way: these races are between admin calls.
QUIET = ("--rollout-interval", "3600")


class _Admin:
    def __init__(self, server: Server) -> None:
        token = (server.data_dir / "admin.token").read_text(encoding="utf-8").strip()
        self._metadata = [("authorization", f"Bearer {token}")]
        credentials = grpc.ssl_channel_credentials(root_certificates=server.ca_file.read_bytes())
        self.channel = grpc.secure_channel(server.address, credentials)
        self.stub = pb_grpc.AdminServiceStub(self.channel)

    def call(self, method: str, request: object) -> object:
        return getattr(self.stub, method)(request, metadata=self._metadata, timeout=30)


def _replicas(
    server_factory: Callable[..., Server], tmp_path: Path, db_url: str, broker: str, model: Path
) -> tuple[Server, Server]:
    """Two replicas on one PostgreSQL database, or one SQLite server twice; with color 1.0.0
    deployed, 2.0.0 pushed and a device to roll it out to."""
    first = server_factory(broker, folder=tmp_path / "one", db_url=db_url, extra=QUIET)
    second = (
        server_factory(
            broker, folder=tmp_path / "two", db_url=db_url, extra=QUIET, data_dir=first.data_dir
        )
        if db_url.startswith("postgresql")
        else first
    )
    for version in ("1.0.0", "2.0.0"):
        first.admin("models", "push", str(model), "--name", "color", "--version", version)
    first.admin("deploy", "color", "1.0.0")
    SimDevice.enroll(first.sim_fleet(), first.enrollment_token(), "d0").close()
    return first, second


def _live(admin: _Admin) -> list[int]:
    listed = admin.call("ListRollouts", pb.ListRolloutsRequest())
    return [r.rollout_id for r in listed.rollouts if r.state in ("running", "paused")]  # type: ignore[attr-defined]


def test_two_creates_at_once_leave_one_live_rollout(
    server_factory: Callable[..., Server],
    tmp_path: Path,
    db_url: str,
    broker_url: str,
    color_models: Path,
) -> None:
    # "At most one live rollout per model": create checks for a live one, then inserts,
    # without a lock that orders two creates (SQLite runs the check outside the write
    # transaction; PostgreSQL's READ COMMITTED does not see the other's uncommitted row).
    # Two live rollouts: pausing one (or its health gate pausing it) leaves the other
    # pushing the same version to the same devices.
    first, second = _replicas(
        server_factory, tmp_path, db_url, broker_url, color_models / "color_int8.tflite"
    )
    admins = [_Admin(first), _Admin(second)]
    request = pb.CreateRolloutRequest(model_name="color", version="2.0.0", waves=["100%"])
    for round_ in range(ROUNDS):
        outcome = together([partial(a.call, "CreateRollout", request) for a in admins])
        live = _live(admins[0])
        assert len(live) <= 1, f"round {round_}: {outcome} left live rollouts {live}"
        for rollout_id in live:
            admins[0].call("AbortRollout", pb.RolloutRequest(rollout_id=rollout_id))
    for admin in admins:
        admin.channel.close()


def test_a_resume_at_the_same_time_cannot_undo_an_abort(
    server_factory: Callable[..., Server],
    tmp_path: Path,
    db_url: str,
    broker_url: str,
    color_models: Path,
) -> None:
    # Serialized, "abort" and "resume" of a paused rollout end aborted either way (resume
    # first, then abort; or abort first, and resume is refused). On SQLite the state is read
    # outside the write transaction (FOR UPDATE is a no-op there), so both succeed and the
    # resume can write "running" over the abort the operator was told had happened.
    first, _ = _replicas(
        server_factory, tmp_path, db_url, broker_url, color_models / "color_int8.tflite"
    )
    admin = _Admin(first)
    create = pb.CreateRolloutRequest(model_name="color", version="2.0.0", waves=["100%"])
    for round_ in range(ROUNDS):
        rollout_id = admin.call("CreateRollout", create).rollout_id  # type: ignore[attr-defined]
        admin.call("PauseRollout", pb.RolloutRequest(rollout_id=rollout_id))
        request = pb.RolloutRequest(rollout_id=rollout_id)
        resumed, aborted = together(
            [
                partial(admin.call, "ResumeRollout", request),
                partial(admin.call, "AbortRollout", request),
            ]
        )
        state = admin.call("GetRollout", request).state  # type: ignore[attr-defined]
        if aborted == "ok":
            assert state == "aborted", f"round {round_}: resume {resumed}, abort ok, now {state}"
        if state != "aborted":
            admin.call("AbortRollout", request)
    admin.channel.close()
