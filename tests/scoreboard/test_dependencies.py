"""The scoreboard's declared dependencies and effects: every key whose value a batch of writes changes is among the
keys the batch's changes name, whatever the writes and however many a batch holds.

The writes go through the real write routes and their real capture; the changes are read back from the change
log; every view is computed before and after the batch; the keys whose values differ must all be affected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshviews.core import MISSING
from freshviews.scoreboard import ranking
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.models import REGIONS
from freshviews.scoreboard.views import Leaderboard, PlayerDetail, compute_leaderboard, compute_player, registry
from tests.support.changes import Log

GONE = "<missing>"


@pytest.fixture(autouse=True)
def small_rank_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    # The small database has ~15 players in its biggest region: a cut at 5 makes the top-N logic matter.
    monkeypatch.setattr(ranking, "RANKED", 5)


async def snapshot(db: Database) -> dict[str, str]:
    out = {}
    for key, view_key in (await registry.all_keys(db)).items():
        value = await view_key.view.compute(db, **view_key.params)
        out[key] = GONE if value is MISSING else value.model_dump_json()
    return out


async def write(client: httpx.AsyncClient, method: str, url: str, body: Any = None) -> httpx.Response:
    response = await client.request(method, url, json=body)
    # A random write may name a row an earlier one deleted: that is refused, and changes nothing.
    assert response.is_success or "does not exist" in response.text, response.text
    return response


async def check_batch(db: Database, log: Log, before: dict[str, str]) -> set[str]:
    """Assert the batch since ``before`` affected every key it changed; return the changed keys."""
    changes = await log.new()
    after = await snapshot(db)
    changed = {k for k in before.keys() | after.keys() if before.get(k, GONE) != after.get(k, GONE)}
    affected = await registry.affected(db, changes)
    assert (affected.invalid, affected.failed) == ({}, {})
    missed = changed - set(affected.keys)
    assert not missed, f"missed {sorted(missed)} for {[c.model_dump(exclude_none=True) for c in changes]}"
    return changed


async def board(db: Database, region: str) -> Leaderboard:
    result = await compute_leaderboard(db, region=region)
    assert len(result.entries) >= 8, "the scenario needs a region with 8+ players"
    return result


async def page(db: Database, player_id: int) -> PlayerDetail:
    result = await compute_player(db, player_id=player_id)
    assert isinstance(result, PlayerDetail)
    return result


Scenario = Callable[[httpx.AsyncClient, Database], Awaitable[None]]


async def score_lifts_a_player_into_the_top(client: httpx.AsyncClient, db: Database) -> None:
    entries = (await board(db, "eu")).entries
    points = entries[1].total - entries[7].total + 1
    await write(client, "POST", "/api/scores", {"player_id": entries[7].id, "points": points})


async def small_score_at_the_bottom(client: httpx.AsyncClient, db: Database) -> None:
    last = (await board(db, "eu")).entries[-1]
    await write(client, "POST", "/api/scores", {"player_id": last.id, "points": 3})


async def score_corrected_down(client: httpx.AsyncClient, db: Database) -> None:
    top = await page(db, (await board(db, "eu")).entries[0].id)
    biggest = max(top.recent, key=lambda s: s.points)
    await write(client, "PATCH", f"/api/scores/{biggest.id}", {"points": -1000})


async def score_deleted(client: httpx.AsyncClient, db: Database) -> None:
    top = await page(db, (await board(db, "eu")).entries[2].id)
    biggest = max(top.recent, key=lambda s: s.points)
    await write(client, "DELETE", f"/api/scores/{biggest.id}")


async def top_player_moves_region(client: httpx.AsyncClient, db: Database) -> None:
    top = (await board(db, "eu")).entries[1]
    await write(client, "PATCH", f"/api/players/{top.id}", {"region": "na"})


async def player_changes_team(client: httpx.AsyncClient, db: Database) -> None:
    player = await page(db, 1)
    await write(client, "PATCH", "/api/players/1", {"team_id": 1 if player.team_id != 1 else 2})


async def player_leaves_team(client: httpx.AsyncClient, db: Database) -> None:
    for entry in (await board(db, "eu")).entries:
        if (await page(db, entry.id)).team_id is not None:
            await write(client, "PATCH", f"/api/players/{entry.id}", {"team_id": None})
            return
    raise AssertionError("no eu player has a team")


async def player_renamed(client: httpx.AsyncClient, db: Database) -> None:
    await write(client, "PATCH", f"/api/players/{(await board(db, 'eu')).entries[0].id}", {"name": "Renamed"})


async def player_joins(client: httpx.AsyncClient, db: Database) -> None:
    await write(client, "POST", "/api/players", {"name": "New", "region": "eu", "team_id": 3})


async def top_player_deleted(client: httpx.AsyncClient, db: Database) -> None:
    await write(client, "DELETE", f"/api/players/{(await board(db, 'eu')).entries[0].id}")


async def team_renamed(client: httpx.AsyncClient, db: Database) -> None:
    await write(client, "PATCH", "/api/teams/2", {"name": "Renamed"})


async def team_deleted(client: httpx.AsyncClient, db: Database) -> None:
    await write(client, "DELETE", "/api/teams/3")


async def two_scores_past_the_cut(client: httpx.AsyncClient, db: Database) -> None:
    # The hole of per-change windows: the player ranked RANKED goes to RANKED + 1, then RANKED + 2, in one batch.
    entries = (await board(db, "eu")).entries
    cut = entries[ranking.RANKED - 1]
    for climber in entries[ranking.RANKED : ranking.RANKED + 2]:
        await write(client, "POST", "/api/scores", {"player_id": climber.id, "points": cut.total - climber.total + 1})


SCENARIOS: list[Scenario] = [
    score_lifts_a_player_into_the_top,
    small_score_at_the_bottom,
    score_corrected_down,
    score_deleted,
    top_player_moves_region,
    player_changes_team,
    player_leaves_team,
    player_renamed,
    player_joins,
    top_player_deleted,
    team_renamed,
    team_deleted,
    two_scores_past_the_cut,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_a_write_affects_every_key_it_changes(
    scenario: Scenario, client: httpx.AsyncClient, db: Database, log: Log
) -> None:
    before = await snapshot(db)
    await scenario(client, db)
    changed = await check_batch(db, log, before)
    assert changed, "the scenario changed nothing; it tests nothing"


async def test_the_page_pushed_past_the_cut_by_two_writes_is_affected(
    client: httpx.AsyncClient, db: Database, log: Log
) -> None:
    entries = (await board(db, "eu")).entries
    pushed = entries[ranking.RANKED - 1]
    before = await snapshot(db)
    await two_scores_past_the_cut(client, db)
    assert (await page(db, pushed.id)).rank is None  # it showed RANKED, now it shows none
    assert f"player/{pushed.id}" in await check_batch(db, log, before)


async def test_a_player_tied_with_the_old_total_is_in_the_window(
    client: httpx.AsyncClient, db: Database, log: Log
) -> None:
    entries = (await board(db, "eu")).entries
    mover, tied = entries[7], entries[3]
    await write(client, "POST", "/api/scores", {"player_id": mover.id, "points": tied.total - mover.total})
    await log.new()
    before = await snapshot(db)
    await write(client, "POST", "/api/scores", {"player_id": mover.id, "points": 1})
    assert f"player/{tied.id}" in await check_batch(db, log, before)  # the mover now ranks above it


async def test_a_single_score_names_a_handful_of_keys_not_every_player(
    client: httpx.AsyncClient, db: Database, log: Log
) -> None:
    await small_score_at_the_bottom(client, db)
    affected = await registry.affected(db, await log.new())
    players = [k for k in affected.keys if k.startswith("player/")]
    assert 1 <= len(players) <= 3, players


async def test_effects_cost_a_few_queries_per_batch_not_one_per_change(
    client: httpx.AsyncClient, db: Database, log: Log
) -> None:
    leaders = (await board(db, "eu")).entries
    for entry in leaders[:10]:
        await write(client, "POST", "/api/scores", {"player_id": entry.id, "points": 5})
    changes = await log.new()
    assert len(changes) == 20  # ten scores, ten player totals
    queries = db.queries
    await registry.affected(db, changes)
    # One region: the cut and the crossed players; no renamed team: nothing more.
    assert db.queries - queries == 2


WRITE = st.one_of(
    st.tuples(st.just("score"), st.integers(1, 60), st.integers(-200, 400)),
    st.tuples(st.just("correct"), st.integers(1, 600), st.integers(-200, 400)),
    st.tuples(st.just("void"), st.integers(1, 600), st.just(0)),
    st.tuples(st.just("move"), st.integers(1, 60), st.sampled_from(REGIONS)),
    st.tuples(st.just("team"), st.integers(1, 60), st.one_of(st.none(), st.integers(1, 6))),
    st.tuples(st.just("rename"), st.integers(1, 60), st.just("")),
    st.tuples(st.just("delete"), st.integers(1, 60), st.just("")),
    st.tuples(st.just("join"), st.sampled_from(REGIONS), st.one_of(st.none(), st.integers(1, 6))),
    st.tuples(st.just("rename_team"), st.integers(1, 6), st.just("")),
    st.tuples(st.just("drop_team"), st.integers(1, 6), st.just("")),
)


async def apply(client: httpx.AsyncClient, write_: tuple[Any, Any, Any]) -> None:
    kind, a, b = write_
    match kind:
        case "score":
            await write(client, "POST", "/api/scores", {"player_id": a, "points": b})
        case "correct":
            await write(client, "PATCH", f"/api/scores/{a}", {"points": b})
        case "void":
            await write(client, "DELETE", f"/api/scores/{a}")
        case "move":
            await write(client, "PATCH", f"/api/players/{a}", {"region": b})
        case "team":
            await write(client, "PATCH", f"/api/players/{a}", {"team_id": b})
        case "rename":
            await write(client, "PATCH", f"/api/players/{a}", {"name": f"P{a}x"})
        case "delete":
            await write(client, "DELETE", f"/api/players/{a}")
        case "join":
            await write(client, "POST", "/api/players", {"name": "J", "region": a, "team_id": b})
        case "rename_team":
            await write(client, "PATCH", f"/api/teams/{a}", {"name": f"T{a}x"})
        case "drop_team":
            await write(client, "DELETE", f"/api/teams/{a}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(WRITE, min_size=1, max_size=8), min_size=1, max_size=4))
async def test_random_batches_of_writes_affect_every_key_they_change(
    batches: list[list[tuple[Any, Any, Any]]], client: httpx.AsyncClient, db: Database, log: Log
) -> None:
    # The database carries on from one example to the next: later examples start from earlier ones' worlds.
    for batch in batches:
        await log.new()
        before = await snapshot(db)
        for one in batch:
            await apply(client, one)
        await check_batch(db, log, before)
