"""The settings every freshviews process shares, and how a process reads its settings once, at its edge.

A setting that several processes read has one environment name, which each of them reads whatever its own
prefix: ``REDIS_URL``, ``FRESHVIEWS_KEY_PREFIX``, ``FRESHVIEWS_REDIS_TIMEOUT``, ``FRESHVIEWS_DATA_DIR``,
``FRESHVIEWS_EMBEDDED_REDIS`` and ``FRESHVIEWS_STREAM_MAXLEN``. Each process kind subclasses
:class:`RedisSettings` with its own prefix for its own settings (``FRESHVIEWS_`` for the read side,
``SUBSCRIBER_`` for the subscriber); the shared ones carry their names explicitly, so a prefix never renames them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from freshviews.core.keys import DEFAULT_PREFIX, Keys

#: What a Redis URL of a Redis Cluster starts with: the same URL as for one node of it, with ``+cluster``.
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
#: What a Redis URL may start with.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)


class ConfigError(ValueError):
    """A configuration mistake, stated in one line that names the setting: commands print it and exit with 2."""


def _env(name: str, env: str) -> Any:
    # The field's own name keeps working as a keyword argument; the environment has the one shared name.
    return AliasChoices(name, env)


class RedisSettings(BaseSettings):
    """Where Redis is and how the product's keys are named: the same for every process of a deployment."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    #: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, or ``unix:///path``; for a Redis Cluster,
    #: ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS): any node of it, the client finds the rest.
    #: Required by the production commands; see :func:`freshviews.core.connections.redis_url` for the one rule
    #: every process uses.
    redis_url: str | None = Field(default=None, validation_alias=_env("redis_url", "REDIS_URL"))
    #: With no REDIS_URL, start an embedded redis-server (data under ``data_dir``) instead of failing. The demo
    #: sets it for itself; nothing ever falls back to it silently.
    embedded_redis: bool = Field(default=False, validation_alias=_env("embedded_redis", "FRESHVIEWS_EMBEDDED_REDIS"))
    #: The prefix of every Redis key and channel of the product (``fv:{changes}``, ``fv:v:{...}``, ...).
    key_prefix: str = Field(default=DEFAULT_PREFIX, validation_alias=_env("key_prefix", "FRESHVIEWS_KEY_PREFIX"))
    #: Directory for local state (the embedded Redis, the demo's SQLite file).
    data_dir: Path = Field(default=Path(".data"), validation_alias=_env("data_dir", "FRESHVIEWS_DATA_DIR"))
    #: Socket timeout for ordinary Redis commands, seconds.
    redis_timeout: float = Field(default=2.0, gt=0, validation_alias=_env("redis_timeout", "FRESHVIEWS_REDIS_TIMEOUT"))
    #: Approximate length the change log is trimmed to by whoever appends to it.
    stream_maxlen: int = Field(
        default=100_000, ge=1, validation_alias=_env("stream_maxlen", "FRESHVIEWS_STREAM_MAXLEN")
    )

    @field_validator("redis_url")
    @classmethod
    def _check_scheme(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with {', '.join(REDIS_SCHEMES)} (got {value.split(':', 1)[0]!r})")
        if value.startswith(CLUSTER_SCHEMES) and urlsplit(value).path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has one database: drop the /db number, or make it /0")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        Keys(value)  # raises ValueError naming what is wrong
        return value

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], **values: Any) -> S:
    """``cls(**values)`` with the environment, or :class:`ConfigError` in one line naming each bad setting."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {describe(exc, cls)}") from None


def describe(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """``NAME: reason`` for each error, NAME being the environment variable a user sets."""
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        parts.append(f"{env_name(cls, field)}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``cls``."""
    info = cls.model_fields.get(field)
    if info is None:
        return field
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        names = [choice for choice in alias.choices if isinstance(choice, str)]
        return names[-1].upper()
    if isinstance(alias, str):
        return alias.upper()
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()
