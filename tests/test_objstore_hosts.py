"""A fleet on several hosts (issue 25 item 5), in network namespaces this test makes: one host
for PostgreSQL (its own instance, initdb'd here), Ceph's radosgw and mosquitto; two server
hosts, replicas sharing them; one host for the agents. A staged rollout completes while one
server host is cut off mid-way; devices download from the object store, and from a server while
the store is unreachable. Runs in `make test-objstore` (as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import netns, objstore
from tests.harness import (
    DATA,
    Agent,
    Proc,
    active_version,
    make_agent,
    port_open,
    run_cli,
    start,
    start_mosquitto,
    wait_for,
)

pytestmark = [pytest.mark.objstore, pytest.mark.slow]
V1 = DATA / "mobilenet_v1_0.25_128_quant.tflite"
V2 = DATA / "keras_lstm_mnist_ptq.tflite"
V3 = DATA / "digits_local_int8.tflite"
MAIN, DEVICE = 7443, 7444


@pytest.fixture
def network() -> Iterator[netns.Network]:
    assert netns.available(), "network namespaces need root and iproute2"
    with netns.Network("ef", ["infra", "server-a", "server-b", "devices"]) as net:
        yield net


def start_postgres(folder: Path, host: netns.Host) -> tuple[Proc, str]:
    """PostgreSQL of the test's own on ``host``: initdb'd in ``folder`` (which the postgres
    user owns), trust auth for the test network; returns the process and a fresh database's
    URL."""
    binaries = sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin"))
    assert binaries, "PostgreSQL's server binaries (Debian's postgresql)"
    bin_dir = binaries[-1]
    data = folder / "pgdata"
    data.mkdir()
    shutil.chown(folder, "postgres")
    shutil.chown(data, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U",
                    "postgres"], check=True, capture_output=True, timeout=120)  # fmt: skip
    subnet = host.address.rsplit(".", 1)[0]
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {subnet}.0/24 trust\n")
    proc = start(
        host.command([*as_postgres, f"{bin_dir}/postgres", "-D", str(data), "-p", "5432",
                      "-c", f"listen_addresses={host.address}", "-k", str(folder)]),
        folder / "postgres.log",
    )  # fmt: skip
    wait_for("PostgreSQL", lambda: port_open(5432, host.address), timeout=60)
    admin = sa.create_engine(
        f"postgresql+psycopg://postgres@{host.address}:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text('CREATE DATABASE "fleet"'))
    admin.dispose()
    return proc, f"postgresql+psycopg://postgres@{host.address}:5432/fleet"


def start_replica(
    folder: Path, host: netns.Host, data_dir: Path, common: list[str], name: str
) -> Proc:
    ready = folder / f"{name}-ready.json"
    proc = start(
        host.command([
            sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(data_dir),
            "--listen", f"{host.address}:{MAIN}", "--device-listen", f"{host.address}:{DEVICE}",
            "--tls-name", host.address, "--server-name", name, "--ready-file", str(ready),
            "--rollout-interval", "0.5", *common,
        ]),
        folder / f"{name}.log",
    )  # fmt: skip
    wait_for(f"replica {name}", lambda: ready.exists() or proc.popen.poll() is not None, 60)
    assert proc.popen.poll() is None, proc.output()
    return proc


def on(agent: Agent, version: str) -> Callable[[], bool]:
    """A probe: the agent runs ``version`` of model m."""
    return lambda: active_version(agent, "m") == version


def test_a_rollout_completes_across_hosts_with_a_server_host_cut_off(
    network: netns.Network, tmp_path: Path
) -> None:
    infra, a, b = network["infra"], network["server-a"], network["server-b"]
    devices = network["devices"]
    pg_folder = Path(tempfile.mkdtemp(prefix="ef-pg-", dir="/var/tmp"))
    started: list[Proc] = []
    agents: list[Agent] = []
    gateway = None
    try:
        pg, db_url = start_postgres(pg_folder, infra)
        started.append(pg)
        gateway = objstore.start(tmp_path / "ceph", host=infra.address, wrap=infra.command)
        broker = start_mosquitto(tmp_path / "broker", host=infra.address, wrap=infra.command)
        started.append(broker.proc)
        data_dir = tmp_path / "server"
        run_cli("edgefleet-server", "init", "--data-dir", str(data_dir))
        common = [
            "--db-url", db_url, "--mqtt-url", broker.url, "--mqtt-share-group", "ingest",
            "--artifact-store", "s3://fleet", "--s3-endpoint", gateway.endpoint,
            "--s3-credentials", str(gateway.credentials_file(tmp_path / "s3.credentials")),
            "--s3-create-bucket",
        ]  # fmt: skip
        started.append(start_replica(tmp_path, a, data_dir, common, "a"))
        started.append(start_replica(tmp_path, b, data_dir, common, "b"))

        def admin(host: netns.Host, *args: str) -> subprocess.CompletedProcess[str]:
            return run_cli("edgefleet", "--server", f"{host.address}:{MAIN}", "--data-dir",
                           str(data_dir), *args, timeout=120)  # fmt: skip

        class Replica:  # what make_agent reads of a server
            address = f"{a.address}:{MAIN}, {b.address}:{MAIN}"
            ca_file = data_dir / "ca" / "ca.crt"

            @staticmethod
            def enrollment_token() -> str:
                return (data_dir / "enrollment.token").read_text().strip()

        for i in range(3):
            agent = make_agent(tmp_path, f"dev-{i}", Replica,  # type: ignore[arg-type]
                               extra="[updates]\nallow_http_downloads = true\n",
                               timeout_s=2.0)  # fmt: skip
            agents.append(agent.start(wrap=devices.command))
        admin(a, "models", "push", str(V1), "--name", "m", "--version", "1.0.0", "--deploy",
              "--no-compress")  # fmt: skip
        for agent in agents:
            wait_for(f"{agent.name} on 1.0.0", on(agent, "1.0.0"),
                     timeout=90)  # fmt: skip
            assert "from the object store" in agent.output()

        # A staged rollout of 2.0.0, one device per wave; server host A is cut off once the
        # first device runs it.
        admin(b, "models", "push", str(V2), "--name", "m", "--version", "2.0.0", "--no-compress")
        created = json.loads(admin(a, "rollouts", "create", "m", "2.0.0", "--waves", "1,2,100%",
                                   "--no-health-gate", "--json").stdout)  # fmt: skip
        rollout = str(created["rollout_id"])
        wait_for("the first wave", lambda: any(active_version(g, "m") == "2.0.0"
                                               for g in agents), timeout=90)  # fmt: skip
        a.cut()
        for agent in agents:
            wait_for(f"{agent.name} on 2.0.0", on(agent, "2.0.0"),
                     timeout=180)  # fmt: skip
        status = json.loads(admin(b, "rollouts", "status", rollout, "--json").stdout)
        wait_for("the rollout completed", lambda: json.loads(
            admin(b, "rollouts", "status", rollout, "--json").stdout)["state"] == "completed",
            timeout=60)  # fmt: skip
        assert any(f"to {b.address}:{DEVICE}" in g.output() for g in agents), status

        # The store unreachable: 3.0.0 (pushed through B while it was there) comes from B.
        admin(b, "models", "push", str(V3), "--name", "m", "--version", "3.0.0", "--no-compress")
        gateway.stop_gateway()
        admin(b, "deploy", "m", "3.0.0")
        for agent in agents:
            wait_for(f"{agent.name} on 3.0.0", on(agent, "3.0.0"),
                     timeout=120)  # fmt: skip
            assert "trying the next source" in agent.output()
    finally:
        for agent in agents:
            if agent.proc is not None:
                agent.stop()
        for proc in reversed(started):
            proc.stop()
        if gateway is not None:
            gateway.stop()
        shutil.rmtree(pg_folder, ignore_errors=True)
        os.sync()
