"""Fixtures of the edge tests: one real stack for the session, headless Debian chromium, the nginx binary.

The stack (uvicorn running the app, the subscriber process, a seeded SQLite file) gets a redis-server of its
own rather than the session one: the ``redis_url`` fixture empties that Redis before every test, which would
pull the change log and the consumer group from under processes that live for the whole session. Edge tests
only add writes with names unique to the test, so sharing one warm stack between them is safe and saves
starting it a dozen times.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import NoReturn

import httpx
import pytest

from freshviews.core.embedded import EmbeddedRedis
from tests.support.metrics import metric
from tests.support.stack import Stack

CHROMIUM = "/usr/bin/chromium"
WARM_TIMEOUT = 60.0


def require(tool: str, variable: str, install: str) -> NoReturn:
    """Skip with the reason, or fail when ``variable``=1 (as in CI, where the tool must be there)."""
    reason = f"{tool} is not installed ({install})"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason}; {variable}=1 requires it")
    pytest.skip(f"{reason}; set {variable}=1 to make this a failure")


@pytest.fixture(scope="session")
def edge_stack(tmp_path_factory: pytest.TempPathFactory, redis_server_executable: str) -> Iterator[Stack]:
    """The real app under uvicorn and the real subscriber on a seeded SQLite file, warmed, for the session."""
    tmp = tmp_path_factory.mktemp("edge-stack")
    redis_server = EmbeddedRedis(tmp / "redis", executable=redis_server_executable)
    redis_server.start()
    stack = Stack(tmp, redis_server.url, f"sqlite+aiosqlite:///{tmp / 'scoreboard.db'}", redis_server=redis_server)
    try:
        stack.seed()
        # The sampler on (the stack's default turns it off): the dashboard's freshness panel shows its figures.
        stack.start_subscriber(SUBSCRIBER_SAMPLE_RATE="20")
        stack.start_app()
        _wait_warm(stack)
        yield stack
    finally:
        stack.stop()
        redis_server.stop()
        print(stack.logs())  # shown by pytest only when a test failed


def _wait_warm(stack: Stack) -> None:
    # The subscriber fills every key once at start (the warm-up sweep); values read before that would be 503s.
    deadline = time.monotonic() + WARM_TIMEOUT
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    while time.monotonic() < deadline:
        try:
            if metric(httpx.get(url, timeout=2).text, "freshviews_sweeps_total", reason="warm") >= 1:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the subscriber never warmed the cache\n{stack.logs()}")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium (``apt-get install chromium``); never a browser downloaded by Playwright."""
    if not os.access(CHROMIUM, os.X_OK):
        require("chromium", "REQUIRE_CHROMIUM", "apt-get install -y chromium chromium-driver")
    return CHROMIUM


@pytest.fixture(scope="session")
def nginx_path() -> str:
    """Debian's nginx binary (in /usr/sbin, which is not on every user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        require("nginx", "REQUIRE_NGINX", "apt-get install -y nginx")
    return found
