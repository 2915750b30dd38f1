"""The reference backend's one settings object (env prefix ``APP_``; ``REDIS_URL``, ``DATABASE_URL`` are shared)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from freshviews.core.settings import RedisSettings
from freshviews.serving.runtime import ServingSettings

#: What a user may write in DATABASE_URL, and the async driver URL SQLAlchemy gets instead.
_SCHEMES = {
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
    "postgresql+asyncpg://": "postgresql+asyncpg://",
    "sqlite://": "sqlite+aiosqlite://",
    "sqlite+aiosqlite://": "sqlite+aiosqlite://",
}


class AppSettings(ServingSettings, RedisSettings):
    """Settings of the scoreboard backend, the simulator and the demo; read once at the edge and passed down.

    The read routes' limits and timeouts (``APP_CACHE_*``, ``APP_SSE_*``) come from :class:`ServingSettings`.
    """

    model_config = SettingsConfigDict(env_prefix="APP_", extra="ignore")

    #: ``postgresql://...`` or ``sqlite:///path``; None means the SQLite file ``<data_dir>/scoreboard.db``.
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("database_url", "DATABASE_URL"))
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: The longest a write waits for the change log, seconds (a slower publish is dropped and swept later).
    publish_timeout: float = Field(default=0.05, gt=0)
    #: Approximate length the change log is trimmed to.
    stream_maxlen: int = Field(default=100_000, ge=1)
    publish_enabled: bool = True
    #: Larger request bodies are rejected with 413 before the app reads them.
    max_body_bytes: int = Field(default=16_384, ge=1)
    seed_players: int = Field(default=5000, ge=0)
    seed_teams: int = Field(default=200, ge=0)
    seed_scores: int = Field(default=120_000, ge=0)

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        for scheme, driver in _SCHEMES.items():
            if value.startswith(scheme):
                return driver + value[len(scheme) :]
        raise ValueError("DATABASE_URL must start with postgresql://, postgres:// or sqlite:///")

    def database_url_resolved(self) -> str:
        """The SQLAlchemy async URL to open: ``database_url``, or the default SQLite file under ``data_dir``."""
        if self.database_url is not None:
            return self.database_url
        # Absolute, so every process of the demo opens the same file whatever its working directory.
        return f"sqlite+aiosqlite:///{(self.data_dir / 'scoreboard.db').resolve()}"
