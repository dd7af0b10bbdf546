"""Build the edgefleet-agent and edgefleet-server .deb packages with dpkg-deb.

    python scripts/build_deb.py [--out dist] [--package agent|server|all]

Each package carries a self-contained environment: a virtualenv on Debian's /usr/bin/python3
with EdgeFleet and its dependencies, built here and moved to /opt/edgefleet/<package> (its
scripts' interpreter lines are rewritten for that path). Also: the systemd unit, the example
config as a conffile in /etc/edgefleet, the Coral udev rules (agent), and maintainer scripts
that create the service user and enable the unit without starting it (they honour DPKG_ROOT,
so `dpkg --root DIR --force-script-chrootless` installs into a throwaway root).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
SYSTEM_PYTHON = Path("/usr/bin/python3")
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(platform.machine(), "all")


def _version() -> str:
    for line in (REPO / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit("no version in pyproject.toml")


SPEC = {
    "agent": {
        "extra": "agent",
        "programs": ("edgefleet-agent",),
        "user": "edgefleet",
        "groups": ("plugdev", "apex"),
        "state": "/var/lib/edgefleet-agent",
        "config": "agent.toml",
        "description": "EdgeFleet edge deployment agent\n"
        " Runs quantized TFLite models on a Coral Edge TPU or the CPU, serves them through the\n"
        " Open Inference Protocol v2, reports telemetry over MQTT, and installs signed model\n"
        " updates from an EdgeFleet fleet server with automatic rollback.",
    },
    "server": {
        "extra": "server",
        "programs": ("edgefleet-server", "edgefleet"),
        "user": "edgefleet-server",
        "groups": (),
        "state": "/var/lib/edgefleet-server",
        "config": "server.toml",
        "description": "EdgeFleet fleet server\n"
        " Device enrollment and identity, model catalog with variants, staged rollouts with\n"
        " health gates, telemetry ingest, cloud routing and the admin API.",
    },
}

POSTINST = """#!/bin/sh
# edgefleet-{name} postinst: the service user, then the unit enabled (not started).
set -e
ROOT="${{DPKG_ROOT:-}}"
USER_NAME={user}
if [ "$1" = configure ]; then
    for group in $USER_NAME {groups}; do
        if ! grep -q "^$group:" "$ROOT/etc/group" 2>/dev/null; then
            groupadd --prefix "${{ROOT:-/}}" --system "$group"
        fi
    done
    if ! grep -q "^$USER_NAME:" "$ROOT/etc/passwd" 2>/dev/null; then
        useradd --prefix "${{ROOT:-/}}" --system --gid $USER_NAME \\
            --home-dir {state} --no-create-home --shell /usr/sbin/nologin \\
            --comment "EdgeFleet {name}" $USER_NAME
    fi
    for group in {groups}; do
        usermod --prefix "${{ROOT:-/}}" --append --groups "$group" $USER_NAME
    done
    # A fresh install enables the unit for the next boot (an upgrade keeps the admin's
    # choice) and starts nothing (nor in a chroot): the config needs editing first.
    if [ -z "$2" ]; then
        mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
        ln -sf /lib/systemd/system/edgefleet-{name}.service \\
            "$ROOT/etc/systemd/system/multi-user.target.wants/edgefleet-{name}.service"
    fi
    if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        {reload_udev}
        # An upgrade starts again what prerm stopped.
        if [ -e /run/edgefleet-{name}.upgrading ]; then
            rm -f /run/edgefleet-{name}.upgrading
            systemctl start edgefleet-{name}.service || true
        fi
    fi
    if [ -z "$2" ]; then
        echo "edgefleet-{name}: edit /etc/edgefleet/{config}," \
            "then: systemctl start edgefleet-{name}"
    fi
fi
exit 0
"""

PRERM = """#!/bin/sh
# Stop the service before its files change (remove, or upgrade: postinst starts it again).
set -e
if [ -z "${{DPKG_ROOT:-}}" ] && [ -d /run/systemd/system ]; then
    if [ "$1" = upgrade ] && systemctl is-active --quiet edgefleet-{name}.service; then
        touch /run/edgefleet-{name}.upgrading
    fi
    if [ "$1" = remove ] || [ "$1" = upgrade ]; then
        systemctl stop edgefleet-{name}.service || true
    fi
fi
exit 0
"""

POSTRM = """#!/bin/sh
set -e
ROOT="${{DPKG_ROOT:-}}"
if [ "$1" = remove ] || [ "$1" = purge ]; then
    rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/edgefleet-{name}.service"
    if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
if [ "$1" = purge ]; then
    # Models, identity and spooled telemetry (agent) or the fleet's data (server).
    rm -rf "$ROOT{state}"
