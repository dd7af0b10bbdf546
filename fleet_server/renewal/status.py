"""What expires when, as the running server sees it, and who is told.

:func:`current` gathers one :class:`~fleet_server.signing.expiry.KeyStatus` from the server's
key list, the manifests in use (the same set the maintainer keeps signed: every fleet-wide
deployment, explicit rollbacks' root-signed sets, and every rollout in effect), its TLS
certificate and its embedded broker's. ``edgefleet keys status``, the dashboard and
:class:`ExpiryWatch` all read it.

:class:`ExpiryWatch` runs after each maintainer pass: every item within the warning period (or
past it), and root keys sitting on the server, is logged as a WARNING once a day and handed to
the ``--expiry-hook`` program once a day (its JSON on standard input; a failed run is tried
again at the next pass). The operators' webhooks take the same events (``notify``, given every
due event at each pass: the outbox keeps one per item and day, docs/notifications.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet_server.catalog.store import CatalogStore
from fleet_server.renewal.maintainer import release_signed_in_use
from fleet_server.rollouts.store import RolloutStore
from fleet_server.signing.expiry import KeyStatus, key_status
from fleet_server.signing.keys import KeyStore

if TYPE_CHECKING:
    from fleet_server.datadir import DataDir

__all__ = ["EVENT_SCHEMA", "ExpiryWatch", "current", "events", "hook_problem"]

log = logging.getLogger(__name__)
EVENT_SCHEMA = "edgefleet.expiry.v1"
_EVERY_S = 86400.0
_HOOK_TIMEOUT_S = 30.0
_OUTPUT_SHOWN = 500  # characters of a failed hook's output in the log


def current(
    keys: KeyStore,
    catalog: CatalogStore,
    rollouts: RolloutStore,
    *,
    data_dir: DataDir | None,
    server_cert_pem: bytes,
    now: float,
) -> KeyStatus:
    """The fleet's keys and certificates now (see the module's docstring for what counts)."""
    rollback_sets = [rb for _, rb in catalog.deployments().values() if rb]
    envelopes = [row.envelope for row in release_signed_in_use(catalog, rollouts)]
    return key_status(
        keys.keylist(),
        deployed_envelopes=envelopes,
        rollback_sets=rollback_sets,
        root_keys=data_dir.root_keys_here() if data_dir else [],
        server_cert_pem=server_cert_pem,
        # The embedded broker's, written at each start; none with an external broker.
        broker_cert_file=data_dir.ca_dir.absolute() / "mqtt-broker.crt" if data_dir else None,
        now=now,
    )


def events(status: KeyStatus, fleet_id: str) -> list[dict[str, Any]]:
    """One event per due item and one for root keys on the server, as the hook receives them."""
    now = status.checked_unix
    found: list[dict[str, Any]] = []
    for item in status.due:
        days = item.days_left(now)
        found.append(
            {
                "schema": EVENT_SCHEMA,
                "fleet_id": fleet_id,
                "event": "expired" if item.expires_unix <= now else "expiring",
                "kind": str(item.kind),
                "name": item.name,
                "expires_unix": item.expires_unix,
                "days_left": days,
                "warn_days": status.warn_days,
                "advice": item.advice,
                "checked_unix": now,
            }
        )
    if status.root_key_folders:
        found.append(
            {
                "schema": EVENT_SCHEMA,
                "fleet_id": fleet_id,
                "event": "root keys online",
                "kind": "root keys",
                "name": ", ".join(status.root_key_folders),
                "expires_unix": 0,
                "days_left": 0,
                "warn_days": status.warn_days,
                "advice": "move the root keys off the server (they sign key lists and "
                "rollbacks: whoever holds the server holds the fleet)",
                "checked_unix": now,
            }
        )
    return found


def hook_problem(path: Path) -> str:
    """Why the server must not run ``path`` as the expiry hook ("" when it may): not an
    executable file, or one that someone but the server's user and root could change or swap
    (the file, or a folder on its way, writable by group or others or owned by another user)."""
    try:
        if not path.is_file() or not os.access(path, os.X_OK):
            return f"{path} is not an executable file"
        target = path.resolve()  # a symlink is swapped through its folder, checked too
        for item in (target, *path.parents, *target.parents):
            info = item.stat()
            if info.st_uid not in (0, os.geteuid()):
                return f"{item} belongs to uid {info.st_uid}: only root or the server's user"
            if info.st_mode & 0o022 and not (item != target and info.st_mode & stat.S_ISVTX):
                return f"{item} is writable by its group or others: chmod go-w {item}"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return ""


def _describe(event: dict[str, Any]) -> str:
    if event["event"] == "root keys online":
        return f"root keys are on the server in {event['name']}: {event['advice']}"
    when = (
        f"expired {-event['days_left']} day(s) ago"
        if event["event"] == "expired"
        else f"expires in {event['days_left']} day(s)"
    )
    return f"{event['kind']} {event['name']} {when}: {event['advice']}"


@dataclass
class ExpiryWatch:
    """Warns (log and hook) about what is due, each item once a day while it stays due."""

    status: Callable[[float], KeyStatus]
    fleet_id: str
    hook: Path | None = None
    notify: Callable[[list[dict[str, Any]]], object] | None = None
    _logged: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _hooked: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _busy: threading.Lock = field(default_factory=threading.Lock)

    def check(self, now: float | None = None) -> list[dict[str, Any]]:
        """Look now; return the events the hook was given (delivered or not)."""
        now = time.time() if now is None else now
        due = events(self.status(now), self.fleet_id)
        clock = time.monotonic()
        keys = {(e["kind"], e["name"], e["event"]) for e in due}
        for memory in (self._logged, self._hooked):
            for key in set(memory) - keys:  # renewed or gone: a new warning if it comes back
                del memory[key]
        if self.notify is not None and due:
            try:
                self.notify(due)
            except Exception as exc:  # noqa: BLE001 - told again at the next pass
                log.warning("cannot record the expiry notifications: %s; tried again at the "
                            "next pass", exc)  # fmt: skip
        handed = []
        for event in due:
            key = (event["kind"], event["name"], event["event"])
            if clock - self._logged.get(key, -_EVERY_S) >= _EVERY_S:
                self._logged[key] = clock
                log.warning("%s", _describe(event))
            if self.hook is not None and clock - self._hooked.get(key, -_EVERY_S) >= _EVERY_S:
                handed.append(event)
                if self._run_hook(self.hook, event):
                    self._hooked[key] = clock
        return handed

    def check_soon(self) -> None:
        """Run :meth:`check` on a thread of its own, unless the previous one still runs (its
        events are tried again at the next call): the caller, the key maintainer, re-signs
        the manifests in use and must not wait for a hook that hangs."""
        if not self._busy.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - a database away now is there next time
                log.warning("cannot check what expires: %s; tried again at the next pass", exc)
            finally:
                self._busy.release()

        threading.Thread(target=run, name="expiry-watch", daemon=True).start()

    def _run_hook(self, hook: Path, event: dict[str, Any]) -> bool:
        problem = hook_problem(hook)  # checked at start; a file can be swapped since
        if problem:
            log.warning("cannot run the expiry hook: %s; tried again at the next pass", problem)
            return False
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ", "HOME")}
        env["EDGEFLEET_EVENT"] = str(event["event"])
        read, write = os.pipe()
        try:
            # A session of its own: a timeout kills what it started too.
            proc = subprocess.Popen(
                [str(hook)], stdin=subprocess.PIPE, stdout=write, stderr=write, env=env,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            os.close(read)
            log.warning("cannot run the expiry hook %s: %s; tried again at the next pass",
                        hook, exc.strerror or exc)  # fmt: skip
            return False
        finally:
            os.close(write)
        try:
            code, output = _finish(proc, json.dumps(event, sort_keys=True).encode(), read)
        finally:
            os.close(read)
        if code is None:
            log.warning("the expiry hook %s ran over %gs; tried again at the next pass",
                        hook, _HOOK_TIMEOUT_S)  # fmt: skip
            return False
        if code != 0:
            shown = output.decode(errors="replace").strip()
            log.warning("the expiry hook %s exited with %d (%s); tried again at the next pass",
                        hook, code, shown[-_OUTPUT_SHOWN:])  # fmt: skip
            return False
        return True


def _finish(proc: subprocess.Popen[bytes], data: bytes, output: int) -> tuple[int | None, bytes]:
    """Hand ``data`` to a hook and wait for it to exit (None: killed after the timeout, with
    its process group), keeping the end of what it wrote to ``output``. The run ends when the
    hook exits: a process it left behind holding the pipe is not waited for, and megabytes of
    output are read and dropped, not kept."""
    try:
        if proc.stdin is not None:
            proc.stdin.write(data)
            proc.stdin.close()
    except OSError:
        pass  # it exited or does not read its input: its exit code tells
    deadline = time.monotonic() + _HOOK_TIMEOUT_S
    tail, eof = b"", False
    os.set_blocking(output, False)
    with selectors.DefaultSelector() as selector:
        selector.register(output, selectors.EVENT_READ)
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None, tail
            if eof:  # it closed its output and runs on
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(min(left, 0.2))
            elif selector.select(min(left, 0.2)):
                data, eof = _drain(output)
                tail = (tail + data)[-4 * _OUTPUT_SHOWN :]
    data, _ = _drain(output)
    return proc.returncode, (tail + data)[-4 * _OUTPUT_SHOWN :]


def _drain(fd: int) -> tuple[bytes, bool]:
    """What can be read from ``fd`` now (its last 64 KiB at most), and whether it ended."""
    chunk = b""
    try:
        for _ in range(256):
            data = os.read(fd, 65536)
            if not data:
                return chunk, True
            chunk = (chunk + data)[-65536:]
    except BlockingIOError:
        pass
    return chunk, False
