"""``python -m freshviews.scoreboard {seed,simulate}``: the reference backend's own tools.

The backend itself runs with ``freshviews serve freshviews.scoreboard.main:create_app --factory``, and the whole
demo with ``freshviews demo``. Settings come from the environment: ``DATABASE_URL``, ``APP_*`` and the kit's.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from freshviews.core.commands import run_guarded
from freshviews.core.logs import configure
from freshviews.core.settings import load
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.seed import drop_schema, ensure_seeded
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.simulate import simulate


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m freshviews.scoreboard",
        description="Tools of the freshviews reference backend, a live game scoreboard.",
        epilog="Configuration: DATABASE_URL, APP_SEED_*, FRESHVIEWS_DATA_DIR (see freshviews/scoreboard/settings.py).",
    )
    top.add_argument("--log-level", default="INFO")
    commands = top.add_subparsers(dest="name", required=True)

    seed = commands.add_parser("seed", help="create the schema and seed the database if it is empty")
    seed.add_argument("--reset", action="store_true", help="drop every table first")
    seed.set_defaults(command=seed_command)

    sim = commands.add_parser("simulate", help="send realistic writes to a running backend")
    sim.add_argument("--url", help="backend base URL (default: http://FRESHVIEWS_HOST:FRESHVIEWS_PORT)")
    sim.add_argument("--rate", type=float, default=5.0, help="writes per second (default 5)")
    sim.add_argument("--duration", type=float, default=0.0, help="seconds, 0 = until Ctrl-C (default)")
    sim.add_argument("--seed", type=int, default=1, help="random seed of the write sequence")
    sim.set_defaults(command=simulate_command)
    return top


def seed_command(args: argparse.Namespace) -> int:
    settings = load(AppSettings)
    return asyncio.run(_seed(settings, reset=args.reset))


def simulate_command(args: argparse.Namespace) -> int:
    settings = load(AppSettings)
    url = args.url or f"http://{settings.host}:{settings.port}"
    summary = asyncio.run(
        simulate(
            url,
            args.rate,
            args.duration,
            args.seed,
            players=settings.seed_players,
            teams=settings.seed_teams,
            scores=settings.seed_scores,
        )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure(args.log_level)
    return run_guarded(args.command, args)