fi
exit 0
"""


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def build_wheel(work: Path) -> Path:
    out = work / "wheel"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)])
    (wheel,) = out.glob("edgefleet-*.whl")
    return wheel


def build_package(name: str, wheel: Path, work: Path, out: Path) -> Path:
    spec = SPEC[name]
    version = _version()
    root = work / f"edgefleet-{name}"
    prefix = f"/opt/edgefleet/{name}"
    venv = root / prefix.lstrip("/")
    _run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "--quiet", "--upgrade", "pip"])
    _run([str(venv / "bin" / "pip"), "install", "--quiet", f"{wheel}[{spec['extra']}]"])
    _run([str(venv / "bin" / "pip"), "uninstall", "--quiet", "--yes", "pip"])
    if name == "agent":
        _slim_agent(venv)
    _relocate(venv, prefix)
    (root / "usr/bin").mkdir(parents=True)
    for program in spec["programs"]:
        (root / "usr/bin" / program).symlink_to(f"{prefix}/bin/{program}")
    docs = venv / "share" / "doc"
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "README.md", docs / "README.md")
    for folder, source, target in (
        ("lib/systemd/system", f"systemd/edgefleet-{name}.service", f"edgefleet-{name}.service"),
        ("etc/edgefleet", f"config/{spec['config']}", str(spec["config"])),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGING / source, root / folder / target)
    if name == "agent":
        (root / "lib/udev/rules.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGING / "udev/99-edgefleet-coral.rules", root / "lib/udev/rules.d")
    debian = root / "DEBIAN"
    debian.mkdir()
    size_kb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) // 1024
    (debian / "control").write_text(
        f"Package: edgefleet-{name}\n"
        f"Version: {version}\n"
        f"Architecture: {ARCH}\n"
        "Maintainer: EdgeFleet <edgefleet@example.invalid>\n"
        f"Installed-Size: {size_kb}\n"
        "Depends: python3 (>= 3.11), python3 (<< 3.12), passwd, adduser\n"
        + ("Recommends: mosquitto, postgresql\n" if name == "server" else "")
        + "Section: net\nPriority: optional\n"
        f"Description: {spec['description']}\n",
        encoding="utf-8",
    )
    (debian / "conffiles").write_text(f"/etc/edgefleet/{spec['config']}\n", encoding="utf-8")
    groups = " ".join(spec["groups"])
    reload_udev = "udevadm control --reload-rules 2>/dev/null || true" if name == "agent" else ":"
    fields = {
        "name": name,
        "user": spec["user"],
        "groups": groups,
        "state": spec["state"],
        "config": spec["config"],
        "reload_udev": reload_udev,
    }
    for script, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        path = debian / script
        path.write_text(text.format(**fields), encoding="utf-8")
        path.chmod(0o755)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"edgefleet-{name}_{version}_{ARCH}.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zzstd", "--build", str(root), str(deb)])
    return deb


# What a device never runs: the server's code, the tools that build environments, and LiteRT's
# parts for hardware our devices lack (its WebGPU accelerator, 19 MB; the phone and PC NPU
# compiler plugins of its CompiledModel API, which the agent's Interpreter never loads).
AGENT_DROPS = (
    "fleet_server",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "distutils-precedence.pth",
    "ai_edge_litert/libLiteRtWebGpuAccelerator.so",
    "ai_edge_litert/vendors",
)


def _slim_agent(venv: Path) -> None:
    """Drop :data:`AGENT_DROPS`. (Not stripping the shared objects: binutils' ``strip``
    breaks the ones auditwheel patched, e.g. numpy's OpenBLAS: "ELF load command
    address/offset not page-aligned".)"""
    (site,) = (venv / "lib").glob("python3*/site-packages")
    for relative in AGENT_DROPS:
        path = site / relative
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for info in site.glob("setuptools-*.dist-info"):
        shutil.rmtree(info)


def _relocate(venv: Path, prefix: str) -> None:
    """Point the venv's scripts and config at where the package installs it."""
    old = str(venv).encode()
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, prefix.encode()))
    for activate in (venv / "bin").glob("[Aa]ctivate*"):
        activate.unlink()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--package", choices=("agent", "server", "all"), default="all")
    args = parser.parse_args(argv)
    missing = [t for t in ("dpkg-deb",) if shutil.which(t) is None]
    if missing or not SYSTEM_PYTHON.exists():
        print(
            "building the .deb needs dpkg-deb and Debian's python3 with venv "
            "(apt install dpkg python3-venv)",
            file=sys.stderr,
        )
        return 1
    names = ["agent", "server"] if args.package == "all" else [args.package]
    with tempfile.TemporaryDirectory(prefix="edgefleet-deb-") as folder:
        work = Path(folder)
        os.umask(0o022)
        wheel = build_wheel(work)
        for name in names:
            print(build_package(name, wheel, work, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
