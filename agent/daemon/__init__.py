"""The agent daemon (``edgefleet-agent run``): serve the active models, keep them up to date,
report telemetry, take reloads and commands.

One process, one stop event, four loops that share only ``AgentState``:

- ``_agent``: ``Agent``, the composition root: builds the parts, starts and stops them in order.
- ``_state``: ``AgentState``, what the loops share (live config, identity, the server's cloud
  endpoint, the nudge, the birth publisher, the event spool) and who writes each.
- ``_enroll``: the enrollment loop (main thread, first): the stored identity, or enrollment
  with a kill-safe key, retried whatever stands in the way while the models are served.
- ``_update``: the update loop (main thread, once enrolled): renew, check in, update, health
  windows.
- ``_telemetry``: the telemetry loop: the MQTT session, reports, spool forwarding, device state.
- ``_control``: the control loop: SIGHUP reloads and MQTT commands, handed over through a queue
  and applied at once whatever phase the update loop is in.
- ``_devlog``: the recent log's tail file, and its uploads when an operator asks for them.
- ``_cloud``, ``_backoff``: cloud clients for the router, retry timing.
"""

from agent.daemon._agent import Agent
from agent.daemon._control import plan_reload
from agent.daemon._enroll import ENROLL_RETRY_MAX_S, enroll_retry_delay

__all__ = ["ENROLL_RETRY_MAX_S", "Agent", "enroll_retry_delay", "plan_reload"]
