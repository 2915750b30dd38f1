"""Benchmark 9: freshviews against the TTL cache a user would pick instead.

The same four views, database and write stream (the product's simulator at ``write_rate``), polled by N clients
at ``load_rate_per_client`` each, served by: freshviews as shipped (capture, subscriber, ``/cache/...``), and the
views behind fastapi-cache2's ``@cache(expire=...)`` and cashews' ``@cache(ttl=...)`` on a Redis backend, keyed on
the request path (``tests/bench/ttl_app.py``: no capture, no subscriber; an entry is recomputed when it has expired
and a reader asks).

Per system and N: database statements per minute (backend and subscriber), reads answered / asked and read p99,
and the stampede at expiry (computes of ``stats/global``, which every client reads, per TTL period: 1 means one
reader recomputed it, more means several readers recomputed the same expired entry at once). Freshness from a
probe beside the load, as a page that polls sees it: once a second it reads a random player's page (now in the
cache, as a polled page is), writes a score to that player (``POST /api/scores``), then reads the page every
``PROBE_EVERY`` until it shows the score. Staleness is the first read showing it minus the write's answer (an
upper bound on its commit); the figure a user can quote is the share of writes not readable within 100 ms and
within 1 s. freshviews' figures include its sweep, amortised over the default interval from the warm-up sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from freshviews.scoreboard.simulate import Summary, simulate
from freshviews.worker.settings import SubscriberSettings
from tests.bench.clients import HttpError, Pool, poll
from tests.bench.common import Config, Figures, goal, percentile, ratio, rounded
from tests.bench.load import client_paths
from tests.bench.stack import Stack
from tests.support.metrics import metric, scrape

DEFAULT_SWEEP_INTERVAL = SubscriberSettings.model_fields["sweep_interval"].default
TTL_APP = ("tests.bench.ttl_app:create", "--factory")
#: How often the probe reads the page of the player it just wrote to, seconds.
PROBE_EVERY = 0.02
#: The longest the probe waits for one write to show, beyond the system's TTL, seconds.
PROBE_PATIENCE = 5.0
#: A probe starts this often, seconds: one more write per second for every system alike.
PROBE_PERIOD = 1.0


@dataclass(frozen=True)
class System:
    name: str
    library: str | None = None  # None: freshviews
    ttl: int | None = None

    def path(self, cached_path: str) -> str:
        """A client's ``/cache/<key>`` path as this system serves it."""
        return cached_path if self.library is None else "/ttl/" + cached_path.removeprefix("/cache/")


def systems(config: Config) -> list[System]:
    ttls = (1,) if config.quick else (1, 5, 10)
    out = [System("freshviews")]
    out += [System(f"fastapi-cache2 {t}s", "fastapi-cache2", t) for t in ttls]
    out += [System(f"cashews {t}s", "cashews", t) for t in ((1,) if config.quick else (10,))]
    return out


@dataclass
class Probe:
    staleness: list[float] = field(default_factory=list)
    lost: int = 0
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        seen = sorted(self.staleness)
        total = len(seen) + self.lost
        return {
            "writes": total,
            "not_seen_within_patience": self.lost,
            "errors": self.errors,
            "staleness_p50_ms": _ms(percentile(seen, 50)),
            "staleness_p99_ms": _ms(percentile(seen, 99)),
            "staleness_max_ms": _ms(seen[-1] if seen else None),
            # The share of writes a reader could not see within 100 ms, and within 1 s, of the write's answer.
            "share_not_readable_in_100ms": rounded(ratio(sum(s > 0.1 for s in seen) + self.lost, total), 4),
            "share_not_readable_in_1s": rounded(ratio(sum(s > 1.0 for s in seen) + self.lost, total), 4),
        }


