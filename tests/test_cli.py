"""The ``freshviews`` command: its help, and the whole demo stack started and stopped by one command
(``freshviews demo``). The subscriber's commands are tested in tests/worker/test_cli.py, the scoreboard's tools in
tests/scoreboard/test_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.support.helpers import free_port


def env_for(tmp_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "SUBSCRIBER_", "DATABASE_URL"))}
    env.update(
        REDIS_URL=redis_url,
        FRESHVIEWS_DATA_DIR=str(tmp_path / "data"),
        APP_SEED_PLAYERS="60",
        APP_SEED_TEAMS="6",
        APP_SEED_SCORES="600",
        SUBSCRIBER_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freshviews", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_lists_every_command() -> None:
    result = run(["--help"])
    assert result.returncode == 0
    for command in ("demo", "serve", "subscriber", "sweep", "check"):
        assert command in result.stdout
    for command in ("demo", "serve", "subscriber", "sweep", "check"):
        assert run([command, "--help"]).returncode == 0


@pytest.mark.slow
def test_demo_runs_the_stack_for_its_duration_and_stops_it(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    result = run(
        ["demo", "--port", str(port), "--rate", "10", "--duration", "4"],
        env_for(tmp_path, redis_url, SUBSCRIBER_SWEEP_INTERVAL="0", SUBSCRIBER_SAMPLE_RATE="0"),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"http://127.0.0.1:{port}/cache/leaderboard/eu" in result.stdout
    assert "simulator done" in result.stderr
    with Redis.from_url(redis_url) as redis:
        assert redis.xlen("fv:{changes}") >= 20
        # The subscriber kept the cache: the stats view is there, as the sweep or the changes left it.
        assert redis.exists("fv:v:{stats/global}")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


@pytest.mark.slow
def test_demo_stops_its_children_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "freshviews", "demo", "--port", str(port), "--rate", "5"],
        env=env_for(tmp_path, redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        else:
            pytest.fail("the demo backend never became healthy")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert output.index("stopping the backend") < output.index("stopping the subscriber")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
