"""SIGKILL the agent at random points of updates, 30 times, and check it never breaks.

Each round pushes a new release (a distinct artifact, downloaded slowly through the agent's
bandwidth limit so that kills land in every phase: download, verify, load, smoke test,
activation, health window), starts the agent, kills it with SIGKILL after a random delay, and
checks what a power cut at that instant would leave on disk.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.updates.store import ModelStore
from protos import inference_pb2
from tests import oip
from tests.harness import Server, make_agent, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 30
CONFIG = """
[updates]
max_download_kbps = 150
health_window_s = 2.0
crash_loop_starts = 100
"""


def variant(model: bytes, tag: int) -> bytes:
    """The same network with another description: a valid model with its own hash."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    parsed = s.ModelT.InitFromPackedBuf(model, 0)
    parsed.description = f"EdgeFleet crash-safety round {tag}".encode()
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(parsed.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def check_disk(state: Path) -> str:
    """The invariants after a kill; returns the active version."""
    store = ModelStore(state)
    active = store.active()  # the journal parses: it was replaced atomically
    assert set(active) <= {"colors"}
    for name, entry in active.items():
        path = store.artifact_path(name, entry.sha256)
        assert path.exists(), f"active {entry.version} points at a missing file"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    for path in (state / "models").rglob("*.tflite"):
        # Nothing unverified ever sits in the store: every file is what its name says.
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem, path
    assert set(store.health()) <= set(active)
    return active["colors"].version if "colors" in active else ""


def test_sigkill_at_random_points_never_leaves_an_unverified_or_missing_model(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    color_models: Path,
) -> None:
    rng = random.Random(20261126)  # noqa: S311 - reproducible kill times, not cryptography
    server = server_factory(broker_url)
    heavy = (color_models / "heavy_float.tflite").read_bytes()
    server.admin(
        "models",
        "push",
        str(color_models / "color_float.tflite"),
        "--name",
        "colors",
        "--version",
        "1.0.0",
        "--deploy",
    )
    agent = make_agent(tmp_path, "dev-z", server, checkin_s=1.0, extra=CONFIG)
    state = agent.folder / "state"
    agent.start()
    wait_for("the first install", lambda: check_disk(state) == "1.0.0")
    agent.stop(9)
    seen: set[str] = set()
    latest = "1.0.0"
    try:
        for round_ in range(1, ROUNDS + 1):
            if round_ % 3 == 1:  # a new release every third round; the others resume it
                latest = f"2.0.{round_}"
                artifact = tmp_path / f"round-{round_}.tflite"
                artifact.write_bytes(variant(heavy, round_))
                server.admin(
                    "models",
                    "push",
                    str(artifact),
                    "--name",
                    "colors",
                    "--version",
                    latest,
                    "--deploy",
                )
            agent.start()
            delay = rng.uniform(0.0, 3.0)
            assert agent.proc is not None
            try:
                agent.proc.popen.wait(delay)
            except subprocess.TimeoutExpired:
                pass  # still running, as it should be: now the power goes
            else:
                raise AssertionError(f"the agent exited by itself:\n{agent.output()[-2000:]}")
            assert agent.stop(9) == -9
            seen.add(check_disk(state))
        # After the last kill the agent recovers and ends on the latest release.
        agent.start()

        def serving_latest() -> bool:
            meta = oip.stub(agent.socket).ModelMetadata(
                inference_pb2.ModelMetadataRequest(name="colors"), timeout=2
            )
            return list(meta.versions) == [latest]

        wait_for(f"the agent to serve {latest}", serving_latest, timeout=60)
        check_disk(state)
    finally:
        if agent.proc is not None:
            agent.proc.stop()
    # The kills landed both before and after activations: old and new versions were seen.
    assert len(seen) >= 3, seen
