"""What another program on the device may leave where the agent stages a download
(``state/staging/<sha256>.part``): a symbolic link to a file of its choosing, or a FIFO. The
agent writes only into a regular file of its own there: the link's target is never written
(the agent runs as root on most devices), a FIFO never blocks its update loop, and the model
still installs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Server, active_version, make_agent, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_what_another_program_planted_in_staging_is_neither_followed_nor_waited_on(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    color_models: Path,
    planted: str,
) -> None:
    server = server_factory(broker_url)
    model = color_models / "color_float.tflite"
    server.admin("models", "push", str(model), "--name", "colors", "--version", "1.0.0",
                 "--no-compress", "--deploy")  # fmt: skip
    agent = make_agent(tmp_path, "dev-s", server)
    staging = agent.folder / "state" / "staging"
    staging.mkdir(parents=True)
    staged = staging / f"{hashlib.sha256(model.read_bytes()).hexdigest()}.part"
    victim = tmp_path / "victim.conf"
    victim.write_bytes(b"root:x:0:0\n")
    if planted == "symlink":
        staged.symlink_to(victim)
    else:
        os.mkfifo(staged)
    agent.start()
    try:
        wait_for("1.0.0 installed", lambda: active_version(agent, "colors") == "1.0.0",
                 timeout=60)  # fmt: skip
        assert victim.read_bytes() == b"root:x:0:0\n"
        assert not staged.exists() and not staged.is_symlink()
    finally:
        agent.stop()
