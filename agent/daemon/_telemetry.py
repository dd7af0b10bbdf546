"""The telemetry loop: the agent's MQTT session.

Started once the device is enrolled (its topics need the identity). It keeps a connection to the
broker (reconnecting with capped backoff), spools a telemetry report every
``telemetry.interval_s`` (read afresh: a reload may change it), forwards the spool in order, and
publishes the retained device state: online at every connect (the birth), offline as the Will,
stopped at shutdown. Commands that arrive on the device's commands topic are handed, undecoded,
to the control loop; this loop never acts on them. It owns the MQTT publisher and the forwarder;
from ``AgentState`` it reads the config and identity and sets ``birth``.

The broker's address is the config's ``telemetry.mqtt_url`` or else the one the server gave
(at enrollment, then in every check-in answer: the update loop keeps the identity's current);
"mqtts://:8883" means that port on the host the agent reaches the server on. When the address
changes, the session ends and a new one starts on the new address. When the agent cannot
reach the broker for three report intervals (at least a minute), it says so once in its log
and in its systemd status, and again when it is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.client import with_server_host
from agent.daemon._backoff import backoff
from agent.daemon._state import AgentState
from agent.errors import AgentError, TransientError
from agent.hardware.probe import HardwareInfo, to_capabilities
from agent.identity import Identity
from agent.inference.engine import Engine
from agent.routing.router import Router
from agent.telemetry.forward import Forwarder
from agent.telemetry.mqtt import MqttPublisher, masked, parse_mqtt_url
from agent.telemetry.report import build_report
from agent.telemetry.silence import SilenceWatch
from agent.telemetry.spool import SpoolFullError
from agent.telemetry.system import SystemSampler
from agent.updates.store import ModelStore
from protos import device_pb2, telemetry_pb2
from protos.topics import commands_topic, device_topic

__all__ = ["TelemetryLoop"]

log = logging.getLogger(__name__)
_MQTT_MAX_BACKOFF_S = 15.0  # between MQTT connection attempts


class TelemetryLoop:
    """The MQTT session: reports, spool forwarding, device state (see the module docstring)."""

    def __init__(
        self,
        *,
        state: AgentState,
        store: ModelStore,
        engine: Engine,
        router: Router,
        probe: Callable[[], HardwareInfo],
        active: Callable[[], list[device_pb2.ActiveModel]],
        on_command: Callable[[bytes], None],
        started: float,
        on_silence: Callable[[str | None], None] = lambda _why: None,
    ) -> None:
        """``on_silence(why)`` is called when the agent has been unable to publish for a
        while, and ``on_silence(None)`` once it publishes again."""
        self._state = state
        self._store = store
        self._engine = engine
        self._router = router
        self._probe = probe
        self._active = active
        self._on_command = on_command
        self._started = started  # time.monotonic() at the agent's start, for uptime
        self._on_silence = on_silence

    def _on_message(self, commands: str, message: Any) -> None:
        """paho's thread: hand a command over; anything else that arrives (a retained message,
        another topic a broker delivered) is no command of ours."""
        if message.topic != commands or message.retain:
            log.debug("ignoring a message on %s (retained: %s)", message.topic, message.retain)
            return
        self._on_command(bytes(message.payload))

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set. An unexpected error (a full disk under the spool) ends
        the session, never the agent: a new one starts after a backoff, as after a lost
        connection, so that the device does not stay deaf and silent until restarted."""
        attempt = 0
        while not stop.is_set():
            try:
                if not self._publish(stop):
                    return
                attempt = 0  # the broker moved: a new session at once
                continue
            except Exception:
                attempt += 1
                wait = max(1.0, min(_MQTT_MAX_BACKOFF_S, backoff(attempt, 2.0)))
                log.exception("telemetry stopped by an unexpected error; again in %.0f s", wait)
            stop.wait(wait)

    def _spool_report(self, report: Callable[[], None]) -> None:
        """Spool one report; a full disk the spool cannot make room on skips it (the window's
        counts go into the next one that fits) and says so, once, in the log and in systemd's
        STATUS, and again when reports are spooled again. The session goes on."""
        try:
            report()
        except SpoolFullError as exc:
            if not self._state.telemetry_problem:
                log.error("telemetry degraded: %s; reports are skipped until there is room", exc)
            self._state.telemetry_problem = str(exc)
            self._on_silence(f"telemetry degraded: {exc}")
            return
        if self._state.telemetry_problem:
            log.warning("telemetry recovered: reports are spooled again")
            self._state.telemetry_problem = ""
            self._on_silence(None)

    def state_message(self, state: str) -> bytes:
        """The retained DeviceState payload: online (birth), offline (Will) or stopped."""
        identity = self._state.identity
        message = telemetry_pb2.DeviceState(
            device_id=identity.device_id if identity else "",
            state=state,
            sent_unix_ms=int(time.time() * 1000),
            agent_version=__version__,
            active=self._active(),
            epoch=self._state.spool.epoch,
        )
        if state == "online":
            message.capabilities.CopyFrom(to_capabilities(self._probe()))
        return message.SerializeToString()

    def _broker_url(self) -> str:
        """Where the broker is now: the config's URL, or the server's (its host filled in)."""
        shared = self._state
        identity = shared.identity
        url = shared.config.telemetry.mqtt_url or (identity.mqtt_url if identity else "")
        return with_server_host(url, shared.config.server.addresses()[0]) if url else ""

    def _publish(self, stop: threading.Event) -> bool:
        """One MQTT session; True when it ended because the broker's address changed."""
        shared = self._state
        identity = shared.identity
        if identity is None:  # started only after enrollment
            return False
        url = self._broker_url()
        if not url:
            log.warning("no MQTT URL from the server or the config; telemetry is off")
            return False
        try:
            endpoint = parse_mqtt_url(url)
            if endpoint.tls:  # the broker knows devices by their fleet certificates
                root = self._store.root
                endpoint = endpoint.with_tls_files(
                    str(Identity.ca_path(root)),
                    str(Identity.cert_path(root)),
                    str(Identity.key_path(root)),
                )
        except AgentError as exc:
            log.error("telemetry is off: %s", exc)
            return False
        spool = shared.spool
        fleet, device = identity.fleet_id, identity.device_id
        telemetry, state = (
            device_topic(fleet, device, "telemetry"),
            device_topic(fleet, device, "state"),
        )
        commands = commands_topic(fleet, device)

        def on_connected(client: Any) -> None:
            # After every (re)connect: subscriptions do not outlive a broker restart, and the
            # retained birth replaces the Will the broker may have published. paho's thread:
            # a command is only handed over, never acted on here.
            client.on_message = lambda _c, _u, message: self._on_message(commands, message)
            client.subscribe(commands, qos=1)
            client.publish(state, self.state_message("online"), qos=1, retain=True)
            shared.birth = lambda: client.publish(
                state, self.state_message("online"), qos=1, retain=True
            )

        publisher = MqttPublisher(
            endpoint,
            client_id=device,  # its identity (the brokers bind client ids to certificates)
            on_connected=on_connected,
            will=(state, self.state_message("offline")),
        )
        forwarder = Forwarder(spool, publisher)
        shared.broker = str(publisher.endpoint)  # no credentials (MqttEndpoint.__str__)
        system = SystemSampler(self._store.root, sysfs=shared.config.hardware.sysfs_root)
        last_report = time.monotonic()
        next_connect = 0.0

        def report() -> None:
            # Spooled first, published when the broker is there: nothing is lost.
            dropped, sample = spool.dropped, system.sample()
            spool.append(
                telemetry,
                lambda seq: build_report(
                    self._engine,
                    device_id=device,
                    seq=seq,
                    started=self._started,
                    epoch=spool.epoch,
                    spool_dropped=dropped,
                    spool_lost=spool.lost,
                    system=sample,
                    router=self._router,
                ),
            )

        attempt = 0
        silence = SilenceWatch(self._on_silence, time.monotonic())
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self._broker_url() != url:
                    log.info("the broker moved to %s: reconnecting", masked(self._broker_url()))
                    return True
                silence.update(
                    connected=publisher.connected,
                    now=now,
                    interval_s=shared.config.telemetry.interval_s,
                    endpoint=str(publisher.endpoint),
                    spooled=len(spool),
                )
                shared.broker_connected = publisher.connected
                if publisher.protocol is None and now >= next_connect:
                    try:
                        publisher.connect()
                        attempt = 0
                        shared.telemetry_error = ""
                    except TransientError as exc:
                        attempt += 1
                        # Capped low: a broker back from a restart should get the spool soon.
                        wait = max(1.0, min(_MQTT_MAX_BACKOFF_S, backoff(attempt, 2.0)))
                        next_connect = now + wait
                        shared.telemetry_error = str(exc)
                        log.warning(
                            "telemetry: %s; retrying in %.0f s (%d spooled)", exc, wait, len(spool)
                        )
                # Read each time: a reload may change the interval.
                interval = shared.config.telemetry.interval_s
                next_report = last_report + interval
                if now >= next_report:
                    self._spool_report(report)
                    last_report = max(next_report, now - interval)
                    next_report = last_report + interval
                forwarder.drain(stop, budget_s=1.0)
                stop.wait(min(0.5, max(0.05, next_report - time.monotonic())))
        finally:
            try:
                try:
                    report()  # the last window's counts, spooled before anything else happens
                except Exception:
                    log.exception("could not spool the last telemetry report")
                if publisher.connected:
                    forwarder.drain(threading.Event(), budget_s=3.0)
                    info = publisher.publish_info(state, self.state_message("stopped"), retain=True)
                    if info is not None:
                        with contextlib.suppress(RuntimeError, ValueError):
                            info.wait_for_publish(2.0)
                left = len(spool)
                if left:
                    log.info("%d telemetry message(s) stay spooled for the next start", left)
            finally:
                publisher.close()  # whatever failed above: no session is left behind
                shared.broker, shared.broker_connected = "", False
                silence.close()
        return False
