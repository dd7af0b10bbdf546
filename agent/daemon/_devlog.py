"""Answering an operator's request for the agent's recent log (``edgefleet devices log``).

The request comes in a check-in answer (``log_request``), which repeats it until the server has
stored the upload; the update loop hands it here. The upload goes over the device port (mTLS:
the server knows the device by its certificate), once per request id: a transient failure is
tried again at the next check-in, a refusal is not.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from agent import __version__
from agent.client import DeviceClient
from agent.errors import AgentError, ServerUnavailableError
from agent.logs import Kept, RecentLog, TailFile, open_tail, parts, select
from protos import device_pb2
from protos.logs import level_name

__all__ = ["LogAnswers", "attach_tail"]

log = logging.getLogger(__name__)
_REMEMBERED = 16  # request ids answered (or refused), not answered again


def attach_tail(recent: RecentLog, folder: Path) -> TailFile | None:
    """Keep the run before's tail for uploads and append this run's records to the tail file
    (returned: the caller closes it); a state dir that cannot take it costs the tail only (said
    in the log)."""
    try:
        tail, started, previous = open_tail(folder, recent.started_ms)
    except OSError as exc:
        log.warning(
            "the log tail cannot be kept in %s (%s): an uploaded log covers this run only",
            folder,
            exc.strerror or exc,
        )
        return None
    recent.previous, recent.previous_started_ms = tuple(previous), started

    def sink(kept: Kept) -> None:
        tail.append(kept)
        if tail.error:
            recent.sink = None
            log.warning("the log tail in %s is not written any more: %s", folder, tail.error)

    recent.sink = sink
    return tail


class LogAnswers:
    """Uploads the recent log for each request, once."""

    def __init__(self, recent: RecentLog, client: DeviceClient) -> None:
        self._recent = recent
        self._client = client
        self._answered: deque[str] = deque(maxlen=_REMEMBERED)

    def answer(self, request: device_pb2.LogRequest) -> None:
        """Upload what ``request`` asks for, unless it was answered; failures are logged (a
        transient one is tried again when the next check-in repeats the request)."""
        if not request.id or request.id in self._answered:
            return
        records, dropped = self._recent.snapshot()
        chosen = select(records, lines=request.lines, level=request.level)
        upload = parts(
            request.id[:64],
            chosen,
            started_ms=self._recent.started_ms,
            previous_started_ms=self._recent.previous_started_ms,
            dropped=dropped,
            agent_version=__version__,
        )
        try:
            receipt = self._client.upload_log(upload)
        except ServerUnavailableError as exc:
            log.warning("the log the server asked for is not uploaded yet: %s", exc)
            return
        except AgentError as exc:
            self._answered.append(request.id)
            log.warning("the server refused the log it asked for: %s", exc)
            return
        self._answered.append(request.id)
        log.info(
            "uploaded %d log record(s) at %s or above, as the server asked%s",
            len(chosen),
            level_name(request.level or logging.DEBUG),
            " (it kept only part of them)" if receipt.truncated else "",
        )
