"""The arm64 agent package on an emulated Raspberry Pi OS-class root (``make test-arm64``).

The package ``make deb`` builds for bookworm arm64 is installed with the root's own ``dpkg``
(its dependencies met by Debian's arm64 packages, its maintainer scripts run by that root's
shell and ``adduser``), then its programs run under qemu: ``check-config``, ``probe`` and
``predict`` on the Coral test model, and the agent as the service would start it, against a
fleet server on this host over loopback: it enrolls, installs the model the server deploys and
answers an inference through its socket. ``tests/emulation.py`` explains the root and the one
emulation quirk it works around. Left out of ``make test`` (``--arm64`` selects these).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.inference.modelfile import inspect_model_file
from agent.inference.preprocess import image_to_tensor, load_image
from tests import oip
from tests.emulation import EM_AARCH64, Scratch, cached_root, elf_machine
from tests.harness import DATA, REPO, STARTED, Proc, Server, run_cli, start_server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.arm64]

MOBILENET = DATA / "mobilenet_v1_0.25_128_quant.tflite"
SITE = "opt/edgefleet/agent/lib/python3.11/site-packages"
FILES = "srv/test"  # the test's files inside the root, readable by the agent's user


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    """The cached root's throwaway copy with the arm64 agent package installed by its dpkg."""
    base = cached_root()
    out = tmp_path_factory.mktemp("debs")
    subprocess.run(
        [sys.executable, str(REPO / "scripts/build_deb.py"), "--out", str(out),
         "--package", "agent", "--dist", "bookworm", "--arch", "arm64"],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    (deb,) = out.glob("edgefleet-agent_*_arm64.deb")
    scratch = Scratch(tmp_path_factory.mktemp("pi"))
    try:
        scratch.open(base)
        files = scratch.path / FILES
        files.mkdir(parents=True)
        (files / deb.name).write_bytes(deb.read_bytes())
        for name in (MOBILENET.name, "cat.bmp", "imagenet_labels.txt"):
            (files / name).write_bytes((DATA / name).read_bytes())
        installed = scratch.run("dpkg", "-i", f"/{FILES}/{deb.name}", user=None)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        yield scratch
    finally:
        scratch.close()


def test_dpkg_installs_the_arm64_package_with_its_user_groups_and_udev_rules(pi: Scratch) -> None:
    root = pi.path
    status = pi.run("dpkg-query", "-W", "-f=${Status} ${Architecture} ${Version}",
                    "edgefleet-agent", user=None).stdout  # fmt: skip
    assert status == "install ok installed arm64 0.1.0+deb12", status
    # What runs is aarch64: Debian's interpreter and LiteRT's library in the package.
    assert elf_machine(root / "usr/bin/python3.11") == EM_AARCH64
    litert = root / SITE / "ai_edge_litert"
    assert elf_machine(litert / "_pywrap_litert_interpreter_wrapper.so") == EM_AARCH64
    ids = pi.run("id", "edgefleet", user=None).stdout
    assert re.search(r"groups=.*\(plugdev\)", ids) and "(apex)" in ids, ids
    shell = pi.run("getent", "passwd", "edgefleet", user=None).stdout
    assert shell.strip().endswith(":/usr/sbin/nologin"), shell
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "edgefleet-agent.service").is_symlink()
    # The arm64 root's own udev reads the Coral rules: no syntax error, every group it names
    # exists (udev says "Unknown group" otherwise; shown to bite in the module's last test).
    rules = "/usr/lib/udev/rules.d/99-edgefleet-coral.rules"
    assert (root / rules.lstrip("/")).is_file()
    parsed = udev_parse(pi)
    assert f"Reading rules file: {rules}" in parsed, parsed[-2000:]
    assert [line for line in parsed.splitlines() if rules in line and "Reading" not in line] == []


def udev_parse(pi: Scratch) -> str:
    """What ``udevadm test`` says while loading every rules file (for the loopback device)."""
    result = pi.run("udevadm", "test", "--action=add", "/sys/class/net/lo", user=None)
    return result.stdout + result.stderr


