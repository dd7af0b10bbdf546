"""The processes a benchmark starts, and what a failed run shows of them.

Every child of a benchmark (agents, load clients, publishers, MLServer) writes its output to a
log file in the run's folder, never to /dev/null; the fleet server and mosquitto, started with
tests/harness.py, log into the folder they are given, the same folder. When the run fails,
``run_folder`` stops the children still running and prints the tail of every log in the folder
before the error goes on, so a failure names its cause ("no fleet CA to check the server
with ...") instead of a bare "failed to connect".
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import REPO

__all__ = ["Child", "ChildExitedError", "Children", "ensure_running", "log_tails", "run_folder"]

TAIL_LINES = 40


class ChildExitedError(RuntimeError):
    """A process the benchmark needs exited, failed or hung (its log is printed on the way out)."""


@dataclass
class Child:
    """One started process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[str]
    log: Path

    def check_running(self) -> None:
        """Raise when the process has exited: a benchmark must not wait on a dead peer.

        Raises:
            ChildExitedError: it exited (with its status and log file).
        """
        ensure_running(self.name, self.popen, self.log)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait; SIGKILL when it does not exit within ``timeout`` seconds."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()


def ensure_running(name: str, popen: subprocess.Popen[Any], log: Path) -> None:
    """Raise when ``popen`` (a child, or a server from tests/harness.py) has exited.

    Raises:
        ChildExitedError: it exited (with its status and log file).
    """
    code = popen.poll()
    if code is not None:
        raise ChildExitedError(
            f"{name} exited with status {code} (log {log.name}, tail printed above)"
        ) from None


class Children:
    """The processes one benchmark run starts in ``folder``, each logging to ``NAME.log``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._started: list[Child] = []

    def _log(self, name: str) -> Path:
        log = self.folder / f"{name}.log"
        n = 1
        while log.exists():  # the same child started again keeps its earlier log
            n += 1
            log = self.folder / f"{name}-{n}.log"
        return log

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        stdout: bool = False,
    ) -> Child:
        """Start ``cmd`` in the repository with its stderr going to ``NAME.log``.

        Its stdout goes there too, unless ``stdout`` asks for a pipe the benchmark reads;
        ``stdin`` gives the benchmark a pipe to it. Text mode, unbuffered Python output.
        """
        log = self._log(name)
        with log.open("w", encoding="utf-8") as handle:
            popen = subprocess.Popen(
                list(cmd),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else handle,
                stderr=handle,
                cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                text=True,
            )
        child = Child(name, popen, log)
        self._started.append(child)
        return child

    def run(self, name: str, cmd: Sequence[str], *, timeout: float) -> str:
        """Run ``cmd`` to its end (stderr to ``NAME.log``) and return its stdout.

        Raises:
            ChildExitedError: it exited with a non-zero status or ran past ``timeout`` seconds.
        """
        child = self.start(name, cmd, stdout=True)
        try:
            out, _ = child.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.stop()
            raise ChildExitedError(
                f"{name} did not finish in {timeout:.0f} s (log {child.log.name}, tail printed "
                "above)"
            ) from None
        if child.popen.returncode != 0:
            raise ChildExitedError(
                f"{name} exited with status {child.popen.returncode} (log {child.log.name}, "
                f"tail printed above); its output: {out[-2000:]!r}"
            )
        return out

    def stop_all(self) -> None:
        """Stop every child still running, the last started first."""
        for child in reversed(self._started):
            child.stop()


def log_tails(folder: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of every ``*.log`` under ``folder``, each under its name, the
    most recently written last (a failing child's log is usually the newest)."""
    parts, empty = [], []
    logs = sorted(folder.rglob("*.log"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for log in logs:
        name = str(log.relative_to(folder))
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            parts.append(f"----- {name}: unreadable: {exc}")
            continue
        tail = text.splitlines()[-lines:]
        if not tail:
            empty.append(name)
            continue
        parts.append(f"----- {name} (last {len(tail)} lines) -----\n" + "\n".join(tail))
    if empty:
        parts.insert(0, f"----- empty logs: {', '.join(empty)}")
    return "\n".join(parts) if parts else f"(no log files in {folder})"


@contextlib.contextmanager
def run_folder(name: str) -> Iterator[Children]:
    """A temporary folder for one benchmark run, and the children started in it.

    On the way out every child still running is stopped; when the run failed (any exception),
    the tail of every log in the folder is printed to stderr first, then the error goes on.
    """
    with tempfile.TemporaryDirectory(prefix=f"edgefleet-{name}-") as tmp:
        children = Children(Path(tmp))
        try:
            yield children
        except BaseException:
            children.stop_all()
            print(f"\n{name} failed; its processes' logs:", file=sys.stderr)
            print(log_tails(children.folder), file=sys.stderr, flush=True)
            raise
        finally:
            children.stop_all()
