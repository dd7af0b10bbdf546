"""Webhooks: where the server sends its notifications, and their delivery log
(docs/notifications.md). Adding, removing and testing one are audited; the audit entry of an
added webhook carries neither its secret nor its URL's query."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import AdminBase, actor, audited, recorded
from fleet_server.api.identity import require_admin
from fleet_server.errors import BadRequestError
from fleet_server.webhooks.events import Event, EventType, parse_types
from fleet_server.webhooks.policy import check_url, shown_url
from fleet_server.webhooks.signature import check_secret, new_secret
from protos import admin_pb2 as pb
from protos.names import is_name

__all__ = ["WebhooksAdmin"]

_MAX_CA = 64 * 1024
_MAX_TYPES = 32


def _ca(pem: str) -> str | None:
    """A receiver's CA certificate(s), checked to load.

    Raises:
        BadRequestError: too large, or not PEM certificates.
    """
    if not pem.strip():
        return None
    if len(pem) > _MAX_CA:
        raise BadRequestError(f"the receiver's CA file is over {_MAX_CA // 1024} KiB")
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise BadRequestError(f"the receiver's CA is not PEM certificates: {exc}") from exc
    return pem


class WebhooksAdmin(AdminBase):
    @rpc_errors
    def AddWebhook(  # noqa: N802
        self, request: pb.AddWebhookRequest, context: Any
    ) -> pb.AddWebhookResponse:
        # Audited here, not by @audited: the request carries the secret.
        detail = json.dumps(
            {
                "name": request.name,
                "url": shown_url(request.url[:2048]),
                "events": list(request.events[:_MAX_TYPES]),
                "allow_http": request.allow_http,
                "custom_ca": bool(request.ca_pem),
                "secret": "given" if request.secret else "made by the server",
            },
            sort_keys=True,
        )
        with recorded(self._ctx, context, "AddWebhook", f"webhook {request.name[:64]}", detail):
            require_admin(context)
            if not is_name(request.name):
                raise BadRequestError(
                    f"webhook name {request.name[:80]!r} is not valid: 1-64 of A-Z a-z 0-9 _ . -"
                )
            if len(request.events) > _MAX_TYPES:
                raise BadRequestError(f"at most {_MAX_TYPES} event types")
            url = check_url(request.url, allow_http=request.allow_http)
            secret = check_secret(request.secret) if request.secret else new_secret()
            hook = self._ctx.webhooks.add(
                name=request.name,
                url=url,
                secret=secret,
                events=parse_types(request.events),
                allow_http=request.allow_http,
                ca_pem=_ca(request.ca_pem),
                created_by=actor(context),
                now=int(time.time()),
            )
        summary = next(s for s in self._ctx.webhooks.summaries() if s.webhook.name == hook.name)
        return pb.AddWebhookResponse(
            webhook=wire.webhook_info(summary), secret="" if request.secret else secret
        )

    @rpc_errors
    def ListWebhooks(  # noqa: N802
        self, request: pb.ListWebhooksRequest, context: Any
    ) -> pb.ListWebhooksResponse:
        require_admin(context)
        return pb.ListWebhooksResponse(
            webhooks=[wire.webhook_info(s) for s in self._ctx.webhooks.summaries()]
        )

    @rpc_errors
    @audited("RemoveWebhook", lambda r: f"webhook {r.name[:64]}")
    def RemoveWebhook(  # noqa: N802
        self, request: pb.RemoveWebhookRequest, context: Any
    ) -> pb.RemoveWebhookResponse:
        require_admin(context)
        return pb.RemoveWebhookResponse(pending_dropped=self._ctx.webhooks.remove(request.name))

    @rpc_errors
    @audited("TestWebhook", lambda r: f"webhook {r.name[:64]}")
    def TestWebhook(  # noqa: N802
        self, request: pb.TestWebhookRequest, context: Any
    ) -> pb.TestWebhookResponse:
        require_admin(context)
        event = Event(
            EventType.WEBHOOK_TEST,
            {"webhook": request.name, "requested_by": actor(context)},
        )
        self._ctx.webhooks.record_for(request.name, event)
        return pb.TestWebhookResponse(event_id=event.id)

    @rpc_errors
    def ListWebhookDeliveries(  # noqa: N802
        self, request: pb.ListWebhookDeliveriesRequest, context: Any
    ) -> pb.ListWebhookDeliveriesResponse:
        require_admin(context)
        rows = self._ctx.webhooks.deliveries(
            request.name, request.event_id[:64], request.limit or 50
        )
        return pb.ListWebhookDeliveriesResponse(deliveries=[wire.webhook_delivery(d) for d in rows])
