"""The self-contained Python environment inside an EdgeFleet .deb, for any Debian release and
architecture, assembled on this machine from wheels (used by ``scripts/build_deb.py``).

A virtualenv made with ``python -m venv`` only suits the interpreter and architecture that made
it. This builds the same layout by hand instead: ``pip install --target`` from the target's
own wheels (``--platform manylinux_2_N_aarch64 --python-version 3.13 ...``), a ``pyvenv.cfg``
that points at Debian's ``/usr/bin/python3``, entry scripts with the installed interpreter
line, and bytecode compiled by an interpreter of the target's Python version (bytecode depends
on the version, not on the architecture).

The agent's environment sees Debian's own packages (``include-system-site-packages``): numpy
comes from ``python3-numpy`` and Pillow from ``python3-pil`` rather than 73 + 23 MB of wheels,
and Google's ``python3-pycoral`` or ``python3-tflite-runtime`` from Coral's apt repository are
importable when a Coral device installs them. Its own packages still come first on ``sys.path``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DISTS", "MACHINES", "Target", "build_environment", "find_python"]


@dataclass(frozen=True)
class Dist:
    """A Debian release the packages are built for."""

    codename: str
    suffix: str  # the package version's "+deb12": a later release sorts higher
    python: tuple[int, int]  # its python3
    glibc: tuple[int, int]  # its libc6: the newest manylinux tag its wheels may have
    numpy: str  # the oldest python3-numpy the agent accepts from it (Debian's epoch 1)
    libdir: str  # where its packages put systemd units and udev rules: /lib before /usr merged


DISTS = {
    "bookworm": Dist("bookworm", "deb12", (3, 11), (2, 36), "1:1.24", "/lib"),
    "trixie": Dist("trixie", "deb13", (3, 13), (2, 41), "1:2.2", "/usr/lib"),
}
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}  # Debian's architecture: the wheels' one


@dataclass(frozen=True)
class Target:
    dist: Dist
    arch: str  # Debian's name: amd64, arm64

    @property
    def python_tag(self) -> str:
        return f"{self.dist.python[0]}.{self.dist.python[1]}"

    def pip_platform_args(self) -> list[str]:
        """What pip needs to pick this target's wheels: every manylinux tag its glibc accepts
        (pip does not expand ``manylinux_2_N`` to the older ones by itself)."""
        machine = MACHINES[self.arch]
        major, newest = self.dist.glibc
        tags = [f"manylinux_{major}_{minor}_{machine}" for minor in range(newest, 16, -1)]
        tags += [f"manylinux2014_{machine}"]
        args = []
        for tag in tags:
            args += ["--platform", tag]
        abi = f"cp{self.dist.python[0]}{self.dist.python[1]}"
        return [*args, "--python-version", self.python_tag, "--implementation", "cp",
                "--abi", abi, "--abi", "abi3", "--abi", "none", "--only-binary=:all:"]  # fmt: skip


# Wheels the agent's package leaves to Debian (named in its Depends/Recommends) or does not
# need. ml_dtypes backs only LiteRT's CompiledModel tensor buffers, which the agent's
# Interpreter never imports, and its wheels need numpy 2 (bookworm has 1.24).
AGENT_FROM_DEBIAN = {"numpy": "python3-numpy", "pillow": "python3-pil"}
AGENT_UNUSED = ("ml_dtypes",)

# What a device never runs: the server's code and LiteRT's parts for hardware our devices lack
# (its WebGPU accelerator, 19 MB; the phone and PC NPU compiler plugins of its CompiledModel
# API); zstandard's cffi backend (the C one is used on CPython).
AGENT_DROPS = (
    "fleet_server",
    "ai_edge_litert/libLiteRtWebGpuAccelerator.so",
    "ai_edge_litert/vendors",
    "zstandard/_cffi.*.so",
    "zstandard/backend_cffi.py",
)


def find_python(version: str) -> str | None:
    """An interpreter of this version on the build machine, to write bytecode with: Debian's,
    one that pyenv built (not its shim, which fails for a version not selected), or on PATH."""
    candidates = [Path(f"/usr/bin/python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True)
    on_path = shutil.which(f"python{version}")
    if on_path and "/shims/" not in on_path:
        candidates.append(Path(on_path))
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def _wheelhouse(wheel: Path, extra: str, target: Target, work: Path) -> list[Path]:
    """Every wheel the package's environment needs for this target (pip resolves)."""
    house = work / f"wheels-{target.dist.codename}-{target.arch}-{extra}"
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(house),
          *target.pip_platform_args(), f"{wheel}[{extra}]"])  # fmt: skip
    return sorted(house.glob("*.whl"))


def _distribution(wheel: Path) -> str:
    return wheel.name.split("-", 1)[0].lower().replace("_", "-").replace(".", "-")


