"""Command line: ``python -m app {serve,simulate,seed,demo}``; settings come from the environment (``APP_*``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import httpx
import uvicorn
import uvicorn.config

from freshviews.core.connections import redis_url_or_embedded
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.seed import drop_schema, ensure_seeded
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.simulate import Summary, simulate
from freshviews.serving.listen import serve

logger = logging.getLogger("freshviews.scoreboard")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_TIMEOUT = 15.0
START_TIMEOUT = 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m freshviews.scoreboard",
        description="The freshviews reference backend: a live game scoreboard.",
        epilog="Configuration: DATABASE_URL, REDIS_URL, FRESHVIEWS_DATA_DIR and APP_* (see app/settings.py).",
    )
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the backend under uvicorn")
    serve.add_argument("--host", help="default: APP_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: APP_PORT or 8000")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.add_argument(
        "--workers", type=int, help="worker processes sharing the socket (default: WEB_CONCURRENCY or 1)"
    )
    serve.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=10.0,
        help="seconds a stop waits for open requests and event streams before closing them (default 10)",
    )

    sim = commands.add_parser("simulate", help="send realistic writes to a running backend")
    sim.add_argument("--url", help="backend base URL (default: http://APP_HOST:APP_PORT)")
    sim.add_argument("--rate", type=float, default=5.0, help="writes per second (default 5)")
    sim.add_argument("--duration", type=float, default=0.0, help="seconds, 0 = until Ctrl-C (default)")
    sim.add_argument("--seed", type=int, default=1, help="random seed of the write sequence")

    seed = commands.add_parser("seed", help="create the schema and seed the database if it is empty")
    seed.add_argument("--reset", action="store_true", help="drop every table first")

    demo = commands.add_parser("demo", help="run Redis, the subscriber, the backend and the simulator together")
    demo.add_argument("--port", type=int, help="backend port (default: APP_PORT or 8000)")
    demo.add_argument("--rate", type=float, default=5.0, help="simulated writes per second (default 5)")
    demo.add_argument("--duration", type=float, default=0.0, help="seconds, 0 = until Ctrl-C (default)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    # httpx logs every request at INFO; the simulator's summary says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = AppSettings()
    if args.command == "serve":
        settings = settings.model_copy(update=_given(host=args.host, port=args.port))
        workers = args.workers or int(os.environ.get("WEB_CONCURRENCY", "1"))
        config = uvicorn.Config(
            # Worker processes each build the app from the environment; one process uses the settings here.
            "freshviews.scoreboard.main:create_app" if workers > 1 else create_app(settings),
            factory=workers > 1,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level=args.log_level.lower(),
            log_config=_log_config(args.log_level),
            access_log=not args.no_access_log,
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        )
        # The exit status uvicorn.run gives a server that failed to start (a port in use, an app that failed).
        return 0 if serve(config, settings) else 3
    if args.command == "simulate":
        url = args.url or f"http://{settings.host}:{settings.port}"
        return _run(_simulate(settings, url, rate=args.rate, duration=args.duration, seed=args.seed))
    if args.command == "seed":
        return _run(_seed(settings, reset=args.reset))
    settings = settings.model_copy(update=_given(port=args.port))
    return _run(_demo(settings, rate=args.rate, duration=args.duration))


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus the root logger as main() sets it up; uvicorn applies it in every worker process,
    which do not run main() (without it, workers would log nothing below WARNING of the app's own)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["plain"] = {"format": LOG_FORMAT}
    config["handlers"]["plain"] = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["plain"], "level": level.upper()}
    return config


def _given(**values: object) -> dict[str, object]:
    return {name: value for name, value in values.items() if value is not None}


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        return 130


async def _simulate(settings: AppSettings, url: str, *, rate: float, duration: float, seed: int) -> int:
    summary = await simulate(
        url,
        rate,
        duration,
        seed,
        players=settings.seed_players,
        teams=settings.seed_teams,
        scores=settings.seed_scores,
    )
    return 0 if not summary.errors else 1


async def _seed(settings: AppSettings, *, reset: bool) -> int:
    db = open_database(settings.database_url_resolved())
    try:
        if reset:
            await drop_schema(db)
        seeded = await ensure_seeded(db, settings)
    finally:
        await db.close()
    print("seeded" if seeded else "already seeded: nothing to do", settings.database_url_resolved().split("@")[-1])
    return 0


async def _demo(settings: AppSettings, *, rate: float, duration: float) -> int:
    """Redis, then the subscriber and the backend as child processes, then the simulator; stopped in reverse."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with redis_url_or_embedded(
        settings.redis_url, settings.data_dir, probe_local=settings.probe_local_redis
    ) as redis_url:
        db = open_database(settings.database_url_resolved())
        try:
            # Seeded here, before the children start, so they never race to seed the same file.
            await ensure_seeded(db, settings)
        finally:
            await db.close()
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": settings.database_url_resolved(),
            "FRESHVIEWS_DATA_DIR": str(settings.data_dir.resolve()),
            "APP_PORT": str(settings.port),
            "APP_HOST": settings.host,
            # Each process reads the prefix under its own env prefix; they must agree.
            "SUBSCRIBER_KEY_PREFIX": settings.key_prefix,
            "PYTHONUNBUFFERED": "1",
        }
        base_url = f"http://{settings.host}:{settings.port}"
        children: list[tuple[str, asyncio.subprocess.Process]] = []
        summary = Summary()
        simulator: asyncio.Task[Summary] | None = None
        try:
            children.append(
                (
                    "subscriber",
                    await _spawn("-m", "freshviews.worker", "--views", "freshviews.scoreboard.views:registry", env=env),
                )
            )
            children.append(
                ("backend", await _spawn("-m", "freshviews.scoreboard", "serve", "--no-access-log", env=env))
            )
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
