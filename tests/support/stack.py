"""The scoreboard as real processes: the backend under uvicorn and its subscribers on one Redis and one database,
configured through the environment only, and how to tell whether the cache agrees with the naive routes.

Used by the end-to-end, edge and reliability suites.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from freshviews.core.embedded import EmbeddedRedis
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.demo import BACKEND, SUBSCRIBER
from freshviews.scoreboard.views import registry
from tests.support.helpers import free_port
from tests.support.processes import REPO, Process, python, wait_http


@dataclass
class Stack:
    """Backend + subscriber sharing one Redis and one database, configured through the environment only."""

    tmp: Path
    redis_url: str
    database_url: str | None = None
    app_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    redis_server: EmbeddedRedis | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    app: Process | None = None
    subscribers: list[Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "SUBSCRIBER_"))}
        env.update(
            REDIS_URL=self.redis_url,
            FRESHVIEWS_DATA_DIR=str(self.tmp / "data"),
            APP_SEED_PLAYERS="300",
            APP_SEED_TEAMS="20",
            APP_SEED_SCORES="6000",
            FRESHVIEWS_PORT=str(self.app_port),
            SUBSCRIBER_METRICS_PORT=str(self.metrics_port),
            SUBSCRIBER_SWEEP_INTERVAL="0",
            # The sampler recomputes keys on its own: tests that count recomputes turn it on where they look at it.
            SUBSCRIBER_SAMPLE_RATE="0",
            SUBSCRIBER_RECLAIM_IDLE_MS="1000",
            SUBSCRIBER_RECLAIM_INTERVAL="0.3",
            PYTHONUNBUFFERED="1",
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
            # Subscribers relay what a backend left in the outbox (a backend relays its own after each commit).
            env["FRESHVIEWS_OUTBOX_URL"] = self.database_url
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def seed(self) -> None:
        command = [sys.executable, "-m", "freshviews.scoreboard", "seed"]
        subprocess.run(command, env=self.env(), cwd=REPO, check=True, capture_output=True, timeout=120)

    def start_app(self) -> Process:
        self.app = Process("app", python(*BACKEND), self.env(), self.tmp / "app.log").start()
        wait_http(f"{self.base_url}/healthz", self.app)
        return self.app

    def start_subscriber(self, consumer: str = "sub-1", **env: str) -> Process:
        proc = Process(
            consumer, python(*SUBSCRIBER, "--consumer", consumer), self.env(**env), self.tmp / f"{consumer}.log"
        ).start()
        self.subscribers.append(proc)
        if env.get("SUBSCRIBER_METRICS_PORT", "1") != "0":
            port = int(env.get("SUBSCRIBER_METRICS_PORT", self.metrics_port))
            wait_http(f"http://127.0.0.1:{port}/metrics", proc)
        return proc

    def stop(self) -> None:
        for proc in [*self.subscribers, *([self.app] if self.app else [])]:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()}" for p in [*self.subscribers, *([self.app] if self.app else [])])


def api_path(key: str) -> str:
    """The naive route that computes the same view as cache ``key`` (``player/7`` -> ``/api/players/7``)."""
    view, _, rest = key.partition("/")
    plural = {"player": "players", "team": "teams"}.get(view, view)
    return f"/api/{plural}/{rest}"


async def live_keys(database_url: str) -> list[str]:
    """Every key the registry enumerates from the database now."""
    db = open_database(database_url)
    try:
        return sorted(await registry.all_keys(db))
    finally:
        await db.close()


async def stale_keys(client: httpx.AsyncClient, keys: list[str]) -> dict[str, str]:
    """Keys whose cached answer differs from the naive route's (both compared as JSON), with what differs."""
    stale: dict[str, str] = {}
    for key in keys:
        cached, computed = await client.get(f"/cache/{key}"), await client.get(api_path(key))
        if cached.status_code != computed.status_code:
            stale[key] = f"cache {cached.status_code}, api {computed.status_code}"
        elif cached.status_code == 200 and cached.json() != computed.json():
            stale[key] = f"cache {cached.text[:200]} != api {computed.text[:200]}"
    return stale
