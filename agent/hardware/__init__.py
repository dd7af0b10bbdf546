"""What the device has: CPU, memory, disk, Edge TPUs, libedgetpu, runtime, temperatures."""

from __future__ import annotations

from agent.hardware.probe import EdgeTpuDevice, HardwareInfo, probe, to_capabilities

__all__ = ["EdgeTpuDevice", "HardwareInfo", "probe", "to_capabilities"]
