"""Benchmark 2: staleness, the time from a write's commit to its new value being readable from the cache.

Writes are new scores (``POST /api/scores``) for random players, sent on a schedule at a given rate. A write
counts as readable at the first moment the stored ``player/{id}`` value includes its score: the bench
listens to the cache's update notifications (published by the same Lua script that writes the value, so the
moment a notification arrives the value is readable) and reads the stored bytes to check that they include
the score. Commit time: the time the capture recorded in the write's transaction (the change's ``t``, 1 ms
resolution, read back from the change log after the window), else, with capture off (the timed warmer, whose
staleness is seconds), the arrival of the write's answer. Both clocks are this machine's.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from freshviews.core.keys import DATA, Keys
from freshviews.worker.settings import SubscriberSettings
from tests.bench.clients import HttpError, Pool
from tests.bench.common import Config, Figures, goal, percentile, ratio, rounded
from tests.bench.stack import Stack, commit_times
from tests.support.metrics import buckets, label_values, metric, quantile, scrape

DEFAULT_SWEEP_INTERVAL = SubscriberSettings.model_fields["sweep_interval"].default
IN_FLIGHT = 64
SAMPLES_KEPT = 4000
#: Relay attempts that failed: their changes wait in the outbox and are relayed later, never lost.
RELAY_ERRORS = "freshviews_outbox_relay_errors_total"
#: The subscriber's histogram of one view's compute time.
COMPUTE = "freshviews_recompute_seconds"
#: The freshness promise per view: commit -> readable p99 within the view's compute p99 plus this, seconds.
FRESH_OVER_COMPUTE = 0.005
#: The subscriber's recomputes by view and trigger ("change": at once, "due": put off by a minimum interval).
RECOMPUTES = "freshviews_recomputes_total"
#: The hot aggregate, its minimum interval in the throttled run (seconds), and the rate that run writes at.
HOT_VIEW = "stats"
HOT_INTERVAL = 1.0
THROTTLED_RATE = 100.0


def change_recomputes(before: str, after: str) -> dict[str, float]:
    """Per view, the recomputes changes caused between two scrapes (at once or put off), sweeps and samples apart."""
    out: dict[str, float] = {}
    for view in label_values(after, RECOMPUTES, "view"):
        n = sum(metric(after, RECOMPUTES, view=view, trigger=t) - metric(before, RECOMPUTES, view=view, trigger=t)
                for t in ("change", "due"))  # fmt: skip
        if n > 0:
            out[view] = n
    return out


def compute_times(before: str, after: str) -> dict[str, dict[str, float | None]]:
    """Per view, its computes between two scrapes of the subscriber's /metrics: count, mean, p50 and p99 (ms; the
    quantiles interpolated within the histogram's buckets)."""
    out: dict[str, dict[str, float | None]] = {}
    for view in label_values(after, COMPUTE + "_count", "view"):
        count = metric(after, COMPUTE + "_count", view=view) - metric(before, COMPUTE + "_count", view=view)
        if count <= 0:
            continue
        spent = metric(after, COMPUTE + "_sum", view=view) - metric(before, COMPUTE + "_sum", view=view)
        old = buckets(before, COMPUTE, view=view)
        new = {edge: n - old.get(edge, 0.0) for edge, n in buckets(after, COMPUTE, view=view).items()}
        p50, p99 = quantile(new, 0.5), quantile(new, 0.99)
        out[view] = {
            "computes": count,
            "mean_ms": _ms(spent / count),
            "p50_ms": _ms(p50),
            "p99_ms": _ms(p99),
        }
    return out


@dataclass
class Write:
    player: int
    sent: float
    committed: float | None = None
    score_id: int | None = None
    readable: float | None = None


