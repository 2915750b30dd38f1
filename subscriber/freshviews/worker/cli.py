"""The subscriber's commands: ``subscriber`` (the process), ``sweep`` (one repair pass), ``check`` (liveness) and
``pglog`` (the PostgreSQL log source alone, or ``--drop`` to remove its slot and publication).

They are commands of ``freshviews`` (``freshviews subscriber --views myapp.views:registry``); ``python -m
freshviews.worker`` runs the subscriber as ``freshviews subscriber`` would. Every flag is also a
``SUBSCRIBER_<NAME>`` environment variable; Redis comes from ``REDIS_URL`` and nothing else (see
:func:`freshviews.core.connections.redis_url`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from prometheus_client import start_http_server

from freshviews.core.commands import importable_from_here, run_guarded, stop_on_signals
from freshviews.core.connections import create_redis, redis_url
from freshviews.core.logs import configure
from freshviews.core.settings import ConfigError, load
from freshviews.core.views import Registry
from freshviews.worker.check import check
from freshviews.worker.outbox import outbox_relay
from freshviews.worker.pglog import log_source
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings

logger = logging.getLogger(__name__)

#: CLI flag -> settings field; every flag can also be set as SUBSCRIBER_<FIELD> in the environment.
_OPTIONS: dict[str, tuple[type, str]] = {
    "views": (str, "module:attribute of your view Registry (required; or SUBSCRIBER_VIEWS)"),
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
_EPILOG = "Redis: REDIS_URL (required), or FRESHVIEWS_EMBEDDED_REDIS=1 for an embedded redis-server."


def load_registry(spec: str | None) -> Registry[Any]:
    """The :class:`Registry` named ``module:attribute``; :class:`ConfigError` saying what is wrong with it."""
    if not spec:
        raise ConfigError("no views to serve: pass --views module:attribute (or set SUBSCRIBER_VIEWS)")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--views must look like module:attribute, got {spec!r}")
    importable_from_here()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--views {spec}: cannot import {module_name!r} ({exc})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"--views {spec}: module {module_name!r} has no attribute {attr!r}")
    registry = getattr(module, attr)
    if not isinstance(registry, Registry):
        raise ConfigError(f"--views {spec}: that is a {type(registry).__name__}, not a freshviews.core.Registry")
    return registry


def add_options(parser: argparse.ArgumentParser, *, burst: bool) -> None:
    for name, (kind, text) in _OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=text)
    if burst:
        parser.add_argument("--burst", action="store_true", help="apply what is in the change log, then exit")


def add_commands(commands: Any) -> None:
    """Add ``subscriber``, ``sweep`` and ``check`` to the sub-command parsers of a command line."""
    run = commands.add_parser("subscriber", help="run the subscriber process", epilog=_EPILOG)
    add_options(run, burst=True)
    run.set_defaults(command=run_command)
    sweep = commands.add_parser("sweep", help="sweep once: recompute every key, print what it repaired", epilog=_EPILOG)
    add_options(sweep, burst=False)
    sweep.set_defaults(command=sweep_command)
    probe = commands.add_parser(
        "check",
        help="exit 0 if a subscriber is alive and sweeping, 1 if not (a liveness probe)",
        epilog=_EPILOG,
    )
    probe.add_argument("--group", help="consumer group name (default: SUBSCRIBER_GROUP or subscribers)")
    probe.add_argument("--consumer", help="check this consumer only (default: any consumer of the group)")
    probe.set_defaults(command=check_command)
    log = commands.add_parser(
        "pglog",
        help="read PostgreSQL's log (FRESHVIEWS_PGLOG_URL) into the change log; --drop removes its slot",
        epilog=_EPILOG + " The database: FRESHVIEWS_PGLOG_URL (required).",
    )
    log.add_argument("--views", help="module:attribute of your view Registry: its entities and columns")
    log.add_argument("--tables", help="tables to watch, comma-separated (default: the views' entities)")
    log.add_argument("--slot", help="replication slot (default: FRESHVIEWS_PGLOG_SLOT or freshviews)")
    log.add_argument("--publication", help="publication (default: FRESHVIEWS_PGLOG_PUBLICATION or freshviews)")
    log.add_argument(
        "--drop", action="store_true", help="drop the slot and the publication (it keeps WAL while it exists)"
    )
    log.set_defaults(command=pglog_command)


def settings_from(args: argparse.Namespace) -> SubscriberSettings:
    overrides = {name: getattr(args, name) for name in _OPTIONS if getattr(args, name, None) is not None}
    if getattr(args, "group", None) is not None:
        overrides["group"] = args.group
    return load(SubscriberSettings, **overrides)


def pglog_command(args: argparse.Namespace) -> int:
    names = {"views": args.views, "pglog_tables": args.tables, "pglog_slot": args.slot}
    names["pglog_publication"] = args.publication
    settings = load(SubscriberSettings, **{k: v for k, v in names.items() if v is not None})
    if not settings.pglog_url:
        raise ConfigError("FRESHVIEWS_PGLOG_URL: set it to the database whose log to read (postgresql://...)")
    if args.drop:
        return _drop(settings, settings.pglog_url)
    registry = load_registry(settings.views) if settings.views else None
    return asyncio.run(_pglog(settings, registry))


def _drop(settings: SubscriberSettings, url: str) -> int:
    try:
        import psycopg2

        from freshviews.pglog import database
    except ImportError as exc:
        raise ConfigError(
            f"freshviews pglog needs psycopg2 ({exc.name} is missing): pip install 'freshviews[pglog]'"
        ) from None
    try:
        dropped = database.drop(url, slot=settings.pglog_slot, publication=settings.pglog_publication)
    except psycopg2.Error as exc:
        raise ConfigError(f"FRESHVIEWS_PGLOG_URL: {str(exc).strip().splitlines()[0]}") from None
    print(json.dumps({"dropped": dropped}))
    return 0


async def _pglog(settings: SubscriberSettings, registry: Registry[Any] | None) -> int:
    async with redis_url(settings) as url:
        redis = create_redis(url, timeout=settings.redis_timeout)
        try:
            source = log_source(redis, settings, registry)
            assert source is not None  # pglog_url is set
            stop_on_signals(source.stop)
            logger.info(
                "log source: slot %s, tables %s, Redis %s", source.slot, ",".join(source.tables), url.split("@")[-1]
            )
            await source.run()
            return 0
        finally:
            await redis.aclose()


def run_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    registry = load_registry(settings.views)
    return asyncio.run(_run(settings, registry, burst=args.burst))


def sweep_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    registry = load_registry(settings.views)
    return asyncio.run(_sweep(settings, registry))


def check_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    return asyncio.run(_check(settings, args.consumer))


async def _run(settings: SubscriberSettings, registry: Registry[Any], *, burst: bool) -> int:
    async with redis_url(settings) as url:
        redis = create_redis(url, timeout=settings.redis_timeout)
        try:
            async with registry.open_context() as ctx, outbox_relay(redis, settings) as relay:
                log = None if burst else log_source(redis, settings, registry)
                subscriber = Subscriber(
                    redis=redis, registry=registry, ctx=ctx, settings=settings, relay=relay, log=log
                )
                stop_on_signals(subscriber.stop)
                if burst:
                    if relay is not None:
                        await relay.drain()
                    await subscriber.start()
                    handled = await subscriber.drain()
                    print(json.dumps({"changes": handled, "batches": subscriber.batches}))
                    return 0
                if settings.metrics_port:
                    _serve_metrics(settings)
                logger.info(
                    "subscriber %s in group %s: %d views, Redis %s",
                    settings.consumer, settings.group, len(registry.views), url.split("@")[-1],
                )  # fmt: skip
                await subscriber.run()
                return 0
        finally:
            await redis.aclose()


async def _sweep(settings: SubscriberSettings, registry: Registry[Any]) -> int:
    async with redis_url(settings) as url:
        redis = create_redis(url, timeout=settings.redis_timeout)
        try:
            async with registry.open_context() as ctx:
                subscriber = Subscriber(redis=redis, registry=registry, ctx=ctx, settings=settings)
                stop_on_signals(subscriber.stop)
                await subscriber.wait_for_redis()
                result = await subscriber.sweep("once", lock=False)
                print(json.dumps(asdict(result) if result else {}))
                return 0
        finally:
            await redis.aclose()


async def _check(settings: SubscriberSettings, consumer: str | None) -> int:
    async with redis_url(settings) as url:
        redis = create_redis(url, timeout=settings.redis_timeout)
        try:
            health = await check(redis, settings, consumer=consumer)
        finally:
            await redis.aclose()
    print(json.dumps(health.details, indent=2, sort_keys=True))
    for problem in health.problems:
        print(f"freshviews check: {problem}", file=sys.stderr)
    return 0 if not health.problems else 1


def _serve_metrics(settings: SubscriberSettings) -> None:
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} ({exc.strerror}; another "
            "subscriber on this host?): give each process its own SUBSCRIBER_METRICS_PORT, or 0 for none"
        ) from None
    logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m freshviews.worker [options]``: the subscriber, as ``freshviews subscriber [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m freshviews.worker",
        description="The freshviews subscriber: consume changes, recompute the views they affect, write them to "
        "Redis, sweep. The same as `freshviews subscriber`.",
        epilog=_EPILOG,
    )
    parser.add_argument("--log-level", default="INFO")
    add_options(parser, burst=True)
    args = parser.parse_args(argv)
    configure(args.log_level)
    return run_guarded(run_command, args)
