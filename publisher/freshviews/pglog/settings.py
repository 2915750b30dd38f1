"""Where the PostgreSQL log source reads from: ``FRESHVIEWS_PGLOG_*``, the same names in every process.

The subscriber runs the source when ``FRESHVIEWS_PGLOG_URL`` is set, and ``freshviews pglog`` runs it alone; both
read these fields (the subscriber's settings include them, see :mod:`freshviews.worker.settings`).
"""

from __future__ import annotations

import re

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


class PglogSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    #: The database whose log is read (``postgresql://user@host:port/db``); unset: no log source. The user
    #: needs the REPLICATION attribute (or to be a superuser) and the database ``wal_level=logical``.
    pglog_url: str | None = Field(default=None, validation_alias=AliasChoices("pglog_url", "FRESHVIEWS_PGLOG_URL"))
    #: The replication slot (created if missing). It keeps WAL until the source confirms it: drop a slot whose
    #: deployment is gone (``freshviews pglog --drop``).
    pglog_slot: str = Field(default="freshviews", validation_alias=AliasChoices("pglog_slot", "FRESHVIEWS_PGLOG_SLOT"))
    #: The publication over the watched tables (created if missing, its table list kept to ``pglog_tables``).
    pglog_publication: str = Field(
        default="freshviews", validation_alias=AliasChoices("pglog_publication", "FRESHVIEWS_PGLOG_PUBLICATION")
    )
    #: The watched tables, comma-separated (``players,scores`` or ``stats.players``); empty: every entity the
    #: views depend on.
    pglog_tables: str = Field(default="", validation_alias=AliasChoices("pglog_tables", "FRESHVIEWS_PGLOG_TABLES"))
    #: Slot lag past which ``freshviews check`` fails: bytes of WAL the slot holds, and seconds the oldest change
    #: not yet in the change log has waited.
    pglog_late_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        validation_alias=AliasChoices("pglog_late_bytes", "FRESHVIEWS_PGLOG_LATE_BYTES"),
    )
    pglog_late_seconds: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("pglog_late_seconds", "FRESHVIEWS_PGLOG_LATE_SECONDS")
    )

    @field_validator("pglog_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        scheme = value.split("://", 1)[0]
        if "://" not in value or scheme not in ("postgresql", "postgres"):
            raise ValueError(f"must be a postgresql:// URL (got {scheme!r})")
        return value

    @field_validator("pglog_slot", "pglog_publication")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid name (lower-case letters, digits and _, at most 63)")
        return value

    @field_validator("pglog_tables")
    @classmethod
    def _check_tables(cls, value: str) -> str:
        for table in _split(value):
            if not _TABLE.match(table):
                raise ValueError(f"{table!r} is not a table name (name or schema.name)")
        return value

    def tables(self, default: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """The watched tables: ``pglog_tables``, else ``default`` (the entities the views depend on)."""
        return tuple(_split(self.pglog_tables)) or tuple(sorted(default))


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]
