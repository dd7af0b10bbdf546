"""Shared fixtures: a private MQTT broker, test models, server and agent factories."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, Agent, Server, free_port, make_agent, start_mosquitto, start_server


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MQTT v5 broker (mosquitto) for this test session.

    Only where no mosquitto binary exists, and never in CI, the server's embedded broker stands
    in (MQTT 3.1.1 only).
    """
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
        yield broker.url
        broker.proc.stop()
        return
    if os.environ.get("CI"):
        pytest.fail("mosquitto is not installed; .ci/run must install it")
    from fleet_server.telemetry.broker import EmbeddedBroker

    embedded = EmbeddedBroker("127.0.0.1", free_port())
    embedded.start()
    yield embedded.url
    embedded.stop()


@pytest.fixture(scope="session")
def color_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float and int8-input colour classifiers, built by scripts/make_test_models.py.

    Built in this process (the script's ``main``), not by running it: a fixture that starts a
    process would make every engine test that reads these models a slow one.
    """
    out = tmp_path_factory.mktemp("color-models")
    script = runpy.run_path(str(REPO / "scripts" / "make_test_models.py"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert script["main"]([str(out)]) == 0
    return out


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start fleet servers (stopped at the end of the test)."""
    started: list[Server] = []

    def factory(
        mqtt_url: str | None,
        folder: Path | None = None,
        db_url: str | None = None,
        extra: Sequence[str] = (),
        data_dir: Path | None = None,
    ) -> Server:
        server = start_server(folder or tmp_path, mqtt_url, db_url, extra, data_dir)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.proc.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Configure and start agents (stopped at the end of the test)."""
    started: list[Agent] = []

    def factory(name: str, server: Server, **kwargs: Any) -> Agent:
        agent = make_agent(tmp_path, name, server, **kwargs).start()
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        if agent.proc is not None:
            agent.proc.stop()


@dataclass(frozen=True)
class FakeEdgeTpu:
    """The fake libedgetpu built from tests/fakes (see the C file: it runs nothing)."""

    library: Path
    not_a_delegate: Path


@pytest.fixture(scope="session")
def fake_edgetpu(tmp_path_factory: pytest.TempPathFactory) -> FakeEdgeTpu:
    """Compile the fake Edge TPU delegate and a non-delegate library with gcc."""
    out = tmp_path_factory.mktemp("fake-edgetpu")
    fakes = REPO / "tests" / "fakes"
    built = {}
    for source, name in (
        ("fake_edgetpu.c", "libfake_edgetpu.so"),
        ("not_a_delegate.c", "libnot_a_delegate.so"),
    ):
        target = out / name
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-o",
                str(target),
                str(fakes / source),
            ],
            check=True,
        )
        built[name] = target
    return FakeEdgeTpu(built["libfake_edgetpu.so"], built["libnot_a_delegate.so"])


PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server (127.0.0.1:5432, trust auth), dropped at
    the end of the session. .ci/run makes sure the server runs."""
    import secrets

    import sqlalchemy as sa

    name = f"edgefleet_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL on 127.0.0.1:5432 is not reachable ({exc.orig}); .ci/run starts it"
        )
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same storage tests on both backends: SQLite, and a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    import sqlalchemy as sa

    base: str = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    schema = f"t_{tmp_path.name.lower().replace('-', '_')[:40]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    yield f"{base}?options=-csearch_path%3D{schema}"
