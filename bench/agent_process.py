"""Start a real ``edgefleet-agent run`` process that serves models from a pre-filled store.

The agent is given an unreachable server: it serves what its store says is active, exactly as
after a reboot without network, which is what benchmarks of the serving path need.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["start_agent"]


def start_agent(
    folder: Path, models: Sequence[tuple[str, Path]], *, tcp_port: int = 0
) -> tuple[subprocess.Popen[bytes], Path]:
    """Fill a store with ``models`` (name, file) and start the agent; return it and its socket."""
    state = folder / "agent-state"
    active = {}
    for name, path in models:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        target = state / "models" / name / f"{digest}.tflite"
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
        active[name] = {
            "version": "1.0.0",
            "release_counter": 1,
            "sha256": digest,
            "filename": target.name,
        }
    (state / "active.json").write_text(json.dumps({"format": 1, "models": active}))
    sock = folder / "agent.sock"
    listen = f'listen = "127.0.0.1:{tcp_port}"\n' if tcp_port else ""
    config = folder / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{state}"\n[server]\naddress = "127.0.0.1:1"\n'
        f'enrollment_token = "x"\n[api]\nsocket = "{sock}"\n{listen}'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, sock
