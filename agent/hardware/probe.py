"""Hardware probe. Reads sysfs and /dev only; loads libedgetpu only to ask its version.

Coral USB accelerators show up as USB 1a6e:089a (Global Unichip, before the runtime loads their
firmware) or 18d1:9302 (Google, after); PCIe/M.2 modules as ``/dev/apex_N`` with
``/sys/class/apex/apex_N``. libedgetpu numbers them ``usb:0..`` and ``pci:0..``; the probe names
them the same way, in sysfs order. When Google's pycoral is importable its own list is used
instead (it asks libedgetpu directly).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import logging
import os
import platform
import shutil
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import RuntimeMissingError
from agent.inference.modelfile import max_known_op_code
from agent.inference.runtime import find_runtime
from protos import device_pb2

__all__ = [
    "CORAL_USB_IDS",
    "EdgeTpuDevice",
    "HardwareInfo",
    "find_libedgetpu",
    "libedgetpu_version",
    "probe",
    "temperatures",
    "to_capabilities",
]

log = logging.getLogger(__name__)

CORAL_USB_IDS = {("1a6e", "089a"): "unflashed", ("18d1", "9302"): "ready"}
# Debian's multiarch directories, the interpreter's own first: a multiarch image may also
# carry another architecture's libedgetpu, which this process cannot load.
_MULTIARCH = ("x86_64-linux-gnu", "aarch64-linux-gnu", "arm-linux-gnueabihf")


def _lib_dirs(multiarch: str) -> tuple[str, ...]:
    own = [f"/usr/lib/{multiarch}"] if multiarch else []
    others = [f"/usr/lib/{m}" for m in _MULTIARCH if m != multiarch]
    return (*own, *others, "/usr/lib", "/usr/local/lib")


@dataclass(frozen=True)
class EdgeTpuDevice:
    """One Edge TPU as the delegate names it."""

    device: str  # "usb:0", "pci:0": the libedgetpu delegate's "device" option
    kind: str  # "usb" | "pci"
    path: str  # sysfs or /dev path
    state: str = "ready"  # USB: "unflashed" until the runtime has loaded its firmware


@dataclass(frozen=True)
class HardwareInfo:
    """What this device has."""

    arch: str
    cpu_cores: int
    memory_bytes: int
    disk_free_bytes: int
    edgetpus: tuple[EdgeTpuDevice, ...]
    libedgetpu: str  # path of the library found, "" when none
    libedgetpu_version: str
    runtime: str
    runtime_version: str
    os: str
    temperatures_c: dict[str, float] = field(default_factory=dict)
    agent_version: str = __version__
    max_builtin_op: int = 0  # the highest TFLite operator code the runtime knows
    # Not probed: the configured [device] timezone, reported with the rest (maintenance windows).
    timezone: str = ""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def _usb_tpus(sysfs: Path) -> list[EdgeTpuDevice]:
    found = []
    for device in sorted((sysfs / "bus" / "usb" / "devices").glob("*")):
        ids = (_read(device / "idVendor").lower(), _read(device / "idProduct").lower())
        if ids in CORAL_USB_IDS:
            found.append((device, CORAL_USB_IDS[ids]))
    return [
        EdgeTpuDevice(device=f"usb:{i}", kind="usb", path=str(path), state=state)
        for i, (path, state) in enumerate(found)
    ]


def _pci_tpus(devfs: Path) -> list[EdgeTpuDevice]:
    nodes = sorted(devfs.glob("apex_*"), key=lambda p: (len(p.name), p.name))
    return [
        EdgeTpuDevice(device=f"pci:{i}", kind="pci", path=str(node)) for i, node in enumerate(nodes)
    ]


def _pycoral_tpus() -> list[EdgeTpuDevice] | None:
    """pycoral's own list, when Google's pycoral (from Coral's apt repository) is installed."""
    try:
        edgetpu = importlib.import_module("pycoral.utils.edgetpu")
    except ImportError:
        return None
    try:
        listed: list[dict[str, Any]] = edgetpu.list_edge_tpus()
    except Exception as exc:  # noqa: BLE001 - a broken pycoral must not break the probe
        log.warning("pycoral is installed but list_edge_tpus() failed: %s", exc)
        return None
    counters: dict[str, int] = {}
    devices = []
    for entry in listed:
        kind = str(entry.get("type", "usb"))
        index = counters.get(kind, 0)
        counters[kind] = index + 1
        devices.append(EdgeTpuDevice(f"{kind}:{index}", kind, str(entry.get("path", ""))))
    return devices


def find_libedgetpu(
    library: str = "libedgetpu.so.1", *, root: Path = Path("/"), multiarch: str = ""
) -> str:
    """The path of libedgetpu (or of ``library`` when it is a path), "" when absent.

    The library directories are looked up below ``root`` (a test's tree, a mounted image). The
    dynamic linker's cache, asked last, describes this machine only, so it is asked only when
    ``root`` is "/": another tree must not report this machine's library. ``multiarch``
    (default: this interpreter's, e.g. arm-linux-gnueabihf for a 32-bit Raspberry Pi OS on a
    64-bit kernel, which ``uname`` calls aarch64) decides which directory is searched first.
    """
    if "/" in library:
        return library if Path(library).exists() else ""
    own = multiarch or sysconfig.get_config_var("MULTIARCH") or ""
    for directory in _lib_dirs(own):
        candidate = root / directory.lstrip("/") / library
        if candidate.exists():
            return str(candidate)
    if root != Path("/"):
        return ""
    return ctypes.util.find_library("edgetpu") or ""


def libedgetpu_version(path: str) -> str:
    """What the library's ``edgetpu_version()`` says, "" when it cannot be asked."""
    if not path:
        return ""
    try:
        lib = ctypes.CDLL(path)
        fn = lib.edgetpu_version
    except (OSError, AttributeError):
        return ""
    fn.restype = ctypes.c_char_p
    value = fn()
    return value.decode("utf-8", "replace")[:200] if value else ""


def temperatures(sysfs: Path = Path("/sys")) -> dict[str, float]:
    """Degrees Celsius of the thermal zones (SoC) and Edge TPUs (apex) sysfs shows."""
    temps: dict[str, float] = {}
    for zone in sorted((sysfs / "class" / "thermal").glob("thermal_zone*")):
        raw = _read(zone / "temp")
        if raw.lstrip("-").isdigit():
            name = _read(zone / "type") or zone.name
            temps[name[:64]] = int(raw) / 1000.0
    for apex in sorted((sysfs / "class" / "apex").glob("*")):
        raw = _read(apex / "temp")
        if raw.lstrip("-").isdigit():
            temps[f"edgetpu-{apex.name}"[:64]] = int(raw) / 1000.0
    return temps


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def probe(
    state_dir: Path,
    *,
    sysfs: Path = Path("/sys"),
    devfs: Path = Path("/dev"),
    edgetpu_library: str = "libedgetpu.so.1",
) -> HardwareInfo:
    """Probe this device. Never raises: what cannot be read is reported as absent."""
    try:
        runtime = find_runtime()
        runtime_name, runtime_version = runtime.name, runtime.version
    except RuntimeMissingError:
        runtime_name, runtime_version = "", ""
    try:
        free = shutil.disk_usage(state_dir if state_dir.exists() else state_dir.parent).free
    except OSError:
        free = 0
    tpus = _pycoral_tpus()
    if tpus is None:
        tpus = _usb_tpus(sysfs) + _pci_tpus(devfs)
    library = find_libedgetpu(edgetpu_library)
    return HardwareInfo(
        arch=platform.machine(),
        cpu_cores=os.cpu_count() or 1,
        memory_bytes=_memory_bytes(),
        disk_free_bytes=free,
        edgetpus=tuple(tpus),
        libedgetpu=library,
        libedgetpu_version=libedgetpu_version(library),
        runtime=runtime_name,
        runtime_version=runtime_version,
        os=f"{platform.system()} {platform.release()}",
        temperatures_c=temperatures(sysfs),
        max_builtin_op=max_known_op_code() if runtime_name else 0,
    )


def to_capabilities(info: HardwareInfo) -> device_pb2.Capabilities:
    """The probe as the device API's Capabilities message."""
    return device_pb2.Capabilities(
        arch=info.arch,
        cpu_cores=info.cpu_cores,
        memory_bytes=info.memory_bytes,
        disk_free_bytes=info.disk_free_bytes,
        edgetpu_count=len(info.edgetpus),
        runtime=info.runtime,
        runtime_version=info.runtime_version,
        agent_version=info.agent_version,
        os=info.os,
        edgetpus=[
            device_pb2.EdgeTpu(device=t.device, kind=t.kind, path=t.path, state=t.state)
            for t in info.edgetpus
        ],
        libedgetpu=bool(info.libedgetpu),
        libedgetpu_version=info.libedgetpu_version,
        temperatures_c=info.temperatures_c,
        max_builtin_op=info.max_builtin_op,
        timezone=info.timezone,
    )
