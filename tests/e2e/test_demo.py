"""The README's first command on a bare machine: ``freshviews demo`` with no Redis configured or installed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from freshviews.core.embedded import ping
from tests.support.helpers import BUSY_MARGIN, free_port

pytestmark = pytest.mark.slow


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the demo exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout}s:\n{log.read_text()[-4000:]}")


def test_the_demo_runs_on_embedded_defaults_and_a_write_shows_within_a_second(tmp_path: Path) -> None:
    port = free_port()
    bin_dir = tmp_path / "bin"  # a PATH with python only: no redis-server to be found there
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "SUBSCRIBER_", "REDIS_", "DATABASE_"))}
    env.update(
        PATH=str(bin_dir),
        FRESHVIEWS_DATA_DIR=str(tmp_path / "data"),
        # Ignore whatever may listen on 6379 here: the point is the embedded server.
        APP_SEED_PLAYERS="300",
        APP_SEED_TEAMS="20",
        APP_SEED_SCORES="6000",
        SUBSCRIBER_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "freshviews", "demo", "--port", str(port), "--rate", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: "/cache/views" in log.read_text(), 90, "the demo did not print its URLs", proc, log)
        text = log.read_text()
        match = re.search(r"started an embedded redis-server at redis://127\.0\.0\.1:(\d+)", text)
        assert match, f"no embedded Redis announced:\n{text[-4000:]}"
        redis_port = int(match.group(1))
        assert redis_port != 6379

        views = httpx.get(f"{base}/cache/views", timeout=5)
        assert views.status_code == 200
        assert {v["template"] for v in views.json()} >= {"stats/global", "leaderboard/{region}"}
        _wait_for(
            lambda: httpx.get(f"{base}/cache/team/3", timeout=5).status_code == 200,
            60,
            "the cache was not warmed",
            proc,
            log,
        )

        written = time.monotonic()
        assert httpx.patch(f"{base}/api/teams/3", json={"name": "Seen from the demo"}, timeout=5).status_code == 200
        _wait_for(
            lambda: httpx.get(f"{base}/cache/team/3", timeout=5).json()["name"] == "Seen from the demo",
            5,
            "the write never reached the cache",
            proc,
            log,
        )
        elapsed = time.monotonic() - written
        # The promise (1 s) plus what a busy machine may add; the demo's sweep would take minutes.
        assert elapsed < 1.0 + BUSY_MARGIN, f"the write took {elapsed:.3f}s to reach the cache"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-4000:]
    assert not ping(redis_port), "the embedded Redis outlived the demo"
