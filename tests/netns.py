"""Hosts of the test's own in network namespaces (``ip netns``, as root): each host a namespace
with one veth link to a bridge in the root namespace, an address of 10.RR.0.0/24, and loopback.
Cutting a host off (:meth:`Host.cut`) takes its link down: its peers' packets vanish, as on a
dead link (connections time out; nothing is refused).

    with Network("ef", ["db", "server-a", "server-b", "devices"]) as net:
        net["server-a"].address        # "10.RR.0.2"
        net["devices"].command(["python3", ...])  # the argv that runs in that namespace
        net["server-a"].cut(); net["server-a"].restore()
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Host", "Network", "available"]


def available() -> bool:
    """Root, and ``ip`` that can make namespaces."""
    return (
        os.geteuid() == 0
        and subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode
        == 0
    )


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Host:
    name: str  # the namespace
    link: str  # its veth end in the root namespace
    address: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Cut this host off the network (its link down: packets vanish)."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")


class Network:
    """Hosts on one bridge; everything made is removed on exit."""

    def __init__(self, prefix: str, names: list[str]) -> None:
        tag = f"{prefix}{os.getpid() % 10000}{random.randrange(100)}"[:9]  # noqa: S311 - a name
        self.subnet = f"10.{random.randrange(100, 250)}.0"  # noqa: S311 - a test network
        self.bridge = f"{tag}br"
        self.hosts = {
            name: Host(f"{tag}-{name}", f"{tag}v{i}", f"{self.subnet}.{i + 2}")
            for i, name in enumerate(names)
        }

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            # The test itself (the root namespace) is on the network as .1: the admin's host.
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            for host in self.hosts.values():
                _ip("netns", "add", host.name)
                _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0",
                    "netns", host.name)  # fmt: skip
                _ip("link", "set", host.link, "master", self.bridge, "up")
                _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
                _ip("-n", host.name, "link", "set", "eth0", "up")
                _ip("-n", host.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for host in self.hosts.values():
            pids = subprocess.run(
                ["ip", "netns", "pids", host.name], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:  # whatever the test left running there
                subprocess.run(["kill", "-9", pid], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", host.link], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
