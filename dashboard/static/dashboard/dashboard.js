// Dashboard page: a grid of panels fed by the tab's one live connection (live windows)
// or by GET /api/v1/series (history ranges), with time controls and variable choices
// (?var-device=boiler-1, expanded on the server) kept in the URL, the alert banner,
// kiosk mode, the Board menu (rename, duplicate, export, delete) and, for editors, the editor.
// The share view (/share/<secret>/) is this same page in share mode: its config names the
// share link's socket and series URL, and it is always a kiosk.

import { AlertBanner, postJSON } from "./alerts.js";
import { bindBoardMenu } from "./boards.js";
import { LiveConnection, showState } from "./connection.js";
import { LayoutEditor, globMatch } from "./editor.js";
import { BrokenPanel, makePanel } from "./panels.js";
import { SeriesStore } from "./store.js";
import { HISTORY_RANGES, LIVE_RANGES, MAX_LIVE_S, bounds, describe, readTimeState, writeTimeState } from "./timerange.js";
import { formatInputTime, parseInputTime, viewerTimeZone } from "./format.js";

const params = new URLSearchParams(location.search);
if (params.get("tz")) document.body.dataset.timezone = params.get("tz");
const DRAW_INTERVAL_MS = 100; // at most 10 redraws a second, however fast data arrives
const HISTORY_REFRESH_MS = 60000; // a relative history range (last 24 h) follows now once a minute
const MAX_POINTS = 10000; // the series API's limit
const HISTORICAL = new Set(["timeseries", "candlestick"]); // stat and table always show the latest values

class DashboardPage {
  constructor(config) {
    this.config = config;
    this.store = new SeriesStore({ windowS: MAX_LIVE_S, maxPoints: 20000 });
    this.state = readTimeState();
    this.grid = document.getElementById("panels");
    this.panels = [];
    this.panelRoots = [];
    this.subscribed = new Set();
    this.dirty = true;
    this.lastDraw = 0;
    this.drawMs = 0;
    this.historyGeneration = 0;
    this.zoomTo = (fromMs, toMs) => this.setState({ mode: "history", range: "custom", fromMs, toMs, paused: false });

    this.share = config.share || null; // share mode: the link's own socket and series endpoint
    this.seriesUrl = this.share ? this.share.series : "/api/v1/series";
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.conn = this.share ? new LiveConnection(`${scheme}://${location.host}${this.share.socket}`) : new LiveConnection();
    showState(this.conn);
    for (const type of ["data", "alert", "lag", "subscribed"]) this.conn.on(type, (event) => this.dispatch(event));
    this.conn.on("state", () => this.updateStatus()); // a dropped socket shows at once, not on the next tick
    this.banner = new AlertBanner(undefined, { canOperate: config.can_operate_alerts });
    this.rebuild(config);
    this.conn.start();
    if (!this.share) this.banner.load().then((list) => list.forEach((a) => this.annotate(a)));
    this.bindControls();
    this.renderVariables();
    if (!this.share) bindBoardMenu(this.config);
    this.applyState();
    this.editor = new LayoutEditor(this);
    if (params.get("kiosk") === "1" || this.share) this.kiosk(this.share ? 0 : Number(params.get("rotate")) || 0);
    requestAnimationFrame(() => this.frame());
    setInterval(() => { this.dirty = true; this.updateStatus(); }, 1000);
  }

  // The one dispatch of live events on their type (docs/protocol.md).
  dispatch(event) {
    switch (event.type) {
      case "data":
        for (const b of event.batches) this.store.add(b.k, b.t, b.v);
        this.dirty = true;
        break;
      case "alert":
        this.annotate(this.banner.update(event));
        break;
      case "lag":
        break; // the server back-fills by itself; replayed data follows
      case "subscribed":
        if (event.globs) this.follow(event.metrics); // a delta: metrics created after the page opened
        break;
    }
  }

