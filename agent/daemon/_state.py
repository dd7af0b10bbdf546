"""What the daemon's loops share, in one object created with the agent.

Each loop keeps its own working state to itself (the update loop its last check-in answer, the
control loop the command ids it has seen, the telemetry loop its MQTT session). Only what
crosses between loops lives here, each with the loop that writes it:

- ``config``: the live config. Replaced whole (never mutated) by the control loop's reloads;
  every loop reads it afresh when it needs a setting that a reload may change.
- ``identity``: the device identity. Written by the enrollment loop (once), then by the update
  loop only (certificate renewal, key rotation); read by the others for ids and topics.
- ``server_endpoint``: the cloud endpoint the server gave last. Written by the update loop, and
  cleared by a reload that changes ``[cloud]``.
- ``cloud_lock``: held while the router's cloud client, ``server_endpoint`` or ``config.cloud``
  change: the update loop (the server's endpoint) and the control loop (a reload) both do.
- ``nudge``: "check in now", set by the control loop, waited for by the update loop.
- ``birth``: publishes the retained online state again; set by the telemetry loop at every
  connect (paho's thread), called by the control loop.
- ``telemetry_problem``: why reports are not spooled now ("" = they are): written by the
  telemetry loop, shown in systemd's STATUS.
- ``broker``, ``broker_connected``, ``telemetry_error``: the MQTT session as the telemetry loop
  last saw it (the broker's host and port, never its credentials; the last failed connection
  attempt), for ``edgefleet-agent status``.
- ``last_update``, ``last_update_detail``: the last update step the update loop reported.
- ``events``: the spooled event stream (update state changes, command answers) that the update
  and control loops write and the telemetry loop forwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent.config import AgentConfig
from agent.identity import Identity
from agent.telemetry.spool import EVENT, Spool
from protos import device_pb2, telemetry_pb2
from protos.topics import device_topic

__all__ = ["AgentState"]


class AgentState:
    """The state the update, telemetry and control loops share (see the module docstring)."""

    def __init__(self, config: AgentConfig, spool: Spool) -> None:
        self.config = config
        self.identity: Identity | None = None
        self.server_endpoint: device_pb2.CloudEndpoint | None = None
        self.cloud_lock = threading.Lock()
        self.nudge = threading.Event()
        self.birth: Callable[[], object] | None = None
        self.spool = spool
        # Why telemetry reports are not being spooled ("" = they are), by the telemetry loop.
        self.telemetry_problem = ""
        # Read by the local API's Status (other threads): each written whole by its loop.
        self.broker = ""
        self.broker_connected = False
        self.telemetry_error = ""
        self.last_update = ""
        self.last_update_detail = ""

    def event(
        self,
        *,
        report: device_pb2.StatusReport | None = None,
        ack: telemetry_pb2.CommandAck | None = None,
    ) -> bool:
        """Spool an update state change or a command answer for the events topic (never
        dropped; published when the broker is there). Nothing is spooled before enrollment:
        there is no topic yet (False).

        Raises:
            SpoolFullError: the disk is full and the spool holds no telemetry to make room.
        """
        identity, spool = self.identity, self.spool
        if identity is None:
            return False
        sent_ms = int(time.time() * 1000)

        def build(seq: int) -> bytes:
            event = telemetry_pb2.DeviceEvent(
                device_id=identity.device_id, seq=seq, epoch=spool.epoch, sent_unix_ms=sent_ms
            )
            if report is not None:
                event.update.CopyFrom(report)
            if ack is not None:
                event.ack.CopyFrom(ack)
            return event.SerializeToString()

        spool.append(device_topic(identity.fleet_id, identity.device_id, "events"), build, EVENT)
        return True
