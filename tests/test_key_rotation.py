"""Issue 21 items 1 and 3 with real processes: a release-key rotation keeps the deployed models
valid on running devices and reaches devices enrolled later, and the server renews manifests
before they expire, with nothing refused and nothing downloaded again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import DATA, Agent, Server, free_port, wait_for
from tests.test_fleet_e2e import model_state, wait_state

pytestmark = pytest.mark.slow

MODELS = ("colors", "digits", "digits8")


def push_three(server: Server, color_models: Path) -> None:
    files = {
        "colors": color_models / "color_float.tflite",
        "digits": DATA / "digits_local_float.tflite",
        "digits8": DATA / "digits_local_int8.tflite",
    }
    for name, path in files.items():
        server.admin("models", "push", str(path), "--name", name, "--version", "1.0.0", "--deploy")


def all_installed(server: Server, device: str) -> None:
    for name in MODELS:
        wait_state(server, device, name, "1.0.0", "INSTALLED")


def updates(agent: Agent) -> int:
    """How many releases the agent set out to install (each one a download)."""
    return agent.output().count("updating ")


def refusals(agent: Agent) -> list[str]:
    return [line for line in agent.output().splitlines() if "refusing" in line]


def states(server: Server, device: str) -> dict[str, tuple[str, str]]:
    found = {}
    for name in MODELS:
        state = model_state(server, device, name) or {}
        found[name] = (state.get("version", ""), state.get("state", ""))
    return found


def adopted(agent: Agent, version: int) -> None:
    def seen() -> bool:
        return f"key list rotated to version {version}" in agent.output()

    wait_for(f"{agent.name} to adopt key list {version}", seen)


def release_keys(server: Server) -> list[str]:
    listing = server.admin("keys", "list").stdout
    keys = listing.split("release keys", 1)[1].splitlines()[1:]
    return [line.split()[0] for line in keys if line.startswith("  ")]


def test_a_rotation_keeps_deployed_models_valid_and_reaches_devices_enrolled_after_it(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    server = server_factory(broker_url)
    push_three(server, color_models)
    agents = [agent_factory(name, server) for name in ("dev-a", "dev-b")]
    for agent in agents:
        all_installed(server, agent.name)
    assert [updates(a) for a in agents] == [3, 3]
    (first,) = release_keys(server)

    # A rotation with a short overlap (17 s): the old key stays in the list meanwhile.
    rotated = server.admin(
        "keys", "rotate", "--root-key-dir", str(server.root_key_dir), "--overlap-days", "0.0002"
    ).stdout
    assert "published key list version 2" in rotated
    assert f"kept the replaced release key(s) {first} in the list" in rotated
    second, kept = release_keys(server)
    assert kept == first
    retired = server.data_dir / "keys" / "retired" / f"release-{first}.key"
    assert retired.exists()
    listing = server.admin("keys", "list").stdout
    assert f"{first}  until " in listing and "signs nothing)  in retired/" in listing, listing
    overlap_ends = time.time() + 0.0002 * 86400
    # The server adds the new key's signatures to the three deployed manifests at once.
    wait_for(
        "the server to re-sign the three deployed manifests",
        lambda: server.proc.output().count("re-signed the manifest of") == 3,
    )
    for agent in agents:
        adopted(agent, 2)

    # Once the overlap has passed, the next rotation leaves the first key out, and its retired
    # file goes. Devices then verify the deployed manifests with the second key only (the
    # third one is kept for its overlap): without the re-signing they would refuse them.
    time.sleep(max(0.0, overlap_ends - time.time()) + 1)
    again = server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir)).stdout
    assert "published key list version 3" in again and f"deleted {retired}" in again
    assert not retired.exists()
    third, kept = release_keys(server)
    assert kept == second and third not in (first, second)
    for agent in agents:
        adopted(agent, 3)

    # A device enrolled after the rotations gets all three models.
    late = agent_factory("dev-late", server)
    all_installed(server, late.name)
    assert "key list rotated" not in late.output()  # it pinned version 3 at enrollment
    time.sleep(3)  # a few more check-ins of every device
    for agent in [*agents, late]:
        assert states(server, agent.name) == dict.fromkeys(MODELS, ("1.0.0", "INSTALLED"))
        assert refusals(agent) == [], agent.output()
    # Nothing was downloaded again.
    assert [updates(a) for a in [*agents, late]] == [3, 3, 3]
    audit = json.loads(server.admin("audit", "--json").stdout)
    resigned = [e for e in audit if e["action"] == "ResignManifest"]
    assert len(resigned) >= 3 and all(e["actor"] == "server" for e in resigned)


def test_the_server_reissues_manifests_before_they_expire_and_devices_keep_them(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
    tmp_path: Path,
) -> None:
    ports = ["--listen", f"127.0.0.1:{free_port()}", "--device-listen", f"127.0.0.1:{free_port()}"]
    server = server_factory(
        broker_url,
        extra=[*ports, "--manifest-lifetime-days", "20", "--renew-ahead-days", "10"],
    )
    push_three(server, color_models)
    agent = agent_factory("dev-r", server)
    all_installed(server, agent.name)

    def nearest_manifest_expiry(server: Server) -> float:
        status = json.loads(server.admin("keys", "status", "--json", check=False).stdout)
        (item,) = [i for i in status["items"] if i["kind"] == "manifest"]
        return float(item["expires_unix"])

    assert nearest_manifest_expiry(server) < time.time() + 20 * 86400
    server.proc.stop()
    # The same fleet restarted with longer-lived manifests and the default 30 days of renewal:
    # the 20-day manifests are due, and are re-issued at start.
    server = server_factory(
        broker_url,
        folder=tmp_path / "restarted",
        data_dir=server.data_dir,
        extra=[*ports, "--manifest-lifetime-days", "60"],
    )
    wait_for(
        "the server to re-issue the three deployed manifests",
        lambda: server.proc.output().count("re-issued the manifest of") == 3,
    )
    assert nearest_manifest_expiry(server) > time.time() + 59 * 86400
    # The device takes them at its next check-ins: same release, nothing refused or fetched.
    time.sleep(5)
    assert states(server, agent.name) == dict.fromkeys(MODELS, ("1.0.0", "INSTALLED"))
    assert refusals(agent) == [], agent.output()
    assert updates(agent) == 3
