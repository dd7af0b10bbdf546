"""Staged rollouts: waves, health gates, and the controller that moves them on."""

from __future__ import annotations
