"""Build the edgefleet-agent and edgefleet-server .deb packages with dpkg-deb.

    python scripts/build_deb.py [--out dist] [--package agent|server|all]
                                [--dist bookworm|trixie|all] [--arch amd64|arm64|all]

By default the whole matrix (:data:`MATRIX`): the agent for Debian 12 "bookworm" (Python 3.11,
Raspberry Pi OS's base) and Debian 13 "trixie" (Python 3.13) on amd64 and arm64, the server for
bookworm on both; versions carry the release (``0.1.0+deb12``). Any of them builds on any
machine: each package's environment is assembled from the target's wheels
(``scripts/deb_env.py``) and installed at /opt/edgefleet/<package>. Also: the systemd unit, the
example config as a conffile in /etc/edgefleet, the Coral udev rules (agent), and maintainer
scripts that create the service user and enable the unit without starting it (they honour
DPKG_ROOT, so `dpkg --root DIR --force-script-chrootless` installs into a throwaway root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deb_env import DISTS, MACHINES, Target, build_environment

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"


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
        ln -sf {libdir}/systemd/system/edgefleet-{name}.service \\
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


def _depends(name: str, target: Target) -> str:
    major, minor = target.dist.python
    python = f"python3 (>= {major}.{minor}), python3 (<< {major}.{minor + 1})"
    fields = f"Depends: {python}, passwd, adduser"
    if name == "agent":
        # The agent's environment takes numpy and Pillow from Debian (scripts/deb_env.py);
        # Coral's own repository has libedgetpu for a device with an Edge TPU (its
        # python3-pycoral is built for Python 3.9 at most: the agent does without it).
        return (
            f"{fields}, python3-numpy (>= {target.dist.numpy})\n"
            "Recommends: python3-pil\n"
            "Suggests: libedgetpu1-std | libedgetpu1-max\n"
        )
    return f"{fields}\nRecommends: mosquitto, postgresql\n"


def build_package(name: str, wheel: Path, target: Target, work: Path, out: Path) -> Path:
    spec = SPEC[name]
    version = f"{_version()}+{target.dist.suffix}"
    root = work / f"edgefleet-{name}-{target.dist.codename}-{target.arch}"
    prefix = f"/opt/edgefleet/{name}"
    venv = root / prefix.lstrip("/")
    build_environment(
        wheel, str(spec["extra"]), target, venv, prefix, lean=name == "agent", work=work
    )
    (root / "usr/bin").mkdir(parents=True)
    for program in spec["programs"]:
        (root / "usr/bin" / program).symlink_to(f"{prefix}/bin/{program}")
    docs = venv / "share" / "doc"
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "README.md", docs / "README.md")
    lib = target.dist.libdir.lstrip("/")
    for folder, source, dest in (
        (f"{lib}/systemd/system", f"systemd/edgefleet-{name}.service", f"edgefleet-{name}.service"),
        ("etc/edgefleet", f"config/{spec['config']}", str(spec["config"])),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGING / source, root / folder / dest)
    if name == "agent":
        (root / lib / "udev/rules.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGING / "udev/99-edgefleet-coral.rules", root / lib / "udev/rules.d")
    debian = root / "DEBIAN"
    debian.mkdir()
    size_kb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    (debian / "control").write_text(
        f"Package: edgefleet-{name}\n"
        f"Version: {version}\n"
        f"Architecture: {target.arch}\n"
        "Maintainer: EdgeFleet <edgefleet@example.invalid>\n"
        f"Installed-Size: {size_kb // 1024}\n"
        + _depends(name, target)
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
        "libdir": target.dist.libdir,
    }
    for script, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        path = debian / script
        path.write_text(text.format(**fields), encoding="utf-8")
        path.chmod(0o755)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"edgefleet-{name}_{version}_{target.arch}.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zzstd", "--build", str(root), str(deb)])
    shutil.rmtree(root)
    return deb


# What `make deb` builds: the agent for each release and architecture devices run; the server
# for bookworm on both (an arm64 gateway can host a small fleet).
MATRIX = (
    *(("agent", dist, arch) for dist in DISTS for arch in MACHINES),
    *(("server", "bookworm", arch) for arch in MACHINES),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--package", choices=("agent", "server", "all"), default="all")
    parser.add_argument("--dist", choices=(*DISTS, "all"), default="all",
                        help="Debian release (default: all of the matrix)")  # fmt: skip
    parser.add_argument("--arch", choices=(*MACHINES, "all"), default="all",
                        help="Debian architecture (default: all of the matrix)")  # fmt: skip
    args = parser.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        print("building the .deb needs dpkg-deb (apt install dpkg)", file=sys.stderr)
        return 1
    chosen = [
        (name, dist, arch)
        for name, dist, arch in MATRIX
        if args.package in (name, "all") and args.dist in (dist, "all")
        and args.arch in (arch, "all")
    ]  # fmt: skip
    if not chosen:
        print(f"the matrix has no {args.package} package for {args.dist} {args.arch}",
              file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory(prefix="edgefleet-deb-") as folder:
        work = Path(folder)
        os.umask(0o022)
        wheel = build_wheel(work)
        for name, dist, arch in chosen:
            print(build_package(name, wheel, Target(DISTS[dist], arch), work, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
