"""Where a download's bytes go: written, hashed and flushed to disk on a thread of their own.

Receiving a chunk (gRPC, TLS), writing it, hashing it and getting it onto the disk are each a
sizeable share of a large download; done one after another on the receiving thread they add
up. Here the receiving thread only queues a chunk (the queue is bounded, so memory is too) and
goes back for the next one, while this thread writes, hashes (hashlib and file writes release
the GIL) and asks the kernel every few MiB to put what it has on the disk, so that the final
``fsync`` before the artifact is committed has little left to do.

A verified artifact that the journal points at must survive a power cut: without the fsync the
rename into the store could reach the disk before the file's data does.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, BinaryIO

__all__ = ["DurableSink"]

_DEPTH = 8  # chunks waiting for the writer (1 MiB each from the server)
_SYNC_EVERY = 4 << 20  # bytes between fdatasync calls


class DurableSink:
    """A file sink fed by one thread (:meth:`write`) and drained by another."""

    def __init__(self, handle: BinaryIO, hasher: Any) -> None:
        self._handle = handle
        self.hasher = hasher
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=_DEPTH)
        self._error: BaseException | None = None
        self._unsynced = 0
        self._thread = threading.Thread(target=self._drain, name="download-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is not None:
                continue  # keep taking chunks so the receiver is never stuck on a full queue
            try:
                self._handle.write(data)
                self.hasher.update(data)
                self._unsynced += len(data)
                if self._unsynced >= _SYNC_EVERY:
                    self._handle.flush()
                    os.fdatasync(self._handle.fileno())
                    self._unsynced = 0
            except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                self._error = exc

    def write(self, data: bytes | memoryview) -> None:
        """Queue a chunk (waits while the writer is behind).

        Raises:
            OSError: the writer failed (disk full, I/O error).
        """
        self._raise()
        self._queue.put(data)

    def close(self, *, sync: bool = True) -> None:
        """Write what is queued and stop the writer; with ``sync``, the data is on the disk
        when this returns (after a broken download it need only be in the file to resume).

        Raises:
            OSError: writing or syncing failed.
        """
        self._queue.put(None)
        self._thread.join()
        self._raise()
        self._handle.flush()
        if sync:
            os.fsync(self._handle.fileno())

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
