"""The update lifecycle under attack: the review of issue 18's state machine, kept as tests.

Each test was a finding of a fresh-eyed review (branch attack-18) and failed before its fix.
Process tests use real servers and agents; faults are real signals (SIGSEGV raised inside the
agent by a ``sitecustomize`` hook given through PYTHONPATH, SIGKILL from outside) and a real
file-size limit for a full disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.updates import plan
from agent.updates.health import HealthPolicy
from agent.updates.lifecycle import Lifecycle
from agent.updates.store import ModelStore
from tests.harness import REPO, Agent, Server, wait_for
from tests.test_fleet_e2e import colors_still_served, model_state, wait_state
from tests.test_lifecycle_process import WATCH, serving

DIGITS = REPO / "tests" / "data" / "digits_local_float.tflite"

# A sitecustomize that makes the agent die for real in a release's smoke test.
HOOK = """
import os, signal
_segv = os.environ.get("EDGEFLEET_TEST_SEGV_SMOKE")
if _segv:
    import agent.updates.smoke as _s
    _orig = _s.run_on
    def run_on(model, test, sample):
        if model.name == _segv:
            os.kill(os.getpid(), signal.SIGSEGV)  # a release whose smoke test segfaults
        return _orig(model, test, sample)
    _s.run_on = run_on
"""


def hook_env(tmp_path: Path, **env: str) -> dict[str, str]:
    folder = tmp_path / "hook"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    return {"PYTHONPATH": f"{folder}:{REPO}", **env}


def journal(agent: Agent) -> dict:
    return json.loads((agent.folder / "state" / "active.json").read_text())


def push(server: Server, path: Path, name: str, version: str) -> None:
    server.admin("models", "push", str(path), "--name", name, "--version", version, "--deploy")


def watched_colors(
    server: Server,
    agent_factory: Callable[..., Agent],
    color_models: Path,
    device: str,
    env: dict[str, str] | None = None,
) -> Agent:
    push(server, color_models / "color_float.tflite", "colors", "1.0.0")
    agent = agent_factory(device, server, extra=WATCH)
    if env is not None:  # restart it under the hook
        wait_state(server, device, "colors", "1.0.0", "INSTALLED")
        assert agent.stop(signal.SIGTERM) == 0
        agent.start(env=env)
    wait_state(server, device, "colors", "1.0.0", "INSTALLED")
    push(server, color_models / "color_int8.tflite", "colors", "1.1.0")
    wait_state(server, device, "colors", "1.1.0", "INSTALLED")
    assert "colors" in journal(agent)["health"]
    return agent


@pytest.mark.slow
def test_a_release_that_segfaults_on_trial_is_refused_and_blames_no_other_model(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    """colors 1.1.0 is watched and serving; a first install of digits SIGSEGVs the agent in
    its smoke test three times (restarted each time, as systemd does). The deaths are
    digits': it is refused, and colors 1.1.0 is not rolled back."""
    server = server_factory(broker_url)
    env = hook_env(tmp_path, EDGEFLEET_TEST_SEGV_SMOKE="digits")
    agent = watched_colors(server, agent_factory, color_models, "dev-s", env)
    push(server, DIGITS, "digits", "1.0.0")
    for _ in range(3):
        assert agent.proc is not None
        assert agent.proc.popen.wait(60) == -signal.SIGSEGV
        agent.start(env=env)  # what systemd's Restart=on-failure does
    wait_for("the agent to serve again", lambda: serving(agent))
    wait_state(server, "dev-s", "digits", "1.0.0", "FAILED")  # the trial is refused: right
    state = model_state(server, "dev-s", "colors")
    assert state is not None and state["state"] != "ROLLED_BACK", (
        f"colors 1.1.0 was blamed for digits' segfaults: {state}"
    )
    assert journal(agent)["models"]["colors"]["version"] == "1.1.0"


@pytest.mark.parametrize("bad,other", [("aaa", "zzz"), ("zzz", "aaa")])
def test_a_format_2_refusal_of_bytes_two_models_share_stays_with_its_model(
    tmp_path: Path, bad: str, other: str
) -> None:
    """Format 2 refused bare hashes. ``bad`` (rolled back to 1.0.0) and ``other`` (serving)
    both ship the artifact X. The refusal migrates to ``bad``, whatever order the directories
    are listed in: ``other`` keeps its active release, ``bad`` never installs X again."""
    x, y = "1" * 64, "2" * 64
    store = ModelStore(tmp_path)
    for name, sha in ((bad, x), (bad, y), (other, x)):
        store.artifact_path(name, sha).parent.mkdir(parents=True, exist_ok=True)
        store.artifact_path(name, sha).write_bytes(b"m")

    def e(version: str, sha: str) -> dict:
        return {"version": version, "release_counter": 1, "sha256": sha,
                "filename": f"{sha}.tflite"}  # fmt: skip

    (tmp_path / "active.json").write_text(json.dumps({
        "format": 2, "models": {bad: e("1.0.0", y), other: e("1.0.0", x)},
        "previous": {}, "health": {}, "refused": [x],
    }))  # fmt: skip
    j = store.journal()
    assert j.is_refused(bad, x), "the rolled-back model may install the refused bytes again"
    assert not j.is_refused(other, x), f"{other}'s active release is now refused: {j.refused}"


