"""An operator clears a refused release (issue 18): a real agent crash-looped with SIGKILL
refuses the release it rolled back; `edgefleet devices clear-refusal` lets it install that
release again at its next check-in, audited. And the server's bookkeeping over the real device
API with simulated devices: which devices a clear goes to, a careless operator's mistakes, lost
answers and repeated check-ins."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleet_server.simulator import SimDevice
from protos import device_pb2 as pb
from protos import inference_pb2
from tests import oip
from tests.harness import Agent, Server, wait_for
from tests.test_fleet_e2e import HEALTH, colors_still_served, wait_state

pytestmark = pytest.mark.slow


def show(server: Server, device: str) -> dict[str, Any]:
    return dict(json.loads(server.admin("devices", "show", device, "--json").stdout))


def clear_entries(server: Server) -> list[dict[str, Any]]:
    entries = json.loads(server.admin("audit", "--json").stdout)
    return [e for e in entries if e["action"] == "ClearRefusal"]


def test_a_cleared_refusal_lets_the_device_install_the_release_again(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    server = server_factory(broker_url)
    good, bad = color_models / "color_float.tflite", color_models / "color_int8.tflite"
    server.admin("models", "push", str(good), "--name", "colors", "--version", "1.0.0", "--deploy")
    server.admin("models", "push", str(good), "--name", "shapes", "--version", "1.0.0")
    agent = agent_factory("dev-x", server, extra=HEALTH)
    wait_state(server, "dev-x", "colors", "1.0.0", "INSTALLED")
    server.admin("models", "push", str(bad), "--name", "colors", "--version", "1.1.0", "--deploy")
    wait_state(server, "dev-x", "colors", "1.1.0", "INSTALLED")

    def stub_ready() -> bool:
        request = inference_pb2.ServerLiveRequest()
        return bool(oip.stub(agent.socket).ServerLive(request, timeout=1).live)

    for _ in range(3):  # the new version "crashes" the agent three times in its window
        assert agent.stop(9) == -9
        agent.start()
        wait_for("the agent to come up", stub_ready)
    wait_state(server, "dev-x", "colors", "1.1.0", "ROLLED_BACK")
    sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    refused = wait_for(
        "dev-x to report the refusal", lambda: show(server, "dev-x")["refused"], timeout=60
    )
    assert refused == [{"model_name": "colors", "sha256": sha, "version": "1.1.0"}]
    text = server.admin("devices", "show", "dev-x").stdout
    assert f"refused   colors 1.1.0 sha256 {sha[:12]}" in text

    # A clear of another model changes nothing: refused in one line, the device untouched.
    other = server.admin("devices", "clear-refusal", "dev-x", "--model", "shapes", check=False)
    assert other.returncode == 1
    assert other.stderr.strip().splitlines() == [
        f"edgefleet: error: failed precondition: dev-x refuses no release of shapes (it "
        f"refuses: colors {sha[:12]}, as of its last check-in)"
    ]
    assert show(server, "dev-x")["refused"] == refused

    out = server.admin("devices", "clear-refusal", "dev-x", "--model", "colors").stdout
    assert out == "dev-x: forgets the refusal of colors (every release) at its next check-in\n"
    wait_state(server, "dev-x", "colors", "1.1.0", "INSTALLED")
    colors_still_served(agent, "1.1.0")
    assert "the server cleared the refusal of colors (every release)" in agent.output()
    # The next check-in shows the refusal gone: the server stops sending the clear.
    wait_for(
        "the clear to be settled",
        lambda: (d := show(server, "dev-x"))["refused"] == [] and d["pending_clears"] == [],
    )
    done, failed = clear_entries(server)  # newest first
    assert done["ok"] and not failed["ok"] and "refuses no release of shapes" in failed["error"]
    assert done["actor"].startswith("bootstrap-token@") and done["target"] == "device dev-x"
    assert json.loads(done["detail"]) == {
        "device_id": "dev-x",
        "selector": {},
        "model_name": "colors",
        "sha256": "",  # every release of the model
        "devices": ["dev-x"],
        "device_count": 1,
    }


def check_in(
    device: SimDevice, refused: Sequence[tuple[str, str]] | None, state_version: str = ""
) -> pb.CheckInResponse:
    """A check-in reporting these refusals (None: as an agent too old to report them)."""
    request = pb.CheckInRequest(capabilities=device.capabilities, state_version=state_version)
    if refused is not None:
        request.refused.SetInParent()
        for model, sha in refused:
            request.refused.refusals.add(model_name=model, sha256=sha)
    response: pb.CheckInResponse = device.stub.CheckIn(request, timeout=10)
    return response


def clears(response: pb.CheckInResponse) -> list[tuple[str, str]]:
    return [(c.model_name, c.sha256) for c in response.clear_refusals]


def test_a_clear_reaches_the_devices_that_refuse_until_they_report_it_gone(
    server_factory: Callable[..., Server], color_models: Path
) -> None:
    server = server_factory(None)
    model = color_models / "color_float.tflite"
    server.admin("models", "push", str(model), "--name", "colors", "--version", "1.0.0")
    sha, other = hashlib.sha256(model.read_bytes()).hexdigest(), "b" * 64
    fleet, token = server.sim_fleet(), server.enrollment_token()
    lab1 = SimDevice.enroll(fleet, token, "lab-1", labels={"site": "lab"})
    lab2 = SimDevice.enroll(fleet, token, "lab-2", labels={"site": "lab"})
    home = SimDevice.enroll(fleet, token, "home", labels={"site": "home"})
    old = SimDevice.enroll(fleet, token, "old", labels={"site": "lab"})
    before = check_in(lab1, [("colors", sha)])
    check_in(lab2, [("colors", other), ("shapes", "a" * 64)])
    check_in(home, [("shapes", "a" * 64)])
    check_in(old, None)
    assert (
        "refused   colors 1.0.0 sha256 " + sha[:12]
        in server.admin("devices", "show", "lab-1").stdout
    )
    assert not show(server, "old")["refusals_reported"]
    assert "refused   not reported" in server.admin("devices", "show", "old").stdout

    # A careless operator: one line each, exit 1, nothing asked of any device.
    for words, message in [
        (("nope", "--model", "colors"), "device 'nope' is not enrolled"),
        (("lab-1", "--model", "nosuch"), "no model named 'nosuch' in the catalog"),
        (("--selector", "site=mars", "--model", "colors"), "no device that is not revoked"),
        (("home", "--model", "colors"), "home refuses no release of colors (it refuses: shapes"),
        (("old", "--model", "colors"), "old does not report its refusals"),
        (("lab-1", "--model", "colors", "--sha256", other), "with sha256 bbbbbbbbbbbb..."),
        (("--selector", "site=home", "--model", "colors"), "none of the 1 device(s) matching"),
    ]:
        result = server.admin("devices", "clear-refusal", *words, check=False)
        assert result.returncode == 1, result
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result
    assert all(not show(server, d)["pending_clears"] for d in ("lab-1", "lab-2", "home", "old"))

    out = server.admin(
        "devices", "clear-refusal", "--selector", "site=lab", "--model", "colors"
    ).stdout
    assert out.splitlines() == [
        "lab-1: forgets the refusal of colors (every release) at its next check-in",
        "lab-2: forgets the refusal of colors (every release) at its next check-in",
    ]  # "old" matches the selector but cannot say what it refuses; "home" is not in it
    # The answer lab-1 holds is stale: it gets the full answer, with the clear.
    first = check_in(lab1, [("colors", sha)], before.state_version)
    assert not first.unchanged and clears(first) == [("colors", "")]
    # That answer is lost: the next check-in, still refusing, gets the clear again ...
    assert clears(check_in(lab1, [("colors", sha)])) == [("colors", "")]
    # ... and naming the answer it acted on, a short "unchanged" (that answer has the clear).
    assert check_in(lab1, [("colors", sha)], first.state_version).unchanged
    # Reporting the refusal gone settles it: the answers stop carrying it.
    done = check_in(lab1, [], first.state_version)
    assert not done.unchanged and clears(done) == []
    assert clears(check_in(lab1, [])) == []
    shown = show(server, "lab-1")
    assert shown["refused"] == [] and shown["pending_clears"] == []
    # lab-2 has not checked in since: its clear waits, and shows.
    (pending,) = show(server, "lab-2")["pending_clears"]
    assert (pending["model_name"], pending["sha256"]) == ("colors", "")
    assert pending["requested_by"].startswith("bootstrap-token@")
    assert "waiting for its check-in" in server.admin("devices", "show", "lab-2").stdout
    # A clear of every colors release leaves lab-2's other model refused.
    assert clears(check_in(lab2, [("colors", other), ("shapes", "a" * 64)])) == [("colors", "")]
    assert clears(check_in(lab2, [("shapes", "a" * 64)])) == []
    assert show(server, "lab-2")["refused"][0]["model_name"] == "shapes"

    entries = clear_entries(server)
    ok = [e for e in entries if e["ok"]]
    assert len(ok) == 1 and ok[0]["target"] == "devices site=lab"
    assert json.loads(ok[0]["detail"])["devices"] == ["lab-1", "lab-2"]
    assert len(entries) == 8 and all(e["error"] for e in entries if not e["ok"])
    for device in (lab1, lab2, home, old):
        device.close()
