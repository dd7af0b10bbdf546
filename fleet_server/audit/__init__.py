"""The audit log: named actors, actions, targets, outcomes."""

from __future__ import annotations
