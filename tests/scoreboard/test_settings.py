"""AppSettings: database URL normalisation, defaults and the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from freshviews.scoreboard.settings import AppSettings


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/x", "postgresql+asyncpg://u:p@db:5432/x"),
        ("postgres://u@db/x", "postgresql+asyncpg://u@db/x"),
        ("postgresql+asyncpg://u@db/x", "postgresql+asyncpg://u@db/x"),
        ("sqlite:///rel/file.db", "sqlite+aiosqlite:///rel/file.db"),
        ("sqlite:////abs/file.db", "sqlite+aiosqlite:////abs/file.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_url_is_normalised_to_an_async_driver(given: str, expected: str) -> None:
    settings = AppSettings(database_url=given)
    assert settings.database_url_resolved() == expected


@pytest.mark.parametrize("bad", ["mysql://u@db/x", "postgresql+psycopg2://u@db/x", "db.sqlite"])
def test_unsupported_database_url_is_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="must start with postgresql://"):
        AppSettings(database_url=bad)


def test_default_database_is_an_absolute_sqlite_file_in_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = AppSettings(data_dir=tmp_path / "state")
    assert settings.database_url_resolved() == f"sqlite+aiosqlite:///{(tmp_path / 'state').resolve()}/scoreboard.db"


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    monkeypatch.setenv("REDIS_URL", "redis://h:1/0")
    monkeypatch.setenv("FRESHVIEWS_PORT", "9123")
    monkeypatch.setenv("APP_SEED_SCORES", "7")
    monkeypatch.setenv("APP_CAPTURE", "false")
    settings = AppSettings()
    assert settings.database_url_resolved() == "postgresql+asyncpg://u@h/db"
    assert settings.redis_url == "redis://h:1/0"
    assert (settings.port, settings.seed_scores, settings.capture) == (9123, 7, False)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("APP_")]:
        monkeypatch.delenv(name)
    settings = AppSettings()
    assert (settings.host, settings.capture, settings.max_body_bytes) == ("127.0.0.1", True, 16_384)
    assert (settings.seed_players, settings.seed_teams, settings.seed_scores) == (5000, 200, 120_000)
