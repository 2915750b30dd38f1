"""Real processes for end-to-end tests: the backend under uvicorn and the subscriber, over real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from freshviews.core.embedded import EmbeddedRedis
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.demo import BACKEND, SUBSCRIBER
from freshviews.scoreboard.views import registry
from tests.support.helpers import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, *self.args], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """kill -9: no chance to acknowledge or clean up."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


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
        self.app = Process("app", list(BACKEND), self.env(), self.tmp / "app.log")
        self.app.start()
        wait_http(f"{self.base_url}/healthz", self.app)
        return self.app

    def start_subscriber(self, consumer: str = "sub-1", **env: str) -> Process:
        proc = Process(
            consumer,
            [*SUBSCRIBER, "--consumer", consumer],
            self.env(**env),
            self.tmp / f"{consumer}.log",
        )
        proc.start()
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


def wait_http(url: str, proc: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running:
            raise AssertionError(f"{proc.name} exited ({proc.popen and proc.popen.returncode}):\n{proc.log()}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{proc.log()}")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample in exposition text, over series matching ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


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