  // Metrics created after the page opened that one of the board's globs now takes in (a new device
  // of the fleet): each panel whose patterns match one adds it as a series and is drawn again.
  follow(metrics) {
    this.panels.forEach((panel, i) => {
      const spec = this.config.panels[i];
      if (!spec || !spec.patterns || spec.kind === "broken") return;
      const fresh = metrics.filter((m) => !spec.series.some((s) => s.key === m.key)
        && spec.patterns.some((p) => globMatch(p, m.key)));
      if (!fresh.length) return;
      spec.series = [...spec.series, ...fresh].slice(0, spec.max_series || 40);
      panel.destroy();
      const root = this.panelRoots[i];
      root.replaceChildren();
      try { this.panels[i] = makePanel(root, spec, this); } catch (err) { this.fail(panel, err); }
      this.place(root, spec);
    });
    this.dirty = true;
    if (this.state && this.state.mode === "history") this.loadHistory();
  }

  annotate(alert) {
    if (alert.previous === alert.state && alert.state !== "firing") return; // acks and silences are not chart events
    for (const panel of [...this.panels]) { try { panel.annotate(alert); } catch (err) { this.fail(panel, err); } }
  }

  rebuild(config) {
    for (const panel of this.panels) panel.destroy();
    config.panels.sort((a, b) => a.y - b.y || a.x - b.x);
    this.config = config;
    this.grid.replaceChildren();
    this.panelRoots = [];
    // One panel that cannot be built is drawn as a panel-level error; it never stops the others.
    this.panels = config.panels.map((spec) => {
      const root = document.createElement("section");
      this.grid.append(root);
      this.panelRoots.push(root);
      const panel = makePanel(root, spec, this);
      this.place(root, spec);
      return panel;
    });
    this.subscribeKeys(this.panels.flatMap((p) => p.keys));
    // The globs too: the server keeps them live and announces metrics created later (follow).
    this.subscribeKeys(config.panels.flatMap((spec) => (spec.patterns || []).filter((p) => /[*?[]/.test(p))));
    this.dirty = true;
    if (this.state && this.state.mode === "history") this.loadHistory();
  }

  // Live data (with the last hour back-filled) for keys this tab does not follow yet.
  subscribeKeys(all) {
    const keys = [...new Set(all)].filter((k) => !this.subscribed.has(k));
    if (!keys.length) return;
    keys.forEach((k) => this.subscribed.add(k));
    this.conn.subscribe(keys, { historyS: MAX_LIVE_S, maxRate: 10 });
  }

  // The variable choices in the URL: {device: "boiler-1"}.
  chosenVariables() {
    const chosen = {};
    for (const [k, v] of new URLSearchParams(location.search)) if (k.startsWith("var-")) chosen[k.slice(4)] = v;
    return chosen;
  }

  // One picker per board variable in the top bar. A choice goes into the URL (?var-device=boiler-1,
  // beside the time range) and the page reloads: the server expands the patterns with the reader's rights.
  renderVariables() {
    const box = document.getElementById("variables");
    if (!box) return;
    box.replaceChildren();
    for (const v of this.config.variables || []) {
      const label = document.createElement("label");
      label.className = "variable";
      label.append(`${v.label || v.name} `);
      const select = document.createElement("select");
      select.name = `var-${v.name}`;
      select.dataset.variable = v.name;
      for (const value of ["All", ...(v.values || [])]) select.append(new Option(value, value, false, value === v.current));
      select.addEventListener("change", () => {
        const now = new URLSearchParams(location.search);
        if (select.value === "All") now.delete(`var-${v.name}`);
        else now.set(`var-${v.name}`, select.value);
        now.delete("edit");
        location.search = now.toString();
      });
      label.append(select);
      box.append(label);
    }
  }

  // A panel whose drawing threw: replace it by its error, keep drawing the rest.
  fail(panel, err) {
    const i = this.panels.indexOf(panel);
    if (i < 0 || panel instanceof BrokenPanel) return;
    console.error("pulseboard: panel", panel.cfg.title, err);
    try { panel.destroy(); } catch { /* already broken */ }
    this.panels[i] = new BrokenPanel(this.panelRoots[i], panel.cfg, err.message);
    this.place(this.panelRoots[i], panel.cfg);
  }

  place(root, spec) {
    root.style.gridColumn = `${spec.x + 1} / span ${spec.w}`;
    root.style.gridRow = `${spec.y + 1} / span ${spec.h}`;
    root.style.setProperty("--rows", spec.h);
  }

  frame() {
    const now = performance.now();
    // Drawing may take at most a fifth of the time, so a flood of data never starves the socket.
    if (this.dirty && now - this.lastDraw >= Math.max(DRAW_INTERVAL_MS, 5 * this.drawMs)) {
      this.draw();
      this.lastDraw = now;
      this.drawMs = performance.now() - now;
      this.dirty = false;
    }
    requestAnimationFrame(() => this.frame());
  }

  draw() {
    const live = this.state.mode === "live";
    if (live && this.state.paused) return;
    const [fromMs, toMs] = bounds(this.state);
    for (const panel of [...this.panels]) {
      if (!live && HISTORICAL.has(panel.cfg.kind)) continue;
      try { panel.drawLive(this.store, fromMs / 1000, toMs / 1000); } catch (err) { this.fail(panel, err); }
    }
    if (this.statusDirty) this.updateStatus();
  }

  updateStatus() {
    this.statusDirty = false;
    for (const panel of [...this.panels]) {
      const mode = this.state.mode === "history" && HISTORICAL.has(panel.cfg.kind) ? "history" : "live";
      try { panel.showStatus(this.conn, this.store, mode, this.state.mode === "live" && this.state.paused); } catch (err) { this.fail(panel, err); }
    }
  }

  async loadHistory() {
    const generation = ++this.historyGeneration;
    const [fromMs, toMs] = bounds(this.state);
    clearTimeout(this.historyTimer);
    if (this.state.range !== "custom") this.historyTimer = setTimeout(() => this.loadHistory(), HISTORY_REFRESH_MS);
    document.body.classList.add("loading");
    await Promise.all(this.panels.map(async (panel) => {
      if (!HISTORICAL.has(panel.cfg.kind) || !panel.keys.length) return;
      // Never ask for more buckets than the chart has pixels.
      const width = Math.round((panel.chartBox ? panel.chartBox.clientWidth : 600) || 600);
      const points = panel.cfg.kind === "candlestick" ? Math.max(10, Math.floor(width / 9)) : Math.min(MAX_POINTS, Math.max(50, width));
      const query = new URLSearchParams({ from: String(Math.round(fromMs * 1000)), to: String(Math.round(toMs * 1000)), points: String(points) });
      const keys = panel.cfg.kind === "candlestick" ? panel.keys.slice(0, 1) : panel.keys;
      for (const k of keys) query.append("metric", k);
      try {
        const response = await fetch(`${this.seriesUrl}?${query}`, { credentials: "same-origin" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const history = await response.json();
        if (generation === this.historyGeneration) panel.drawHistory(history, fromMs / 1000, toMs / 1000, this.store);
      } catch (err) {
        panel.status.textContent = "history unavailable";
        panel.status.dataset.state = "stale";
        console.warn("pulseboard: history of", panel.cfg.title, err);
      }
    }));
    if (generation === this.historyGeneration) document.body.classList.remove("loading");
    this.updateStatus();
  }

  setState(state) {
    this.state = state;
    writeTimeState(state);
    this.applyState();
  }

  applyState() {
    const s = this.state;
    for (const b of document.querySelectorAll("[data-range]")) b.classList.toggle("active", b.dataset.range === s.range);
    const pause = document.getElementById("pause");
    pause.hidden = s.mode !== "live";
    pause.textContent = s.paused ? "▶ Resume" : "❚❚ Pause";
    pause.classList.toggle("primary", !!s.paused);
    document.getElementById("range-label").textContent = describe(s, viewerTimeZone());
    document.getElementById("custom-range").hidden = s.range !== "custom";
    if (s.range === "custom") {
      document.getElementById("custom-from").value = formatInputTime(s.fromMs);
      document.getElementById("custom-to").value = formatInputTime(s.toMs);
    }
    document.body.dataset.mode = s.mode;
    if (s.mode === "history") this.loadHistory();
    else { clearTimeout(this.historyTimer); this.historyGeneration++; }
    this.dirty = true;
    this.updateStatus();
  }

  bindControls() {
    for (const b of document.querySelectorAll("[data-range]")) {
      b.addEventListener("click", () => {
        const r = b.dataset.range;
        if (LIVE_RANGES[r]) this.setState({ mode: "live", range: r, windowS: LIVE_RANGES[r], paused: false });
        else if (HISTORY_RANGES[r]) this.setState({ mode: "history", range: r, spanS: HISTORY_RANGES[r], paused: false });
        else {
          const [fromMs, toMs] = bounds(this.state);
          this.setState({ mode: "history", range: "custom", fromMs, toMs, paused: false });
        }
      });
    }
    document.getElementById("custom-apply").addEventListener("click", () => {
      const inputs = ["custom-from", "custom-to"].map((id) => document.getElementById(id));
      const [fromMs, toMs] = inputs.map((input) => parseInputTime(input.value));
      inputs.forEach((input, i) => input.classList.toggle("invalid", [fromMs, toMs][i] === null));
      if (fromMs !== null && toMs !== null && toMs > fromMs) this.setState({ mode: "history", range: "custom", fromMs, toMs, paused: false });
    });
    document.getElementById("pause").addEventListener("click", () => {
      if (this.state.mode === "live") this.setState({ ...this.state, paused: !this.state.paused });
    });
    const pan = (direction) => {
      const [fromMs, toMs] = bounds(this.state);
      const shift = ((toMs - fromMs) / 2) * direction;
      const to = Math.min(toMs + shift, Date.now());
      this.setState({ mode: "history", range: "custom", fromMs: to - (toMs - fromMs), toMs: to, paused: false });
    };
    document.getElementById("pan-back").addEventListener("click", () => pan(-1));
    document.getElementById("pan-forward").addEventListener("click", () => pan(1));
    window.addEventListener("keydown", (e) => { if (e.key === "Escape" && this.state.range === "custom") document.querySelector('[data-range="15m"]').click(); });
    this.bindTimeZone();
  }

  bindTimeZone() {
    const input = document.getElementById("timezone");
    if (!input) return;
    const zones = ["browser", "UTC", ...(Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : [])];
    const list = document.getElementById("timezones");
    for (const z of zones) list.append(new Option(z === "browser" ? `browser (${Intl.DateTimeFormat().resolvedOptions().timeZone})` : z, z));
    input.value = document.body.dataset.timezone || "browser";
    input.addEventListener("change", async () => {
      try {
        await postJSON("/api/v1/preferences", { timezone: input.value.trim() });
        // Reload with the URL as it is now (range, zoom, pause), not as it was when the page loaded.
        const now = new URLSearchParams(location.search);
        now.delete("tz");
        location.search = now.toString();
      } catch (err) { input.classList.add("invalid"); input.title = err.message; }
    });
  }

  // Wall-screen mode: no chrome; optionally move to the next dashboard every `rotateS` seconds.
  kiosk(rotateS) {
    document.body.classList.add("kiosk");
    this.fitScreen();
    window.addEventListener("resize", () => this.fitScreen());
    // The alert banner showing or growing moves the grid down: fit again.
    const above = new ResizeObserver(() => this.fitScreen());
    for (const node of [document.getElementById("alert-banner"), document.querySelector(".page-head")]) if (node) above.observe(node);
    if (rotateS < 10 || this.config.dashboards.length < 2) return;
    const next = this.config.dashboards[(this.config.dashboards.indexOf(this.config.slug) + 1) % this.config.dashboards.length];
    setTimeout(() => { location.href = `/d/${next}/?${params}`; }, rotateS * 1000);
  }

  // Kiosk: the whole board fits the screen however many rows it has; rows shrink to share the
  // height left under the title, and the charts follow their cells (ResizeObserver).
  fitScreen() {
    const rows = Math.max(1, ...this.config.panels.map((p) => p.y + p.h));
    const gap = parseFloat(getComputedStyle(this.grid).rowGap) || 0;
    const top = this.grid.getBoundingClientRect().top + window.scrollY;
    const bottom = parseFloat(getComputedStyle(document.querySelector("main")).paddingBottom) || 0;
    const row = Math.floor((window.innerHeight - top - bottom - gap * (rows - 1)) / rows);
    document.body.style.setProperty("--row", `${Math.max(8, row)}px`);
  }
}

window.pulseboard = new DashboardPage(JSON.parse(document.getElementById("dashboard-config").textContent));
