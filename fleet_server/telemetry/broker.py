"""An MQTT broker inside the server process (amqtt), for single-machine setups.

amqtt speaks MQTT 3.1.1 only; clients fall back to it. It runs its own asyncio loop in a thread.
Production uses a real broker (mosquitto, EMQX) given with ``--mqtt-url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

__all__ = ["EmbeddedBroker"]

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """Start and stop an amqtt broker listening on ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start listening; return once the broker accepts connections.

        Raises:
            OSError: the broker could not bind or start in time.
        """
        self._thread = threading.Thread(target=self._run, name="mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise OSError(f"embedded MQTT broker did not start within {timeout_s:.0f} s")
        if self._error is not None:
            raise OSError(f"embedded MQTT broker failed on {self.host}:{self.port}: {self._error}")
        log.info("embedded MQTT broker (3.1.1) listening on %s", self.url)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from amqtt.broker import Broker  # noqa: PLC0415 - server-only dependency

        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                # Anonymous on the loopback default; per-device credentials and ACLs are the
                # telemetry issue's, on mosquitto.
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        broker = Broker(config)
        try:
            await broker.start()
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await broker.shutdown()

    def stop(self) -> None:
        """Stop the broker and its thread."""
        if self._loop is not None and self._stopped is not None:
            # A broker that failed to start has closed its loop already (RuntimeError).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
