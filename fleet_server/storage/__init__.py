"""Server storage on SQLAlchemy Core: SQLite by default, PostgreSQL for several replicas."""

from __future__ import annotations

from fleet_server.storage.db import Database, DeviceRow, ModelRow

__all__ = ["Database", "DeviceRow", "ModelRow"]
