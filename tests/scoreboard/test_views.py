"""The view compute functions against a brute-force reading of the same small seeded database, and the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from freshviews.core.views import MISSING
from freshviews.scoreboard import ranking, views
from freshviews.scoreboard.db import Database, open_database
from freshviews.scoreboard.models import REGIONS, Player, Score, Team
from freshviews.scoreboard.seed import ensure_seeded
from freshviews.scoreboard.settings import AppSettings
from freshviews.scoreboard.views import (
    GlobalStats,
    Leaderboard,
    PlayerDetail,
    TeamDetail,
    compute_leaderboard,
    compute_player,
    compute_stats_global,
    compute_team,
    registry,
)


@dataclass
class Raw:
    players: dict[int, Player]
    teams: dict[int, str]
    scores: list[Score]

    def total(self, player_id: int) -> int:
        return sum(s.points for s in self.scores if s.player_id == player_id)

    def count(self, player_id: int) -> int:
        return sum(1 for s in self.scores if s.player_id == player_id)

    def rank(self, player_id: int) -> int:
        mine = self.total(player_id)
        region = self.players[player_id].region
        return 1 + sum(1 for p in self.players.values() if p.region == region and self.total(p.id) > mine)


async def read_raw(db: Database) -> Raw:
    async with db.sessionmaker() as session:
        players = {p.id: p for p in (await session.scalars(select(Player))).all()}
        teams = {t.id: t.name for t in (await session.scalars(select(Team))).all()}
        scores = list((await session.scalars(select(Score))).all())
    return Raw(players, teams, scores)


async def test_stats_global_matches_a_brute_force_count(db: Database) -> None:
    raw = await read_raw(db)
    stats = await compute_stats_global(db)
    assert isinstance(stats, GlobalStats)
    assert (stats.players, stats.scores) == (60, 600)
    assert stats.points == sum(s.points for s in raw.scores)
    assert [r.region for r in stats.regions] == list(REGIONS)
    for row in stats.regions:
        members = [p.id for p in raw.players.values() if p.region == row.region]
        assert row.players == len(members)
        assert row.points == sum(raw.total(i) for i in members)
    expected = sorted(raw.players, key=lambda i: (-raw.total(i), i))[: views.TOP_SIZE]
    assert [e.id for e in stats.top] == expected
    assert [e.total for e in stats.top] == [raw.total(i) for i in expected]


async def test_leaderboard_is_the_regions_top_with_ranks_the_player_page_agrees_with(db: Database) -> None:
    raw = await read_raw(db)
    for region in REGIONS:
        board = await compute_leaderboard(db, region=region)
        assert isinstance(board, Leaderboard)
        members = [p for p in raw.players.values() if p.region == region]
        assert board.players == len(members)
        expected = sorted((p.id for p in members), key=lambda i: (-raw.total(i), i))[: views.LEADERBOARD_SIZE]
        assert [e.id for e in board.entries] == expected
        for entry in board.entries:
            expected_row = (raw.total(entry.id), raw.count(entry.id), raw.rank(entry.id))
            assert (entry.total, entry.scores, entry.rank) == expected_row


async def test_player_page(db: Database) -> None:
    raw = await read_raw(db)
    with_team = next(p for p in raw.players.values() if p.team_id is not None and raw.count(p.id) > 3)
    page = await compute_player(db, player_id=with_team.id)
    assert isinstance(page, PlayerDetail)
    assert with_team.team_id is not None
    assert (page.name, page.region, page.team_name) == (with_team.name, with_team.region, raw.teams[with_team.team_id])
    assert (page.total, page.scores, page.rank) == (raw.total(page.id), raw.count(page.id), raw.rank(page.id))
    mine = sorted((s for s in raw.scores if s.player_id == page.id), key=lambda s: (s.created_at, s.id), reverse=True)
    assert [s.id for s in page.recent] == [s.id for s in mine[: views.RECENT_SIZE]]
    assert page.created_at.tzinfo is UTC or page.created_at.utcoffset() is not None
    assert page.model_dump_json().count('Z"') >= 1 + len(page.recent)


async def test_rank_shows_only_within_the_regions_top(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking, "RANKED", 2)
    raw = await read_raw(db)
    region = max(REGIONS, key=lambda r: sum(p.region == r for p in raw.players.values()))
    for player_id in [p.id for p in raw.players.values() if p.region == region]:
        page = await compute_player(db, player_id=player_id)
        assert isinstance(page, PlayerDetail)
        assert page.rank == (raw.rank(player_id) if raw.rank(player_id) <= 2 else None)


async def test_team_page(db: Database) -> None:
    raw = await read_raw(db)
    page = await compute_team(db, team_id=1)
    assert isinstance(page, TeamDetail)
    members = [p.id for p in raw.players.values() if p.team_id == 1]
    assert sorted(m.id for m in page.members) == sorted(members)
    assert [m.total for m in page.members] == sorted((raw.total(i) for i in members), reverse=True)
    assert page.total == sum(raw.total(i) for i in members)
    assert page.name == raw.teams[1]


async def test_gone_rows_are_missing(db: Database) -> None:
    assert await compute_player(db, player_id=10_000) is MISSING
    assert await compute_team(db, team_id=10_000) is MISSING


async def test_same_seed_same_json(db: Database, tmp_path: Path, app_settings: AppSettings) -> None:
    other = open_database(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    try:
        await ensure_seeded(other, app_settings)
        for key in ("stats/global", "player/7", "team/2", "leaderboard/eu"):
            view_key = registry.parse(key)
            ours = await view_key.view.compute(db, **view_key.params)
            theirs = await view_key.view.compute(other, **view_key.params)
            assert ours.model_dump_json() == theirs.model_dump_json()
    finally:
        await other.close()


async def test_registry_enumerates_every_key_and_parses_the_examples(db: Database) -> None:
    keys = await registry.all_keys(db)
    assert len(keys) == 1 + len(REGIONS) + 60 + 6
    assert {"stats/global", "leaderboard/eu", "player/60", "team/6"} <= set(keys)
    for view in registry.views:
        assert view.example is not None
        assert registry.parse(view.key(view.example)).view is view
    assert registry.entities == {"scores", "players", "teams"}
    by_entity = defaultdict(set)
    for view in registry.views:
        for entity in view.entities:
            by_entity[entity].add(view.name)
    assert by_entity["teams"] == {"player", "team"}  # a team name shows nowhere else


def test_importing_the_views_touches_no_database(tmp_path: Path) -> None:
    # A DATABASE_URL nothing answers on: an import that connected would hang or fail.
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "FRESHVIEWS_DATA_DIR": str(tmp_path)}
    started = datetime.now(UTC)
    result = subprocess.run(
        [sys.executable, "-c", "import freshviews.scoreboard.views as v; print(len(v.registry.views))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
    assert (datetime.now(UTC) - started).total_seconds() < 30
    assert not list(tmp_path.iterdir())
