"""Session-wide pieces: the fixture plugins of tests/support, the chaos marker's rule, the wheel, the key names.

Redis (a redis-server per session on a free port, emptied before each test) is tests/support/redis_servers.py;
a scratch PostgreSQL database, tests/support/postgres.py; a cluster of the session's own with logical decoding,
tests/support/pgcluster.py. Tests never touch 127.0.0.1:6379 or an existing
database.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from freshviews.core.keys import Keys

pytest_plugins = ["tests.support.redis_servers", "tests.support.postgres", "tests.support.pgcluster"]

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long fault runs (marker ``chaos``) only run when asked for with ``-m chaos``: CI runs the bounded ones."""
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long fault run: select it with -m chaos")
    for item in items:
        if "chaos" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution built from this checkout, as ``pip install .`` would build it."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("freshviews-*.whl")
    return built


@pytest.fixture
def keys() -> Keys:
    """The product's Redis key names, default prefix."""
    return Keys()
