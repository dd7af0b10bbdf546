"""MQTT on the server side: the embedded broker and telemetry ingest."""

from __future__ import annotations

from fleet_server.telemetry.broker import EmbeddedBroker
from fleet_server.telemetry.ingest import TelemetryIngest, decode_report

__all__ = ["EmbeddedBroker", "TelemetryIngest", "decode_report"]
