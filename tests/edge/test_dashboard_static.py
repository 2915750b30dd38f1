"""The dashboard's router on its own (no browser): which files it serves, how, and nothing else."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from freshviews.scoreboard.dashboard import FILES, STATIC_DIR, dashboard_router
from freshviews.scoreboard.main import create_app
from freshviews.scoreboard.settings import AppSettings


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(dashboard_router())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        yield client


async def test_the_page_is_served_at_the_root_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == (STATIC_DIR / "index.html").read_bytes()
    policy = response.headers["content-security-policy"]
    # No inline script can run, and the page may only talk to its own origin.
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe" not in policy
    assert response.headers["cache-control"] == "no-cache"


async def test_every_file_the_page_references_is_served(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    referenced = re.findall(r'(?:src|href)="(static/[^"]+)"', page)
    assert sorted(referenced) == ["static/dashboard.css", "static/dashboard.js"]
    for path in referenced:
        response = await client.get(f"/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"] == FILES[Path(path).name]
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/static/dashboard.js"])
async def test_a_matching_etag_gets_a_304(client: httpx.AsyncClient, path: str) -> None:
    etag = (await client.get(path)).headers["etag"]
    assert (await client.get(path, headers={"If-None-Match": etag})).status_code == 304
    # gzip at a proxy turns the ETag weak; it still names the same bytes.
    assert (await client.get(path, headers={"If-None-Match": f'"x", W/{etag}'})).status_code == 304
    assert (await client.get(path, headers={"If-None-Match": '"other"'})).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/static/index.html", "/static/nothing.js", "/static/..%2Fdashboard.py", "/static/..%2F..%2Fpyproject.toml"],
)
async def test_nothing_but_the_listed_files_is_served(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_the_app_mounts_the_dashboard(tmp_path: Path) -> None:
    app = create_app(AppSettings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1"))
    # No lifespan is run: the page needs none of the app's resources, so it is served even while they are down.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.content == (STATIC_DIR / "index.html").read_bytes()


def test_the_static_files_ship_with_the_package() -> None:
    # setuptools package-data ("static/*") puts them in the wheel; a file outside that pattern would be lost.
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"static/*"' in pyproject
    assert all((STATIC_DIR / name).is_file() for name in FILES)
    assert {p.name for p in STATIC_DIR.iterdir()} == set(FILES)
