"""The consistency sampler in the real subscriber process, over the scoreboard: a write nothing captured is a hole
it finds within two passes of the cached keys, repairs without a sweep, and shows in /healthz and `freshviews
check`."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
from typing import Any

import httpx

from tests.support.helpers import wait_until
from tests.support.processes import REPO
from tests.support.stack import Stack

RATE = 100.0
#: Beyond the product's bound, for a loaded machine, seconds.
MARGIN = 10.0


async def _sampler(client: httpx.AsyncClient) -> dict[str, Any]:
    details = (await client.get("/healthz")).json().get("details") or {}
    return details.get("sampler") or {}


async def test_a_write_nothing_captured_is_found_repaired_and_shown(stack: Stack) -> None:
    stack.start_subscriber(SUBSCRIBER_SAMPLE_RATE=str(RATE))
    # The backend's capture is switched off: its writes reach the database and leave no change behind.
    stack.extra_env["APP_CAPTURE"] = "false"
    stack.start_app()
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as client:
        await wait_until(
            lambda: _sampled(client), timeout=60, interval=0.2, message=lambda: f"never sampled\n{stack.logs()}"
        )
        before = await _sampler(client)
        cached = before["keys"]
        team = (await client.get("/api/players/5")).json()["team_id"]
        assert (await client.patch(f"/api/teams/{team}", json={"name": "Unannounced"})).status_code == 200
        # Every cached key is picked within 2K samples, at RATE a second; then the grace to judge, and the
        # summary is republished at once when something unexplained was found.
        bound = 2 * cached / RATE + 1.0

        async def found() -> bool:
            views = (await _sampler(client)).get("views", {})
            return any(v.get("unexplained", 0) > 0 for v in views.values())

        await wait_until(found, timeout=bound + MARGIN, interval=0.2, message=lambda: f"not found\n{stack.logs()}")
        summary = await _sampler(client)
        hits = {name: v for name, v in summary["views"].items() if v.get("unexplained")}
        assert set(hits) <= {"team", "player"}, hits
        for view in hits.values():
            # Picks counted from the summary before the write (published up to 2 s earlier: a conservative start).
            assert view["last_unexplained"]["pick"] - before["picks"] <= 2 * cached, view
            assert view["nines"] >= 0
        # Repaired by the sampler: the sweep is off in this stack.
        await wait_until(
            lambda: _shows(client, f"/cache/team/{team}", "Unannounced"), timeout=bound + MARGIN, interval=0.2
        )

    # `freshviews check` shows it too.
    command = [sys.executable, "-m", "freshviews", "check"]
    run = functools.partial(subprocess.run, env=stack.env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    proc = await asyncio.to_thread(run, command)
    details = json.loads(proc.stdout)
    assert any(v.get("unexplained", 0) > 0 for v in details["sampler"]["views"].values()), proc.stdout


async def _sampled(client: httpx.AsyncClient) -> bool:
    return bool((await _sampler(client)).get("samples"))


async def _shows(client: httpx.AsyncClient, path: str, text: str) -> bool:
    response = await client.get(path)
    return response.status_code == 200 and text in response.text
