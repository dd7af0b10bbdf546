"""Start a real ``edgefleet-agent run`` process that serves models from a pre-filled store.

The agent is configured as tests/harness.py configures one (name, state dir, server address,
enrollment token, the fleet CA it checks the server with), but its server is unreachable: it
serves what its store says is active and retries enrolling in the background, as a device
without network does. That is what benchmarks of the serving path need.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.updates.store import ActiveEntry, ModelStore
from bench.processes import Child, Children
from fleet_server.registry.ca import FleetCA

__all__ = ["start_agent"]

UNREACHABLE_SERVER = "127.0.0.1:1"  # nothing listens on port 1: connect fails at once


def start_agent(
    children: Children,
    models: Sequence[tuple[str, Path]],
    *,
    tcp_port: int = 0,
    rest_port: int = 0,
    python: Sequence[str] = (sys.executable,),
    name: str = "agent",
) -> tuple[Child, Path]:
    """Fill a store with ``models`` (name, file), start the agent (logging to ``NAME.log`` in
    the run's folder; gRPC on ``tcp_port`` and REST on ``rest_port`` too when given) and return
    it and its unix socket; the caller waits until it serves. ``python``: the interpreter
    command that runs it (another environment's, e.g. an installed package's)."""
    home = children.folder / name
    store = ModelStore(home / "state")
    for model, path in models:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        staged = store.staging_path(digest)
        shutil.copy(path, staged)
        target = store.commit_artifact(model, digest, staged)
        store.set_active(model, ActiveEntry("1.0.0", 1, digest, target.name))
    # A fleet CA of its own: the agent refuses to start enrolling without one to check the
    # server's certificate with, and this agent's server never answers anyway.
    FleetCA.create(home / "ca", "bench")
    listen = f'listen = "127.0.0.1:{tcp_port}"\n' if tcp_port else ""
    if rest_port:
        listen += f'rest_listen = "127.0.0.1:{rest_port}"\n'
    config = home / "agent.toml"
    config.write_text(
        f"""
[agent]
name = "bench"
state_dir = "state"

[server]
address = "{UNREACHABLE_SERVER}"
enrollment_token = "bench-offline"
ca_file = "ca/ca.crt"

[api]
socket = "oip.sock"
{listen}""",
        encoding="utf-8",
    )
    child = children.start(name, [*python, "-m", "agent.cli", "run", "--config", str(config)])
    return child, home / "oip.sock"