@dataclass
class Tracker:
    """Matches update notifications of ``player/{id}`` to the writes whose score they include."""

    redis: Redis
    keys: Keys
    #: player -> writes not yet seen in the cache (score id known or not yet).
    open: dict[int, list[Write]] = field(default_factory=lambda: defaultdict(list))
    #: player -> (arrival time, score ids in the stored value) of notifications while a write was in flight.
    seen: dict[int, list[tuple[float, list[int]]]] = field(default_factory=lambda: defaultdict(list))
    done: list[Write] = field(default_factory=list)

    async def listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.updates_channel)
        try:
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                arrived = time.time()
                _, _, key = message["data"].decode().partition(" ")
                if not key.startswith("player/"):
                    continue
                player = int(key.split("/", 1)[1])
                if player not in self.open:
                    continue
                data = await self.redis.hget(self.keys.value(key), DATA)
                ids = [line["id"] for line in json.loads(data)["recent"]] if data else []
                self.seen[player].append((arrived, ids))
                self._match(player)
        finally:
            await pubsub.aclose()

    def _match(self, player: int) -> None:
        still: list[Write] = []
        for write in self.open[player]:
            if write.score_id is not None:
                for arrived, ids in self.seen[player]:
                    # The newest ten scores are shown; a score pushed out by newer ones is in the value too.
                    if arrived >= write.sent and (
                        write.score_id in ids or (len(ids) >= 10 and min(ids) > write.score_id)
                    ):
                        write.readable = arrived
                        break
            (self.done if write.readable is not None else still).append(write)
        if still:
            self.open[player] = still
        else:
            del self.open[player]
            self.seen.pop(player, None)

    def answered(self, write: Write) -> None:
        self._match(write.player)


