"""A load generator: realistic scoreboard writes over HTTP at a steady rate, as a game's servers would send them.

Mostly new scores for random players; now and then a score corrected or voided, a player changing region or
team, a team renamed, players joining and leaving. The simulator only knows the ids it was told about (the
seeded ranges) and the ones it created, so a 404 for a row someone else deleted is expected and counted as
``missing``, not as an error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import httpx

from freshviews.scoreboard.models import REGIONS
from freshviews.scoreboard.seed import game_points

logger = logging.getLogger(__name__)

#: How often each kind of write happens, relative to the others.
WEIGHTS: dict[str, float] = {
    "score_create": 80,
    "score_update": 6,
    "score_delete": 4,
    "player_move": 2,
    "player_team": 2,
    "player_create": 2.5,
    "player_delete": 1,
    "team_rename": 2,
    "team_create": 0.3,
    "team_delete": 0.2,
}
PROGRESS_EVERY = 30.0


@dataclass
class Summary:
    """What a run did: successful writes by kind, writes to rows that were gone, and failures by kind."""

    done: Counter[str] = field(default_factory=Counter)
    missing: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def writes(self) -> int:
        return sum(self.done.values())

    def line(self) -> str:
        kinds = ", ".join(f"{kind}={count}" for kind, count in sorted(self.done.items()))
        return (
            f"{self.writes} writes in {self.elapsed:.1f}s ({self.writes / max(self.elapsed, 1e-9):.1f}/s): {kinds}; "
            f"missing={sum(self.missing.values())} errors={sum(self.errors.values())} {dict(self.errors)}"
        )


class _Pool:
    """A set of ids with O(1) add, discard and random choice."""

    def __init__(self, ids: range) -> None:
        self._items = list(ids)
        self._index = {item: i for i, item in enumerate(self._items)}

    def add(self, item: int) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: int) -> None:
        i = self._index.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i

    def choice(self, rng: random.Random) -> int | None:
        return rng.choice(self._items) if self._items else None


Request = tuple[str, str, dict[str, object] | None]


def _plan(kind: str, rng: random.Random, pools: dict[str, _Pool]) -> Request | None:
    """The HTTP request for one write of ``kind``, or None when there is nothing left to write to."""
    player, team, score = (pools[entity].choice(rng) for entity in ("player", "team", "score"))
    name = f"{rng.randrange(10**6)}"
    match kind:
        case "score_create" if player is not None:
            return "POST", "/api/scores", {"player_id": player, "points": game_points(rng)}
        case "score_update" if score is not None:
            return "PATCH", f"/api/scores/{score}", {"points": game_points(rng)}
        case "score_delete" if score is not None:
            return "DELETE", f"/api/scores/{score}", None
        case "player_move" if player is not None:
            return "PATCH", f"/api/players/{player}", {"region": rng.choice(REGIONS)}
        case "player_team" if player is not None:
            # One move in ten leaves the team for no team.
            return "PATCH", f"/api/players/{player}", {"team_id": team if rng.random() > 0.1 else None}
        case "player_create":
            return "POST", "/api/players", {"name": f"Rookie{name}", "region": rng.choice(REGIONS), "team_id": team}
        case "player_delete" if player is not None:
            return "DELETE", f"/api/players/{player}", None
        case "team_rename" if team is not None:
            return "PATCH", f"/api/teams/{team}", {"name": f"Team {name}"}
        case "team_create":
            return "POST", "/api/teams", {"name": f"Team {name}"}
        case "team_delete" if team is not None:
            return "DELETE", f"/api/teams/{team}", None
    return None


_GONE = re.compile(r"(player|team|score) ([0-9]+) does not exist")


async def simulate(
    base_url: str,
    rate: float,
    duration: float,
    seed: int,
    *,
    players: int = 5000,
    teams: int = 200,
    scores: int = 120_000,
    concurrency: int = 32,
    summary: Summary | None = None,
) -> Summary:
    """Send ``rate`` writes per second to the backend at ``base_url`` for ``duration`` seconds (0: until cancelled).

    ``players``/``teams``/``scores`` are the id ranges assumed to exist at the start (the seed counts). Writes
    run concurrently (at most ``concurrency`` at once) so one slow request does not lower the rate. The
    summary is logged at the end, also on cancellation; pass ``summary`` to read it after a cancel.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0 writes/s")
    if duration < 0:
        raise ValueError("duration must be >= 0 (0 = until cancelled)")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    rng = random.Random(seed)
    pools = {
        "player": _Pool(range(1, players + 1)),
        "team": _Pool(range(1, teams + 1)),
        "score": _Pool(range(1, scores + 1)),
    }
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    summary = summary if summary is not None else Summary()
    slots = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_progress = started + PROGRESS_EVERY

    async def one(kind: str) -> None:
        try:
            request = _plan(kind, rng, pools)
            if request is None:
                summary.missing[kind] += 1
                return
            method, url, body = request
            response = await client.request(method, url, json=body)
            _record(summary, kind, method, url, response, pools)
        except httpx.HTTPError as exc:
            summary.errors[f"{kind}:{type(exc).__name__}"] += 1
        except Exception:
            # The boundary of one write: a bug in it is logged and counted, and the run goes on.
            logger.exception("simulated %s failed", kind)
            summary.errors[f"{kind}:bug"] += 1
        finally:
            slots.release()

    logger.info("simulating %.1f writes/s against %s for %s", rate, base_url, f"{duration:g}s" if duration else "ever")
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client, asyncio.TaskGroup() as group:
            sent = 0
            while duration == 0 or loop.time() - started < duration:
                # With every slot busy the backend is not keeping up: fall behind rather than pile up requests.
                await slots.acquire()
                group.create_task(one(rng.choices(kinds, weights)[0]))
                sent += 1
                await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
                if loop.time() >= next_progress:
                    next_progress += PROGRESS_EVERY
                    summary.elapsed = loop.time() - started
                    logger.info("simulator: %s", summary.line())
    finally:
        summary.elapsed = loop.time() - started
        logger.info("simulator done: %s", summary.line())
    return summary


def _record(
    summary: Summary, kind: str, method: str, url: str, response: httpx.Response, pools: dict[str, _Pool]
) -> None:
    entity = kind.split("_", 1)[0]
    if response.is_success:
        summary.done[kind] += 1
        if method == "POST":
            pools[entity].add(response.json()["id"])
        elif method == "DELETE":
            pools[entity].discard(int(url.rsplit("/", 1)[1]))
        return
    gone = _GONE.search(response.text) if response.status_code in (404, 422) else None
    if gone is not None:
        # Someone (often this simulator) deleted the row: forget it and carry on.
        summary.missing[kind] += 1
        pools[gone.group(1)].discard(int(gone.group(2)))
        return
    summary.errors[f"{kind}:{response.status_code}"] += 1
    logger.warning("simulated %s got %d: %s", kind, response.status_code, response.text[:200])
