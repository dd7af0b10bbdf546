"""Ports are not shared by accident. grpcio binds with SO_REUSEPORT by default, so a second
server or agent started on a port in use starts without an error and the kernel splits the
connections between the two. Before binding, a process asks whether another process holds the
port (:func:`held_by_another`: a bind without SO_REUSEPORT fails with EADDRINUSE while any
socket listens there), and its own gRPC servers bind without SO_REUSEPORT unless it shares the
port with workers it starts itself.

Both ``edgefleet-agent run`` and ``edgefleet-server run`` exit with :data:`EXIT_PORT_IN_USE`
when a port is held; their systemd units name it in ``RestartPreventExitStatus=`` (restarting
cannot free the port).
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

__all__ = [
    "EXIT_PORT_IN_USE",
    "NotASocketError",
    "PortInUseError",
    "access_problem",
    "held_by_another",
    "held_by_itself",
    "holders",
    "split_tcp",
    "unix_socket_in_use",
]

EXIT_PORT_IN_USE = 73  # EX_CANTCREAT (sysexits.h)


class PortInUseError(Exception):
    """A TCP port this process must listen on is held by another process."""

    def __init__(self, what: str, address: str) -> None:
        super().__init__(
            f"{what} {address} is in use by another process (a second instance on the same "
            "port?): stop it or choose another port"
        )
        self.address = address


class NotASocketError(ValueError):
    """A unix socket's path holds something else."""


def split_tcp(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` as (host, port); None for what is not one (a unix
    socket, a malformed value: the bind itself reports those)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - "" binds every address


def held_by_another(address: str) -> bool:
    """True when a socket already listens on ``address`` (``host:port``). Port 0 (any free
    port) and addresses that are not TCP are never held."""
    parsed = split_tcp(address)
    if parsed is None or parsed[1] == 0:
        return False
    host, port = parsed
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the bind reports an unknown host
    for family, kind, proto, _, sockaddr in infos:
        probe = socket.socket(family, kind, proto)
        try:
            # SO_REUSEADDR as every listener sets it (TIME_WAIT leftovers are no holder);
            # no SO_REUSEPORT: a listener with it still refuses this bind.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Dual-stack, as grpcio and uvicorn bind "[::]": an IPv4 holder of the port
                # conflicts with them too.
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
        finally:
            probe.close()
    return False


def unix_socket_in_use(path: Path, what: str = "") -> bool:
    """True when a process accepts connections on the unix socket at ``path``. A socket file
    nobody listens on (left by a killed run) is not in use and may be replaced.

    Raises:
        NotASocketError: with ``what`` (the setting's name) given, when ``path`` is something
            other than a socket (a file, a folder, a FIFO, a link): never replaced, and no
            bind there could work.
    """
    if what and (path.is_symlink() or (path.exists() and not path.is_socket())):
        raise NotASocketError(
            f"{what} {path} exists and is not a socket: remove it or choose another path"
        )
    if not path.is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except OSError as exc:
        # Only a refusal (or no file) means nobody listens; a full backlog (EAGAIN), a
        # permission refusal or a timeout is a process there: its socket must not be replaced.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


def access_problem(path: Path, user: str, *, write: bool = False) -> str:
    """Why ``user`` (a name) cannot read (or, with ``write``, write into) ``path``, from the
    permission bits of the file and of every folder on its way; "" when it can. Root can.
    (``check-config --user`` runs as an admin, not as the service's user.)"""
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return f"no user {user!r} on this machine"
    if entry.pw_uid == 0:
        return ""
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}

    def allowed(target: Path, need: int) -> bool:  # need: 4 read, 2 write, 1 search
        info = target.stat()
        if info.st_uid == entry.pw_uid:
            return bool(info.st_mode >> 6 & need == need)
        if info.st_gid in gids:
            return bool(info.st_mode >> 3 & need == need)
        return bool(info.st_mode & need == need)

    path = path.absolute()
    try:
        for folder in reversed(path.parents):
            if not allowed(folder, 1):
                return f"{user} cannot enter {folder}"
        if write:
            return "" if allowed(path, 3) else f"{user} cannot write into {path}"
        return "" if allowed(path, 4) else f"{user} cannot read {path}"
    except FileNotFoundError:
        return ""  # a missing file is reported as missing, by the reader
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror}"


def holders(address: str) -> list[tuple[int, list[str]]]:
    """The processes (pid, command line) with a socket listening on ``address``'s port, as far
    as /proc shows them (other users' processes need root to be seen)."""
    parsed = split_tcp(address)
    if parsed is None or parsed[1] == 0:
        return []
    port = parsed[1]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address "HEX_IP:HEX_PORT", state 0A = LISTEN, inode in column 10
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(f"socket:[{fields[9]}]")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(str(fd.readlink()) in inodes for fd in (proc / "fd").iterdir()):
                cwd = (proc / "cwd").readlink()
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                # Relative arguments as absolute paths, from the process's own folder.
                found.append(
                    (int(proc.name), [str(cwd / a.decode(errors="replace")) for a in argv if a])
                )
        except OSError:
            continue  # gone, or not ours to see
    return found


def held_by_itself(address: str, config: Path) -> bool:
    """True when what listens on ``address`` is a process started with ``config``, or a worker
    such a process started (the running service's own ports, for check-config)."""
    wanted = os.path.normpath(config.absolute())
    found = holders(address)

    def started_with_config(pid: int) -> bool:
        for _ in range(4):  # the process, its parent, ... (a worker is the main one's child)
            try:
                proc = Path("/proc") / str(pid)
                cwd = (proc / "cwd").readlink()
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if any(
                    os.path.normpath(cwd / a.decode(errors="replace")) == wanted for a in argv if a
                ):
                    return True
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                pid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return False
            if pid <= 1:
                return False
        return False

    return bool(found) and all(started_with_config(pid) for pid, _ in found)
