"""Enrollment when things go wrong: a name outside the name rule, and a database that fails
between the steps of one enrollment (PostgreSQL out of disk space, injected with a trigger
that fails one statement once: SQLSTATE 53100, which the driver reports as OperationalError,
so the server answers UNAVAILABLE and the device retries, as an agent does).

Real server processes, a real agent, simulated devices on the real device API.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from fleet_server.simulator import SimDevice
from tests.harness import Agent, Server, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A fresh schema in the session's PostgreSQL database, as a server URL."""
    schema = f"enroll_{secrets.token_hex(4)}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"


def _fail_once(url: str, table: str) -> None:
    """The next UPDATE of ``table`` fails as a full disk would; later ones succeed (the
    sequence is not rolled back with the failed statement)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE SEQUENCE disk_full_once"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION disk_full_once() RETURNS trigger AS $$ BEGIN "
                "IF nextval('disk_full_once') = 1 THEN RAISE EXCEPTION "
                "'could not extend file: No space left on device' USING ERRCODE = '53100'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            sa.text(
                f"CREATE TRIGGER disk_full_once BEFORE UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION disk_full_once()"
            )
        )
    engine.dispose()


def _enroll_retrying(server: Server, token: str) -> tuple[SimDevice | None, list[str]]:
    """Enroll as an agent does: retry what the server calls transient (UNAVAILABLE)."""
    seen: list[str] = []
    for _attempt in range(3):
        try:
            return SimDevice.enroll(server.sim_fleet(), token, "cam1", labels={"site": "a"}), seen
        except grpc.RpcError as exc:
            seen.append(f"{exc.code().name}: {exc.details()}")
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                break
    return None, seen


@pytest.mark.parametrize("failing", ["enrollment_tokens", "devices"])
def test_a_full_disk_during_enrollment_leaves_no_ghost_device_and_no_spent_token(
    tmp_path: Path,
    server_factory: Callable[..., Server],
    broker_url: str,
    pg_schema_url: str,
    failing: str,
) -> None:
    # Enroll is three transactions: register the device, spend the token, record the
    # certificate. A failure after the first leaves a registered device without a
    # certificate (labels and all: rollouts select it and wait for it); a failure after the
    # second has spent a single-use token, so the device's retry is refused for good.
    server = server_factory(broker_url, db_url=pg_schema_url)
    token = json.loads(server.admin("tokens", "create", "--json").stdout)["token"]
    _fail_once(pg_schema_url, failing)

    device, errors = _enroll_retrying(server, token)

    assert device is not None, f"the retried enrollment was refused: {errors}"
    assert errors and errors[0].startswith("UNAVAILABLE")  # the injected failure happened
    listed = sorted(d["device_id"] for d in server.devices())
    assert listed == [device.device_id], f"devices registered by one enrollment: {listed}"
    device.close()


def test_an_agent_named_with_a_leading_underscore_enrolls_once(
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    broker_url: str,
) -> None:
    # The server derives the device id from the requested name; "_cam" passed through, and
    # the agent then refused its own id (not a topic level) after the server had registered
    # it: every retry registered another device (_cam, _cam-2, _cam-3...).
    server = server_factory(broker_url)
    agent = agent_factory("_cam", server)
    wait_for("the agent to enroll", lambda: "enrolled as" in agent.output(), timeout=30)
    registered = [d["device_id"] for d in server.devices()]
    assert len(registered) == 1, f"one agent registered {registered}"
    assert "not usable in an MQTT topic" not in agent.output()
