"""Benchmark 7: the consistency sampler's database cost per sample, and how many samples it takes to find a hole.

The scoreboard's views over the seeded SQLite database, cached whole by a warm-up, sampled in this process
(``Sampler.step``, the sample loop's body, without its pacing) so that the statements and their time can be
counted with SQLAlchemy's cursor events on the scoreboard's engine. Then holes are planted one at a time, each
found and then the keys it left stale recomputed: a player's name changed with raw SQL, which no capture sees (to
the sampler a lost change and a missed dependency look alike), and the samples are counted from the write to the
sample that found one of the keys it left stale. No changes flow meanwhile, so every pick walks the catalogue:
the worst case is one pass (K samples); with writes flowing, half the picks go to busy views, which makes it two
passes (2K) in the worst case, and shorter where the hole is in a view that is written. Time to detect =
samples / rate, plus the writers' grace (1 s) to judge it.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from sqlalchemy import event, text

from freshviews.core.connections import create_redis
from freshviews.core.embedded import EmbeddedRedis
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.views import registry
from freshviews.worker.recompute import Recomputer
from freshviews.worker.sampler import HOOK_GRACE
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.bench.common import Config, Figures, rounded
from tests.bench.subscriber import RoundTrips
from tests.support.helpers import redis_executable

#: Sample rates the detection time and the database load are reported at, samples per second.
RATES = (1.0, 10.0, 100.0)


class StatementClock:
    """Statements an engine executed and the time they took (cursor execute to its return)."""

    def __init__(self, engine: Any) -> None:
        self.statements = 0
        self.seconds = 0.0
        sync = engine.sync_engine

        @event.listens_for(sync, "before_cursor_execute")
        def _before(conn: Any, *_args: Any) -> None:
            conn.info["bench_started"] = time.perf_counter()

        @event.listens_for(sync, "after_cursor_execute")
        def _after(conn: Any, *_args: Any) -> None:
            self.statements += 1
            self.seconds += time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())


def _unexplained(sub: Subscriber[Any]) -> int:
    return sum(t.totals["unexplained"] for t in sub.sampler.tallies.values())


async def run(config: Config) -> dict[str, Any]:
    quick = config.quick
    samples_measured = 300 if quick else 2000
    holes = 5 if quick else 12
    db = open_database(f"sqlite+aiosqlite:///{config.database('sampler')}")
    clock = StatementClock(db.engine)
    server = EmbeddedRedis(config.workdir("sampler") / "redis", executable=redis_executable())
    server.start()
    redis = create_redis(server.url, timeout=30)
    rng = random.Random(7)
    found: list[int] = []
    try:
        settings = SubscriberSettings(redis_url=server.url, metrics_port=0, consumer="bench-sampler", sweep_rate=10_000)
        sub: Subscriber[Any] = Subscriber(redis=redis, registry=registry, ctx=db, settings=settings)
        await sub.start()  # the warm-up: every key cached
        cached = len(await sub.store.cached_view_keys())
        sampler = sub.sampler
        repair = Recomputer(sub.store, db, concurrency=2)

        # Cost: samples of a cache that is fresh (the common case).
        statements0, seconds0 = clock.statements, clock.seconds
        with RoundTrips() as trips:
            started = time.perf_counter()
            for _ in range(samples_measured):
                await sampler.step()
            wall = time.perf_counter() - started
        statements = (clock.statements - statements0) / samples_measured
        db_ms = (clock.seconds - seconds0) * 1000 / samples_measured
        wall_ms = wall * 1000 / samples_measured
        round_trips = trips.count / samples_measured
        print(
            f"  sampler: {statements:.2f} statements, {db_ms:.3f} ms DB time, {wall_ms:.2f} ms wall, "
            f"{round_trips:.2f} Redis round trips per sample over {cached} keys",
            flush=True,
        )

        # Holes: one at a time, each found, then the rest of what it left stale repaired by a sweep.
        players = [row[0] for row in (await _query(db, "SELECT id FROM players"))]
        for hole in range(holes):
            player = rng.choice(players)
            async with db.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE players SET name = :name WHERE id = :id"), {"name": f"hole {hole}", "id": player}
                )
            before, opened = _unexplained(sub), sampler.picks
            deadline = time.monotonic() + (60 if quick else 300)
            while _unexplained(sub) == before and time.monotonic() < deadline:
                await sampler.step()
            picks = [
                t.last_unexplained["pick"] - opened
                for t in sampler.tallies.values()
                if t.last_unexplained is not None and t.last_unexplained["pick"] > opened
            ]
            if picks:
                found.append(min(picks))
                print(f"  hole {hole} (player {player}) found after {min(picks)} samples", flush=True)
            # The rest of what it left stale, recomputed (a sweep of every key would take longer than the hunt).
            ((team, region),) = await _query(db, f"SELECT team_id, region FROM players WHERE id = {int(player)}")
            stale = [f"player/{player}", f"leaderboard/{region}", "stats/global"] + ([f"team/{team}"] if team else [])
            await repair.run({k: registry.parse(k) for k in stale}, trigger="sweep")
            while sampler.undecided:
                await sampler.step()
    finally:
        await redis.aclose()
        server.stop()
        await db.close()

    figures = Figures()
    figures.put("statements_per_sample", rounded(statements, 2))
    figures.put("db_ms_per_sample", rounded(db_ms, 3))
    figures.put("wall_ms_per_sample", rounded(wall_ms, 3))
    figures.put("redis_round_trips_per_sample", rounded(round_trips, 2))
    reason = "no planted hole was found within the deadline"
    median = statistics.median(found) if found else None
    worst = max(found) if found else None
    figures.put("hole_found_median_samples", median, reason)
    figures.put("hole_found_worst_samples", worst, reason)
    for rate in RATES:
        tag = f"{rate:g}".replace(".", "_")
        figures.put(f"db_statements_per_s_at_{tag}_per_s", rounded(statements * rate, 1))
        figures.put(f"db_busy_share_at_{tag}_per_s", rounded(db_ms * rate / 1000, 5))
        figures.put(
            f"hole_found_median_s_at_{tag}_per_s", rounded(median / rate + HOOK_GRACE, 1) if median else None, reason
        )
        figures.put(
            f"hole_found_worst_s_at_{tag}_per_s", rounded(2 * cached / rate + HOOK_GRACE, 1), "bound: 2K / rate + grace"
        )
    return {
        "conditions": {
            "database": (
                f"SQLite, {config.seed.players} players, {config.seed.teams} teams, {config.seed.scores} scores"
            ),
            "keys_cached": cached,
            "samples_measured": samples_measured,
            "holes_planted": holes,
            "hole": "a player's name changed by raw SQL (no capture): player, team and leaderboard keys go stale",
            "mode": "Sampler.step() in the bench process, unpaced; no changes flowing (every pick walks the catalogue)",
            "rates_reported": list(RATES),
            "worst_bound": "2K samples (half the picks walk the catalogue) + the 1 s grace to judge it",
        },
        "holes_found_after_samples": found,
        "figures": figures.values,
        "missing": figures.missing,
        "goals": [
            {
                "goal": "database statements per sample (one compute)",
                "target": "<= 5",
                "measured": rounded(statements, 2),
                "met": statements <= 5,
                "note": "",
            },
            {
                "goal": "every planted hole found",
                "target": f"{holes}",
                "measured": len(found),
                "met": len(found) == holes,
                "note": "",
            },
        ],
    }


async def _query(db: Any, sql: str) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())
