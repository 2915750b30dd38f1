"""Real processes for the benchmarks: a backend and a subscriber on their own Redis, and their metrics.

Each stack starts its own ``redis-server`` on a free port and runs on its own copy of the seeded SQLite file,
so nothing it does touches a Redis or a database that was already on the machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from tests.bench.common import REPO, SOURCE, source_path
from tests.support.helpers import free_port, redis_executable, wait_for
from tests.support.metrics import metric, scrape
from tests.support.processes import Process, wait_http

if TYPE_CHECKING:
    from redis.asyncio import Redis

    # Imported where used: run.py puts the measured snapshot of the product first on sys.path only after the
    # bench modules are loaded, and nothing of the product may be imported before that.
    from freshviews.core.embedded import EmbeddedRedis

#: ``freshviews serve`` arguments naming the reference backend.
SCOREBOARD_APP = ("freshviews.scoreboard.main:create_app", "--factory")


@dataclass
class Stack:
    """One system under test: its own Redis, a backend process and optionally a subscriber process.

    ``capture`` is the backend's APP_CAPTURE (off: no change is recorded, only the sweep refreshes: the timed
    warmer); ``sweep_interval`` None means no subscriber; ``app_spec`` the ``freshviews serve`` arguments naming
    the backend (the scoreboard, or a baseline of the benchmarks' own, which then also imports ``tests``).
    """

    workdir: Path
    database_file: Path
    capture: bool = True
    sweep_interval: float | None = None
    launcher: Sequence[str] = ()
    app_spec: Sequence[str] = SCOREBOARD_APP
    #: More environment for both processes (a benchmark's own settings, reported in its conditions).
    extra_env: dict[str, str] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    app: Process | None = None
    subscriber: Process | None = None
    app_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def redis_url(self) -> str:
        if self.redis is None:
            raise RuntimeError("stack not started")
        return self.redis.url

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "SUBSCRIBER_"))}
        env.update(
            REDIS_URL=self.redis_url,
            DATABASE_URL=f"sqlite:///{self.database_file}",
            FRESHVIEWS_DATA_DIR=str(self.workdir / "data"),
            FRESHVIEWS_PORT=str(self.app_port),
            APP_CAPTURE="true" if self.capture else "false",
            SUBSCRIBER_METRICS_PORT=str(self.metrics_port),
            SUBSCRIBER_SWEEP_INTERVAL=str(self.sweep_interval or 0),
            PYTHONUNBUFFERED="1",
            # The product from the measured snapshot only (not from the repository).
            PYTHONPATH=os.pathsep.join(
                [*source_path(SOURCE[0]), *([str(REPO)] if self.app_spec != SCOREBOARD_APP else [])]
            ),
        )
        env.update(self.extra_env)
        return env

    def start(self) -> Stack:
        try:
            return self.launch().ready()
        except BaseException:
            self.stop()  # a process that failed to start must not leave its siblings (or Redis) running
            raise

    def launch(self) -> Stack:
        """Start Redis and the processes without waiting for them (several stacks then start side by side)."""
        from freshviews.core.embedded import EmbeddedRedis

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(self.workdir / "redis", executable=redis_executable())
        self.redis.start()
        python = [sys.executable, *self.launcher]
        self.app = Process(
            "app",
            [*python, "-m", "freshviews", "--log-level", "warning", "serve", *self.app_spec, "--no-access-log"],
            self.env(),
            self.workdir / "app.log",
            cwd=self.workdir,
        ).start()
        if self.sweep_interval is not None:
            self.subscriber = Process(
                "subscriber",
                [
                    sys.executable,
                    "-m",
                    "freshviews",
                    "--log-level",
                    "WARNING",
                    "subscriber",
                    "--views",
                    "freshviews.scoreboard.views:registry",
                ],
                self.env(),
                self.workdir / "subscriber.log",
                cwd=self.workdir,
            ).start()
        return self

    def ready(self) -> Stack:
        """Wait until the backend (and the subscriber's metrics) answer."""
        if self.app is None:
            raise RuntimeError("launch() first")
        wait_http(f"{self.base_url}/healthz", self.app)
        if self.subscriber is not None:
            wait_http(self.metrics_url, self.subscriber)
        return self

    def wait_warm(self, timeout: float = 300) -> float:
        """Wait for the subscriber's warm-up sweep (the cache starts empty); return the sweep's duration, s."""
        import redis as redis_sync

        client = redis_sync.Redis.from_url(self.redis_url)
        seconds: bytes | None = None

        def swept() -> bool:
            nonlocal seconds
            if self.subscriber is not None and not self.subscriber.running:
                raise RuntimeError(f"subscriber exited:\n{self.subscriber.log()}")
            seconds = client.hget("fv:sweep", "seconds")  # type: ignore[assignment]
            return seconds is not None

        try:
            wait_for(swept, timeout, message=f"the warm-up sweep did not finish within {timeout}s")
        finally:
            client.close()
        # The sweep's own duration: it began before this wait did.
        return float(seconds or 0)

    def counters(self) -> dict[str, float]:
        """Backend work so far: queries of the backend and of the subscriber, recomputes, CPU seconds."""
        app_text = scrape(f"{self.base_url}/metrics")
        out = {
            "app_queries": metric(app_text, "freshviews_db_queries_total"),
            "app_cpu": (self.app.cpu() if self.app else None) or 0.0,
            "sub_queries": 0.0,
            "recomputes": 0.0,
            "recomputes_change": 0.0,
            "recomputes_sweep": 0.0,
            "sweeps": 0.0,
            "sub_cpu": 0.0,
        }
        if self.subscriber is not None:
            text = scrape(self.metrics_url)
            out.update(
                sub_queries=metric(text, "freshviews_db_queries_total"),
                recomputes=metric(text, "freshviews_recomputes_total"),
                recomputes_change=metric(text, "freshviews_recomputes_total", trigger="change"),
                recomputes_sweep=metric(text, "freshviews_recomputes_total", trigger="sweep"),
                sweeps=metric(text, "freshviews_sweeps_total"),
                sub_cpu=self.subscriber.cpu() or 0.0,
            )
        return out

    def stop(self) -> None:
        for proc in (self.subscriber, self.app):
            if proc is not None:
                proc.stop()
        if self.redis is not None:
            self.redis.stop()


async def commit_times(redis: Redis, entity: str) -> dict[str, float]:
    """When each row of ``entity`` named in the change log was committed (epoch seconds, the newest per id).

    The time is the one the capture recorded in the write's transaction (``t``, 1 ms resolution), on this
    machine's clock, the clock the benchmarks read too.
    """
    from freshviews.core.events import ChangeDecodeError, decode
    from freshviews.core.keys import Keys

    times: dict[str, float] = {}
    last = "-"
    while entries := await redis.xrange(Keys().changes, min=last, count=10_000):
        for _, fields in entries:
            try:
                change = decode(cast("dict[bytes, bytes]", fields))
            except ChangeDecodeError:
                continue
            if change.entity == entity:
                times[change.id] = change.committed_ms / 1000
        last = "(" + entries[-1][0].decode()
    return times
