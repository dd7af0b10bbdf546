"""The operator's side of the agent's local socket: ``edgefleet-agent status`` and ``infer``
ask the running agent over OIP v2 and its own ``edgefleet.agent.v1.AgentLocal`` service
(docs/agent-cli.md)."""

from __future__ import annotations

from agent.local.client import LocalClient, check_socket
from agent.local.commands import infer_once, read_status
from agent.local.report import as_json, infer_text, status_exit_code, status_table

__all__ = [
    "LocalClient",
    "as_json",
    "check_socket",
    "infer_once",
    "infer_text",
    "read_status",
    "status_exit_code",
    "status_table",
]