async def measure(stack: Stack, *, rate: float, window: float, players: int, drain: float, seed: int) -> dict[str, Any]:
    keys = Keys()
    failed_before = metric(await asyncio.to_thread(scrape, f"{stack.base_url}/metrics"), RELAY_ERRORS)
    computed_before = await asyncio.to_thread(scrape, stack.metrics_url)
    redis = Redis.from_url(stack.redis_url)
    tracker = Tracker(redis, keys)
    listener = asyncio.create_task(tracker.listen())
    await asyncio.sleep(0.2)  # the subscription is in place before the first write
    pool = Pool("127.0.0.1", stack.app_port, size=IN_FLIGHT)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    writes: list[Write] = []
    latencies: list[float] = []
    errors = 0
    skipped = 0
    busy = 0

    async def one(player: int) -> None:
        nonlocal errors, busy
        write = Write(player=player, sent=time.time())
        tracker.open[player].append(write)
        body = json.dumps({"player_id": player, "points": rng.randint(1, 300)}).encode()
        try:
            status, _, payload = await pool.request("POST", "/api/scores", body=body)
        except (HttpError, OSError):
            status, payload = 0, b""
        finally:
            busy -= 1
        answered = time.time()
        if status != 201:
            errors += 1
            tracker.open[player].remove(write)
            if not tracker.open[player]:
                del tracker.open[player]
            return
        out = json.loads(payload)
        write.score_id = out["id"]
        write.committed = None if stack.capture else answered
        latencies.append(answered - write.sent)
        writes.append(write)
        tracker.answered(write)

    started = loop.time()
    cpu0 = time.process_time()
    tasks = set()
    sent = 0
    while loop.time() - started < window:
        if busy >= IN_FLIGHT:
            skipped += 1  # every connection is waiting on the backend: this tick is not sent
        else:
            busy += 1
            task = asyncio.create_task(one(rng.randint(1, players)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += 1
        await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
    elapsed = loop.time() - started
    if tasks:
        await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    deadline = loop.time() + drain
    while tracker.open and loop.time() < deadline:  # noqa: ASYNC110 (a deadline, not an event, ends the drain)
        await asyncio.sleep(0.05)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await pool.close()
    if stack.capture:
        committed = await commit_times(redis, "scores")
        for w in writes:
            w.committed = committed.get(str(w.score_id))
    await redis.aclose()
    failed = metric(await asyncio.to_thread(scrape, f"{stack.base_url}/metrics"), RELAY_ERRORS) - failed_before
    computed_after = await asyncio.to_thread(scrape, stack.metrics_url)
    computes = compute_times(computed_before, computed_after)
    stale = sorted(w.readable - w.committed for w in writes if w.readable is not None and w.committed is not None)
    step = max(1, len(stale) // SAMPLES_KEPT)
    return {
        "intended_writes_per_s": rate,
        "achieved_writes_per_s": round(len(writes) / elapsed, 2),
        "skipped_ticks": skipped,
        "write_errors": errors,
        "writes": len(writes),
        "seen_in_cache": len(stale),
        "not_seen_within_drain": len(writes) - len(stale),
        # A relay that failed leaves its rows in the outbox for the next one: slower, never lost.
        "relay_errors": failed,
        "drain_s": drain,
        "staleness_p50_ms": _ms(percentile(stale, 50)),
        "staleness_p90_ms": _ms(percentile(stale, 90)),
        "staleness_p99_ms": _ms(percentile(stale, 99)),
        "staleness_max_ms": _ms(stale[-1] if stale else None),
        "write_latency_p50_ms": _ms(percentile(latencies, 50)),
        "bench_cpu_share_of_one_core": round(cpu / elapsed, 3),
        "staleness_samples_ms": [round(s * 1000, 2) for s in stale[::step]],
        # Every view's compute time in the window (the sweep's computes included): what freshness is judged by.
        "compute_ms": computes,
        "change_recomputes_per_s": {
            view: round(n / elapsed, 2) for view, n in change_recomputes(computed_before, computed_after).items()
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _line(name: str, r: dict[str, Any]) -> str:
    return (
        f"  freshness {name:7s} {r['intended_writes_per_s']:6.0f} writes/s (achieved {r['achieved_writes_per_s']}): "
        f"p50 {r['staleness_p50_ms']} ms, p99 {r['staleness_p99_ms']} ms, max {r['staleness_max_ms']} ms, "
        f"seen {r['seen_in_cache']}/{r['writes']}, relay errors {r['relay_errors']:g}; change-driven recomputes/s "
        f"{r['change_recomputes_per_s']}\n"
        + "".join(
            f"    compute {view}: p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms ({c['computes']:g} computes)\n"
            for view, c in sorted(r["compute_ms"].items())
        ).rstrip("\n")
    )


async def run(config: Config) -> dict[str, Any]:
    players = config.seed.players
    results: dict[str, Any] = {"change": {}, "warmer": {}}
    change = Stack(
        workdir=config.workdir("fresh-change"), database_file=config.database("fresh-change"),
        capture=True, sweep_interval=DEFAULT_SWEEP_INTERVAL,
    ).start()  # fmt: skip
    try:
        await asyncio.to_thread(change.wait_warm)
        for i, rate in enumerate(config.fresh_rates):
            r = await measure(
                change, rate=rate, window=config.fresh_window, players=players, drain=config.fresh_drain, seed=i
            )
            results["change"][f"{rate:g}"] = r
            print(_line("change", r), flush=True)
    finally:
        change.stop()
    # The same load with the hot aggregate's minimum interval set: it is recomputed at most once per interval,
    # the cheap views stay as fresh.
    throttled = Stack(
        workdir=config.workdir("fresh-throttled"), database_file=config.database("fresh-throttled"),
        capture=True, sweep_interval=DEFAULT_SWEEP_INTERVAL,
        extra_env={"SUBSCRIBER_MIN_INTERVALS": json.dumps({HOT_VIEW: HOT_INTERVAL})},
    ).start()  # fmt: skip
    try:
        await asyncio.to_thread(throttled.wait_warm)
        r = await measure(
            throttled, rate=THROTTLED_RATE, window=config.fresh_window, players=players, drain=config.fresh_drain,
            seed=7,
        )  # fmt: skip
        results["throttled"] = {f"{THROTTLED_RATE:g}": r}
        print(_line(f"{HOT_VIEW}≥{HOT_INTERVAL:g}s", r), flush=True)
    finally:
        throttled.stop()
    warmer = Stack(
        workdir=config.workdir("fresh-warmer"), database_file=config.database("fresh-warmer"),
        capture=False, sweep_interval=config.warmer_interval,
    ).start()  # fmt: skip
    try:
        warm_s = await asyncio.to_thread(warmer.wait_warm)
        # A write waits at most one interval plus one sweep; the warm-up sweep's duration estimates the latter.
        drain = config.warmer_interval + 2 * warm_s + 5
        r = await measure(
            warmer, rate=config.warmer_fresh_rate, window=config.warmer_fresh_window, players=players, drain=drain,
            seed=99,
        )  # fmt: skip
        results["warmer"][f"{config.warmer_fresh_rate:g}"] = r
        results["warmer_full_sweep_s"] = round(warm_s, 2)
        print(_line("warmer", r), flush=True)
    finally:
        warmer.stop()
    figures = Figures()
    for rate in config.fresh_rates:
        r = results["change"][f"{rate:g}"]
        for q in ("p50", "p99"):
            figures.put(f"change_staleness_{q}_ms_at_{rate:g}_per_s", r[f"staleness_{q}_ms"], "no write was seen")
        figures.put(f"change_achieved_writes_per_s_at_{rate:g}", r["achieved_writes_per_s"])
    goals = []
    for rate in config.fresh_rates:
        r = results["change"][f"{rate:g}"]
        player = r["compute_ms"].get("player", {})
        figures.put(f"player_compute_p99_ms_at_{rate:g}_per_s", player.get("p99_ms"), "no player was computed")
        bound = None if player.get("p99_ms") is None else player["p99_ms"] + FRESH_OVER_COMPUTE * 1000
        p99 = r["staleness_p99_ms"]
        goals.append(
            goal(
                f"player/{{id}} commit -> readable p99 at {rate:g} writes/s, ms / its compute p99 + 5 ms",
                f"<= {rounded(bound, 1)}" if bound is not None else "<= compute p99 + 5 ms",
                p99,
                None if p99 is None or bound is None else p99 <= bound,
            )
        )
    t = results["throttled"][f"{THROTTLED_RATE:g}"]
    plain = results["change"].get(f"{THROTTLED_RATE:g}")
    hot = t["change_recomputes_per_s"].get(HOT_VIEW)
    figures.put(f"{HOT_VIEW}_recomputes_per_s_throttled_at_{THROTTLED_RATE:g}", hot, f"{HOT_VIEW} never recomputed")
    figures.put(
        f"{HOT_VIEW}_recomputes_per_s_unthrottled_at_{THROTTLED_RATE:g}",
        plain["change_recomputes_per_s"].get(HOT_VIEW) if plain else None,
        f"change-driven not measured at {THROTTLED_RATE:g} writes/s",
    )
    figures.put(f"player_staleness_p99_ms_throttled_at_{THROTTLED_RATE:g}", t["staleness_p99_ms"], "no write was seen")
    # At most one per interval over the window, one at its start (nothing computed the key in the process yet)
    # and one for where the window cuts an interval.
    bound = (config.fresh_window // HOT_INTERVAL + 2) / config.fresh_window
    goals.append(
        goal(
            f"{HOT_VIEW} recomputes/s at {THROTTLED_RATE:g} writes/s with a {HOT_INTERVAL:g} s minimum interval",
            f"<= {bound:.2f}",
            hot,
            None if hot is None else hot <= bound,
        )
    )
    w = results["warmer"][f"{config.warmer_fresh_rate:g}"]
    for q in ("p50", "p99"):
        figures.put(f"warmer_staleness_{q}_ms_at_{config.warmer_fresh_rate:g}_per_s", w[f"staleness_{q}_ms"])
    same_rate = results["change"].get(f"{config.warmer_fresh_rate:g}")
    figures.put(
        "warmer_over_change_median_staleness",
        rounded(ratio(w["staleness_p50_ms"], same_rate["staleness_p50_ms"] if same_rate else None), 1),
        f"change-driven not measured at {config.warmer_fresh_rate:g} writes/s",
    )
    return {
        "conditions": {
            "write": "POST /api/scores for a random player (uniform over the seeded players)",
            "change_driven": f"capture on, SUBSCRIBER_SWEEP_INTERVAL={DEFAULT_SWEEP_INTERVAL:g}",
            "warmer": f"capture off, SUBSCRIBER_SWEEP_INTERVAL={config.warmer_interval:g}",
            "throttled": f"as change_driven, SUBSCRIBER_MIN_INTERVALS={{{HOT_VIEW!r}: {HOT_INTERVAL:g}}}, "
            f"at {THROTTLED_RATE:g} writes/s",
            "window_s": config.fresh_window,
            "warmer_window_s": config.warmer_fresh_window,
            "max_writes_in_flight": IN_FLIGHT,
            "readable": "update notification received and the stored player/{id} value includes the score",
            "commit_time": "the change's commit time (t, ms) recorded in the write's transaction; with capture off "
            "the write's answer (warmer)",
            "database": f"SQLite, {config.seed.players} players",
        },
        "results": results,
        "figures": figures.values,
        "missing": figures.missing,
        "goals": goals,
    }
