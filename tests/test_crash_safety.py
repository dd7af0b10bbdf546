"""SIGKILL the agent at random points of updates, 30 times, and check it never breaks.

Every third round pushes a new release (a distinct artifact, downloaded slowly through the
agent's bandwidth limit); each round starts the agent, kills it with SIGKILL when the update
reaches a phase picked at random (started, downloading, verified, installed, confirmed: see
PHASES), and checks what a power cut at that instant would leave on disk. The kills wait for the
phase itself, not for a delay, so they land where they are meant to however busy the machine.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.updates.store import ModelStore
from protos import inference_pb2
from tests import oip
from tests.harness import Agent, Server, make_agent, model_variant, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 18  # 6 releases: each combination of kill phases (schedule) once
# Where a kill lands: the phases of an update as the agent reports them to the server (the
# device_pb2 states), each seen where the agent leaves a trace of it. A release's three rounds
# kill in two of the first three phases and then in one of the last two, in that order.
PHASES = {
    "started": "serving the active version, before checking in (this start's log)",
    "downloading": "DOWNLOADING: the artifact arrives, paced by the bandwidth limit (staging/)",
    "verified": "VERIFIED: the artifact is hash-checked and stored; the smoke sample arrives",
    "installed": "INSTALLED: loaded, smoke-tested and active, health window open (journal)",
    "confirmed": "INSTALLED: passed its health window (journal)",
}
CONFIG = """
[updates]
max_download_kbps = 150
health_window_s = 2.0
crash_loop_starts = 100
"""


def variant(model: bytes, tag: int) -> bytes:
    return model_variant(model, f"EdgeFleet crash-safety round {tag}")


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


def phase_reached(phase: str, agent: Agent, version: str, sha256: str) -> bool:
    """Whether the update to ``version`` (artifact ``sha256``) has reached ``phase``."""
    state = agent.folder / "state"
    assert agent.proc is not None
    if phase == "started":
        return "serving colors " in agent.proc.output()
    if phase == "downloading":
        return (state / "staging" / f"{sha256}.part").exists()
    if phase == "verified":
        return (state / "models" / "colors" / f"{sha256}.tflite").exists()
    store = ModelStore(state)
    active = store.active().get("colors")
    if active is None or active.version != version:
        return False
    return phase == "installed" or "colors" not in store.health()


def schedule(rng: random.Random, releases: int) -> list[tuple[str, str, str]]:
    """The kill phases of each release's three rounds: every combination, in a random order."""
    early = [("started", "downloading"), ("started", "verified"), ("downloading", "verified")]
    combos = [(a, b, last) for a, b in early for last in ("installed", "confirmed")]
    order = (combos * (releases // len(combos) + 1))[:releases]
    rng.shuffle(order)
    return order


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
    wait_for("the first install", lambda: check_disk(state) == "1.0.0", timeout=120)
    agent.stop(9)
    seen: set[str] = set()
    kills: list[tuple[int, str, str]] = []  # round, phase, the version active after the kill
    phases = schedule(rng, (ROUNDS + 2) // 3)
    releases = {"1.0.0"}
    latest = "1.0.0"
    sha256 = ""
    try:
        for round_ in range(1, ROUNDS + 1):
            if round_ % 3 == 1:  # a new release every third round; the others resume it
                latest = f"2.0.{round_}"
                artifact = tmp_path / f"round-{round_}.tflite"
                artifact.write_bytes(variant(heavy, round_))
                sha256 = hashlib.sha256(artifact.read_bytes()).hexdigest()
                releases.add(latest)
                server.admin(
                    "models",
                    "push",
                    str(artifact),
                    "--name",
                    "colors",
                    "--version",
                    latest,
                    "--deploy",
                    "--no-compress",  # the phases watch the artifact's own staging file
                )
            phase = phases[(round_ - 1) // 3][(round_ - 1) % 3]
            agent.start()
            assert agent.proc is not None
            popen = agent.proc.popen
            wait_for(
                f"round {round_}: {latest} to reach {phase} ({PHASES[phase]})",
                lambda: phase_reached(phase, agent, latest, sha256) or popen.poll() is not None,  # noqa: B023 - waited for in this iteration
                timeout=120,
                interval=0.02,
            )
            if popen.poll() is not None:
                raise AssertionError(f"the agent exited by itself:\n{agent.output()[-2000:]}")
            assert agent.stop(9) == -9  # still running, as it should be: now the power goes
            kills.append((round_, phase, check_disk(state)))
            seen.add(kills[-1][2])
        # After the last kill the agent recovers and ends on the latest release.
        agent.start()

        def serving_latest() -> bool:
            meta = oip.stub(agent.socket).ModelMetadata(
                inference_pb2.ModelMetadataRequest(name="colors"), timeout=2
            )
            return list(meta.versions) == [latest]

        wait_for(f"the agent to serve {latest}", serving_latest, timeout=120)
        check_disk(state)
    finally:
        if agent.proc is not None:
            agent.proc.stop()
    # The kills landed both before and after activations: every release was seen active, the
    # first one while its successor was on the way.
    assert seen == releases, kills
