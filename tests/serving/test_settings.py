"""The read side's settings: part of AppSettings (env prefix APP_), validated, and checked against the client."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from freshviews.scoreboard.settings import AppSettings
from freshviews.serving import Serving, ServingSettings


def test_the_app_settings_carry_the_read_side_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHVIEWS_SSE_MAX_STREAMS", "7")
    monkeypatch.setenv("FRESHVIEWS_CACHE_MISS_WAIT", "0.25")
    monkeypatch.setenv("FRESHVIEWS_CACHE_BATCH_MAX_KEYS", "12")
    settings = AppSettings()
    assert isinstance(settings, ServingSettings)
    assert (settings.sse_max_streams, settings.cache_miss_wait, settings.cache_batch_max_keys) == (7, 0.25, 12)


@pytest.mark.parametrize(
    ("name", "value"),
    [("sse_max_streams", 0), ("cache_redis_timeout", 0), ("cache_miss_wait", -1), ("sse_send_timeout", 0)],
)
def test_nonsense_values_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=name):
        ServingSettings.model_validate({name: value})


async def test_more_concurrent_reads_than_the_pool_has_connections_is_refused() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", max_connections=20)
    try:
        with pytest.raises(ValueError, match="max_connections"):
            Serving(redis=client, settings=ServingSettings(cache_redis_concurrency=20))
        Serving(redis=client, settings=ServingSettings(cache_redis_concurrency=19))
    finally:
        await client.aclose()
