"""Emulated arm64 Debian roots for the tests of the arm64 packages (``make test-arm64``).

A minimal Debian 12 "bookworm" arm64 root, made once with ``mmdebstrap`` and kept under
``/var/cache/edgefleet`` (``$EDGEFLEET_CACHE``): built in a temporary folder and renamed into
place, so a run killed halfway leaves nothing a later run would trust. Each test module gets
a throwaway copy (an overlay mount over the cached root, or a full copy where overlayfs is
missing) and runs programs in it with ``chroot``; the kernel hands every aarch64 program to
Debian's ``qemu-aarch64-static`` through ``binfmt_misc``, which :func:`ensure_binfmt` mounts
and registers (these machines have no systemd to do it).

One quirk of user-mode emulation matters: qemu 7.2 shows an arm64 program the host's
``/proc/cpuinfo`` (an x86 one), and with ``/sys`` mounted too, the cpuinfo library inside
LiteRT's XNNPACK finds no ARM cores and crashes on the first ``allocate_tensors()``. A device
never sees that, so the copy gets a Raspberry Pi 4's ``/proc/cpuinfo`` (Cortex-A72), and qemu
emulates that CPU (``QEMU_CPU``).

    python -m tests.emulation    # make sure the cached root exists (what make test-arm64 does)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

CACHE = Path(os.environ.get("EDGEFLEET_CACHE", "/var/cache/edgefleet"))
SUITE = "bookworm"
# What a Raspberry Pi OS Lite-class device has that the agent's package needs or uses: Debian's
# Python with numpy and Pillow (the package's Depends and Recommends), the tools its maintainer
# scripts call, and udev to read its Coral rules with.
PACKAGES = ("python3", "python3-numpy", "python3-pil", "passwd", "adduser", "udev")
QEMU_CPU = "cortex-a72"  # a Raspberry Pi 4's
BINFMT = Path("/proc/sys/fs/binfmt_misc")
EM_AARCH64 = 183  # e_machine of an aarch64 ELF file
# For programs run in the root: nothing of the test's own environment (its venv, PYTHONPATH).
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "QEMU_CPU": QEMU_CPU,
    "PYTHONUNBUFFERED": "1",
}


class EmulationError(RuntimeError):
    """This machine cannot run arm64 programs (a missing tool or permission), with the fix."""


def _pi4_cpuinfo(cores: int) -> str:
    core = (
        "BogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    )
    return "".join(f"processor\t: {i}\n{core}" for i in range(cores))


def ensure_binfmt() -> None:
    """Mount binfmt_misc and register qemu-aarch64 from qemu-user-static's own definition,
    with the F flag (the interpreter is opened now, so it also runs inside a chroot)."""
    if os.geteuid() != 0:
        raise EmulationError("the arm64 tests run as root (mount, chroot, dpkg)")
    definition = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
    if not definition.exists() or shutil.which("mmdebstrap") is None:
        raise EmulationError(
            "the arm64 tests need Debian's qemu-user-static, mmdebstrap and arch-test "
            "(apt install qemu-user-static mmdebstrap arch-test)"
        )
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        line = next(
            raw.split("#", 1)[0].strip()
            for raw in definition.read_text(encoding="utf-8").splitlines()
            if raw.split("#", 1)[0].strip()
        )
        (BINFMT / "register").write_text(line + "\n", encoding="utf-8")
    status = entry.read_text(encoding="utf-8")
    flags = next((ln.split(":", 1)[1] for ln in status.splitlines() if ln.startswith("flags:")), "")
    if not status.startswith("enabled") or "F" not in flags:
        raise EmulationError(
            f"{entry} is registered without the F flag or disabled ({status.splitlines()[:3]}); "
            f"remove it (echo -1 > {entry}) and run again"
        )


def _key() -> str:
    recipe = f"{SUITE} arm64 essential {' '.join(PACKAGES)} 1"
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


COMPLETE = ".edgefleet-complete"  # written last into a build: a root without it is not one


def _complete(root: Path) -> bool:
    return (root / COMPLETE).is_file()


def cached_root() -> Path:
    """The cached arm64 root, built first when missing (about 2 minutes, 320 MB)."""
    ensure_binfmt()
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"arm64-{SUITE}-{_key()}"
    if _complete(final):
        return final
    with _locked(CACHE / ".arm64.lock"):
        if _complete(final):
            return final
        for stale in [*CACHE.glob(".build-arm64-*"), final]:  # killed halfway, or incomplete
            if stale.exists():
                _remove(stale)
        build = CACHE / f".build-{final.name}"
        started = time.monotonic()
        print(f"emulation: building {final} with mmdebstrap", file=sys.stderr, flush=True)
        # In a mount namespace of its own: mmdebstrap mounts the host's /dev, /proc and /sys
        # into the root while it works, and a kill would leave those mounts behind.
        subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "mmdebstrap", "--quiet",
             "--architectures=arm64", "--variant=essential",
             f"--include={','.join(PACKAGES)}", SUITE, str(build)],
            check=True, timeout=1200,
        )  # fmt: skip
        (build / COMPLETE).write_text(f"{SUITE} {' '.join(PACKAGES)}\n", encoding="utf-8")
        build.rename(final)
        print(f"emulation: built in {time.monotonic() - started:.0f} s", file=sys.stderr)
        for old in CACHE.glob("arm64-*"):  # roots of an earlier recipe, when nobody uses them
            if old != final and old.is_dir():
                with _in_use(old, exclusive=True) as free:
                    if free:
                        _remove(old)
    return final


@contextlib.contextmanager
def _in_use(root: Path, *, exclusive: bool = False) -> Iterator[bool]:
    """A lock on ``root`` beside it: shared while a Scratch has it as its lower layer,
    exclusive (not waiting: yields False when it is in use) to delete it."""
    with (root.parent / f".{root.name}.lock").open("a") as handle:
        mode = fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with Path("/proc/self/mounts").open(encoding="utf-8") as mounts:
        points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    return sorted((p for p in points if p.startswith(prefix) or p == prefix[:-1]), reverse=True)


def _remove(path: Path) -> None:
    """Delete a root folder, unmounting first what mmdebstrap left mounted in it when it was
    killed (its /dev, /proc, /sys): never delete through a mount of the host's."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    left = _mounts_under(path)
    if left:
        raise EmulationError(f"cannot unmount {left} under {path}: remove it by hand")
    shutil.rmtree(path)