async def probe(stack: Stack, system: System, players: int, until: float, out: Probe, seed: int) -> None:
    """One probe every :data:`PROBE_PERIOD` until ``until``, each on its own player and running on its own: the
    probes add the same writes per second to every system, however long each one's pages take to show them."""
    rng = random.Random(seed)
    pool = Pool("127.0.0.1", stack.app_port, size=int(PROBE_PATIENCE + 12))
    patience = PROBE_PATIENCE + (system.ttl or 0)
    running: set[asyncio.Task[None]] = set()

    async def one(player: int) -> None:
        path = system.path(f"/cache/player/{player}")
        body = json.dumps({"player_id": player, "points": 1}).encode()
        try:
            await pool.request("GET", path)  # the page is being polled: its value is cached
            status, _, payload = await pool.request("POST", "/api/scores", body=body)
        except (HttpError, OSError):
            out.errors += 1
            return
        answered = time.monotonic()
        if status != 201:
            out.errors += 1
            return
        score_id = json.loads(payload)["id"]
        while True:
            try:
                status, _, payload = await pool.request("GET", path)
            except (HttpError, OSError):
                status, payload = 0, b""
            read = time.monotonic()
            if status == 200 and any(line["id"] == score_id for line in json.loads(payload)["recent"]):
                out.staleness.append(read - answered)
                return
            if read - answered > patience:
                out.lost += 1
                return
            await asyncio.sleep(PROBE_EVERY)

    try:
        while time.monotonic() < until:
            task = asyncio.create_task(one(rng.randint(1, players)))
            running.add(task)
            task.add_done_callback(running.discard)
            await asyncio.sleep(PROBE_PERIOD)
        await asyncio.gather(*running)
    finally:
        await pool.close()


async def _window(stack: Stack, system: System, config: Config, n: int) -> dict[str, Any]:
    seed = config.seed
    paths = [[system.path(p) for p in client] for client in client_paths(n, cached=True, players=seed.players,
                                                                          teams=seed.teams)]  # fmt: skip
    pool = Pool("127.0.0.1", stack.app_port, size=min(n, config.load_pool))
    found = Probe()
    window = config.load_window
    snaps: list[tuple[dict[str, float], float, float]] = []

    async def snapshot(at: float) -> None:
        await asyncio.sleep(at)
        counters = await asyncio.to_thread(stack.counters)
        stats = metric(await asyncio.to_thread(scrape, f"{stack.base_url}/metrics"), "ttl_computes_total", view="stats")
        snaps.append((counters, stats, time.monotonic()))

    started = time.monotonic()
    try:
        marks = [asyncio.create_task(snapshot(config.load_warmup)),
                 asyncio.create_task(snapshot(config.load_warmup + window))]  # fmt: skip
        prober = asyncio.create_task(
            probe(stack, system, seed.players, started + config.load_warmup + window, found, seed=n)
        )
        reads = await poll(
            pool, paths, rate_per_client=config.load_rate_per_client, warmup=config.load_warmup, duration=window
        )
        await asyncio.gather(*marks, prober)
    finally:
        await pool.close()
    (before, stats0, t0), (after, stats1, t1) = snaps
    minutes = (t1 - t0) / 60
    queries = (after["app_queries"] - before["app_queries"]) + (after["sub_queries"] - before["sub_queries"])
    summary = reads.summary()
    periods = (t1 - t0) / system.ttl if system.ttl else None
    return {
        "clients": n,
        "window_s": round(t1 - t0, 2),
        "queries_per_min": round(queries / minutes, 1),
        "reads": summary,
        "reads_answered_over_asked": summary["achieved_over_intended"],
        "read_p99_ms": summary["latency_p99_ms"],
        "stats_computes_per_ttl_period": rounded(ratio(stats1 - stats0, periods), 2) if periods else None,
        "probe": found.summary(),
    }