def test_an_expired_manifest_is_reported_once_while_the_wall_clock_moves(tmp_path: Path) -> None:
    """As tests/test_update_holds.py, with the wall clock moving as real clocks do: the
    reason's text holds the time, and is still one reason, reported once."""
    from agent.client import DeviceClient
    from agent.identity import Identity
    from agent.inference.engine import Engine, EngineOptions
    from agent.updates.updater import Updater
    from protos import device_pb2
    from tests.test_verify import NOW, RELEASE, SIGNER, manifest, trust_in

    wall, mono = [NOW], [1000.0]
    reports: list[device_pb2.StatusReport] = []
    client = DeviceClient("127.0.0.1:9", timeout_s=0.5)
    client.on_report = lambda r: not reports.append(r)  # type: ignore[func-returns-value]
    identity = Identity("d", "fleet", trust_in(RELEASE, expires=int(NOW) + 86400), "", "", b"",
                        b"", b"")  # fmt: skip
    updater = Updater(
        lifecycle=Lifecycle(ModelStore(tmp_path), HealthPolicy(), boot="b"),
        engine=Engine(EngineOptions()), client=client, identity=identity,
        clock=lambda: wall[0], monotonic=lambda: mono[0],
    )  # fmt: skip
    envelope = SIGNER.sign(manifest(expires_unix=int(NOW) - 1000))  # expired
    for _ in range(4):  # four holds: 60 s, 120 s, 240 s, 480 s
        updater.apply([envelope])
        wall[0] += 1000
        mono[0] += 1000
    client.close()
    failed = [r.detail for r in reports if r.state == device_pb2.FAILED]
    assert len(failed) == 1, f"one reason, {len(failed)} reports: {failed}"


def test_without_a_boot_id_a_power_cut_is_not_a_crash(tmp_path: Path) -> None:
    """Without /proc/sys/kernel/random/boot_id every boot would look like the same boot, and
    a power cut like an abnormal death: no deaths are attributed there."""
    store = ModelStore(tmp_path)
    policy = HealthPolicy()

    def entry(v: str, c: str) -> plan.Entry:
        return plan.Entry(v, 1, c * 64, f"{c * 64}.tflite")

    life = Lifecycle(store, policy, boot="")
    life.start()
    life.activated("m", entry("1", "a"))
    life.activated("m", entry("2", "b"))
    life.serving("m")
    # power cut: nothing more is written; the device boots again (still no boot id)
    Lifecycle(store, policy, boot="").start()
    assert store.health()["m"].crashes == 0, "a power cut was counted against the release"


FULL_DISK = """
import json, resource, sys
from agent.updates import plan
from agent.updates.health import HealthPolicy
from agent.updates.lifecycle import Lifecycle
from agent.updates.store import ModelStore
state = sys.argv[1]
now = [0.0]
store = ModelStore(__import__("pathlib").Path(state))
life = Lifecycle(store, HealthPolicy(window_s=60), boot="b", monotonic=lambda: now[0])
e = lambda v, c: plan.Entry(v, 1, c * 64, c * 64 + ".tflite")
life.start(); life.activated("m", e("1", "a")); life.activated("m", e("2", "b")); life.serving("m")
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # the disk is full from here on
for _ in range(12):  # 120 s of serving, a checkpoint every second (check_health's pace)
    for _ in range(10):
        now[0] += 1.0
        try:
            life.checkpoint()
        except OSError:
            pass  # check_health logs this and carries on
print(json.dumps({"served_s": life.served_s("m")}))
"""


@pytest.mark.slow
def test_serving_time_is_not_lost_while_the_disk_is_full(tmp_path: Path) -> None:
    """A real RLIMIT_FSIZE: the checkpoints fail, and the serving time they could not write
    is not lost (the window still adds it up)."""
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])["served_s"]
    assert served >= 120.0, f"120 s served on a full disk, the window counts {served} s"


@pytest.mark.slow
def test_a_damaged_journal_does_not_stop_the_serving(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    """One flipped byte in active.json (rewritten every 10 s in a window: an SD card's most
    worn file). The agent moves it aside and starts from an empty journal; its first check-in
    installs the server's release again from the verified file in models/."""
    server = server_factory(broker_url)
    agent = watched_colors(server, agent_factory, color_models, "dev-j")
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    path = agent.folder / "state" / "active.json"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x5B  # one flipped byte
    path.write_bytes(bytes(raw))
    agent.start()
    wait_for("the agent to serve colors", lambda: colors_still_served(agent, "1.1.0")
             or colors_still_served(agent, "1.0.0"), timeout=30)  # fmt: skip