def build_environment(
    wheel: Path, extra: str, target: Target, venv: Path, prefix: str, *, lean: bool, work: Path
) -> list[str]:
    """Assemble the environment at ``venv`` (installed later at ``prefix``); return the
    distributions left out. ``lean`` (the agent): Debian's numpy and Pillow, no unused parts,
    shared objects stripped."""
    python = find_python(target.python_tag)
    if python is None:
        raise SystemExit(
            f"building for {target.dist.codename} needs a Python {target.python_tag} on this "
            "machine to compile the bytecode with (e.g. pyenv install "
            f"{target.python_tag}, or apt install python{target.python_tag} on that release)"
        )
    wheels = _wheelhouse(wheel, extra, target, work)
    left_out = {*AGENT_FROM_DEBIAN, *(n.replace("_", "-") for n in AGENT_UNUSED)} if lean else set()
    chosen = [w for w in wheels if _distribution(w) not in left_out]
    site = venv / "lib" / f"python{target.python_tag}" / "site-packages"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
          "--target", str(site), *target.pip_platform_args(), *map(str, chosen)])  # fmt: skip
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts with this machine's interpreter
    if lean:
        for pattern in AGENT_DROPS:
            for path in site.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        strip_shared_objects(site, target.arch)
    _tidy_records(site)
    _layout(venv, prefix, target, system_site=lean)
    _entry_scripts(venv, prefix, site)
    _run([python, "-m", "compileall", "-q", "-j", "0", "-s", str(venv), "-p", prefix,
          str(site)])  # fmt: skip
    return sorted(d for d in left_out if any(_distribution(w) == d for w in wheels))


def _tidy_records(site: Path) -> None:
    """Make the installed metadata describe what the package holds: no ``direct_url.json``
    (it names this build's temporary folder, so no two builds were alike), and RECORD files
    listing only files still there, with the hash and size they have now (stripped)."""
    for info in site.glob("*.dist-info"):
        (info / "direct_url.json").unlink(missing_ok=True)
        record = info / "RECORD"
        if not record.exists():
            continue
        kept = []
        for row in csv.reader(record.read_text(encoding="utf-8").splitlines()):
            if not row:
                continue
            path = (site / row[0]).resolve()
            if path == record.resolve():
                kept.append([row[0], "", ""])
            elif path.is_file():
                data = path.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                kept.append([row[0], f"sha256={digest.decode()}", str(len(data))])
        with record.open("w", encoding="utf-8", newline="") as out:
            csv.writer(out, lineterminator="\n").writerows(kept)


def _layout(venv: Path, prefix: str, target: Target, *, system_site: bool) -> None:
    bin_dir = venv / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python3").symlink_to("/usr/bin/python3")
    (bin_dir / "python").symlink_to("python3")
    (bin_dir / f"python{target.python_tag}").symlink_to("python3")
    (venv / "pyvenv.cfg").write_text(
        "home = /usr/bin\n"
        f"include-system-site-packages = {'true' if system_site else 'false'}\n"
        f"version = {target.python_tag}\n",
        encoding="utf-8",
    )


def _entry_scripts(venv: Path, prefix: str, site: Path) -> None:
    """The console scripts of EdgeFleet's wheel (``[console_scripts]``), for ``prefix``.

    Their interpreter runs with ``-s``: no user site-packages. The agent's environment sees
    the system's packages (``include-system-site-packages``), which turns Python's user site
    back on, and the service user's home is its state directory, which the agent writes: a
    ``.pth`` file there would otherwise run at every start."""
    (info,) = site.glob("edgefleet-*.dist-info")
    section = ""
    for raw in (info / "entry_points.txt").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[console_scripts]" and "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            module, function = target.split(":")
            if not (site / module.split(".")[0]).exists():
                continue  # the agent's package has no fleet_server: no edgefleet-server
            script = venv / "bin" / name
            script.write_text(
                f"#!{prefix}/bin/python3 -s\nimport sys\n\nfrom {module} import {function}\n\n"
                f"if __name__ == '__main__':\n    sys.exit({function}())\n",
                encoding="utf-8",
            )
            script.chmod(0o755)


def _strip_tool(arch: str) -> str | None:
    """llvm-strip reads every architecture; binutils' strip only this machine's."""
    if shutil.which("llvm-strip"):
        return "llvm-strip"
    native = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    return "strip" if arch == native and shutil.which("strip") else None


def _patched_by_auditwheel(path: Path) -> bool:
    """auditwheel's libraries (``*.libs/``) and the extensions it pointed at them (an RPATH
    with $ORIGIN): patchelf leaves them in a layout that strip breaks."""
    if any(part.endswith(".libs") for part in path.parts):
        return True
    return b"$ORIGIN" in path.read_bytes()


def strip_shared_objects(site: Path, arch: str) -> None:
    """Remove symbols from the shared objects no patchelf touched (zstandard's backend is 19 MB
    of them); every library still loads, as the packaging tests check by running the agent."""
    tool = _strip_tool(arch)
    if tool is None:
        print(f"note: no strip for {arch} (install llvm); shared objects kept whole",
              file=sys.stderr)  # fmt: skip
        return
    for path in sorted(site.rglob("*.so*")):
        if path.is_file() and not path.is_symlink() and not _patched_by_auditwheel(path):
            subprocess.run([tool, "--strip-unneeded", str(path)], check=True)
