"""Cloud clients for the router: opened from a ``[cloud]`` section or the server's endpoint, and
closed late when replaced (a reload or a check-in swaps them while requests may hold the old).

Who may swap ``router.cloud`` and when is described in ``AgentState`` (its ``cloud_lock``).
"""

from __future__ import annotations

import logging
import threading

from agent.config import CloudSection
from agent.routing.cloud import CloudClient, CloudTarget

__all__ = ["close_later", "open_cloud"]

log = logging.getLogger(__name__)
_CLOSE_AFTER_S = 60.0


def open_cloud(section: CloudSection, target: CloudTarget) -> CloudClient:
    """A client for ``target`` with the timeout and retries of ``section``.

    Raises:
        ValueError: the target's URL is not usable.
    """
    log.info("cloud endpoint %s", target.url)
    return CloudClient(target, timeout_s=section.timeout_s, retries=section.retries)


def close_later(client: CloudClient) -> None:
    """Close a replaced cloud client once the calls that hold it have had time to end."""
    timer = threading.Timer(_CLOSE_AFTER_S, client.close)
    timer.daemon = True
    timer.start()
