"""A real S3-compatible object store for the tests: Ceph's RADOS Gateway on a single-node test
cluster (one monitor, one OSD on ``memstore``, no manager), from Debian's packages (radosgw,
ceph-mon, ceph-osd), started in a folder of the test's own on free loopback ports.

Bookworm's Ceph 16.2 has no cluster-less backend and ships no ``vstart.sh``, so the bootstrap
is by hand: a monmap (``monmaptool``), ``ceph-mon --mkfs``, ``ceph osd new`` with the OSD's
uuid, ``ceph-osd --mkfs``, then radosgw and ``radosgw-admin user create``. Authentication
between the daemons is off (``auth_*_required = none``; radosgw then needs
``ms_mon_client_mode = crc``), pools have one replica (``mon_allow_pool_size_one``), and
``paxos_propose_interval = 0.1`` brings a cold start to about 2 s. Stop order: radosgw, the
OSD, the monitor.

    python -m tests.objstore    # start one, print its endpoint and keys, stop on Enter
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import free_port

TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
ACCESS_KEY = "edgefleet-test-access"


def available() -> bool:
    """Whether Debian's Ceph packages are installed (``.ci/run`` installs them)."""
    return all(shutil.which(tool) for tool in TOOLS)


@dataclass
class Gateway:
    """A running radosgw and its cluster; ``endpoint`` is ``http://127.0.0.1:PORT``."""

    folder: Path
    port: int
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))  # per cluster
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.folder / "ceph.conf"

    def credentials_file(self, path: Path) -> Path:
        """An AWS-style credentials file with the test user's keys."""
        path.write_text(
            f"[default]\naws_access_key_id = {self.access_key}\n"
            f"aws_secret_access_key = {self.secret_key}\n",
            encoding="utf-8",
        )
        path.chmod(0o600)
        return path

    def stop_gateway(self) -> None:
        """Stop radosgw only: the store becomes unreachable (the cluster keeps its data)."""
        if self.processes:
            _stop(self.processes[-1])

    def stop(self) -> None:
        for process in reversed(self.processes):  # radosgw, then the OSD, then the monitor
            _stop(process)
        self.processes = []

    def log(self, name: str = "client.rgw") -> str:
        path = self.folder / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _config(folder: Path, mon_port: int, rgw_port: int, fsid: str, host: str) -> str:
    return f"""[global]
fsid = {fsid}
mon_host = {host}:{mon_port}
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
paxos_propose_interval = 0.1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
osd_objectstore = memstore
memstore_device_bytes = 1073741824
ms_bind_ipv4 = true
ms_bind_ipv6 = false
run_dir = {folder}/run
admin_socket = {folder}/run/$name.asok
log_file = {folder}/log/$name.log
pid_file = {folder}/run/$name.pid
mon_data = {folder}/mon
osd_data = {folder}/osd
[client.rgw]
rgw_frontends = beast endpoint={host}:{rgw_port}
rgw_data = {folder}/rgw
rgw_dns_name = {host}
"""


def start(
    folder: Path,
    *,
    timeout_s: float = 60.0,
    host: str = "127.0.0.1",
    wrap: Callable[[list[str]], list[str]] = list,
) -> Gateway:
    """A fresh cluster and gateway in ``folder`` (created), with the test user; on ``host``,
    every command through ``wrap`` (another network namespace: tests/netns.py).

    Raises:
        RuntimeError: a step failed or the gateway did not answer within ``timeout_s``.
    """
    for sub in ("mon", "osd", "run", "log", "rgw"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    mon_port, rgw_port = free_port(), free_port()
    fsid = str(uuid.uuid4())
    conf = folder / "ceph.conf"
    conf.write_text(_config(folder, mon_port, rgw_port, fsid, host), encoding="utf-8")
    c = ["-c", str(conf)]
    gateway = Gateway(folder, rgw_port, f"http://{host}:{rgw_port}")
    deadline = time.monotonic() + timeout_s

    def run(*cmd: str) -> str:
        left = max(1.0, deadline - time.monotonic())
        result = subprocess.run(
            wrap(list(cmd)), capture_output=True, text=True, timeout=left, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()[-800:]}")
        return result.stdout

    try:
        run("monmaptool", "--create", "--addv", "a", f"[v2:{host}:{mon_port}]",
            "--fsid", fsid, str(folder / "monmap"))  # fmt: skip
        run("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(folder / "monmap"))
        gateway.processes.append(_daemon(wrap(["ceph-mon", *c, "-f", "-i", "a"])))
        osd_uuid = str(uuid.uuid4())
        run("ceph", *c, "osd", "new", osd_uuid)
        run("ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        gateway.processes.append(_daemon(wrap(["ceph-osd", *c, "-f", "-i", "0"])))
        while "1 up" not in run("ceph", *c, "osd", "stat"):
            if time.monotonic() > deadline:
                raise RuntimeError("the OSD did not come up")
            time.sleep(0.1)
        gateway.processes.append(_daemon(wrap(["radosgw", *c, "-f", "-n", "client.rgw"])))
        while not _answers(gateway.endpoint):
            if time.monotonic() > deadline or gateway.processes[-1].poll() is not None:
                raise RuntimeError(f"radosgw did not answer:\n{gateway.log()}")
            time.sleep(0.1)
        run("radosgw-admin", *c, "user", "create", "--uid=edgefleet", "--display-name=edgefleet",
            f"--access-key={gateway.access_key}", f"--secret={gateway.secret_key}")  # fmt: skip
    except BaseException:
        gateway.stop()
        raise
    return gateway


def _daemon(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=1):  # noqa: S310 - the test's own http URL
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


@contextlib.contextmanager
def gateway_in(folder: Path) -> Iterator[Gateway]:
    gateway = start(folder)
    try:
        yield gateway
    finally:
        gateway.stop()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch, gateway_in(Path(scratch)) as gw:
        print(f"endpoint {gw.endpoint} access {gw.access_key} secret {gw.secret_key}")
        input("Enter stops it: ")
