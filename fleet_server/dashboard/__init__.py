"""The fleet dashboard: read-only pages over the fleet, rollouts, models and costs, and rollout
actions that go through the admin API (and its audit log)."""