def test_check_config_probe_and_predict_run_under_emulation(pi: Scratch) -> None:
    checked = pi.run("edgefleet-agent", "check-config", "--config", "/etc/edgefleet/agent.toml")
    # A fresh install has no token and no fleet CA yet: check-config names both, nothing else.
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert "enrollment_token_file /etc/edgefleet/enrollment.token does not exist" in checked.stderr
    assert "ca_file /etc/edgefleet/fleet-ca.crt does not exist" in checked.stderr
    probed = pi.run("edgefleet-agent", "probe", "--json", "--state-dir", f"/{FILES}")
    assert probed.returncode == 0, probed.stderr
    info = json.loads(probed.stdout)
    assert info["arch"] == "aarch64" and info["runtime"] == "ai-edge-litert", info
    assert info["edgetpus"] == [] and info["libedgetpu"] == "", info
    files = f"/{FILES}"
    predicted = pi.run("edgefleet-agent", "predict", "--json", f"{files}/{MOBILENET.name}",
                       f"{files}/cat.bmp", "--labels", f"{files}/imagenet_labels.txt")  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    arm = json.loads(predicted.stdout)
    here = json.loads(
        run_cli("edgefleet-agent", "predict", "--json", str(MOBILENET), str(DATA / "cat.bmp"),
                "--labels", str(DATA / "imagenet_labels.txt")).stdout
    )  # fmt: skip
    assert arm["top_k"][0]["label"] == here["top_k"][0]["label"] == "tiger cat"
    # XNNPACK's arm and x86 kernels may round an output one quantization step apart.
    for a, h in zip(arm["top_k"], here["top_k"], strict=True):
        assert abs(a["score"] - h["score"]) <= 1 / 256 + 1e-6, (arm, here)


def provision(pi: Scratch, server: Server) -> None:
    """What an operator does after installing: the token and the fleet CA in /etc/edgefleet,
    the server's address in agent.toml; and what systemd does at start (state and runtime
    directories from the unit's StateDirectory= and RuntimeDirectory=)."""
    etc = pi.path / "etc/edgefleet"
    (etc / "enrollment.token").write_text(server.enrollment_token() + "\n", encoding="utf-8")
    (etc / "fleet-ca.crt").write_bytes(server.ca_file.read_bytes())
    config = (etc / "agent.toml").read_text(encoding="utf-8")
    config = config.replace('address = "127.0.0.1:7443"', f'address = "{server.address}"')
    config = config.replace("checkin_interval_s = 30.0", "checkin_interval_s = 1.0")
    (etc / "agent.toml").write_text(config, encoding="utf-8")
    script = (
        "chown root:edgefleet /etc/edgefleet/enrollment.token && "
        "chmod 0640 /etc/edgefleet/enrollment.token && chmod 0644 /etc/edgefleet/fleet-ca.crt && "
        "install -d -o edgefleet -g edgefleet -m 0750 /var/lib/edgefleet-agent "
        "/run/edgefleet-agent"
    )
    pi.run("sh", "-c", script, user=None, check=True)
    checked = pi.run("edgefleet-agent", "check-config", "--config", "/etc/edgefleet/agent.toml")
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr


