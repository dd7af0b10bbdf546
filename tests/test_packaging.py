"""The .deb packages: built with `scripts/build_deb.py`, inspected, installed into a throwaway
root with `dpkg --root`, their units verified by `systemd-analyze` against the installed tree,
their maintainer scripts run, and the installed programs run on the shipped configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("debs")
    # This machine's release and architecture; the arm64 ones run under emulation in
    # tests/test_arm64.py (make test-arm64), and the whole matrix in `make deb`.
    target = ["--dist", "bookworm", "--arch", "amd64"]
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_deb.py"), "--out", str(out), *target],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return {p.name.split("_")[0].removeprefix("edgefleet-"): p for p in out.glob("*.deb")}


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The throwaway root has no python3 or passwd packages registered: --force-depends.
    return subprocess.run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
         "--log=/dev/null", *args],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, debs: dict[str, Path]) -> Iterator[Path]:
    """Both packages installed into an empty root (a dpkg database, /etc/passwd and group)."""
    root = tmp_path_factory.mktemp("root")
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nplugdev:x:46:\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    for deb in debs.values():
        result = dpkg(root, "-i", str(deb))
        assert result.returncode == 0, result.stderr
    yield root


def test_both_packages_build_with_the_expected_contents(debs: dict[str, Path]) -> None:
    assert set(debs) == {"agent", "server"}
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(debs["agent"])], capture_output=True, text=True, check=True
    ).stdout
    for path in (
        "./opt/edgefleet/agent/bin/edgefleet-agent",
        "./opt/edgefleet/agent/bin/python3",
        "./lib/systemd/system/edgefleet-agent.service",
        "./lib/udev/rules.d/99-edgefleet-coral.rules",
        "./etc/edgefleet/agent.toml",
        "./usr/bin/edgefleet-agent -> /opt/edgefleet/agent/bin/edgefleet-agent",
    ):
        assert path in listing, path
    assert "root/root" in listing and "/ai_edge_litert/" in listing
    assert "sqlalchemy" not in listing  # the agent carries no server dependencies
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(debs["agent"]), "Package", "Depends"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Package: edgefleet-agent" in fields and "python3 (>= 3.11)" in fields
    assert "python3 (<< 3.12)" in fields and "python3-numpy (>= 1:1.24)" in fields
    assert debs["agent"].name == "edgefleet-agent_0.1.0+deb12_amd64.deb"
    with_scripts = subprocess.run(
        ["dpkg-deb", "-I", str(debs["server"])], capture_output=True, text=True, check=True
    ).stdout
    for part in ("postinst", "prerm", "postrm", "conffiles"):
        assert part in with_scripts


def test_maintainer_scripts_are_valid_shell(tmp_path: Path, debs: dict[str, Path]) -> None:
    for deb in debs.values():
        control = tmp_path / deb.stem
        subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
        for script in ("postinst", "prerm", "postrm"):
            subprocess.run(["sh", "-n", str(control / script)], check=True)
        assert (control / "conffiles").read_text().startswith("/etc/edgefleet/")


def test_install_creates_users_enables_units_and_the_programs_run(root: Path) -> None:
    passwd = (root / "etc/passwd").read_text()
    group = (root / "etc/group").read_text()
    assert "edgefleet:x:" in passwd and "/usr/sbin/nologin" in passwd
    assert "edgefleet-server:x:" in passwd
    assert any(line.startswith("plugdev:") and "edgefleet" in line for line in group.splitlines())
    assert any(line.startswith("apex:") and "edgefleet" in line for line in group.splitlines())
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for name in ("edgefleet-agent.service", "edgefleet-server.service"):
        assert (wants / name).is_symlink()
        assert str((wants / name).readlink()) == f"/lib/systemd/system/{name}"
    # The installed environments run the shipped configs (the interpreter line points at
    # /opt/edgefleet/...: run their python with the module instead, from a folder without
    # this checkout so that the installed code is what runs).
    agent_python = root / "opt/edgefleet/agent/bin/python3"
    assert (
        (root / "opt/edgefleet/agent/bin/edgefleet-agent")
        .read_text()
        .startswith("#!/opt/edgefleet/agent/bin/python")
    )
    shipped = (root / "etc/edgefleet/agent.toml").read_text()
    checked = subprocess.run(
        [str(agent_python), "-m", "agent.cli", "check-config", "--config",
         str(root / "etc/edgefleet/agent.toml")],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # A fresh install has no token and no fleet CA yet: check-config names both, nothing else.
    assert checked.returncode == 1, checked.stdout
    assert checked.stderr.count("error:") == 1 and "Traceback" not in checked.stderr
    assert "enrollment_token_file /etc/edgefleet/enrollment.token does not exist" in checked.stderr
    assert "ca_file /etc/edgefleet/fleet-ca.crt does not exist" in checked.stderr
    provisioned = root / "provisioned.toml"
    for name in ("enrollment.token", "fleet-ca.crt"):
        (root / name).write_text("provisioned")
        shipped = shipped.replace(f"/etc/edgefleet/{name}", str(root / name))
    provisioned.write_text(shipped)
    checked = subprocess.run(
        [str(agent_python), "-m", "agent.cli", "check-config", "--config", str(provisioned)],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "OK" in checked.stdout
    server_python = root / "opt/edgefleet/server/bin/python3"
    checked = subprocess.run(
        [str(server_python), "-m", "fleet_server.cli", "check-config", "--config",
         str(root / "etc/edgefleet/server.toml")],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "OK" in checked.stdout
    rules = (root / "lib/udev/rules.d/99-edgefleet-coral.rules").read_text()
    for usb_id in ('"1a6e", ATTRS{idProduct}=="089a"', '"18d1", ATTRS{idProduct}=="9302"'):
        assert usb_id in rules
    assert 'SUBSYSTEM=="apex"' in rules


def _verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", f"--root={root}", "verify", f"/lib/systemd/system/{unit}"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_units_pass_systemd_analyze_verify_against_the_installed_tree(
    root: Path, tmp_path: Path
) -> None:
    # The base system the units refer to (targets, /bin/kill) comes from this host.
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(exist_ok=True)
    shutil.copy(shutil.which("kill") or "/usr/bin/kill", root / "usr/bin/kill")
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")
    for unit in ("edgefleet-agent.service", "edgefleet-server.service"):
        result = _verify(root, unit)
        assert result.returncode == 0, result.stderr
    # The check bites: without the program the unit starts, verify fails.
    program = root / "opt/edgefleet/agent/bin/edgefleet-agent"
    moved = tmp_path / "edgefleet-agent"
    program.rename(moved)
    try:
        result = _verify(root, "edgefleet-agent.service")
        assert result.returncode != 0 and "edgefleet-agent is not executable" in result.stderr
    finally:
        moved.rename(program)
    unit = (root / "lib/systemd/system/edgefleet-agent.service").read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure",
                    "RestartPreventExitStatus=73", "StateDirectory=",
                    "ConfigurationDirectory=", "RuntimeDirectory=", "SupplementaryGroups=",
                    "DeviceAllow=/dev/apex_0", "ProtectSystem=strict", "ProtectHome=",
                    "NoNewPrivileges=yes", "PrivateTmp=yes", "LoadCredential="):  # fmt: skip
        assert setting in unit, setting


def test_the_agent_package_carries_no_server_or_build_tools_and_still_infers(root: Path) -> None:
    """The lean agent (issue 23): no fleet_server, pip, setuptools, LiteRT parts for hardware
    no device of ours has, numpy or Pillow (Debian's python3-numpy and python3-pil instead);
    the installed environment still runs a real model with Debian's numpy."""
    (site,) = (root / "opt/edgefleet/agent/lib").glob("python3*/site-packages")
    for gone in (
        "fleet_server",
        "pip",
        "setuptools",
        "pkg_resources",
        "_distutils_hack",
        "numpy",
        "PIL",
        "ml_dtypes",
        "ai_edge_litert/libLiteRtWebGpuAccelerator.so",
        "ai_edge_litert/vendors",
        "zstandard/backend_cffi.py",
    ):
        assert not (site / gone).exists(), gone  # fmt: skip
    assert not list(site.glob("zstandard/_cffi*.so"))
    # Shared objects no patchelf touched are stripped: zstandard's C backend has no symbols.
    (backend,) = site.glob("zstandard/backend_c*.so")
    sections = subprocess.run(
        ["readelf", "-S", "-W", str(backend)], capture_output=True, text=True, check=True
    ).stdout
    assert ".symtab" not in sections and ".debug_info" not in sections
    python = str(root / "opt/edgefleet/agent/bin/python3")
    where = subprocess.run(
        [python, "-c", "import numpy, PIL, agent; print(numpy.__file__, PIL.__file__, "
         "agent.__file__)"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith("/usr/lib/python3/dist-packages/numpy/"), where
    assert where[1].startswith("/usr/lib/python3/dist-packages/PIL/"), where
    assert where[2].startswith(str(site)), where
    data = Path(__file__).parent / "data"
    predicted = subprocess.run(
        [str(root / "opt/edgefleet/agent/bin/python3"), "-m", "agent.cli", "predict",
         str(data / "mobilenet_v1_0.25_128_quant.tflite"), str(data / "cat.bmp"),
         "--labels", str(data / "imagenet_labels.txt")],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert "tiger cat" in predicted.stdout.splitlines()[0], predicted.stdout


def test_the_installed_environments_name_nothing_of_the_build_machine(root: Path) -> None:
    """pip install --target records where each wheel came from (direct_url.json): the build's
    temporary folder, which no device has, makes every build differ and tells `pip freeze` the
    packages came from file:///tmp/edgefleet-deb-*/..."""
    leaks = [
        str(path.relative_to(root))
        for path in (root / "opt/edgefleet").rglob("*")
        if path.is_file() and not path.is_symlink() and b"/edgefleet-deb-" in path.read_bytes()
    ]
    assert leaks == [], f"{len(leaks)} files name the build folder, e.g. {leaks[:3]}"


def test_purge_removes_state_and_the_enabled_link(root: Path) -> None:
    state = root / "var/lib/edgefleet-agent"
    state.mkdir(parents=True, exist_ok=True)
    (state / "identity.json").write_text("{}")
    result = dpkg(root, "--purge", "edgefleet-agent")
    assert result.returncode == 0, result.stderr
    assert not state.exists()
    assert not (
        root / "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service"
    ).exists()
    assert not (root / "opt/edgefleet/agent").exists()
    assert (root / "opt/edgefleet/server/bin/edgefleet-server").exists()
