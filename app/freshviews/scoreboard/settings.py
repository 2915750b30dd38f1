"""The reference backend's one settings object: the kit's (``FRESHVIEWS_*``, ``REDIS_URL``) and its own (``APP_*``,
``DATABASE_URL``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from freshviews.outbox import async_url
from freshviews.serving.settings import ServingSettings


def _app(name: str) -> AliasChoices:
    return AliasChoices(name, f"APP_{name.upper()}")


class AppSettings(ServingSettings):
    """Settings of the scoreboard backend, the simulator and the demo; read once at the edge and passed down.

    The kit's settings (the read routes' ``FRESHVIEWS_CACHE_*`` and ``FRESHVIEWS_SSE_*``, the shared Redis ones)
    come from :class:`ServingSettings`; the scoreboard's own are named ``APP_*``, and the database ``DATABASE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="FRESHVIEWS_", extra="ignore", populate_by_name=True)

    #: ``postgresql://...`` or ``sqlite:///path``; None means the SQLite file ``<data_dir>/scoreboard.db``.
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("database_url", "DATABASE_URL"))
    #: Capture every write's changes in its transaction (off: writes reach the cache only through the sweep, the
    #: timed warmer the benchmarks compare against).
    capture: bool = Field(default=True, validation_alias=_app("capture"))
    #: Relay the captured changes in this process right after each commit (off: the subscriber's relay moves
    #: them, up to SUBSCRIBER_RELAY_INTERVAL later, or at once on PostgreSQL).
    relay: bool = Field(default=True, validation_alias=_app("relay"))
    #: Larger request bodies are rejected with 413 before the app reads them.
    max_body_bytes: int = Field(default=16_384, ge=1, validation_alias=_app("max_body_bytes"))
    seed_players: int = Field(default=5000, ge=0, validation_alias=_app("seed_players"))
    seed_teams: int = Field(default=200, ge=0, validation_alias=_app("seed_teams"))
    seed_scores: int = Field(default=120_000, ge=0, validation_alias=_app("seed_scores"))

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return async_url(value)

    def database_url_resolved(self) -> str:
        """The SQLAlchemy async URL to open: ``database_url``, or the default SQLite file under ``data_dir``."""
        if self.database_url is not None:
            return self.database_url
        # Absolute, so every process of the demo opens the same file whatever its working directory.
        return f"sqlite+aiosqlite:///{(self.data_dir / 'scoreboard.db').resolve()}"
