"""The log source's fixtures (the session's own PostgreSQL with logical decoding), on the session's cluster."""

from __future__ import annotations

from tests.pglog.conftest import db, running_source, settings

__all__ = ["db", "running_source", "settings"]
