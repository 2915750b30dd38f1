"""Command line: ``python -m subscriber [run|sweep] --views module:registry [options]``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
from dataclasses import asdict
from typing import Any

from prometheus_client import start_http_server
from redis.exceptions import RedisError

from freshviews.core.connections import RedisConfigError, create_redis, redis_url_or_embedded
from freshviews.core.keys import Keys
from freshviews.core.views import Registry
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings

logger = logging.getLogger("freshviews.worker")

# CLI flag -> settings field; every flag can also be set as SUBSCRIBER_<FIELD> in the environment.
_OPTIONS: dict[str, tuple[type, str]] = {
    "views": (str, "module:attribute of the view Registry (default app.views:registry)"),
    "group": (str, "consumer group name"),
    "consumer": (str, "consumer name, unique per process (default host-pid)"),
    "batch_size": (int, "changes per read"),
    "concurrency": (int, "recomputes running at once"),
    "sweep_interval": (float, "seconds between sweeps, 0 = no timer"),
    "sweep_rate": (float, "most keys a sweep recomputes per second"),
    "reclaim_idle_ms": (int, "reclaim changes pending on another consumer this long"),
    "max_attempts": (int, "attempts at a failing recompute before dead-lettering its changes"),
    "metrics_port": (int, "Prometheus metrics port, 0 = off"),
}


def load_registry(spec: str) -> Registry[Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--views must look like module:attribute, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"--views {spec}: cannot import {module_name!r} ({exc})") from None
    registry = getattr(module, attr, None)
    if not isinstance(registry, Registry):
        raise SystemExit(f"{spec} is not a subscriber.registry.Registry")
    return registry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m freshviews.worker",
        description="Consume change events, recompute the affected cached views, write them to Redis, sweep.",
        epilog="Redis: REDIS_URL (unset: localhost:6379 if it answers, else an embedded redis-server).",
    )
    parser.add_argument("command", nargs="?", choices=["run", "sweep"], default="run", help="default: run")
    parser.add_argument("--once", action="store_true", help="with sweep: one sweep, print its result, exit")
    parser.add_argument("--burst", action="store_true", help="with run: apply what is in the log, then exit")
    parser.add_argument("--log-level", default="INFO")
    for name, (kind, text) in _OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=text)
    args = parser.parse_args(argv)
    if args.command == "sweep" and not args.once:
        parser.error("sweep needs --once (the timed sweep runs inside `run`)")
    return args


async def serve(settings: SubscriberSettings, args: argparse.Namespace) -> int:
    registry = load_registry(settings.views)
    async with redis_url_or_embedded(
        settings.redis_url, settings.data_dir, probe_local=settings.probe_local_redis
    ) as url:
        redis = create_redis(url, timeout=settings.redis_timeout)
        try:
            async with registry.open_context() as ctx:
                subscriber = Subscriber(
                    redis=redis, keys=Keys(settings.key_prefix), registry=registry, ctx=ctx, settings=settings
                )
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, subscriber.stop)
                if args.command == "sweep":
                    await subscriber.wait_for_redis()
                    result = await subscriber.sweep("once", lock=False)
                    print(json.dumps(asdict(result) if result else {}))
                    return 0
                if args.burst:
                    await subscriber.start()
                    handled = await subscriber.drain()
                    print(json.dumps({"changes": handled, "batches": subscriber.batches}))
                    return 0
                if settings.metrics_port:
                    start_http_server(settings.metrics_port, addr=settings.metrics_host)
                    logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
                logger.info(
                    "subscriber %s in group %s: %d views, Redis %s",
                    settings.consumer, settings.group, len(registry.views), url.split("@")[-1],
                )  # fmt: skip
                await subscriber.run()
                return 0
        finally:
            await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {name: getattr(args, name) for name in _OPTIONS if getattr(args, name) is not None}
    settings = SubscriberSettings(**overrides)
    try:
        return asyncio.run(serve(settings, args))
    except RedisConfigError as exc:
        logger.error("%s", exc)
        return 2
    except RedisError as exc:
        logger.error("Redis error at start-up: %s", exc)
        return 2
