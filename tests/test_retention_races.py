"""Deleting a version while another admin (on this server or another replica over one
PostgreSQL database) deploys it or starts a rollout of it, at the same instant. Real server
processes; the calls go straight to the admin API from two threads released together. Found
by the issue-22 review: both calls succeeded and the fleet was sent a version whose files were
gone."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos import admin_pb2 as pb
from protos import admin_pb2_grpc as pb_grpc
from tests.harness import DATA, Server, together

pytestmark = pytest.mark.slow

ROUNDS = 6
QUIET = ("--rollout-interval", "3600")


def _stub(server: Server) -> Callable[[str, object], Any]:
    token = (server.data_dir / "admin.token").read_text(encoding="utf-8").strip()
    credentials = grpc.ssl_channel_credentials(server.ca_file.read_bytes())
    stub = pb_grpc.AdminServiceStub(grpc.secure_channel(server.address, credentials))

    def call(method: str, request: object) -> Any:
        return getattr(stub, method)(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=30
        )

    return call


def test_a_version_deleted_while_deployed_or_rolled_out_is_never_both(
    server_factory: Callable[..., Server], tmp_path: Path, db_url: str
) -> None:
    first = server_factory(None, folder=tmp_path / "one", db_url=db_url, extra=QUIET)
    second = (
        server_factory(
            None, folder=tmp_path / "two", db_url=db_url, extra=QUIET, data_dir=first.data_dir
        )
        if db_url.startswith("postgresql")
        else first
    )
    model = str(DATA / "digits_local_float.tflite")
    for n in range(ROUNDS + 1):
        first.admin("models", "push", model, "--name", "d", "--version", f"{n}.0.0")
    first.admin("deploy", "d", f"{ROUNDS}.0.0")
    deleter, other = _stub(first), _stub(second)
    for n in range(ROUNDS):
        version = f"{n}.0.0"
        delete = pb.DeleteModelVersionRequest(model_name="d", version=version)
        if n % 2:
            use = partial(other, "Deploy", pb.DeployRequest(model_name="d", version=version))
        else:
            create = pb.CreateRolloutRequest(model_name="d", version=version, allow_empty=True)
            use = partial(other, "CreateRollout", create)
        outcome = together([partial(deleter, "DeleteModelVersion", delete), use])
        assert outcome.count("ok") == 1, (version, outcome)
        models = deleter("ListModels", pb.ListModelsRequest()).models
        kept = {m.version for m in models}
        deployed = [m.version for m in models if m.deployed]
        rollouts = deleter("ListRollouts", pb.ListRolloutsRequest()).rollouts
        live = [r for r in rollouts if r.state in ("running", "paused")]
        assert all(r.version in kept for r in live), (version, outcome, kept)
        assert deployed, (version, outcome, kept)  # the deployment names a version there is
        for rollout in live:
            deleter("AbortRollout", pb.RolloutRequest(rollout_id=rollout.rollout_id))