def test_the_agent_enrolls_installs_a_pushed_model_and_serves_it_through_its_socket(
    pi: Scratch, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "fleet", None)  # the embedded broker, as `make demo`
    server.admin("models", "push", str(MOBILENET), "--name", "mobilenet", "--version", "1.0.0",
                 "--deploy")  # fmt: skip
    provision(pi, server)
    # As the unit starts it: its user, its supplementary groups, its umask.
    cmd = pi.command("sh", "-c", "umask 0027 && exec /usr/bin/edgefleet-agent run --config "
                     "/etc/edgefleet/agent.toml")  # fmt: skip
    cmd.insert(2, "--groups=plugdev,apex")
    log = tmp_path / "agent-arm64.log"
    agent = Proc(pi.popen(cmd, log), log)
    STARTED.append(agent)
    try:

        def installed() -> bool:
            for device in server.devices():
                for model in device.get("models", []):
                    if (model["model_name"], model["version"], model["state"]) == (
                        "mobilenet", "1.0.0", "INSTALLED"
                    ):  # fmt: skip
                        return True
            assert agent.popen.poll() is None, agent.output()[-3000:]
            return False

        wait_for("the arm64 agent to install mobilenet 1.0.0", installed, timeout=240)
        (device,) = server.devices()
        assert device["device_id"] == "edge-device-1"
        socket = pi.path / "run/edgefleet-agent/oip.sock"
        tensor = image_to_tensor(
            load_image(DATA / "cat.bmp"), inspect_model_file(MOBILENET).inputs[0]
        )
        scores, response = oip.infer(socket, "mobilenet", "input", tensor)
        assert int(np.argmax(scores)) == 283 and response.model_version == "1.0.0"  # tiger cat
        assert response.parameters["edgefleet.path"].string_param == "local"
        assert socket.stat().st_mode & 0o777 == 0o660
        status = Path(f"/proc/{agent.popen.pid}/status").read_text(encoding="utf-8")
        uid = pi.run("id", "-u", "edgefleet", user=None).stdout.strip()
        assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert {"46", "998"} <= set(groups.split()[1:]), groups  # plugdev, apex
    finally:
        code = agent.stop(signal.SIGTERM, timeout=60)
        server.proc.stop()
    assert code == 0, agent.output()[-3000:]


def test_udev_check_bites_on_a_missing_group(pi: Scratch) -> None:
    """The rules check above is real: without the apex group, udev names the rule."""
    group = pi.path / "etc/group"
    saved = group.read_text(encoding="utf-8")
    group.write_text(
        "".join(line for line in saved.splitlines(keepends=True) if not line.startswith("apex:")),
        encoding="utf-8",
    )
    try:
        parsed = udev_parse(pi)
    finally:
        group.write_text(saved, encoding="utf-8")
    assert "99-edgefleet-coral.rules:6 Unknown group 'apex'" in parsed, parsed[-2000:]


def test_the_shipped_bytecode_is_current_for_the_devices_python(pi: Scratch) -> None:
    """deb_env.py compiles the bytecode with another build of the target's Python (pyenv's
    3.11.7 for Debian's 3.11.2). Run as root, who could rewrite it, the agent's commands find
    it current: nothing appears under /opt that dpkg did not install."""
    files = f"/{FILES}"
    for cmd in (
        ("check-config", "--config", "/etc/edgefleet/agent.toml"),
        ("probe", "--json", "--state-dir", files),
        ("predict", f"{files}/{MOBILENET.name}", f"{files}/cat.bmp"),
    ):
        pi.run("edgefleet-agent", *cmd, user=None)
    owned = set(pi.run("dpkg-query", "-L", "edgefleet-agent", user=None, check=True).stdout.split())
    present = pi.run("find", "/opt/edgefleet", user=None, check=True).stdout.split()
    assert [path for path in present if path not in owned] == []


def test_a_file_in_the_service_users_home_runs_no_code_in_the_agent(pi: Scratch) -> None:
    """The unit's HOME is the agent's state directory (/var/lib/edgefleet-agent, the user's
    home), which the agent writes: a .pth file under its ~/.local must not run at the next
    start. (A venv with include-system-site-packages turns Python's user site back on.)"""
    home = "/var/lib/edgefleet-agent"
    site = f"{home}/.local/lib/python3.11/site-packages"
    marker = pi.path / "var/lib/edgefleet-agent/injected"
    pi.run("install", "-d", "-o", "edgefleet", "-g", "edgefleet", "-m", "0750", home,
           user=None, check=True)  # fmt: skip
    try:
        pi.run("mkdir", "-p", site, check=True)
        pth = "import pathlib; pathlib.Path('/var/lib/edgefleet-agent/injected').touch()\n"
        pi.run("sh", "-c", f"cat > {site}/planted.pth <<'EOF'\n{pth}EOF", check=True)
        # As systemd starts it: HOME from the user's passwd entry.
        pi.run("env", f"HOME={home}", "/usr/bin/edgefleet-agent", "check-config", "--config",
               "/etc/edgefleet/agent.toml")  # fmt: skip
        assert not marker.exists(), "a .pth file in the agent's home ran at start"
    finally:
        pi.run("rm", "-rf", f"{home}/.local", str(marker).removeprefix(str(pi.path)), user=None)


