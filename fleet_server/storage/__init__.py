"""Server storage on SQLAlchemy Core (SQLite by default, PostgreSQL for several replicas):
the schema, its migrations, and the engine. Queries live with the concern that owns them."""

from __future__ import annotations
