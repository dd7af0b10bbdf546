"""Registered POSIX shared-memory regions for the OIP v2 system shared-memory extension.

A client creates an object with ``shm_open`` (tritonclient's ``create_shared_memory_region``),
registers it under a name, and then names that region instead of sending tensor bytes. The agent
maps the object read-write and reads inputs from / writes outputs to it directly.

Bounds: at most ``MAX_REGIONS`` regions and ``MAX_MAPPED_BYTES`` mapped in total; keys are a
single ``/name`` under /dev/shm (no paths elsewhere can be mapped); every access is checked
against the region's size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InputError, ModelNotFoundError

__all__ = ["MAX_MAPPED_BYTES", "MAX_REGIONS", "Region", "SharedMemoryRegistry"]

MAX_REGIONS = 64
MAX_MAPPED_BYTES = 2 * 1024 * 1024 * 1024
_KEY = re.compile(r"^/[A-Za-z0-9_.-]{1,250}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass
class Region:
    """One registered region and its mapping."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap


class SharedMemoryRegistry:
    """Regions by name. Thread-safe."""

    def __init__(self, shm_dir: Path = Path("/dev/shm")) -> None:  # noqa: S108 - POSIX shm lives there
        self._dir = shm_dir
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the object ``key`` under ``name``.

        Raises:
            InputError: bad name or key, name taken, object missing or too small, or limits hit.
        """
        if not _NAME.match(name):
            raise InputError(f"region name {name!r} must be 1-128 of A-Z a-z 0-9 _ . -")
        if not _KEY.match(key):
            raise InputError(f"shared memory key {key!r} must look like /name (one level)")
        if byte_size <= 0:
            raise InputError("byte_size must be positive")
        with self._lock:
            if name in self._regions:
                raise InputError(f"a region named {name!r} is registered already")
            if len(self._regions) >= MAX_REGIONS:
                raise InputError(f"at most {MAX_REGIONS} shared memory regions may be registered")
            mapped = sum(r.offset + r.byte_size for r in self._regions.values())
            if mapped + offset + byte_size > MAX_MAPPED_BYTES:
                raise InputError(f"registering {name!r} would map more than {MAX_MAPPED_BYTES} B")
            path = self._dir / key[1:]
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError as exc:
                raise InputError(f"cannot open shared memory {key!r}: {exc.strerror}") from exc
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InputError(
                        f"shared memory {key!r} has {size} bytes; region needs {offset + byte_size}"
                    )
                mapping = mmap.mmap(fd, offset + byte_size)
            finally:
                os.close(fd)
            self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str) -> None:
        """Forget ``name`` ("" = every region) and unmap it."""
        with self._lock:
            names = list(self._regions) if not name else [name]
            for each in names:
                region = self._regions.pop(each, None)
                if region is not None:
                    # A request may still read it; then the mapping goes with its last view.
                    with contextlib.suppress(BufferError):
                        region.mapping.close()

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

    def view(self, name: str, offset: int, byte_size: int) -> memoryview:
        """``byte_size`` bytes at ``offset`` within region ``name``.

        Raises:
            InputError: unknown region, or the range is outside it.
        """
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise InputError(f"no shared memory region named {name!r}; register it first")
            if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
                raise InputError(
                    f"range {offset}+{byte_size} is outside region {name!r} "
                    f"({region.byte_size} bytes)"
                )
            start = region.offset + offset
            return memoryview(region.mapping)[start : start + byte_size]

    def close(self) -> None:
        """Unmap everything."""
        self.unregister("")
