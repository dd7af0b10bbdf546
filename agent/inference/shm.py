"""Registered POSIX shared-memory regions for the OIP v2 system shared-memory extension.

A client creates an object with ``shm_open`` (tritonclient's ``create_shared_memory_region``),
registers it under a name, and then names that region instead of sending tensor bytes.

The object stays the client's: it may truncate, unlink or resize it at any moment. A mapping
read after a truncation kills the whole agent with SIGBUS, so the agent maps nothing: it keeps
the object open and reads each input with ``pread`` and writes each output with ``pwrite`` at
the moment of use. A shrunk object gives a short read, and that request alone gets an error
(``bench/bench_shm.py`` measures the copy against the mapping it replaced).

Who may register (grpcio shows no peer credentials on a unix socket, so the check is on the
object): a regular file directly under /dev/shm, opened without following a symlink, owned by
the agent's user or a member of the API socket's group, and not writable by every user.
Registration is refused while the agent runs as root: root opens every user's object, so the
agent would write into objects no app of the device's group owns.

Bounds: at most ``MAX_REGIONS`` regions (one open file each); every access is checked against
the region's registered size and the object's size at that moment.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import InputError, ModelNotFoundError

__all__ = ["MAX_REGIONS", "Region", "SharedMemoryRegistry"]

MAX_REGIONS = 64
_KEY = re.compile(r"/[A-Za-z0-9_.-]{1,250}")  # fullmatch: "$" lets a final newline in
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class Region:
    """One registered region and the open object it reads and writes."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    users: int = 0  # requests reading or writing it right now
    retired: bool = False  # unregistered: closed once its last user is done


class SharedMemoryRegistry:
    """Regions by name. Thread-safe.

    ``group`` is the API socket's group (default: the agent's own group): objects owned by its
    members may be registered.
    """

    def __init__(
        self,
        shm_dir: Path = Path("/dev/shm"),  # noqa: S108 - POSIX shm lives there
        *,
        group: int | None = None,
    ) -> None:
        self._dir = shm_dir
        self._group = os.getegid() if group is None else group
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the object ``key`` under ``name``.

        Raises:
            InputError: bad name or key, name taken, an object the agent may not use, missing
                or too small, or the limit hit.
        """
        if not _NAME.fullmatch(name):
            raise InputError(f"region name {name!r} must be 1-128 of A-Z a-z 0-9 _ . -")
        if not _KEY.fullmatch(key):
            raise InputError(f"shared memory key {key!r} must look like /name (one level)")
        if byte_size <= 0 or offset < 0:
            raise InputError("byte_size must be positive and offset not negative")
        if os.geteuid() == 0:
            raise InputError(
                "shared memory is refused while the agent runs as root (it could write into "
                "any user's object); run it as its own user, as the shipped unit does"
            )
        with self._lock:
            if name in self._regions:
                raise InputError(f"a region named {name!r} is registered already")
            if len(self._regions) >= MAX_REGIONS:
                raise InputError(f"at most {MAX_REGIONS} shared memory regions may be registered")
            fd = self._open(key)
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InputError(
                        f"shared memory {key!r} has {size} bytes; region needs {offset + byte_size}"
                    )
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = Region(name, key, offset, byte_size, fd)

    def _open(self, key: str) -> int:
        """Open the object ``key`` if the agent may use it; return the descriptor."""
        path = self._dir / key[1:]
        try:
            # A FIFO or device is refused before it is opened (opening one can have effects).
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise InputError(f"shared memory {key!r} is not a regular file")
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EACCES:  # tritonclient creates its objects with mode 0600
                hint = (
                    " (the agent's user cannot open it: an app running as another user gives it "
                    f"mode 0660 and the API socket's group, gid {self._group})"
                )
            raise InputError(f"cannot open shared memory {key!r}: {exc.strerror}{hint}") from exc
        try:
            st = os.fstat(fd)  # what was opened decides, whatever the name points to now
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"shared memory {key!r} is not a regular file")
            if st.st_mode & stat.S_IWOTH:
                raise InputError(
                    f"shared memory {key!r} is writable by every user; create it with mode "
                    "0600 or 0660"
                )
            if st.st_uid != os.geteuid() and not _in_group(st.st_uid, self._group):
                raise InputError(
                    f"shared memory {key!r} is owned by uid {st.st_uid}, neither the agent's "
                    f"user nor a member of the API socket's group (gid {self._group})"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def unregister(self, name: str) -> None:
        """Forget ``name`` ("" = every region); its object is closed once no request uses it."""
        with self._lock:
            names = list(self._regions) if not name else [name]
            for each in names:
                region = self._regions.pop(each, None)
                if region is not None:
                    region.retired = True
                    if region.users == 0:
                        os.close(region.fd)

    def status(self, name: str) -> list[Region]:
        """The region called ``name``, or every region for "".

        Raises:
            ModelNotFoundError: no such region.
        """
        with self._lock:
            if not name:
                return list(self._regions.values())
            if name not in self._regions:
                raise ModelNotFoundError(f"no shared memory region named {name!r}")
            return [self._regions[name]]

    def read(self, name: str, offset: int, byte_size: int) -> np.ndarray:
        """A copy of ``byte_size`` bytes (uint8) at ``offset`` within region ``name``, read now.

        Raises:
            InputError: unknown region, the range is outside it, or the object no longer holds
                it (truncated or resized by its owner).
        """
        region = self._use(name, offset, byte_size)
        try:
            buffer = np.empty(byte_size, dtype=np.uint8)
            view = buffer.data
            start = region.offset + offset
            done = 0
            while done < byte_size:
                got = os.preadv(region.fd, [view[done:]], start + done)
                if got <= 0:
                    raise InputError(_shrunk(region, start + done))
                done += got
            return buffer
        except OSError as exc:
            raise InputError(f"cannot read shared memory {region.key!r}: {exc.strerror}") from exc
        finally:
            self._done(region)

    def write(self, name: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` within region ``name``.

        Raises:
            InputError: unknown region, the range is outside it, or the object no longer holds
                it (it is not grown back).
        """
        region = self._use(name, offset, len(data))
        try:
            start = region.offset + offset
            if os.fstat(region.fd).st_size < start + len(data):
                raise InputError(_shrunk(region, start))
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.pwrite(region.fd, view[done:], start + done)
        except OSError as exc:
            raise InputError(f"cannot write shared memory {region.key!r}: {exc.strerror}") from exc
        finally:
            self._done(region)

    def _use(self, name: str, offset: int, byte_size: int) -> Region:
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise InputError(f"no shared memory region named {name!r}; register it first")
            if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
                raise InputError(
                    f"range {offset}+{byte_size} is outside region {name!r} "
                    f"({region.byte_size} bytes)"
                )
            region.users += 1
            return region

    def _done(self, region: Region) -> None:
        with self._lock:
            region.users -= 1
            if region.retired and region.users == 0:
                os.close(region.fd)

    def close(self) -> None:
        """Forget every region."""
        self.unregister("")


def _shrunk(region: Region, at: int) -> str:
    return (
        f"shared memory {region.key!r} of region {region.name!r} ends before byte {at}: its "
        "owner truncated or resized it; register it again"
    )


def _in_group(uid: int, gid: int) -> bool:
    """Whether the user ``uid`` is a member of the group ``gid``."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return user.pw_gid == gid or gid in os.getgrouplist(user.pw_name, user.pw_gid)
