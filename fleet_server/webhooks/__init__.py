"""Notifications to operators: what is told (event types and payload version 1, in
``events.py``), how a delivery is signed (``signature.py``), the delivery decisions (which
URLs, when to retry, when to give up, the bounds: ``policy.py``, pure), and the webhooks, the
outbox their deliveries wait in and the delivery log (``store.py``). Events are recorded in the
transaction of what happened; ``fleet_server.notify`` sends them."""

from __future__ import annotations
