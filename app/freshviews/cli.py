"""``freshviews``: one command line for every process of the product (``python -m freshviews`` is the same).

- ``freshviews demo``: the reference backend, a subscriber, an embedded Redis and simulated writes, together
  (needs the ``demo`` extra: ``pip install 'freshviews[demo]'``);
- ``freshviews serve myapp.main:app``: an ASGI app under uvicorn, on the listening socket of
  :mod:`freshviews.serving.listen`;
- ``freshviews subscriber --views myapp.views:registry``: the subscriber process;
- ``freshviews sweep --views myapp.views:registry``: one repair pass, its outcome printed as JSON;
- ``freshviews check``: exit 0 while a subscriber is alive and sweeping, 1 otherwise.
- ``freshviews pglog [--drop]``: PostgreSQL's own log read into the change log (``FRESHVIEWS_PGLOG_URL``), or its
  slot and publication dropped.

A configuration mistake ends a command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from freshviews.core.commands import importable_from_here, run_guarded
from freshviews.core.logs import configure
from freshviews.core.settings import ConfigError, load
from freshviews.worker.cli import add_commands as add_worker_commands


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="freshviews",
        description="Keep a Redis cache of expensive API views fresh from change events.",
        epilog="Every process reads REDIS_URL (and FRESHVIEWS_*, SUBSCRIBER_* for its own settings).",
    )
    top.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING or ERROR")
    commands = top.add_subparsers(dest="name", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the reference backend, a subscriber, Redis and simulated writes together"
    )
    demo.add_argument("--port", type=int, help="backend port (default: FRESHVIEWS_PORT or 8000)")
    demo.add_argument("--rate", type=float, default=5.0, help="simulated writes per second (default 5)")
    demo.add_argument("--duration", type=float, default=0.0, help="seconds, 0 = until Ctrl-C (default)")
    demo.set_defaults(command=demo_command)

    serve = commands.add_parser("serve", help="run an ASGI app under uvicorn on the kit's listening socket")
    serve.add_argument("app", nargs="?", help="the app as module:attribute, e.g. myapp.main:app")
    serve.add_argument("--factory", action="store_true", help="the attribute is a function returning the app")
    serve.add_argument("--host", help="default: FRESHVIEWS_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: FRESHVIEWS_PORT or 8000")
    serve.add_argument(
        "--workers", type=int, help="worker processes sharing the socket (default: WEB_CONCURRENCY or 1)"
    )
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=10.0,
        help="seconds a stop waits for open requests and event streams before closing them (default 10)",
    )
    serve.set_defaults(command=serve_command)

    add_worker_commands(commands)
    return top


def demo_command(args: argparse.Namespace) -> int:
    try:
        from freshviews.scoreboard import demo
    except ImportError as exc:
        raise ConfigError(
            f"the demo needs the reference backend's dependencies ({exc.name} is missing): "
            "pip install 'freshviews[demo]'"
        ) from None
    return demo.run(port=args.port, rate=args.rate, duration=args.duration)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from freshviews.serving.listen import log_config, serve
    from freshviews.serving.protocol import deadline_protocol
    from freshviews.serving.settings import ServingSettings

    if not args.app or ":" not in args.app:
        raise ConfigError("name the app to serve as module:attribute, e.g. freshviews serve myapp.main:app")
    importable_from_here()
    overrides = {name: value for name, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = load(ServingSettings, **overrides)
    workers = args.workers or int(os.environ.get("WEB_CONCURRENCY", "1"))
    config = uvicorn.Config(
        args.app,
        factory=args.factory,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=args.log_level.lower(),
        log_config=log_config(args.log_level),
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        # httptools with deadlines on reading a request and a cap on its head (serving/protocol.py).
        http=deadline_protocol(settings),
    )
    # The exit status uvicorn.run gives a server that failed to start (a port in use, an app that failed).
    return 0 if serve(config, settings) else 3


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.name != "serve":  # uvicorn configures logging for the server and its workers itself
        configure(args.log_level)
    return run_guarded(args.command, args)
