"""Telemetry: what the agent reports and the MQTT client that publishes it."""

from __future__ import annotations

from agent.telemetry.mqtt import MqttEndpoint, MqttPublisher, parse_mqtt_url
from agent.telemetry.report import build_report

__all__ = ["MqttEndpoint", "MqttPublisher", "build_report", "parse_mqtt_url"]