def elf_machine(path: Path) -> int:
    """The e_machine field of an ELF file (little-endian, as both our targets are)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


class Scratch:
    """A throwaway copy of the cached root with /proc and /sys mounted, for one test module."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "root"
        self._mounts: list[Path] = []
        self._holding: contextlib.AbstractContextManager[bool] | None = None

    def _mount(self, target: Path, *args: str) -> None:
        subprocess.run(["mount", *args, str(target)], check=True)
        self._mounts.append(target)

    def open(self, base: Path) -> Scratch:
        """Mount the copy over ``base`` (held in use until :meth:`close`); on any failure,
        what was mounted so far is unmounted before the error goes on."""
        self._holding = _in_use(base)
        self._holding.__enter__()
        try:
            self._open(base)
        except BaseException:
            self.close()
            raise
        return self

    def _open(self, base: Path) -> None:
        upper, work = self.folder / "upper", self.folder / "work"
        for folder in (upper, work, self.path):
            folder.mkdir(parents=True)
        try:
            self._mount(self.path, "-t", "overlay", "overlay", "-o",
                        f"lowerdir={base},upperdir={upper},workdir={work}")  # fmt: skip
        except subprocess.CalledProcessError:
            self.path.rmdir()
            subprocess.run(["cp", "-a", str(base), str(self.path)], check=True)
        cpuinfo = self.folder / "cpuinfo"
        cpuinfo.write_text(_pi4_cpuinfo(os.cpu_count() or 1), encoding="utf-8")
        self._mount(self.path / "proc", "-t", "proc", "proc")
        self._mount(self.path / "proc/cpuinfo", "--bind", str(cpuinfo))
        self._mount(self.path / "sys", "-t", "sysfs", "-o", "ro", "sysfs")

    def close(self) -> None:
        """Unmount everything (lazily when busy): nothing of the host's /proc or /sys may be
        left under a folder that pytest later deletes."""
        while self._mounts:
            target = self._mounts.pop()
            if subprocess.run(["umount", str(target)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], check=True)
        if self._holding is not None:
            self._holding.__exit__(None, None, None)
            self._holding = None

    def command(self, *cmd: str, user: str | None = "edgefleet") -> list[str]:
        """``cmd`` run inside the root (as ``user``, with that user's groups; root for None)."""
        spec = [f"--userspec={user}:{user}"] if user else []
        return ["chroot", *spec, str(self.path), *cmd]

    def run(
        self, *cmd: str, user: str | None = "edgefleet", timeout: float = 300, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*cmd, user=user), env=ENV, capture_output=True, text=True,
            timeout=timeout, check=check,
        )  # fmt: skip

    def popen(self, cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as handle:
            return subprocess.Popen(list(cmd), stdout=handle, stderr=subprocess.STDOUT, env=ENV)


def main() -> int:
    try:
        print(cached_root())
    except EmulationError as exc:
        print(f"emulation: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
