"""The dashboard in a real browser (headless Debian chromium driven by Playwright) against the real stack.

Each freshness test loads the page, renames a team through the API, and measures from the write's response
until the page shows the new name, without reloading. The stream and polling are tested apart, so polling
(and the fallback to it) is covered whether or not the server has the stream route.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from freshviews.scoreboard.demo import BACKEND
from tests.support.helpers import BUSY_MARGIN, free_port
from tests.support.processes import Process, python, wait_http
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

#: A write must show on the page within this long (the acceptance bound).
#: The promise is 1 s (the README's: a committed write readable within milliseconds, 1 s at worst on a busy
#: machine); BUSY_MARGIN is what a loaded CI machine may add. The sweep is off here: a missed write never arrives.
FRESH_WITHIN = 1.0 + BUSY_MARGIN
#: How long the tests wait at most, so that a late value is reported with how late it was.
PATIENCE_MS = 5000
#: Poll interval the polling tests ask for: well under FRESH_WITHIN, which also has to cover the recompute.
POLL_MS = 200

TEAM_NAME = "[data-panel='team'] [data-field='name']"


@dataclass
class Browsing:
    page: Page
    #: Uncaught exceptions in the page's script.
    errors: list[str] = field(default_factory=list)
    #: (method, url, status, If-None-Match sent) of every response the page received.
    responses: list[tuple[str, str, int, str | None]] = field(default_factory=list)

    def cache_responses(self, key: str) -> list[tuple[int, str | None]]:
        return [(status, inm) for _, url, status, inm in self.responses if url.split("?")[0].endswith(f"/cache/{key}")]


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # executable_path: Debian's chromium; `playwright install` (a browser download) is never needed.
        launched = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browsing(browser: Browser) -> Iterator[Browsing]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    seen = Browsing(page)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on(
        "response",
        lambda r: seen.responses.append((r.request.method, r.url, r.status, r.request.headers.get("if-none-match"))),
    )
    try:
        yield seen
    finally:
        context.close()


def _rename_team(stack: Stack, team_id: int, prefix: str) -> tuple[str, float]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    response = httpx.patch(f"{stack.base_url}/api/teams/{team_id}", json={"name": name}, timeout=5)
    assert response.status_code == 200, response.text
    return name, time.monotonic()


def _shown_within(page: Page, selector: str, text: str, since: float) -> float:
    """Seconds from ``since`` until ``selector`` shows ``text``; fails with what it shows after PATIENCE_MS."""
    try:
        page.wait_for_function(
            "([selector, text]) => document.querySelector(selector)?.textContent === text",
            arg=[selector, text],
            timeout=PATIENCE_MS,
            polling=10,
        )
    except PlaywrightTimeout:
        shown = page.eval_on_selector(selector, "el => el.textContent") if page.query_selector(selector) else None
        pytest.fail(f"{text!r} not shown within {PATIENCE_MS} ms; the page shows {shown!r}")
    return time.monotonic() - since


def _current_team_name(stack: Stack, team_id: int) -> str:
    name: str = httpx.get(f"{stack.base_url}/cache/team/{team_id}", timeout=5).json()["name"]
    return name


def _connection(page: Page) -> dict[str, str]:
    state: dict[str, str] = page.eval_on_selector("#connection", "el => ({...el.dataset})")
    return state


def _wait_state(page: Page, state: str, hint: str) -> None:
    try:
        page.wait_for_selector(f"#connection[data-state='{state}']", timeout=10_000)
    except PlaywrightTimeout:
        pytest.fail(f"the page never reached {state!r} (it shows {_connection(page)}): {hint}")


def _freshness(browsing: Browsing, stack: Stack, team_id: int, prefix: str) -> float:
    page = browsing.page
    _shown_within(page, TEAM_NAME, _current_team_name(stack, team_id), time.monotonic())
    # Set after load: a page that reloaded to get the new value would lose it.
    page.evaluate("window.__sameDocument = true")
    name, written = _rename_team(stack, team_id, prefix)
    elapsed = _shown_within(page, TEAM_NAME, name, written)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded to show the write"
    return elapsed


def test_a_write_shows_within_a_second_over_the_event_stream(edge_stack: Stack, browsing: Browsing) -> None:
    page = browsing.page
    page.goto(f"{edge_stack.base_url}/?transport=sse&team=2")
    _wait_state(page, "live", "GET /cache/stream must answer text/event-stream")
    elapsed = _freshness(browsing, edge_stack, 2, "edge-sse")
    assert elapsed <= FRESH_WITHIN, f"shown {elapsed:.3f}s after the write"
    assert _connection(page) == {"state": "live", "transport": "sse"}
    # The value came over the stream: the page made no request for the team's key after the first load.
    assert len(browsing.cache_responses("team/2")) <= 1, browsing.cache_responses("team/2")
    assert browsing.errors == []


def test_a_write_shows_within_a_second_when_polling(edge_stack: Stack, browsing: Browsing) -> None:
    page = browsing.page
    page.goto(f"{edge_stack.base_url}/?transport=poll&poll={POLL_MS}&team=3")
    _wait_state(page, "polling", "forced polling")
    # ETag-aware: an unchanged view is revalidated (If-None-Match, 304 with no body), not fetched again.
    with page.expect_response(lambda r: r.url.endswith("/cache/team/3") and r.status == 304) as revalidated:
        pass
    assert revalidated.value.request.headers["if-none-match"] == revalidated.value.headers["etag"]
    elapsed = _freshness(browsing, edge_stack, 3, "edge-poll")
    assert elapsed <= FRESH_WITHIN, f"shown {elapsed:.3f}s after the write"
    assert not any("/cache/stream" in url for _, url, _, _ in browsing.responses), "forced polling opened a stream"
    assert browsing.errors == []


def test_the_page_falls_back_to_polling_when_the_stream_is_unavailable(edge_stack: Stack, browsing: Browsing) -> None:
    page = browsing.page
    refused: list[str] = []

    def no_stream(route: Route, request: Request) -> None:
        # What a server (or a proxy) without the stream route answers.
        refused.append(request.url)
        route.fulfill(status=404, content_type="application/json", body='{"detail": "Not Found"}')

    page.route("**/cache/stream?*", no_stream)
    page.goto(f"{edge_stack.base_url}/?poll={POLL_MS}&team=4")
    _wait_state(page, "polling", "the automatic mode must fall back to polling")
    assert refused, "the page never tried the event stream"
    assert "key=team%2F4" in refused[0], refused[0]
    elapsed = _freshness(browsing, edge_stack, 4, "edge-fallback")
    assert elapsed <= FRESH_WITHIN, f"shown {elapsed:.3f}s after the write"
    assert _connection(page)["transport"] == "poll"
    assert browsing.errors == []


def test_the_page_shows_every_reference_view_with_its_age(edge_stack: Stack, browsing: Browsing) -> None:
    page = browsing.page
    page.goto(f"{edge_stack.base_url}/?transport=poll&poll={POLL_MS}")
    panels = ("stats", "leaderboard", "player", "team")
    for panel in panels:
        page.wait_for_selector(f"[data-panel='{panel}'][data-status='ok']")
    # Defaults are the example keys GET /cache/views lists.
    examples = {view["template"]: view["example"] for view in httpx.get(f"{edge_stack.base_url}/cache/views").json()}
    keys = {panel: page.get_attribute(f"[data-panel='{panel}']", "data-key") for panel in panels}
    assert keys == {
        "stats": examples["stats/global"],
        "leaderboard": examples["leaderboard/{region}"],
        "player": examples["player/{player_id}"],
        "team": examples["team/{team_id}"],
    }
    cached = {panel: httpx.get(f"{edge_stack.base_url}/cache/{key}").json() for panel, key in keys.items()}
    text = {panel: page.inner_text(f"[data-panel='{panel}'] .body") for panel in panels}
    assert f"{cached['stats']['players']:,} players" in text["stats"]
    assert cached["leaderboard"]["entries"][0]["name"] in text["leaderboard"]
    assert page.inner_text("[data-panel='player'] [data-field='name']") == cached["player"]["name"]
    assert page.inner_text("[data-panel='team'] [data-field='name']") == cached["team"]["name"]
    for panel in panels:
        version = httpx.get(f"{edge_stack.base_url}/cache/{keys[panel]}").headers["etag"].strip('"')
        assert page.get_attribute(f"[data-panel='{panel}']", "data-version") == version
        # The version is the recompute's Redis TIME ticket: these values were computed when the stack warmed.
        age_ms = int(page.get_attribute(f"[data-panel='{panel}']", "data-age-ms") or "-1")
        assert 0 <= age_ms < 10 * 60 * 1000, (panel, age_ms)
        assert " ago" in page.inner_text(f"[data-panel='{panel}'] .age")

    # The region picker is filled from the stats view and switches the leaderboard's key.
    assert "na" in page.eval_on_selector_all("#region option", "options => options.map(o => o.value)")
    page.select_option("#region", "na")
    page.wait_for_selector("[data-panel='leaderboard'][data-key='leaderboard/na'][data-status='ok']")
    leader = httpx.get(f"{edge_stack.base_url}/cache/leaderboard/na").json()["entries"][0]
    assert leader["name"] in page.inner_text("[data-panel='leaderboard'] .body")
    # A player's name is a link that shows that player.
    page.click(f"[data-panel='leaderboard'] a[data-player='{leader['id']}']")
    page.wait_for_selector(f"[data-panel='player'][data-key='player/{leader['id']}'][data-status='ok']")
    assert page.inner_text("[data-panel='player'] [data-field='name']") == leader["name"]
    assert "player=" + str(leader["id"]) in page.url
    assert browsing.errors == []


def test_the_freshness_panel_shows_what_the_sampler_measured(edge_stack: Stack, browsing: Browsing) -> None:
    page = browsing.page
    page.goto(f"{edge_stack.base_url}/?transport=sse")
    # Hidden until the sampler has figures: it publishes every 2 s, the page reads /healthz every 5 s.
    try:
        page.wait_for_selector("#freshness:not([hidden]) tbody tr", timeout=15_000)
    except PlaywrightTimeout:
        health = httpx.get(f"{edge_stack.base_url}/healthz", timeout=5).json()
        pytest.fail(f"the freshness panel never showed; /healthz details: {health.get('details')}")
    rows = page.eval_on_selector_all(
        "#freshness tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
    )
    views = {row[0]: row for row in rows}
    assert "player" in views, rows
    assert float(views["player"][2]) >= 0  # nines
    assert "samples at 20/s" in (page.text_content("#freshness .meta") or "")
    assert browsing.errors == []


def test_names_are_shown_as_text_never_as_html(edge_stack: Stack, browsing: Browsing) -> None:
    page = browsing.page
    page.goto(f"{edge_stack.base_url}/?transport=poll&poll={POLL_MS}&team=5")
    page.wait_for_selector("[data-panel='team'][data-status='ok']")
    markup = f'<img src=x onerror="window.__injected=1">{uuid.uuid4().hex[:6]}'
    response = httpx.patch(f"{edge_stack.base_url}/api/teams/5", json={"name": markup}, timeout=5)
    assert response.status_code == 200, response.text
    _shown_within(page, TEAM_NAME, markup, time.monotonic())
    assert page.query_selector("[data-panel='team'] img") is None
    assert page.evaluate("window.__injected === undefined")


def test_the_page_reconnects_when_the_app_comes_back(edge_stack: Stack, browsing: Browsing, tmp_path: Path) -> None:
    # An app process of this test's own (same Redis and database), so that killing it disturbs no other test.
    port = free_port()
    app = Process(
        "app-restarted",
        python(*BACKEND),
        edge_stack.env(FRESHVIEWS_PORT=str(port)),
        tmp_path / "app.log",
    )
    base_url = f"http://127.0.0.1:{port}"
    app.start()
    try:
        wait_http(f"{base_url}/healthz", app)
        page = browsing.page
        page.goto(f"{base_url}/?team=8")
        _wait_state(page, "live", "GET /cache/stream must answer text/event-stream")
        app.kill()
        _wait_state(page, "reconnecting", "a dropped stream must show, and the browser retry it")
        app.start()
        wait_http(f"{base_url}/healthz", app)
        _wait_state(page, "live", "EventSource reconnects by itself once the app is back")
        elapsed = _freshness(browsing, edge_stack, 8, "edge-reconnect")
        assert elapsed <= FRESH_WITHIN, f"shown {elapsed:.3f}s after the write"
        assert browsing.errors == []
    finally:
        app.stop()
