"""``python -m freshviews.scoreboard``: the reference backend's own tools (help, seed), run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def env_for(tmp_path: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "SUBSCRIBER_", "DATABASE_URL"))}
    env.update(
        REDIS_URL=redis_url,
        FRESHVIEWS_DATA_DIR=str(tmp_path / "data"),
        APP_SEED_PLAYERS="60",
        APP_SEED_TEAMS="6",
        APP_SEED_SCORES="600",
    )
    return env


def tools(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freshviews.scoreboard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_tools_list_their_commands() -> None:
    done = tools(["--help"])
    assert done.returncode == 0
    for command in ("seed", "simulate"):
        assert command in done.stdout


def test_seed_seeds_once(tmp_path: Path, redis_url: str) -> None:
    env = env_for(tmp_path, redis_url)
    first, second = tools(["seed"], env), tools(["seed"], env)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stdout.startswith("seeded")
    assert second.stdout.startswith("already seeded")
    assert (tmp_path / "data" / "scoreboard.db").is_file()
    third = tools(["seed", "--reset"], env)
    assert third.stdout.startswith("seeded"), third.stderr
