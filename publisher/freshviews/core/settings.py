"""Settings shared by every process kind. Each process subclasses :class:`RedisSettings` with its own prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from freshviews.core.keys import DEFAULT_PREFIX


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    #: ``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS. When unset: localhost:6379 if it
    #: answers, else an embedded redis-server with its data under ``data_dir``.
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("redis_url", "REDIS_URL"))
    #: With no REDIS_URL, try a Redis on localhost:6379 before starting an embedded one.
    probe_local_redis: bool = Field(
        default=True, validation_alias=AliasChoices("probe_local_redis", "FRESHVIEWS_PROBE_LOCAL_REDIS")
    )
    key_prefix: str = DEFAULT_PREFIX
    #: Directory for local state (the embedded Redis, the default SQLite file).
    data_dir: Path = Field(default=Path(".data"), validation_alias=AliasChoices("data_dir", "FRESHVIEWS_DATA_DIR"))
    #: Socket timeout for ordinary Redis commands, seconds.
    redis_timeout: float = Field(default=2.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _check_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value
