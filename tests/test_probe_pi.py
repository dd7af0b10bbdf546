"""The hardware probe on the arm64 boards our devices are: fake trees laid out as their kernels
lay out sysfs, /dev and the multiarch library directories.

As on a real kernel, /sys/bus/usb/devices and /sys/class/{apex,thermal} hold relative symlinks
into /sys/devices, and every USB device has its interface directories (``2-1:1.0``, root hubs
``1-0:1.0``) beside it there: they carry ``bInterfaceClass`` but no ``idVendor``. /dev/apex_N
is a regular file here (a character device needs root to create); the probe only globs names.
The controller paths above ``usbN`` and the PCIe function are what each board's device tree
gives (Pi 4: bcm2711's pcie at fd500000 with the VL805 behind it; Pi 5: bcm2712's pcie1, the
external connector, domain 0001, RP1 being 0002); the probe reads only the links, so a wrong
controller path there would not change what it finds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.hardware.probe import (
    HardwareInfo,
    find_libedgetpu,
    libedgetpu_version,
    probe,
    to_capabilities,
)
from tests.conftest import FakeEdgeTpu

UNFLASHED, READY = ("1a6e", "089a"), ("18d1", "9302")
ROOT_HUB_2, ROOT_HUB_3 = ("1d6b", "0002"), ("1d6b", "0003")
HUBS = {ROOT_HUB_2, ROOT_HUB_3, ("2109", "3431")}  # 2109:3431: the VIA hub inside the Pi 4's VL805
PI4_XHCI = "platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0"
PI4_HUBS = {"usb1": ROOT_HUB_2, "usb2": ROOT_HUB_3, "1-1": ("2109", "3431")}


def write(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (directory / name).write_text(value + "\n")
    return directory


def link(link_path: Path, target: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(os.path.relpath(target, link_path.parent))


def usb_devices(sysfs: Path, controller: str, devices: dict[str, tuple[str, str]]) -> None:
    """USB devices named by their port path (``usb1``, ``1-1``, ``1-1.3``), each nested in its
    parent hub below ``/sys/devices/<controller>`` with its interface ``:1.0``, all linked from
    /sys/bus/usb/devices. Parents come before children in ``devices``."""
    bus = sysfs / "bus" / "usb" / "devices"
    for name, ids in devices.items():
        if name.startswith("usb"):
            chain, interface = [name], f"{name[3:]}-0:1.0"
        else:
            busnum, ports = name.split("-", 1)
            parts = ports.split(".")
            chain = [f"usb{busnum}"] + [
                f"{busnum}-{'.'.join(parts[: i + 1])}" for i in range(len(parts))
            ]
            interface = f"{name}:1.0"
        device = sysfs / "devices" / controller / Path(*chain)
        hub = ids in HUBS
        write(device, idVendor=ids[0], idProduct=ids[1], bDeviceClass="09" if hub else "00")
        write(device / interface, bInterfaceClass="09" if hub else "ff", bInterfaceNumber="00")
        link(bus / name, device)
        link(bus / interface, device / interface)


def thermal_zone(sysfs: Path, number: int, kind: str, millidegrees: str) -> None:
    zone = write(
        sysfs / "devices" / "virtual" / "thermal" / f"thermal_zone{number}",
        type=kind,
        temp=millidegrees,
        trip_point_0_temp="110000",
    )
    link(sysfs / "class" / "thermal" / zone.name, zone)


def apex(sysfs: Path, devfs: Path, pci_function: str, millidegrees: str) -> None:
    """An Edge TPU on PCIe as the gasket/apex driver shows it: /dev/apex_0, and the class
    directory with the die temperature beside its throttling thresholds (not readings)."""
    function = write(sysfs / "devices" / pci_function, vendor="0x1ac1", device="0x089a")
    node = write(
        function / "apex" / "apex_0",
        temp=millidegrees,
        trip_point0_temp="85000",
        hw_temp_warn1="100000",
        hw_temp_warn2="100000",
    )
    link(sysfs / "class" / "apex" / "apex_0", node)
    devfs.mkdir(exist_ok=True)
    (devfs / "apex_0").touch()


def probe_tree(root: Path) -> HardwareInfo:
    sysfs, devfs = root / "sys", root / "dev"
    devfs.mkdir(exist_ok=True)
    return probe(root, sysfs=sysfs, devfs=devfs, edgetpu_library=str(root / "absent.so"))


def tpus(info: HardwareInfo, root: Path) -> list[tuple[str, str, str]]:
    return [(t.device, t.state, str(Path(t.path).relative_to(root))) for t in info.edgetpus]


@pytest.mark.parametrize(
    "port", ["2-1", "1-1.3"], ids=["usb3-root-hub-bus-2", "usb2-behind-the-via-hub"]
)
@pytest.mark.parametrize(("ids", "state"), [(UNFLASHED, "unflashed"), (READY, "ready")])
def test_pi4_one_usb_accelerator_is_usb0_on_either_bus_in_either_state(
    tmp_path: Path, port: str, ids: tuple[str, str], state: str
) -> None:
    usb_devices(tmp_path / "sys", PI4_XHCI, {**PI4_HUBS, port: ids})
    info = probe_tree(tmp_path)
    # Root hubs, the VL805's hub and every ":1.0" interface directory are not counted.
    assert tpus(info, tmp_path) == [("usb:0", state, f"sys/bus/usb/devices/{port}")]
    assert to_capabilities(info).edgetpu_count == 1


def test_pi4_two_usb_accelerators_are_numbered_in_sysfs_order(tmp_path: Path) -> None:
    usb_devices(
        tmp_path / "sys",
        PI4_XHCI,
        {**PI4_HUBS, "2-1": READY, "1-1.3": UNFLASHED, "1-1.4": ("046d", "c31c")},  # + keyboard
    )
    info = probe_tree(tmp_path)
    assert tpus(info, tmp_path) == [
        ("usb:0", "unflashed", "sys/bus/usb/devices/1-1.3"),
        ("usb:1", "ready", "sys/bus/usb/devices/2-1"),
    ]
    assert info.temperatures_c == {}


def test_pi5_m2_accelerator_on_the_pcie_hat(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    apex(
        sysfs,
        tmp_path / "dev",
        "platform/axi/1000110000.pcie/pci0001:00/0001:00:00.0/0001:01:00.0",
        "45250",
    )
    thermal_zone(sysfs, 0, "cpu-thermal", "52100")
    fan = write(
        sysfs / "devices" / "virtual" / "thermal" / "cooling_device0",
        type="pwm-fan",
        cur_state="1",
        max_state="4",
    )  # the Active Cooler: no temperature of its own
    link(sysfs / "class" / "thermal" / fan.name, fan)
    rp1 = "platform/axi/1000120000.pcie/1f00200000.usb/xhci-hcd.0"  # RP1's xHCI: hubs only
    usb_devices(sysfs, rp1, {"usb1": ROOT_HUB_2, "usb2": ROOT_HUB_3})
    info = probe_tree(tmp_path)
    assert [(t.device, t.kind, t.path) for t in info.edgetpus] == [
        ("pci:0", "pci", str(tmp_path / "dev" / "apex_0"))
    ]
    assert info.temperatures_c == {"cpu-thermal": 52.1, "edgetpu-apex_0": 45.25}
    assert dict(to_capabilities(info).temperatures_c) == info.temperatures_c


def test_coral_dev_board_tpu_on_imx8m_pcie(tmp_path: Path) -> None:
    # i.MX8MQ: the Edge TPU is the only device on the SoC's first PCIe controller. The zones are
    # the three of mainline's imx8mq.dtsi (Mendel's kernel may show only thermal_zone0, the one
    # Coral's docs read); the USB ports' root hubs sit on a dwc3 controller (path assumed).
    sysfs = tmp_path / "sys"
    apex(
        sysfs,
        tmp_path / "dev",
        "platform/soc@0/33800000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0",
        "-1250",
    )  # the apex reading is signed: a die below 0 C outdoors
    for number, kind, temp in [
        (0, "cpu-thermal", "48000"),
        (1, "gpu-thermal", "47000"),
        (2, "vpu-thermal", "47500"),
    ]:
        thermal_zone(sysfs, number, kind, temp)
    usb_devices(
        sysfs,
        "platform/soc@0/38100000.usb/xhci-hcd.0.auto",
        {"usb1": ROOT_HUB_2, "usb2": ROOT_HUB_3},
    )
    info = probe_tree(tmp_path)
    assert tpus(info, tmp_path) == [("pci:0", "ready", "dev/apex_0")]
    assert info.temperatures_c == {
        "cpu-thermal": 48.0,
        "gpu-thermal": 47.0,
        "vpu-thermal": 47.5,
        "edgetpu-apex_0": -1.25,
    }


@pytest.mark.parametrize(("ids", "state"), [(UNFLASHED, "unflashed"), (READY, "ready")])
def test_coral_dev_board_mini_tpu_on_internal_usb(
    tmp_path: Path, ids: tuple[str, str], state: str
) -> None:
    # MT8167: the Edge TPU is wired to a USB 2.0 host port of the SoC and enumerates like a USB
    # Accelerator (1a6e:089a until the runtime loads its firmware). Assumed: it is the only
    # device on bus 1 (1-1), the controller path, and MediaTek's zone name "cpu_thermal". No
    # apex node, so no TPU temperature.
    sysfs = tmp_path / "sys"
    usb_devices(
        sysfs, "platform/soc/11190000.usb/musb-hdrc.1.auto", {"usb1": ROOT_HUB_2, "1-1": ids}
    )
    thermal_zone(sysfs, 0, "cpu_thermal", "41300")
    info = probe_tree(tmp_path)
    assert tpus(info, tmp_path) == [("usb:0", state, "sys/bus/usb/devices/1-1")]
    assert info.temperatures_c == {"cpu_thermal": 41.3}


@pytest.mark.slow  # fake_edgetpu compiles the fake library with gcc
def test_libedgetpu_is_found_in_the_arm64_multiarch_directory(
    fake_edgetpu: FakeEdgeTpu, tmp_path: Path
) -> None:
    # As Coral's libedgetpu1-std:arm64 installs it: the versioned file and the soname link. The
    # x86_64 directory exists too (a multiarch image) but holds no libedgetpu.
    arm64 = tmp_path / "usr" / "lib" / "aarch64-linux-gnu"
    arm64.mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "x86_64-linux-gnu").mkdir()
    shutil.copy(fake_edgetpu.library, arm64 / "libedgetpu.so.1.0")
    (arm64 / "libedgetpu.so.1").symlink_to("libedgetpu.so.1.0")
    found = find_libedgetpu(root=tmp_path)
    assert found == str(arm64 / "libedgetpu.so.1")
    assert "x86_64" not in found
    assert libedgetpu_version(found) == "FAKE libedgetpu (EdgeFleet test double)"


def test_a_tree_without_libedgetpu_does_not_report_this_machines_library(tmp_path: Path) -> None:
    # Asking the linker's cache would start ldconfig, which this unmarked test may not do.
    (tmp_path / "usr" / "lib" / "aarch64-linux-gnu").mkdir(parents=True)
    assert find_libedgetpu(root=tmp_path) == ""


@pytest.mark.slow  # fake_edgetpu compiles the fake library with gcc
def test_a_multiarch_arm64_device_picks_its_own_libedgetpu_over_an_amd64_one(
    fake_edgetpu: FakeEdgeTpu, tmp_path: Path
) -> None:
    # An arm64 image that also has amd64 packages (dpkg --add-architecture amd64) may hold
    # both builds: the device can load only its own.
    for arch in ("x86_64", "aarch64"):
        folder = tmp_path / "usr" / "lib" / f"{arch}-linux-gnu"
        folder.mkdir(parents=True)
        shutil.copy(fake_edgetpu.library, folder / "libedgetpu.so.1")
    arm64 = str(tmp_path / "usr/lib/aarch64-linux-gnu/libedgetpu.so.1")
    amd64 = str(tmp_path / "usr/lib/x86_64-linux-gnu/libedgetpu.so.1")
    assert find_libedgetpu(root=tmp_path, multiarch="aarch64-linux-gnu") == arm64
    assert find_libedgetpu(root=tmp_path, multiarch="x86_64-linux-gnu") == amd64