async def _system(system: System, config: Config) -> dict[str, Any]:
    ours = system.library is None
    slug = system.name.replace(" ", "-")
    if ours:
        stack = Stack(
            workdir=config.workdir(f"ttl-{slug}"), database_file=config.database(f"ttl-{slug}"), capture=True,
            sweep_interval=DEFAULT_SWEEP_INTERVAL,
        )  # fmt: skip
    else:
        stack = Stack(
            workdir=config.workdir(f"ttl-{slug}"), database_file=config.database(f"ttl-{slug}"), capture=False,
            app_spec=TTL_APP, extra_env={"TTL_LIBRARY": system.library or "", "TTL_SECONDS": str(system.ttl)},
        )  # fmt: skip
    out: dict[str, Any] = {"library": system.library or "freshviews", "ttl_s": system.ttl, "windows": []}
    stack.start()
    try:
        sweep_per_min = 0.0
        if ours:
            sweep_s = await asyncio.to_thread(stack.wait_warm)
            # The warm-up sweep recomputes every key once: one full sweep, amortised over the default interval.
            sweep_queries = (await asyncio.to_thread(stack.counters))["sub_queries"]
            sweep_per_min = sweep_queries * 60 / (DEFAULT_SWEEP_INTERVAL + sweep_s)
            out["sweep_queries_per_min_amortised"] = round(sweep_per_min, 1)
        writes = Summary()
        writer = asyncio.create_task(
            simulate(
                stack.base_url, config.write_rate, 0, seed=3, players=config.seed.players, teams=config.seed.teams,
                scores=config.seed.scores, summary=writes,
            )
        )  # fmt: skip
        try:
            for n in _clients(config):
                result = await _window(stack, system, config, n)
                result["queries_per_min_with_sweep"] = round(result["queries_per_min"] + sweep_per_min, 1)
                out["windows"].append(result)
                p = result["probe"]
                print(
                    f"  ttl {system.name:18s} N={n:5d}: {result['queries_per_min_with_sweep']:9.1f} queries/min, reads "
                    f"{result['reads_answered_over_asked']} of asked, p99 {result['read_p99_ms']} ms; staleness p50 "
                    f"{p['staleness_p50_ms']} ms, p99 {p['staleness_p99_ms']} ms; not readable in 100 ms / 1 s: "
                    f"{p['share_not_readable_in_100ms']} / {p['share_not_readable_in_1s']}; stats computes per "
                    f"period {result['stats_computes_per_ttl_period']}",
                    flush=True,
                )
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        out["write_errors"] = dict(writes.errors)
    finally:
        stack.stop()
    return out


def _clients(config: Config) -> tuple[int, ...]:
    # N = 100 and 1,000 in a full run; quick mode keeps its own small loads.
    return (100, 1000) if not config.quick else (max(config.load_clients),)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _at(result: dict[str, Any], n: int) -> dict[str, Any] | None:
    return next((w for w in result["windows"] if w["clients"] == n), None)


async def run(config: Config) -> dict[str, Any]:
    measured = {s.name: await _system(s, config) for s in systems(config)}
    figures = Figures()
    goals = []
    low = min(_clients(config))
    ours = _at(measured["freshviews"], low)
    for name, result in measured.items():
        slug = name.replace(" ", "_").replace("-", "_")
        for n in _clients(config):
            w = _at(result, n)
            if w is None:
                continue
            figures.put(f"{slug}_queries_per_min_n{n}", w["queries_per_min_with_sweep"])
            figures.put(f"{slug}_staleness_p50_ms_n{n}", w["probe"]["staleness_p50_ms"], "no probe write was seen")
            figures.put(f"{slug}_not_readable_in_1s_share_n{n}", w["probe"]["share_not_readable_in_1s"], "no probe")
    # The best TTL cache on queries at the longest TTL measured, against ours at the lower N.
    ttl_results = [(name, r) for name, r in measured.items() if r["ttl_s"] is not None]
    longest = max(r["ttl_s"] for _, r in ttl_results)
    best_name, best = min(
        ((name, _at(r, low)) for name, r in ttl_results if r["ttl_s"] == longest),
        key=lambda item: item[1]["queries_per_min_with_sweep"] if item[1] else float("inf"),
    )
    if ours is not None and best is not None:
        q = ratio(ours["queries_per_min_with_sweep"], best["queries_per_min_with_sweep"])
        fresher = ratio(best["probe"]["staleness_p50_ms"], ours["probe"]["staleness_p50_ms"])
        figures.put(f"freshviews_over_best_ttl_{longest}s_queries_n{low}", rounded(q, 3))
        figures.put(f"best_ttl_{longest}s_over_freshviews_staleness_p50_n{low}", rounded(fresher, 1))
        goals.append(goal(f"queries/min, freshviews / {best_name} at N={low}", "< 1", q, None if q is None else q < 1))
        goals.append(
            goal(
                f"median staleness, {best_name} / freshviews at N={low}",
                ">= 50",
                fresher,
                None if fresher is None else fresher >= 50,
            )
        )
    return {
        "conditions": {
            "systems": [s.name for s in systems(config)],
            "clients": list(_clients(config)),
            "requests_per_s_per_client": config.load_rate_per_client,
            "window_s": config.load_window,
            "write_rate_per_s": config.write_rate,
            "ttl_key": "the request path (fastapi-cache2: a key builder of the path; cashews: the view's parameters)",
            "probe": f"one write at a time, then a read every {PROBE_EVERY * 1000:g} ms until it shows",
            "database": f"SQLite, {config.seed.players} players",
        },
        "results": measured,
        "figures": figures.values,
        "missing": figures.missing,
        "goals": goals,
    }
