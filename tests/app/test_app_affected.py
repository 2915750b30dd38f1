"""affected(): every key whose value a write changes is among the keys its change maps to.

The scenarios go through the real write routes and read the change they published from the stream, then
compare every view's value before and after the write with the keys ``registry.affected_keys`` returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from freshviews.core.events import Change, Operation, decode
from freshviews.core.keys import Keys
from freshviews.core.views import MISSING
from freshviews.scoreboard import ranking, views
from freshviews.scoreboard.db import Database
from freshviews.scoreboard.views import Leaderboard, PlayerDetail, compute_leaderboard, compute_player, registry

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


async def write(client: httpx.AsyncClient, redis: Redis, method: str, url: str, body: Any = None) -> Change:
    response = await client.request(method, url, json=body)
    assert response.is_success, response.text
    [change_id] = response.json()["change_ids"]
    [(_, fields)] = await redis.xrange(Keys().changes, min=change_id, max=change_id)
    return decode(fields)


async def board(db: Database, region: str) -> Leaderboard:
    result = await compute_leaderboard(db, region=region)
    assert len(result.entries) >= 8, "the scenario needs a region with 8+ players"
    return result


async def page(db: Database, player_id: int) -> PlayerDetail:
    result = await compute_player(db, player_id=player_id)
    assert isinstance(result, PlayerDetail)
    return result


Scenario = Callable[[httpx.AsyncClient, Redis, Database], Awaitable[Change]]


async def score_lifts_a_player_into_the_top(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    entries = (await board(db, "eu")).entries
    points = entries[1].total - entries[7].total + 1
    return await write(client, redis, "POST", "/api/scores", {"player_id": entries[7].id, "points": points})


async def small_score_at_the_bottom(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    last = (await board(db, "eu")).entries[-1]
    return await write(client, redis, "POST", "/api/scores", {"player_id": last.id, "points": 3})


async def score_corrected_down(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    top = await page(db, (await board(db, "eu")).entries[0].id)
    biggest = max(top.recent, key=lambda s: s.points)
    return await write(client, redis, "PATCH", f"/api/scores/{biggest.id}", {"points": -1000})


async def score_deleted(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    top = await page(db, (await board(db, "eu")).entries[2].id)
    biggest = max(top.recent, key=lambda s: s.points)
    return await write(client, redis, "DELETE", f"/api/scores/{biggest.id}")


async def top_player_moves_region(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    top = (await board(db, "eu")).entries[1]
    return await write(client, redis, "PATCH", f"/api/players/{top.id}", {"region": "na"})


async def player_changes_team(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    player = await page(db, 1)
    team = 1 if player.team_id != 1 else 2
    return await write(client, redis, "PATCH", "/api/players/1", {"team_id": team})


async def player_leaves_team(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    for entry in (await board(db, "eu")).entries:
        if (await page(db, entry.id)).team_id is not None:
            return await write(client, redis, "PATCH", f"/api/players/{entry.id}", {"team_id": None})
    raise AssertionError("no eu player has a team")


async def player_renamed(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    top = (await board(db, "eu")).entries[0]
    return await write(client, redis, "PATCH", f"/api/players/{top.id}", {"name": "Renamed"})


async def player_joins(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    return await write(client, redis, "POST", "/api/players", {"name": "New", "region": "eu", "team_id": 3})


async def top_player_deleted(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    top = (await board(db, "eu")).entries[0]
    return await write(client, redis, "DELETE", f"/api/players/{top.id}")


async def team_renamed(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    return await write(client, redis, "PATCH", "/api/teams/2", {"name": "Renamed"})


async def team_deleted(client: httpx.AsyncClient, redis: Redis, db: Database) -> Change:
    return await write(client, redis, "DELETE", "/api/teams/3")


#: scenario -> whether affected must stay complete without any hints (deletes cannot always: the row is gone).
SCENARIOS: dict[Scenario, bool] = {
    score_lifts_a_player_into_the_top: True,
    small_score_at_the_bottom: True,
    score_corrected_down: True,
    score_deleted: False,
    top_player_moves_region: True,
    player_changes_team: True,
    player_leaves_team: True,
    player_renamed: True,
    player_joins: True,
    top_player_deleted: True,
    team_renamed: True,
    team_deleted: False,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS), ids=lambda s: s.__name__)
async def test_affected_covers_every_changed_key(
    scenario: Scenario, client: httpx.AsyncClient, redis: Redis, db: Database
) -> None:
    before = await snapshot(db)
    change = await scenario(client, redis, db)
    after = await snapshot(db)
    changed = {k for k in before.keys() | after.keys() if before.get(k, GONE) != after.get(k, GONE)}
    assert changed, "the scenario changed nothing; it tests nothing"
    affected = set(await registry.affected_keys(db, change))
    assert changed <= affected, f"missed {sorted(changed - affected)} for {change}"
    # Exact enough to be worth it: never "every player" for a write that moved a handful of values.
    players = {k for k in after if k.startswith("player/")}
    if len({k for k in changed if k.startswith("player/")}) < 5:
        assert len({k for k in affected if k.startswith("player/")}) < len(players) / 2
    if SCENARIOS[scenario]:
        bare = change.model_copy(update={"hints": {}})
        unhinted = set(await registry.affected_keys(db, bare))
        assert changed <= unhinted, f"without hints, missed {sorted(changed - unhinted)} for {change}"


def _view(name: str) -> Any:
    return next(v for v in registry.views if v.name == name)


async def test_a_region_move_touches_both_leaderboards_without_a_query(db: Database) -> None:
    change = Change(entity="player", id="1", op=Operation.UPDATE, hints={"region": "na", "old_region": "eu"})
    queries = db.queries
    assert await _view("leaderboard").affected(db, change) == [{"region": "eu"}, {"region": "na"}]
    assert db.queries == queries


async def test_a_player_update_without_old_region_refreshes_every_leaderboard(db: Database) -> None:
    change = Change(entity="player", id="1", op=Operation.UPDATE, hints={"region": "na"})
    assert len(await _view("leaderboard").affected(db, change)) == 8


async def test_a_score_change_trusts_the_player_hint(db: Database) -> None:
    # Score 99999 does not exist: only the hint can name the player.
    change = Change(entity="score", id="99999", op=Operation.DELETE, hints={"player_id": 4, "region": "eu"})
    assert {"player_id": 4} in await _view("player").affected(db, change)
    assert await _view("leaderboard").affected(db, change) == [{"region": "eu"}]


async def test_a_score_change_without_hints_looks_the_score_up(db: Database) -> None:
    row = await page(db, 5)
    change = Change(entity="score", id=str(row.recent[0].id), op=Operation.UPDATE)
    assert {"player_id": 5} in await _view("player").affected(db, change)
    assert await _view("leaderboard").affected(db, change) == [{"region": row.region}]
    expected = [{"team_id": row.team_id}] if row.team_id is not None else []
    assert await _view("team").affected(db, change) == expected


async def test_a_team_rename_touches_its_members_in_one_query(db: Database) -> None:
    team = await views.compute_team(db, team_id=2)
    assert isinstance(team, views.TeamDetail)
    queries = db.queries
    keys = await _view("player").affected(db, Change(entity="team", id="2", op=Operation.UPDATE))
    assert db.queries == queries + 1
    assert keys == [{"player_id": m.id} for m in sorted(team.members, key=lambda m: m.id)]


async def test_a_team_delete_names_its_former_members(db: Database) -> None:
    change = Change(entity="team", id="999", op=Operation.DELETE, hints={"player_ids": [3, 1, 2]})
    assert await _view("player").affected(db, change) == [{"player_id": 1}, {"player_id": 2}, {"player_id": 3}]
    assert await _view("team").affected(db, change) == [{"team_id": 999}]


async def test_a_player_tied_with_the_old_total_is_in_the_window(
    client: httpx.AsyncClient, redis: Redis, db: Database
) -> None:
    entries = (await board(db, "eu")).entries
    mover, tied = entries[7], entries[3]
    await write(client, redis, "POST", "/api/scores", {"player_id": mover.id, "points": tied.total - mover.total})
    assert (await page(db, mover.id)).total == tied.total
    before = await snapshot(db)
    change = await write(client, redis, "POST", "/api/scores", {"player_id": mover.id, "points": 1})
    after = await snapshot(db)
    assert before[f"player/{tied.id}"] != after[f"player/{tied.id}"]  # the mover now ranks above it
    assert f"player/{tied.id}" in await registry.affected_keys(db, change)