def test_predict_without_python3_pil_names_the_package_to_install(
    pi: Scratch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """python3-pil is only recommended (apt --no-install-recommends, a minimal image leaves it
    out): the agent installs and serves without it, and predict on an image says what is
    missing instead of a traceback."""
    (deb,) = (pi.path / FILES).glob("edgefleet-agent_*_arm64.deb")
    bare = Scratch(tmp_path_factory.mktemp("bare"))
    try:
        bare.open(cached_root())
        files = bare.path / FILES
        files.mkdir(parents=True)
        (files / deb.name).write_bytes(deb.read_bytes())
        for name in (MOBILENET.name, "cat.bmp"):
            (files / name).write_bytes((DATA / name).read_bytes())
        removed = bare.run("dpkg", "--purge", "python3-pil", user=None)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        installed = bare.run("dpkg", "-i", f"/{FILES}/{deb.name}", user=None)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        predicted = bare.run("edgefleet-agent", "predict", f"/{FILES}/{MOBILENET.name}",
                             f"/{FILES}/cat.bmp")  # fmt: skip
    finally:
        bare.close()
    assert predicted.returncode != 0
    assert "Traceback" not in predicted.stderr, predicted.stderr[-2000:]
    assert "python3-pil" in predicted.stderr, predicted.stderr[-2000:]


def test_the_rest_codec_refuses_out_of_range_integers_on_debians_numpy(pi: Scratch) -> None:
    """The bookworm package takes numpy from Debian (1.24), which wraps 999 into a UINT8 (231)
    and -1 into 255 where the numpy 2 of `make test` raises: on the device the REST API must
    still answer 400 as tests/test_rest.py expects, not infer on wrapped values."""
    code = (
        "import json, numpy\n"
        "from agent.inference.rest.codec import BodyError, parse_infer\n"
        "print(numpy.__version__)\n"
        "for value in (999, -1):\n"
        "    tensor = {'name': 'a', 'shape': [1, 4], 'datatype': 'UINT8',\n"
        "              'data': [1, 2, 3, value]}\n"
        "    try:\n"
        "        request, _ = parse_infer(json.dumps({'inputs': [tensor]}).encode(), None, 'm')\n"
        "    except BodyError as exc:\n"
        "        print('refused', exc)\n"
        "    else:\n"
        "        print('accepted', list(request.raw_input_contents[0]))\n"
    )
    result = pi.run("/opt/edgefleet/agent/bin/python3", "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    version, *answers = result.stdout.splitlines()
    assert version.startswith("1.24."), version  # Debian 12's python3-numpy
    assert len(answers) == 2, result.stdout
    assert all(a.startswith("refused") and "not UINT8 values" in a for a in answers), answers


def test_a_scratch_that_fails_to_open_leaves_nothing_mounted(tmp_path: Path) -> None:
    """A base without /sys fails at the last mount: the overlay, /proc and the cpuinfo bind
    mounted before it must not stay under a folder pytest deletes later."""
    base = tmp_path / "base"
    (base / "proc").mkdir(parents=True)
    scratch = Scratch(tmp_path / "scratch")
    with pytest.raises(subprocess.CalledProcessError):
        scratch.open(base)
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8")
    assert str(tmp_path) not in mounts, mounts
