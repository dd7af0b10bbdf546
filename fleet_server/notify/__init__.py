"""Sending notifications: the notifier thread (``worker.py``) that delivers the webhook outbox
over HTTP (``sender.py``: one bounded POST) and looks for the events no transaction records
(``watch.py``: devices offline, budgets reached, what expires soon). What is sent, and the
outbox itself, live in :mod:`fleet_server.webhooks`."""

from __future__ import annotations
