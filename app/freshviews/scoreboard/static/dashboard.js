"use strict";
/*
 * The freshviews dashboard: four cached views, live.
 *
 * Transport, in order of preference:
 *   1. the event stream, GET cache/stream?key=..&key=.. (events "update" {key, version, data} and "delete"
 *      {key, version}; the server sends every current value on connect, so a reconnect needs no catch-up);
 *   2. polling GET cache/{key} with If-None-Match, while the stream is unavailable: an unchanged view then
 *      costs one 304 with no body, and the stream is tried again every STREAM_RETRY_MS.
 * Query parameters: transport=sse|poll (force one), poll=<ms> (polling interval), region=, player=, team=.
 *
 * Every value is put into the page as text (never as HTML): player and team names are user input.
 */
(() => {
  const query = new URLSearchParams(window.location.search);
  const FORCED = ["sse", "poll"].includes(query.get("transport")) ? query.get("transport") : null;
  const POLL_MS = boundedInt(query.get("poll"), 1000, 100, 60000);
  // A stream may be deployed (or a proxy fixed) while the page is open; polling is the stopgap, not the goal.
  const STREAM_RETRY_MS = FORCED === "sse" ? 3000 : 30000;
  // A stream that neither opens nor fails in this long (a buffering proxy holds it) counts as unavailable.
  const STREAM_OPEN_TIMEOUT_MS = 5000;
  const DEFAULTS = { region: "eu", player_id: "1", team_id: "1" };
  const ID = /^[1-9][0-9]{0,15}$/;

  const connection = document.getElementById("connection");
  const controls = {
    region: document.getElementById("region"),
    player_id: document.getElementById("player"),
    team_id: document.getElementById("team"),
  };
  const panels = Array.from(document.querySelectorAll("[data-panel]"), (el) => ({
    name: el.dataset.panel,
    template: el.dataset.template,
    el,
    key: null,
    version: null, // a string of digits: versions are microsecond tickets, compared as BigInt
    data: null,
    status: "waiting", // waiting | ok | deleted | missing | error
    note: "waiting for a value…",
    seenAt: 0,
  }));

  let stream = null; // the EventSource while the stream is (or is becoming) the transport
  let streamTimer = null;
  let polling = false;
  let pollGeneration = 0; // a restarted poll loop must not run alongside the one it replaced
  let pollTimer = null;
  let clockOffsetMs = 0; // the server's clock minus ours, to date versions (see computedAt)

  function boundedInt(text, fallback, min, max) {
    const n = Number.parseInt(text ?? "", 10);
    return Number.isFinite(n) ? Math.min(max, Math.max(min, n)) : fallback;
  }

  // --- connection state ------------------------------------------------------------------------------------

  function setConnection(state, transport, detail) {
    connection.dataset.state = state;
    connection.dataset.transport = transport;
    const labels = {
      connecting: "connecting…",
      live: "live · event stream",
      reconnecting: "reconnecting…",
      polling: `polling every ${POLL_MS} ms`,
      offline: "offline",
    };
    connection.querySelector(".label").textContent = labels[state];
    connection.title = detail || "";
  }

  // --- keys ------------------------------------------------------------------------------------------------

  function keyOf(panel) {
    let complete = true;
    const key = panel.template.replace(/\{(\w+)\}/g, (_, name) => {
      const value = controls[name] ? controls[name].value.trim() : "";
      const valid = name === "region" ? /^[a-z]{1,8}$/.test(value) : ID.test(value);
      complete = complete && valid;
      return value;
    });
    return complete ? key : null;
  }

  function activePanels() {
    return panels.filter((panel) => !panel.el.hidden && panel.key !== null);
  }

  function panelFor(key) {
    return panels.find((panel) => panel.key === key && !panel.el.hidden);
  }

  function cacheUrl(key) {
    return `cache/${key.split("/").map(encodeURIComponent).join("/")}`;
  }

  /** Recompute every panel's key from the controls; return the panels whose key changed. */
  function refreshKeys() {
    const changed = [];
    for (const panel of panels) {
      const key = keyOf(panel);
      if (key === panel.key) continue;
      Object.assign(panel, { key, version: null, data: null, status: "waiting", seenAt: 0 });
      panel.note = key === null ? "choose a valid value above" : "waiting for a value…";
      render(panel, false);
      changed.push(panel);
    }
    const url = new URLSearchParams(window.location.search);
    url.set("region", controls.region.value);
    url.set("player", controls.player_id.value);
    url.set("team", controls.team_id.value);
    window.history.replaceState(null, "", `?${url}`);
    return changed;
  }

  function onSelectionChanged() {
    const changed = refreshKeys();
    if (changed.length === 0) return;
    if (stream !== null) {
      // An EventSource's keys are fixed at connect; a new selection is a new stream (which sends current values).
      openStream();
    } else {
      changed.forEach(fetchPanel);
    }
  }

  // --- applying values ---------------------------------------------------------------------------------------

  function isNewer(panel, version) {
    if (panel.version === null || version === null) return true;
    try {
      return BigInt(version) > BigInt(panel.version);
    } catch {
      return true;
    }
  }

  function applyUpdate(message) {
    const panel = panelFor(message.key);
    const version = message.version === null || message.version === undefined ? null : String(message.version);
    // The stream and a poll can deliver the same change, in either order; versions never go down, so the
    // higher one is the newer value.
    if (!panel || (panel.status === "ok" && !isNewer(panel, version))) return;
    Object.assign(panel, { version, data: message.data, status: "ok", seenAt: Date.now() });
    render(panel, true);
  }

  function applyDelete(message) {
    const panel = panelFor(message.key);
    const version = message.version === null || message.version === undefined ? null : String(message.version);
    if (!panel || !isNewer(panel, version)) return;
    Object.assign(panel, { version, data: null, status: "deleted", note: "deleted", seenAt: Date.now() });
    render(panel, true);
  }

  function applyStatus(panel, status, note) {
    // A transient error keeps the last good value on screen: stale is more useful than blank.
    if (panel.status === "ok" && status === "error") return;
    Object.assign(panel, { status, note, data: null });
    render(panel, false);
  }

  // --- the event stream ----------------------------------------------------------------------------------------

  function openStream() {
    closeStream();
    const keys = activePanels().map((panel) => panel.key);
    const params = new URLSearchParams();
    keys.forEach((key) => params.append("key", key));
    const source = new EventSource(`cache/stream?${params}`);
    let opened = false;
    stream = source;
    if (!polling) setConnection("connecting", "sse");
    streamTimer = setTimeout(() => {
      if (stream === source && !opened) streamUnavailable("the event stream did not open in time");
    }, STREAM_OPEN_TIMEOUT_MS);

    source.onopen = () => {
      if (stream !== source) return;
      opened = true;
      clearTimeout(streamTimer);
      stopPolling();
      setConnection("live", "sse");
    };
    source.addEventListener("update", (event) => stream === source && onEvent(event, applyUpdate));
    source.addEventListener("delete", (event) => stream === source && onEvent(event, applyDelete));
    source.onerror = () => {
      if (stream !== source) return;
      if (source.readyState === EventSource.CLOSED || !opened) {
        // CLOSED: the server answered with something other than an event stream (no such route, an error).
        // Never opened: the first connection failed; the browser's own retries would leave the page blank.
        streamUnavailable(
          source.readyState === EventSource.CLOSED ? "the server has no event stream" : "cannot reach the stream",
        );
      } else {
        // The browser reconnects by itself and the server resends every value; poll meanwhile.
        setConnection("reconnecting", "sse", "the event stream dropped");
        startPolling();
      }
    };
  }

  function onEvent(event, apply) {
    try {
      apply(JSON.parse(event.data));
    } catch (error) {
      console.warn("freshviews: ignoring a malformed event", event.data, error);
    }
  }

  function closeStream() {
    clearTimeout(streamTimer);
    if (stream !== null) {
      stream.close();
      stream = null;
    }
  }

  function streamUnavailable(reason) {
    closeStream();
    if (FORCED === "sse") {
      setConnection("offline", "sse", reason);
    } else {
      setConnection("polling", "poll", `${reason}; polling instead`);
      startPolling();
    }
    streamTimer = setTimeout(openStream, STREAM_RETRY_MS);
  }

  // --- polling ---------------------------------------------------------------------------------------------

  function startPolling() {
    if (polling) return;
    polling = true;
    pollOnce(++pollGeneration);
  }

  function stopPolling() {
    polling = false;
    pollGeneration += 1;
    clearTimeout(pollTimer);
  }

  async function pollOnce(generation) {
    const answered = await Promise.all(activePanels().map(fetchPanel));
    if (!polling || generation !== pollGeneration) return;
    if (stream === null) {
      const reachable = answered.length === 0 || answered.some(Boolean);
      setConnection(reachable ? "polling" : "offline", "poll", reachable ? "" : "the server does not answer");
    }
    pollTimer = setTimeout(() => pollOnce(generation), POLL_MS);
  }

  function versionOf(etag) {
    const text = (etag || "").replace(/^W\//, "").replace(/"/g, "");
    return /^[0-9]+$/.test(text) ? text : null;
  }

  /** One conditional read of a panel's key; resolves to whether the server answered at all. */
  async function fetchPanel(panel) {
    const key = panel.key;
    const headers = panel.status === "ok" && panel.version !== null ? { "If-None-Match": `"${panel.version}"` } : {};
    let response;
    try {
      // no-store: views carry a max-age, and the browser's cache must not answer in the server's place; with it,
      // the 304 to our own If-None-Match reaches this code instead of being turned into a cached 200.
      response = await fetch(cacheUrl(key), { headers, cache: "no-store" });
    } catch {
      return false;
    }
    if (panel.key !== key) return true; // the selection changed while the request was in flight
    if (response.status === 304) return true;
    if (response.status === 200) {
      const data = await response.json();
      if (panel.key === key) applyUpdate({ key, version: versionOf(response.headers.get("ETag")), data });
      return true;
    }
    const detail = await response.json().then((body) => body.detail, () => response.statusText);
    if (response.status === 404) {
      applyStatus(panel, /no longer exists/.test(String(detail)) ? "deleted" : "missing", String(detail));
    } else if (response.status === 503) {
      // Not cached yet, or the cache is unreachable: keep a value already shown, else say why it is missing.
      if (panel.status !== "ok") applyStatus(panel, "waiting", String(detail));
    } else {
      applyStatus(panel, "error", `${response.status}: ${detail}`);
    }
    return true;
  }

  // --- rendering ---------------------------------------------------------------------------------------------

  function h(tag, attributes, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) el.setAttribute(name, value);
    // append() turns strings into text nodes: nothing here is ever parsed as HTML.
    el.append(...children.filter((child) => child !== null && child !== undefined));
    return el;
  }

  function number(value) {
    return Number(value).toLocaleString("en");
  }

  function table(headings, rows) {
    return h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ...headings.map((text) => h("th", {}, text)))),
      h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((cell) => h("td", {}, cell))))),
    );
  }

  function link(kind, id, text) {
    // A real link (it works in a new tab too); a plain click just changes the selection in place.
    return h("a", { href: `?${kind}=${encodeURIComponent(id)}`, [`data-${kind}`]: String(id) }, String(text));
  }

  function figures(pairs) {
    return h("p", { class: "figures" }, ...pairs.map(([label, value]) => h("span", {}, h("b", {}, number(value)), ` ${label}`)));
  }

  const RENDERERS = {
    stats: (data) => [
      figures([["players", data.players], ["scores", data.scores], ["points", data.points]]),
      table(["region", "players", "points"], data.regions.map((r) => [r.region, number(r.players), number(r.points)])),
      h("h3", {}, "Top players"),
      table(["#", "player", "region", "total"], data.top.map((p) => [String(p.rank), link("player", p.id, p.name), p.region, number(p.total)])),
    ],
    leaderboard: (data) => [
      figures([[`players in ${data.region}`, data.players]]),
      table(["#", "player", "total", "scores"], data.entries.map((p) => [String(p.rank), link("player", p.id, p.name), number(p.total), number(p.scores)])),
    ],
    player: (data) => [
      h("h3", { "data-field": "name" }, data.name),
      h(
        "p",
        {},
        `${data.region} · `,
        data.team_id === null ? "no team" : link("team", data.team_id, data.team_name),
        ` · rank ${data.rank === null ? "below the top 100" : data.rank}`,
      ),
      figures([["points", data.total], ["scores", data.scores]]),
      table(["latest", "points"], data.recent.map((s) => [new Date(s.created_at).toLocaleString(), number(s.points)])),
    ],
    team: (data) => [
      h("h3", { "data-field": "name" }, data.name),
      figures([["points", data.total], ["members", data.members.length]]),
      table(["member", "region", "total"], data.members.map((m) => [link("player", m.id, m.name), m.region, number(m.total)])),
    ],
  };

  function contentOf(panel) {
    if (panel.status !== "ok") return [h("p", { class: "note" }, panel.note)];
    const renderer = RENDERERS[panel.name];
    try {
      return renderer ? renderer(panel.data) : [h("pre", {}, JSON.stringify(panel.data, null, 2))];
    } catch (error) {
      // A view whose shape changed still shows, as JSON, rather than freezing the panel.
      console.warn("freshviews: cannot render", panel.key, error);
      return [h("pre", {}, JSON.stringify(panel.data, null, 2))];
    }
  }

  function render(panel, changed) {
    const el = panel.el;
    el.dataset.key = panel.key || "";
    el.dataset.version = panel.version || "";
    el.dataset.status = panel.status;
    el.querySelector(".key").textContent = panel.key || "—";
    el.querySelector(".version").textContent = panel.version ? `version ${panel.version}` : "";
    el.querySelector(".body").replaceChildren(...contentOf(panel));
    if (panel.name === "stats" && panel.status === "ok") updateRegions(panel.data.regions.map((r) => r.region));
    updateAge(panel);
    if (changed) {
      el.classList.remove("flash");
      void el.offsetWidth; // restart the animation
      el.classList.add("flash");
    }
  }

  function updateRegions(regions, selected) {
    const select = controls.region;
    // A select takes a value only once it has that option, hence the explicit one at start.
    const current = selected ?? select.value;
    const wanted = Array.from(new Set([...regions, current].filter(Boolean)));
    if (wanted.join() === Array.from(select.options, (o) => o.value).join()) return;
    select.replaceChildren(...wanted.map((region) => h("option", { value: region }, region)));
    select.value = current;
  }

  // Versions are tickets taken from Redis TIME in microseconds when the value was recomputed, so a version in
  // that range dates the value itself; any other version falls back to when this page received the value.
  function computedAt(version) {
    const n = Number(version);
    return Number.isFinite(n) && n > 1e15 && n < 1e17 ? n / 1000 : null;
  }

  function formatAge(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} days`;
  }

  function updateAge(panel) {
    const el = panel.el.querySelector(".age");
    if (panel.status !== "ok") {
      el.textContent = "";
      delete panel.el.dataset.ageMs;
      return;
    }
    const at = computedAt(panel.version);
    const age = Math.max(0, at !== null ? Date.now() + clockOffsetMs - at : Date.now() - panel.seenAt);
    panel.el.dataset.ageMs = String(Math.round(age));
    el.textContent = `· ${at !== null ? "changed" : "received"} ${formatAge(age)} ago`;
    el.title = at !== null ? new Date(at - clockOffsetMs).toLocaleString() : "";
  }

  // --- measured freshness ----------------------------------------------------------------------------------

  // The subscriber's consistency sampler recomputes cached keys and compares them with the cache; /healthz
  // carries its summary. Nines: -log10 of the share of samples that were stale (3 = one in a thousand).
  const FRESHNESS_MS = 5000;
  const freshness = document.getElementById("freshness");

  async function loadFreshness() {
    try {
      const response = await fetch("healthz", { cache: "no-store" });
      const body = await response.json();
      renderFreshness(body && body.details ? body.details.sampler : null);
    } catch {
      // The server away: the connection indicator already says so.
    }
  }

  function renderFreshness(sampler) {
    const views = sampler && sampler.views ? Object.entries(sampler.views) : [];
    freshness.hidden = views.length === 0;
    if (views.length === 0) return;
    freshness.querySelector(".meta").textContent =
      `${number(sampler.samples)} samples at ${sampler.rate}/s over ${number(sampler.keys)} keys`;
    freshness.querySelector(".body").replaceChildren(
      table(
        ["view", "samples", "nines", "explained", "unexplained"],
        views.map(([name, v]) => [name, number(v.samples), Number(v.nines).toFixed(1), number(v.explained), number(v.unexplained)]),
      ),
    );
  }

  // --- start -------------------------------------------------------------------------------------------------

  /** Example keys from GET cache/views: which panels the server has, and their default parameters. */
  async function loadViews() {
    try {
      const response = await fetch("cache/views", { cache: "no-store" });
      const serverDate = Date.parse(response.headers.get("Date") || "");
      // The Date header has a one-second resolution; only a skew above that is worth correcting.
      if (Number.isFinite(serverDate) && Math.abs(serverDate - Date.now()) > 2000) clockOffsetMs = serverDate - Date.now();
      return response.ok ? await response.json() : null;
    } catch {
      return null;
    }
  }

  function exampleParams(template, example) {
    const names = [];
    const pattern = template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\\?\{(\w+)\\?\}/g, (_, name) => {
      names.push(name);
      return "([^/]+)";
    });
    const match = new RegExp(`^${pattern}$`).exec(example || "");
    return match ? Object.fromEntries(names.map((name, i) => [name, match[i + 1]])) : {};
  }

  async function start() {
    const views = await loadViews();
    const initial = { ...DEFAULTS };
    if (views !== null) {
      for (const panel of panels) {
        const view = views.find((v) => v.template === panel.template);
        // A server without this view (a different registry) simply has no such panel.
        panel.el.hidden = view === undefined;
        if (view) Object.assign(initial, exampleParams(view.template, view.example));
      }
    }
    const fromUrl = { region: query.get("region"), player_id: query.get("player"), team_id: query.get("team") };
    for (const [name, control] of Object.entries(controls)) control.value = fromUrl[name] || initial[name] || "";
    updateRegions([], fromUrl.region || initial.region);

    for (const control of Object.values(controls)) control.addEventListener("change", onSelectionChanged);
    document.getElementById("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      onSelectionChanged();
    });
    document.getElementById("panels").addEventListener("click", (event) => {
      const target = event.target.closest("a[data-player], a[data-team]");
      if (!target || event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      if (target.dataset.player) controls.player_id.value = target.dataset.player;
      if (target.dataset.team) controls.team_id.value = target.dataset.team;
      onSelectionChanged();
    });
    setInterval(() => panels.forEach(updateAge), 1000);
    if (freshness) {
      loadFreshness();
      setInterval(loadFreshness, FRESHNESS_MS);
    }

    refreshKeys();
    if (FORCED === "poll" || !("EventSource" in window)) {
      setConnection("polling", "poll", FORCED === "poll" ? "forced by ?transport=poll" : "no EventSource here");
      startPolling();
    } else {
      // One plain read first: the panels fill at once even while the stream is still connecting.
      activePanels().forEach(fetchPanel);
      openStream();
    }
  }

  start();
})();
