/* recsys operator console: the admin token for this tab, htmx wiring, and the Live charts.
   The token lives in sessionStorage (this tab's session) and goes out as a bearer header on
   every console request; a 401/403 drops it and shows the login form again. */
(function () {
  "use strict";
  const KEY = "recsys.web.console.token", ACTOR = "recsys.web.console.actor";
  const body = document.body;
  if (body.dataset.enabled !== "yes") return;

  const token = () => sessionStorage.getItem(KEY);
  let refresher = null;
  const $ = (id) => document.getElementById(id);

  function authHeaders() {
    const h = { Authorization: "Bearer " + token() };
    const actor = sessionStorage.getItem(ACTOR);
    if (actor) h["X-Actor"] = actor;
    return h;
  }

  document.addEventListener("htmx:configRequest", (e) => {
    if (token()) Object.assign(e.detail.headers, authHeaders());
  });

  function showError(text) {
    const f = $("flash");
    f.textContent = text;
    f.hidden = !text;
  }

  document.addEventListener("htmx:beforeRequest", () => showError(""));
  document.addEventListener("htmx:responseError", (e) => {
    const xhr = e.detail.xhr;
    if (xhr.status === 401 || xhr.status === 403) return logout("Your token was refused: sign in again.");
    let msg = "HTTP " + xhr.status;
    try { msg = JSON.parse(xhr.responseText).description || msg; } catch (_) { /* not JSON */ }
    showError(msg);
  });
  document.addEventListener("htmx:sendError", () => showError("The service did not answer."));

  function logout(message) {
    sessionStorage.removeItem(KEY);
    $("login").hidden = false;
    $("screen").hidden = true;
    $("logout").hidden = true;
    $("who").textContent = "";
    const err = $("login-error");
    err.textContent = message || "";
    err.hidden = !message;
    stopLive();
  }

  async function ready() {
    const r = await fetch(body.dataset.whoami || "/admin/ui/whoami", { headers: authHeaders() });
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { msg = (await r.json()).description || msg; } catch (_) { /* not JSON */ }
      return logout(msg);
    }
    const who = await r.json();
    $("login").hidden = true;
    $("screen").hidden = false;
    $("logout").hidden = false;
    $("who").textContent = "signed in as " + who.actor;
    htmx.trigger(document.body, "console-ready");
    if (body.dataset.screen === "live") startLive();
    // The Overview refreshes itself while signed in (not before: it would be refused).
    if (body.dataset.screen === "overview" && !refresher) {
      refresher = setInterval(() => { if (token()) htmx.trigger("#overview-screen", "console-refresh"); }, 15000);
    }
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    const actor = $("actor").value.trim();
    if (actor) sessionStorage.setItem(ACTOR, actor); else sessionStorage.removeItem(ACTOR);
    ready();
  });
  $("logout").addEventListener("click", () => logout(""));

  // -- Live ----------------------------------------------------------------------------------
  const INTERVAL_MS = 3000, POINTS = 60;
  let timer = null, prev = null;
  const charts = {};
  const series = {};  // chart id -> {x: [], ys: {name: []}}

  function stopLive() { if (timer) { clearInterval(timer); timer = null; } }

  /* histogram_quantile over cumulative bucket counts (le null = +Inf); as recsys.web.console.live */
  function quantile(le, counts, q) {
    if (!counts.length || counts[counts.length - 1] <= 0) return null;
    const rank = q * counts[counts.length - 1];
    let prevLe = 0, prevC = 0;
    for (let i = 0; i < counts.length; i++) {
      const c = counts[i], b = le[i];
      if (c >= rank) {
        if (b === null) return prevLe;
        if (c === prevC) return b;
        return prevLe + (b - prevLe) * (rank - prevC) / (c - prevC);
      }
      if (b !== null) prevLe = b;
      prevC = c;
    }
    return prevLe;
  }

  function histDelta(a, b) {
    if (!a || !b || a.counts.length !== b.counts.length) return b;
    return { le: b.le, counts: b.counts.map((c, i) => Math.max(0, c - a.counts[i])) };
  }
  const sum = (o) => Object.values(o || {}).reduce((x, y) => x + y, 0);
  const ms = (s) => (s === null ? null : s * 1000);

  function push(id, names, t, values, ratio = false) {
    const el = $(id);
    if (!el) return;
    let s = series[id];
    if (!s || names.join() !== s.names.join()) {
      s = series[id] = { names, x: [], ys: names.map(() => []) };
    }
    s.x.push(t);
    names.forEach((n, i) => s.ys[i].push(values[i]));
    if (s.x.length > POINTS) { s.x.shift(); s.ys.forEach((y) => y.shift()); }
    const data = [s.x, ...s.ys];
    const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
    if (!charts[id] || charts[id]._names !== names.join()) {
      if (charts[id]) charts[id].destroy();
      el.innerHTML = "";
      const opts = {
        width: el.clientWidth || 380, height: 160,
        legend: { show: true, live: false }, cursor: { show: false },
        // A fixed window of the last POINTS samples, so one or two points do not stretch it.
        scales: {
          x: { time: true, range: (u, min, max) => [max - (POINTS * INTERVAL_MS) / 1000, max + 1] },
          y: ratio ? { range: [0, 1] } : { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.1] },
        },
        series: [{}, ...names.map((n, i) => ({ label: n, stroke: palette[i % palette.length], width: 1.5, spanGaps: false }))],
        axes: [
          { space: 70, values: (u, ticks) => ticks.map((v) => new Date(v * 1000).toLocaleTimeString([], { hour12: false })) },
          { size: 50 },
        ],
      };
      charts[id] = new uPlot(opts, data, el);
      charts[id]._names = names.join();
    } else {
      charts[id].setData(data);
    }
    el.dataset.points = String(s.x.length);
    el.dataset.last = JSON.stringify(values);
  }

  function draw(a, b) {
    const dt = b.t - a.t;
    if (dt <= 0) return;
    const t = b.t;
    push("chart-rate", ["requests/s", "5xx/s"], t,
      [(b.requests - a.requests) / dt, (b.errors - a.errors) / dt]);
    const lat = histDelta(a.latency, b.latency);
    push("chart-latency", ["p50", "p95", "p99"], t,
      [0.5, 0.95, 0.99].map((q) => ms(quantile(lat.le, lat.counts, q))));
    const hits = b.cache_hits - a.cache_hits, misses = b.cache_misses - a.cache_misses;
    push("chart-cache", ["hit ratio"], t, [hits + misses > 0 ? hits / (hits + misses) : null], true);
    const reasons = Object.keys(b.degraded).sort();
    push("chart-degraded", ["shed requests", ...reasons], t,
      [(b.shed - a.shed) / dt, ...reasons.map((r) => (b.degraded[r] - (a.degraded[r] || 0)) / dt)]);
    const missed = Object.keys(b.deadline_misses).sort();
    push("chart-misses", missed.length ? missed : ["all"], t, missed.length
      ? missed.map((k) => (b.deadline_misses[k] - (a.deadline_misses[k] || 0)) / dt)
      : [(sum(b.deadline_misses) - sum(a.deadline_misses)) / dt]);
    const strategies = Object.keys(b.strategy_latency).sort();
    push("chart-strategy", strategies.length ? strategies : ["none yet"], t, strategies.length
      ? strategies.map((k) => { const h = histDelta(a.strategy_latency[k], b.strategy_latency[k]); return ms(quantile(h.le, h.counts, 0.95)); })
      : [null]);
    $("live-status").textContent = "last sample " + new Date(t * 1000).toLocaleTimeString() +
      " · " + Math.round(b.requests) + " requests since start";
  }

  async function sample() {
    const url = $("charts").dataset.url + (prev ? "" : "?history=1");
    let r;
    try { r = await fetch(url, { headers: authHeaders() }); } catch (_) { return showError("The service did not answer."); }
    if (r.status === 401 || r.status === 403) return logout("Your token was refused: sign in again.");
    if (!r.ok) return showError("metrics: HTTP " + r.status);
    showError("");
    const snap = await r.json();
    // First sample of this page: the service's short history first, so a reload keeps the charts.
    const earlier = snap.history || [];
    delete snap.history;
    for (const h of earlier) {
      if (prev && h.t > prev.t && h.requests >= prev.requests) draw(prev, h);
      prev = h;
    }
    if (earlier.length) $("charts").dataset.history = String(earlier.length);
    if (prev && snap.t > prev.t && snap.requests >= prev.requests) draw(prev, snap);
    prev = snap;
    const charts = $("charts");
    charts.dataset.samples = String(Number(charts.dataset.samples || 0) + 1);
  }

  function startLive() {
    stopLive();
    prev = null;
    sample();
    timer = setInterval(sample, INTERVAL_MS);
  }
  window.recsysConsole = { quantile, sample };

  // -- Overview: events per day (bars) ----------------------------------------------------------
  function drawEvents() {
    const el = $("chart-events");
    if (!el || el.dataset.drawn === "yes") return;
    const d = JSON.parse(el.dataset.series);
    const xs = d.days.map((day) => Date.parse(day + "T00:00:00Z") / 1000);
    el.innerHTML = "";
    new uPlot({
      width: el.clientWidth || 500, height: 180, legend: { show: false }, cursor: { show: false },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.1] } },
      series: [{}, { label: "events", stroke: "#2563eb", fill: "rgba(37,99,235,0.25)", paths: uPlot.paths.bars({ size: [0.8, 40] }) }],
      axes: [{ space: 60, values: (u, ticks) => ticks.map((v) => new Date(v * 1000).toISOString().slice(5, 10)) }, { size: 60 }],
    }, [xs, d.counts], el);
    el.dataset.drawn = "yes";
    el.dataset.points = String(xs.length);
    el.dataset.total = String(d.counts.reduce((a, b) => a + b, 0));
  }
  document.addEventListener("htmx:afterSettle", drawEvents);

  if (token()) ready(); else logout("");
})();
