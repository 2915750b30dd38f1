"""The subscriber's commands, run as a user would: ``freshviews subscriber|sweep|check ...`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from freshviews.core.events import FIELD, Change, Operation
from freshviews.core.keys import DATA, Keys

ROOT = Path(__file__).resolve().parents[2]
VIEWS = "tests.support.world:registry"
Cli = Callable[..., subprocess.CompletedProcess[str]]


def _run(*args: str, redis_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUBSCRIBER_")}
    env.update(
        REDIS_URL=redis_url,
        FRESHVIEWS_DATA_DIR=str(data_dir),
        # The repository root, where tests.support.world is.
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        SUBSCRIBER_METRICS_PORT="0",
    )
    return subprocess.run(
        [sys.executable, "-m", "freshviews", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cli(redis_url: str, tmp_path: Path) -> Cli:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _run(*args, redis_url=redis_url, data_dir=tmp_path)

    return run


def test_help_exits_zero(cli: Cli) -> None:
    done = cli("subscriber", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: freshviews subscriber" in done.stdout
    assert "--views" in done.stdout
    module = subprocess.run(
        [sys.executable, "-m", "freshviews.worker", "--help"], capture_output=True, text=True, check=False
    )
    assert module.returncode == 0, module.stderr
    assert "usage: python -m freshviews.worker" in module.stdout


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nocolon", "--views must look like module:attribute"),
        ("json:dumps", "json:dumps: that is a function, not a freshviews.core.Registry"),
        ("tests.support.world:nothing", "module 'tests.support.world' has no attribute 'nothing'"),
        ("", "no views to serve: pass --views module:attribute"),
    ],
)
def test_a_bad_views_spec_is_a_clear_error(cli: Cli, spec: str, expected: str) -> None:
    done = cli("sweep", "--views", spec)
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_the_subscriber_needs_views_and_never_defaults_to_the_demo(cli: Cli, tmp_path: Path) -> None:
    done = cli("subscriber", "--burst")
    assert done.returncode == 2
    assert "no views to serve" in done.stderr
    assert not (tmp_path / "scoreboard.db").exists()


def test_a_views_module_that_does_not_exist_is_a_clear_error(cli: Cli) -> None:
    done = cli("subscriber", "--burst", "--views", "nonexistent:thing")
    assert done.returncode == 2
    assert "nonexistent" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-500:]


def test_sweep_once_and_run_burst(cli: Cli, redis_url: str) -> None:
    keys = Keys()
    first = cli("sweep", "--views", VIEWS)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert (result["keys"], result["repaired"], result["unchanged"], result["reason"]) == (8, 8, 0, "once")
    with SyncRedis.from_url(redis_url) as redis:
        assert json.loads(redis.hget(keys.value("item/1"), DATA))["name"] == "item 1"

        again = json.loads(cli("sweep", "--views", VIEWS).stdout)
        assert (again["repaired"], again["unchanged"]) == (0, 8)

        change = Change(entity="item", id="1", op=Operation.UPDATE, after={"color": "green"})
        redis.xadd(keys.changes, {FIELD: change.encode()})
        burst = cli("subscriber", "--burst", "--views", VIEWS)
        assert burst.returncode == 0, burst.stderr
        assert json.loads(burst.stdout) == {"changes": 1, "batches": 1}
        assert redis.xpending(keys.changes, "subscribers")["pending"] == 0
