"""``freshviews demo``: the whole product on one machine, from nothing but this package and its demo extra.

It resolves Redis (``REDIS_URL`` if set, else an embedded ``redis-server`` of its own under the data dir: never
whatever happens to answer on localhost), seeds the scoreboard database, starts the subscriber and the backend
as child processes in their own sessions, and runs the write simulator. Ctrl-C stops the backend before the
subscriber, so that the last writes are still applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import httpx

from freshviews.core.commands import stop_on_signals
from freshviews.core.connections import redis_url
from freshviews.core.settings import load
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.seed import ensure_seeded
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.simulate import Summary, simulate

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
START_TIMEOUT = 60.0
#: The demo's own processes, as a user would start them.
SUBSCRIBER = ("-m", "freshviews", "subscriber", "--views", "freshviews.scoreboard.views:registry")
BACKEND = ("-m", "freshviews", "serve", "freshviews.scoreboard.main:create_app", "--factory", "--no-access-log")


def run(*, port: int | None, rate: float, duration: float) -> int:
    """Run the demo until Ctrl-C (or ``duration`` seconds); the exit status of the command."""
    settings = load(AppSettings, **({"port": port} if port is not None else {}))
    if not settings.redis_url:
        # An embedded Redis of the demo's own: it never writes into a server it merely found on localhost.
        settings = settings.model_copy(update={"embedded_redis": True})
    # httpx logs every request at INFO; the simulator's summary says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(_demo(settings, rate=rate, duration=duration))
    except KeyboardInterrupt:
        return 130


async def _demo(settings: AppSettings, *, rate: float, duration: float) -> int:
    """Redis, then the subscriber and the backend as child processes, then the simulator; stopped in reverse."""
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    async with redis_url(settings) as url:
        db = open_database(settings.database_url_resolved())
        try:
            # Seeded here, before the children start, so they never race to seed the same file.
            await ensure_seeded(db, settings)
        finally:
            await db.close()
        env = {
            **os.environ,
            "REDIS_URL": url,
            "DATABASE_URL": settings.database_url_resolved(),
            # The subscriber relays what the backend left in the outbox (it relays its own after each commit).
            "FRESHVIEWS_OUTBOX_URL": settings.database_url_resolved(),
            "FRESHVIEWS_DATA_DIR": str(settings.data_dir.resolve()),
            "FRESHVIEWS_PORT": str(settings.port),
            "FRESHVIEWS_HOST": settings.host,
            "FRESHVIEWS_KEY_PREFIX": settings.key_prefix,
            "PYTHONUNBUFFERED": "1",
        }
        base_url = f"http://{settings.host}:{settings.port}"
        children: list[tuple[str, asyncio.subprocess.Process]] = []
        summary = Summary()
        simulator: asyncio.Task[Summary] | None = None
        try:
            children.append(("subscriber", await _spawn(*SUBSCRIBER, env=env)))
            children.append(("backend", await _spawn(*BACKEND, env=env)))
            if not await _wait_healthy(base_url, children, stop):
                return 0 if stop.is_set() else 1
            _print_urls(base_url)
            simulator = asyncio.create_task(
                simulate(
                    base_url,
                    rate,
                    duration,
                    seed=1,
                    summary=summary,
                    players=settings.seed_players,
                    teams=settings.seed_teams,
                    scores=settings.seed_scores,
                )
            )
            exited = await _first_exit(children, stop, simulator)
            if exited is not None:
                logger.error("the %s exited unexpectedly (code %s); stopping the demo", *exited)
                return 1
            return 0
        finally:
            if simulator is not None:
                simulator.cancel()
                # wait() rather than await: the simulator's own failure must not skip stopping the children.
                await asyncio.wait({simulator})
                if not simulator.cancelled() and simulator.exception() is not None:
                    logger.error("the simulator failed", exc_info=simulator.exception())
            # Reverse start order: the backend stops taking writes before the subscriber stops applying them.
            for name, proc in reversed(children):
                await _stop(name, proc)


async def _spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    # Their own session: Ctrl-C reaches only the demo, which then stops the children in order.
    return await asyncio.create_subprocess_exec(sys.executable, *args, env=env, start_new_session=True)


async def _wait_healthy(
    base_url: str, children: list[tuple[str, asyncio.subprocess.Process]], stop: asyncio.Event
) -> bool:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            for name, proc in children:
                if proc.returncode is not None:
                    logger.error("the %s exited with %s while starting", name, proc.returncode)
                    return False
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base_url}/healthz")).status_code == 200:
                    return True
            if asyncio.get_running_loop().time() > deadline:
                logger.error("the backend did not become healthy within %.0fs", START_TIMEOUT)
                return False
            await asyncio.sleep(0.2)
    return False


async def _first_exit(
    children: list[tuple[str, asyncio.subprocess.Process]], stop: asyncio.Event, simulator: asyncio.Task[Summary]
) -> tuple[str, int | None] | None:
    """Wait for a stop signal, the simulator's end, or a child's death (returned as (name, code))."""
    stopping = asyncio.create_task(stop.wait())
    waits = {asyncio.create_task(proc.wait()): name for name, proc in children}
    try:
        done, _ = await asyncio.wait({stopping, simulator, *waits}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for task in waits:
            task.cancel()
    for waiter, name in waits.items():
        if waiter in done:
            return name, waiter.result()
    return None


async def _stop(name: str, proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        logger.info("stopping the %s (pid %d)", name, proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            logger.warning("the %s ignored SIGTERM for %.0fs; killing it", name, STOP_TIMEOUT)
            proc.kill()
            await proc.wait()
    logger.info("the %s exited with %s", name, proc.returncode)


def _print_urls(base_url: str) -> None:
    print(
        f"\nfreshviews demo is running. Open:\n"
        f"  {base_url}/                       the live dashboard (pushed over SSE)\n"
        f"  {base_url}/cache/views            the cached views\n"
        f"  {base_url}/cache/leaderboard/eu   one view, served from Redis\n"
        f"  {base_url}/api/leaderboard/eu     the same view computed from the database\n"
        f"  {base_url}/metrics                Prometheus metrics\n"
        f"  {base_url}/healthz                health\n"
        f"Ctrl-C stops everything.\n",
        flush=True,
    )
