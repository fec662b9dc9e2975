// The four panel kinds of a dashboard: time series, stat, table and candlestick.
// Each panel draws live from the tab's SeriesStore or a history answer from
// GET /api/v1/series, and shows its own status: live / reconnecting / stale since T.

import { formatValue, formatTime, viewerTimeZone } from "./format.js";

export const COLORS = ["#4f9cf9", "#f5a524", "#3ccf91", "#f3616d", "#b48cf2", "#37c6d0", "#e879b9", "#a3a3a3"];
const STATE_COLORS = { firing: "#f3616d", nodata: "#f5a524", pending: "#f5a524", resolved: "#3ccf91", ok: "#3ccf91" };
const CURRENCIES = new Set(["USD", "EUR", "GBP", "JPY", "CHF", "USDT"]);
const DEFAULT_STALE_S = 30; // a panel whose newest sample is older than this is marked stale
const MAX_ANNOTATIONS = 50; // per panel; older ones are dropped so a flapping alert cannot grow memory
const CURSOR_SYNC_KEY = "pulseboard-board"; // every time-series and candlestick panel of a page shares one cursor
// The time that shared cursor points at: the nearest sample of the chart under the pointer. The charts
// that follow show this time too, not their own nearest sample's, which can fall in another second when
// their buckets lie on another grid (a panel of another width asks for another step).
const sharedCursor = { t: null, legends: new Set() };

// Colour of a value by the panel's thresholds [{value, color}], the highest threshold reached wins.
export function thresholdColor(value, thresholds = [], fallback = "var(--text)") {
  let color = fallback;
  for (const t of [...thresholds].sort((a, b) => a.value - b.value)) if (value >= t.value) color = t.color;
  return color;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

class Panel {
  constructor(root, cfg) {
    this.cfg = cfg;
    this.root = root;
    this.keys = cfg.series.map((s) => s.key);
    this.unit = cfg.options.unit ?? (cfg.series[0] ? cfg.series[0].unit : "");
    this.staleS = cfg.options.stale_s || DEFAULT_STALE_S;
    this.decimals = Number.isInteger(cfg.options.decimals) ? cfg.options.decimals : null;
    this.annotations = [];
    root.className = `panel panel-${cfg.kind}`;
    root.dataset.panelId = cfg.id ?? "";
    root.dataset.kind = cfg.kind;
    const head = el("header", "panel-head");
    head.append(el("h2", "panel-title", cfg.title));
    this.status = el("span", "panel-status", "connecting");
    head.append(this.status);
    root.append(head);
    this.body = el("div", "panel-body");
    root.append(this.body);
    if (!this.keys.length) this.body.append(el("p", "empty", `No readable metric matches ${cfg.metrics.join(", ")}`));
  }

  // A value as legends, stats and tables show it: the panel's unit and decimals.
  fmt(v, unit = this.unit) { return formatValue(v, unit, this.decimals); }

  // The colour of series i: the panel's own (options.colors) or the palette's.
  color(i) { return (this.cfg.options.colors || [])[i] || COLORS[i % COLORS.length]; }

  label(key) {
    const s = this.cfg.series.find((x) => x.key === key);
    if (!s) return key;
    // Several sources: the source tells lines apart; one source: the metric name does.
    const sources = new Set(this.cfg.series.map((x) => x.source));
    return sources.size > 1 ? s.source.replace(/^(host|iot|market)\./, "") + (new Set(this.cfg.series.map((x) => x.name)).size > 1 ? " " + s.name : "") : s.name;
  }

  newest(store) {
    let t = 0;
    for (const k of this.keys) { const l = store.latest(k); if (l && l.t > t) t = l.t; }
    return t;
  }

  // Status text: the connection state wins, then the panel's own freshness.
  showStatus(conn, store, mode, paused) {
    let state, text;
    if (mode === "history") { state = "history"; text = "history"; }
    else if (paused) { state = "paused"; text = "paused"; }
    else if (conn.state === "reconnecting" || conn.state === "connecting") { state = "reconnecting"; text = conn.state; }
    else {
      const newest = this.newest(store);
      const notice = conn.noticeFor ? conn.noticeFor(this.keys) : null; // the server's degraded or stale notice
      if (notice) { state = "stale"; text = notice; }
      else if (!newest) { state = "stale"; text = "no data"; }
      else if (Date.now() / 1000 - newest > this.staleS) { state = "stale"; text = "stale since " + formatTime(newest * 1000); }
      else if (conn.state === "stale") { state = "stale"; text = "stale since " + formatTime((conn.staleSince || Date.now())); }
      else { state = "live"; text = "live"; }
    }
    if (this.status.dataset.state !== state || this.status.textContent !== text) {
      this.status.dataset.state = state;
      this.status.textContent = text;
    }
  }

  annotate(alert) {
    if (!this.keys.includes(alert.metric)) return false;
    this.annotations.push({ t: alert.at / 1e6, state: alert.state });
    if (this.annotations.length > MAX_ANNOTATIONS) this.annotations.shift();
    this.root.classList.toggle("alerting", alert.state === "firing");
    return true;
  }

  setRange() {}
  drawLive() {}
  drawHistory() {}
  destroy() { if (this.observer) this.observer.disconnect(); if (this.plot) this.plot.destroy(); }
}

// Draw threshold lines and alert annotations on a uPlot canvas.
function overlayHook(panel) {
  return (u) => {
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    for (const t of panel.cfg.options.thresholds || []) {
      const y = u.valToPos(t.value, "y", true);
      if (y < top || y > top + height) continue;
      ctx.strokeStyle = t.color;
      ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.lineWidth = devicePixelRatio;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
    }
    ctx.setLineDash([]);
    for (const a of panel.annotations) {
      const x = u.valToPos(a.t, "x", true);
      if (x < left || x > left + width) continue;
      ctx.strokeStyle = STATE_COLORS[a.state] || "#f3616d";
      ctx.lineWidth = 2 * devicePixelRatio;
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath(); ctx.moveTo(x - 5 * devicePixelRatio, top); ctx.lineTo(x + 5 * devicePixelRatio, top); ctx.lineTo(x, top + 7 * devicePixelRatio); ctx.fill();
    }
    ctx.restore();
  };
}

// Time labels in the viewer's zone, as short as the tick spacing allows.
function timeLabels(zone) {
  const f = (o) => new Intl.DateTimeFormat([], { timeZone: zone, hourCycle: "h23", ...o });
  const sec = f({ hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const min = f({ hour: "2-digit", minute: "2-digit" });
  const dayTime = f({ month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  const day = f({ month: "short", day: "numeric" });
  return (u, splits, axisIdx, space, incr) => splits.map((s) => {
    const d = new Date(s * 1000);
    if (incr >= 86400) return day.format(d);
    if (incr >= 3600 && u.scales.x.max - u.scales.x.min > 86400) return dayTime.format(d);
    return incr < 60 ? sec.format(d) : min.format(d);
  });
}

// Wide enough for the longest value label, so "195.3 KiB/s" is never cut.
function labelWidth(u, values) {
  if (!values) return 40;
  return Math.ceil(Math.max(...values.map((v) => String(v).length)) * 7 + 16);
}

// Axis labels: prices without their unit (the panel says it), everything else as formatValue.
function axisValue(v, unit) {
  if (CURRENCIES.has(unit)) return v.toLocaleString("en-US", { maximumFractionDigits: Math.abs(v) >= 100 ? 0 : 4 });
  return formatValue(v, unit);
}

function axes(unit) {
  const grid = { stroke: "#232a36", width: 1 };
  return [
    { stroke: "#8b95a5", grid, ticks: { stroke: "#2a3140" }, space: 70, values: timeLabels(viewerTimeZone()) },
    { stroke: "#8b95a5", grid, ticks: { show: false }, size: labelWidth, values: (u, vals) => vals.map((v) => axisValue(v, unit)) },
  ];
}

// The value axis: the panel's min and max when set (a side left out follows the data), else uPlot's own.
export function yScale({ min = null, max = null } = {}) {
  if (min === null && max === null) return {};
  return {
    range: (u, dataMin, dataMax) => {
      const lo = dataMin ?? min ?? 0, hi = dataMax ?? max ?? 1;
      const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
      const from = min ?? Math.min(lo - pad, (max ?? Infinity) - 1);
      const to = max ?? Math.max(hi + pad, (min ?? -Infinity) + 1);
      return [from, to];
    },
  };
}

// uPlot with the dashboard's look, drag-to-zoom reported to the page instead of zooming itself.
function makePlot(panel, container, series, { onZoom, extraHooks = {} }) {
  const zone = viewerTimeZone();
  const size = () => ({ width: Math.max(container.clientWidth, 200), height: Math.max(container.clientHeight, 80) });
  const opts = {
    ...size(),
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), zone),
    scales: { x: { time: true }, y: yScale(panel.cfg.options) },
    axes: axes(panel.unit),
    series: [{}, ...series],
    legend: { show: false },
    // The crosshair follows the pointer on every chart of the board at the same time (by x value).
    cursor: { drag: { x: true, y: false, setScale: false }, points: { size: 6 }, sync: { key: CURSOR_SYNC_KEY } },
    hooks: {
      draw: [overlayHook(panel), ...(extraHooks.draw || [])],
      setCursor: extraHooks.setCursor || [],
      setSelect: [(u) => {
        if (u.select.width > 4 && onZoom) onZoom(u.posToVal(u.select.left, "x") * 1000, u.posToVal(u.select.left + u.select.width, "x") * 1000);
        u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      }],
    },
  };
  const plot = new uPlot(opts, [[], ...series.map(() => [])], container);
  panel.observer = new ResizeObserver(() => plot.setSize(size()));
  panel.observer.observe(container);
  return plot;
}

// Align several series on one x axis. Missing points are `undefined` (lines join across them);
// a silence longer than gapS in a series inserts a `null` (drawn as a gap). gapS is one number
// for every series or an array, one per series (each series breaks by its own reporting interval).
export function alignWithGaps(columns, gapS) {
  const gapOf = (k) => (Array.isArray(gapS) ? gapS[k] : gapS);
  if (columns.length === 1) return oneWithGaps(columns[0], gapOf(0));
  const xsSet = new Set();
  columns.forEach((c, k) => {
    const gap = gapOf(k);
    for (let i = 0; i < c.t.length; i++) {
      xsSet.add(c.t[i]);
      // A break point inside every long silence, so the gap shows even where no other series has a sample.
      if (i > 0 && c.t[i] - c.t[i - 1] > gap) xsSet.add(c.t[i - 1] + gap / 2);
    }
  });
  const xs = Float64Array.from(xsSet).sort();
  const ys = columns.map((c, k) => {
    const gapS = gapOf(k);
    const out = new Array(xs.length); // undefined: no sample of this series here, the line joins across
    let j = 0; // first own sample at or after xs[i]
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i];
      while (j < c.t.length && c.t[j] < x) j++;
      if (j < c.t.length && c.t[j] === x) out[i] = c.v[j];
      else if (j > 0 && j < c.t.length && c.t[j] - c.t[j - 1] > gapS) out[i] = null; // inside a silence: a gap
    }
    return out;
  });
  return [xs, ...ys];
}

// The common single-series case without sets and maps: one pass, nulls where the series paused.
function oneWithGaps(c, gapS) {
  const xs = [], ys = [];
  for (let i = 0; i < c.t.length; i++) {
    if (i > 0 && c.t[i] - c.t[i - 1] > gapS) { xs.push(c.t[i - 1] + gapS / 2); ys.push(null); }
    xs.push(c.t[i]); ys.push(c.v[i]);
  }
  return [xs, ys];
}

const MIN_GAP_S = 5; // shorter pauses are jitter, never a gap
const DEFAULT_INTERVAL_S = 10; // Source.expected_interval_s's default, for a series the page knows nothing of

// The pause after which a series is drawn broken: five of its own reporting intervals (the median
// spacing of its last 50 samples, or the source's expected interval until it has 3), and never less
// than 2.5 buckets of a history answer. A 2 s sensor in 0.26 s buckets is a line; a few lost samples
// are a gap; jitter and bucketing are not.
export function gapSeconds(t, { stepS = 0, expectedS = DEFAULT_INTERVAL_S } = {}) {
  let interval = expectedS || DEFAULT_INTERVAL_S;
  if (t.length >= 3) {
    const d = [];
    for (let i = Math.max(1, t.length - 50); i < t.length; i++) d.push(t[i] - t[i - 1]);
    d.sort((a, b) => a - b);
    interval = d[d.length >> 1];
  }
  return Math.max(MIN_GAP_S, 5 * interval, 2.5 * stepS);
}

// Indices of the samples of every run (samples between gaps) spanning at most minSpan on x: with
// minSpan 0 the values with no drawn neighbour. A line cannot show them (a lone sample, or two
// adjacent 10-minute buckets one pixel apart on 7 days), so they are drawn as points.
// `undefined` (another series' timestamp) neither joins nor breaks a run.
export function isolatedPoints(ys, xs = null, minSpan = 0) {
  const out = [];
  let first = -1, last = -1, count = 0; // the current run, without allocating per sample
  const close = () => {
    if (count && (count === 1 || (xs && xs[last] - xs[first] <= minSpan))) {
      for (let j = first; j <= last; j++) if (ys[j] != null) out.push(j);
    }
    first = last = -1; count = 0;
  };
  for (let i = 0; i < ys.length; i++) {
    const v = ys[i];
    if (v === undefined) continue;
    if (v === null) close();
    else { if (first < 0) first = i; last = i; count++; }
  }
  close();
  return out;
}

// uPlot points.filter: the samples a line cannot show, those of runs under 4 CSS pixels wide.
function lonePoints(u, si) {
  const span = u.scales.x.max - u.scales.x.min;
  if (!(span > 0) || !u.bbox.width) return null;
  const found = isolatedPoints(u.data[si], u.data[0], (4 * devicePixelRatio * span) / u.bbox.width);
  return found.length ? found : null;
}

export class TimeSeriesPanel extends Panel {
  constructor(root, cfg, page) {
    super(root, cfg);
    if (!this.keys.length) return;
    this.chartBox = el("div", "chart-box");
    this.chartBox.setAttribute("role", "img"); // its text alternative: the legend's current values (fillLegend)
    this.legend = el("table", "legend");
    const legend = cfg.options.legend || {};
    this.legendValues = legend.values || ["latest", "min", "max"];
    this.body.append(this.chartBox, this.legend);
    const series = this.keys.map((k, i) => ({
      label: this.label(k),
      stroke: this.color(i),
      fill: this.keys.length === 1 && /^#[0-9a-f]{6}$/i.test(this.color(0)) ? this.color(0) + "22" : undefined,
      width: 1.5,
      spanGaps: false,
      // No markers on lines; a sample with no neighbour is drawn as a dot, or it would be invisible.
      points: { show: false, size: 5, fill: this.color(i), filter: lonePoints },
    }));
    this.expectedS = this.keys.map((k) => (this.cfg.series.find((s) => s.key === k) || {}).interval_s || DEFAULT_INTERVAL_S);
    this.plot = makePlot(this, this.chartBox, series, { onZoom: page.zoomTo, extraHooks: { setCursor: [(u) => this.showCursor(u)] } });
    sharedCursor.legends.add(this);
    this.legendRows = this.keys.map((k, i) => {
      const tr = el("tr");
      tr.dataset.key = k;
      const name = el("th");
      name.append(el("i", "swatch"));
      name.firstChild.style.background = this.color(i);
      name.append(this.label(k));
      name.title = "click: show only this series (again: all); Ctrl/Shift-click: hide or show it";
      name.addEventListener("click", (e) => this.toggleSeries(i, !(e.ctrlKey || e.metaKey || e.shiftKey)));
      const cells = { latest: el("td", "num"), min: el("td", "num"), max: el("td", "num") };
      tr.append(name, ...this.legendValues.map((v) => cells[v])); // a column left out is filled but not shown
      this.legend.append(tr);
      return { tr, last: cells.latest, min: cells.min, max: cells.max };
    });
    const head = el("tr");
    head.append(el("td", "legend-head", ""));
    const heads = { latest: el("td", "legend-head", "latest"), min: el("td", "legend-head", "min"), max: el("td", "legend-head", "max") };
    for (const v of this.legendValues) head.append(heads[v]);
    this.lastHead = heads.latest;
    this.legend.prepend(head);
    this.legend.hidden = legend.show === false;
    this.root.classList.toggle("no-legend", legend.show === false);
  }

  // Isolate series i (or show all again when it already is alone), or toggle it alone.
  toggleSeries(i, isolate) {
    const shown = this.plot.series.slice(1).map((s) => s.show);
    const alone = shown[i] && shown.every((on, j) => on === (j === i));
    const next = isolate ? shown.map((_, j) => alone || j === i) : shown.map((on, j) => (j === i ? !on : on));
    next.forEach((on, j) => {
      if (this.plot.series[j + 1].show !== on) this.plot.setSeries(j + 1, { show: on });
      this.legendRows[j].tr.classList.toggle("series-hidden", !on);
    });
  }

  // While the pointer is over any chart of the board: the time under it and each series' value then.
  showCursor(u) {
    const idx = u.cursor.idx;
    this.cursorIdx = idx;
    if (!this.legendRows) return;
    const leads = u.cursor.event != null; // uPlot gives the followers no event, and runs their hooks first
    if (idx == null || !u.data[0].length) {
      if (leads) sharedCursor.t = null;
      this.lastHead.textContent = "latest";
      if (this.lastColumns) this.fillLegend(this.lastColumns);
      return;
    }
    if (leads) {
      sharedCursor.t = u.data[0][idx];
      for (const other of sharedCursor.legends) if (other !== this && other.cursorIdx != null) other.lastHead.textContent = formatTime(sharedCursor.t * 1000);
    }
    this.lastHead.textContent = formatTime((leads || sharedCursor.t == null ? u.data[0][idx] : sharedCursor.t) * 1000);
    this.legendRows.forEach((row, i) => {
      const v = valueNear(u.data[i + 1], idx);
      row.last.textContent = this.fmt(v);
      row.last.style.color = v === null ? "" : thresholdColor(v, this.cfg.options.thresholds, "");
    });
  }

  fillLegend(columns) {
    this.lastColumns = columns;
    const alt = `${this.cfg.title}: ` + columns.map((c, i) => `${this.label(this.keys[i])} ${this.fmt(c.v.length ? c.v[c.v.length - 1] : null)}`).join(", ");
    if (this.chartBox.getAttribute("aria-label") !== alt) this.chartBox.setAttribute("aria-label", alt);
    const hovering = this.cursorIdx != null;
    columns.forEach((c, i) => {
      const row = this.legendRows[i];
      let mn = Infinity, mx = -Infinity;
      for (const v of c.v) { if (v < mn) mn = v; if (v > mx) mx = v; }
      const last = c.v.length ? c.v[c.v.length - 1] : null;
      if (!hovering) {
        row.last.textContent = this.fmt(last);
        row.last.style.color = last === null ? "" : thresholdColor(last, this.cfg.options.thresholds, "");
      }
      row.min.textContent = c.v.length ? this.fmt(mn) : "–";
      row.max.textContent = c.v.length ? this.fmt(mx) : "–";
    });
  }

  // Lines broken where each series paused longer than its own gap; isolated samples as dots.
  setColumns(columns, stepS) {
    const gaps = columns.map((c, i) => gapSeconds(c.t, { stepS, expectedS: this.expectedS[i] }));
    this.plot.setData(alignWithGaps(columns, gaps), false);
  }

  drawLive(store, fromS, toS) {
    if (!this.plot) return;
    const columns = this.keys.map((k) => windowOf(store.get(k), fromS, toS));
    this.setColumns(columns, 0);
    this.plot.setScale("x", { min: fromS, max: toS });
    this.fillLegend(columns);
    if (this.cursorIdx != null) this.showCursor(this.plot);
  }

  drawHistory(history, fromS, toS) {
    if (!this.plot) return;
    const stepS = history.step_us / 1e6;
    const columns = this.keys.map((k) => {
      const s = history.series.find((x) => x.key === k);
      return s ? { t: s.t.map((t) => t / 1e6 + stepS / 2), v: s.avg, min: s.min, max: s.max } : { t: [], v: [] };
    });
    this.setColumns(columns, stepS);
    this.plot.setScale("x", { min: fromS, max: toS });
    this.fillLegend(columns.map((c) => ({ t: c.t, v: c.v, ...(c.min ? {} : {}) })));
    // min/max of a range are the buckets' extremes, not of their averages
    columns.forEach((c, i) => {
      if (!c.min || !c.min.length) return;
      this.legendRows[i].min.textContent = this.fmt(Math.min(...c.min));
      this.legendRows[i].max.textContent = this.fmt(Math.max(...c.max));
    });
    if (this.cursorIdx != null) this.showCursor(this.plot); // new data under a pointer that stayed put
  }

  annotate(alert) { const hit = super.annotate(alert); if (hit && this.plot) this.plot.redraw(false, false); return hit; }

  destroy() { sharedCursor.legends.delete(this); super.destroy(); }
}

// The value at idx, or the nearest sample of this series around it (other series' timestamps are undefined).
export function valueNear(ys, idx, reach = 50) {
  for (let d = 0; d <= reach; d++) {
    const a = ys[idx - d], b = ys[idx + d];
    if (a === null || b === null) { if (a != null) return a; if (b != null) return b; return null; } // a gap: no value here
    if (a !== undefined) return a;
    if (b !== undefined) return b;
  }
  return null;
}

function windowOf(s, fromS, toS) {
  let lo = 0;
  while (lo < s.t.length && s.t[lo] < fromS) lo++;
  let hi = s.t.length;
  while (hi > lo && s.t[hi - 1] > toS) hi--;
  return { t: s.t.slice(lo, hi), v: s.v.slice(lo, hi) };
}

export class StatPanel extends Panel {
  constructor(root, cfg) {
    super(root, cfg);
    if (!this.keys.length) return;
    this.value = el("div", "stat-value", "–");
    this.sub = el("div", "stat-sub", "");
    this.canvas = el("canvas", "sparkline");
    this.body.append(this.value, this.sub, this.canvas);
  }

  drawLive(store, fromS, toS) {
    if (!this.keys.length) return;
    const key = this.keys[0];
    const latest = store.latest(key);
    const col = windowOf(store.get(key), fromS, toS);
    this.render(latest ? latest.v : null, latest ? latest.t : null, col);
  }

  drawHistory(history, fromS, toS, store) {
    // A stat always shows the latest value; the sparkline follows the chosen range.
    const s = history.series.find((x) => x.key === this.keys[0]);
    const latest = store.latest(this.keys[0]);
    const col = s ? { t: s.t.map((t) => t / 1e6), v: s.avg } : { t: [], v: [] };
    this.render(latest ? latest.v : col.v[col.v.length - 1] ?? null, latest ? latest.t : null, col);
  }

  render(value, t, col) {
    const color = value === null ? "var(--muted)" : thresholdColor(value, this.cfg.options.thresholds, "var(--ok)");
    const text = this.fmt(value);
    const unitSuffix = this.unit && text.endsWith(" " + this.unit) ? this.unit : "";
    this.value.textContent = unitSuffix ? text.slice(0, -unitSuffix.length - 1) : text;
    if (unitSuffix) this.value.append(el("small", "stat-unit", unitSuffix));
    this.value.style.color = color;
    // A threshold reached also tints the whole stat, readable from across the room.
    const reached = value !== null && (this.cfg.options.thresholds || []).some((t) => value >= t.value);
    this.body.style.background = reached ? `color-mix(in srgb, ${color} 22%, transparent)` : "";
    this.root.dataset.threshold = reached ? color : "";
    const age = t ? Date.now() / 1000 - t : null;
    this.root.classList.toggle("stale", age !== null && age > this.staleS);
    this.sub.textContent = t === null ? "no data" : age > this.staleS ? "stale since " + formatTime(t * 1000) : "updated " + formatTime(t * 1000);
    this.spark(col, value === null ? "#9aa4b2" : color.startsWith("var") ? getComputedStyle(document.body).getPropertyValue(color.slice(4, -1)).trim() : color);
  }

  spark(col, color) {
    const c = this.canvas;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    const dpr = devicePixelRatio;
    if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    const n = col.t.length;
    if (n < 2) return;
    // At most one point per pixel column.
    const stride = Math.max(1, Math.floor(n / w));
    let mn = Infinity, mx = -Infinity;
    for (let i = 0; i < n; i += stride) { const v = col.v[i]; if (v < mn) mn = v; if (v > mx) mx = v; }
    if (mx === mn) { mx += 1; mn -= 1; }
    const t0 = col.t[0], t1 = col.t[n - 1];
    ctx.beginPath();
    for (let i = 0; i < n; i += stride) {
      const x = ((col.t[i] - t0) / (t1 - t0 || 1)) * c.width;
      const y = c.height - ((col.v[i] - mn) / (mx - mn)) * (c.height - 4 * dpr) - 2 * dpr;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5 * dpr;
    ctx.stroke();
    ctx.lineTo(c.width, c.height); ctx.lineTo(0, c.height); ctx.closePath();
    ctx.globalAlpha = 0.15; ctx.fillStyle = color; ctx.fill(); ctx.globalAlpha = 1;
  }
}

export class TablePanel extends Panel {
  constructor(root, cfg) {
    super(root, cfg);
    if (!this.keys.length) return;
    this.sort = { col: "name", dir: 1 };
    this.table = el("table", "metric-table");
    const head = el("tr");
    for (const [col, text] of [["name", "Metric"], ["value", "Value"], ["t", "Updated"]]) {
      const th = el("th", "sortable", text);
      th.dataset.col = col;
      th.addEventListener("click", () => {
        this.sort = { col, dir: this.sort.col === col ? -this.sort.dir : col === "name" ? 1 : -1 };
        this.lastRows = null;
        this.render(this.rows);
      });
      head.append(th);
    }
    const thead = el("thead"); thead.append(head);
    this.tbody = el("tbody");
    this.table.append(thead, this.tbody);
    this.body.append(this.table);
    this.rows = [];
  }

  drawLive(store) {
    if (!this.keys.length) return;
    this.rows = this.keys.map((k) => { const l = store.latest(k); return { key: k, name: this.label(k), value: l ? l.v : null, t: l ? l.t : null }; });
    this.render(this.rows);
  }

  drawHistory(history, fromS, toS, store) { this.drawLive(store); }

  render(rows) {
    const { col, dir } = this.sort;
    const sorted = [...rows].sort((a, b) => {
      const x = a[col], y = b[col];
      if (x === null) return 1; if (y === null) return -1;
      return (typeof x === "string" ? x.localeCompare(y, undefined, { numeric: true }) : x - y) * dir;
    });
    for (const th of this.table.querySelectorAll("th")) th.dataset.sorted = th.dataset.col === col ? (dir > 0 ? "asc" : "desc") : "";
    const now = Date.now() / 1000;
    while (this.tbody.rows.length < sorted.length) {
      const tr = this.tbody.insertRow();
      tr.append(el("th"), el("td", "num"), el("td", "age"));
    }
    sorted.forEach((r, i) => {
      const tr = this.tbody.rows[i];
      tr.dataset.key = r.key;
      tr.cells[0].textContent = r.name;
      tr.cells[1].textContent = this.fmt(r.value, this.cfg.options.unit ?? (this.cfg.series.find((s) => s.key === r.key) || {}).unit);
      tr.cells[1].style.color = r.value === null ? "" : thresholdColor(r.value, this.cfg.options.thresholds, "");
      const stale = r.t && now - r.t > this.staleS;
      tr.classList.toggle("stale", !!stale);
      tr.cells[2].textContent = r.t === null ? "no data" : stale ? "stale since " + formatTime(r.t * 1000) : `${Math.max(0, Math.round(now - r.t))} s ago`;
    });
  }
}

// OHLC candles: history from the series API's open/max/min/close buckets, live from last prices bucketed here.
export class CandlestickPanel extends Panel {
  constructor(root, cfg, page) {
    super(root, cfg);
    if (!this.keys.length) return;
    this.key = this.keys[0];
    this.chartBox = el("div", "chart-box");
    this.info = el("div", "ohlc-info");
    this.body.append(this.info, this.chartBox);
    const hidden = (label) => ({ label, stroke: "transparent", paths: () => null, points: { show: false } });
    this.plot = makePlot(this, this.chartBox, [hidden("open"), hidden("high"), hidden("low"), hidden("close")], {
      onZoom: page.zoomTo,
      extraHooks: { draw: [(u) => this.drawCandles(u)], setCursor: [(u) => this.showInfo(u.cursor.idx)] },
    });
  }

  bucketS(spanS) {
    if (this.cfg.options.bucket_s) return this.cfg.options.bucket_s;
    const width = this.chartBox.clientWidth || 600;
    const raw = spanS / Math.max(20, Math.floor(width / 9)); // candles about 9 px apart
    return [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400].find((b) => b >= raw) || 86400;
  }

  drawLive(store, fromS, toS) {
    if (!this.plot) return;
    const step = this.bucketS(toS - fromS);
    const s = windowOf(store.get(this.key), fromS - step, toS);
    const t = [], o = [], h = [], l = [], c = [];
    for (let i = 0; i < s.t.length; i++) {
      const b = Math.floor(s.t[i] / step) * step;
      const v = s.v[i];
      if (t.length && t[t.length - 1] === b) {
        const j = t.length - 1;
        if (v > h[j]) h[j] = v; if (v < l[j]) l[j] = v; c[j] = v;
      } else { t.push(b); o.push(v); h.push(v); l.push(v); c.push(v); }
    }
    this.step = step;
    this.set([t.map((x) => x + step / 2), o, h, l, c], fromS, toS);
  }

  drawHistory(history, fromS, toS) {
    if (!this.plot) return;
    const s = history.series.find((x) => x.key === this.key);
    const step = history.step_us / 1e6;
    this.step = step;
    if (!s) { this.set([[], [], [], [], []], fromS, toS); return; }
    this.set([s.t.map((x) => x / 1e6 + step / 2), s.open, s.max, s.min, s.close], fromS, toS);
  }

  set(data, fromS, toS) {
    this.plot.setData(data, false);
    this.plot.setScale("x", { min: fromS, max: toS });
    this.showInfo(this.plot.cursor.idx);
  }

  // O/H/L/C of the candle under the cursor (synchronized with the board's other charts), else the latest.
  showInfo(cursorIdx) {
    const data = this.plot.data;
    const n = data[0].length;
    if (!n) return;
    const i = cursorIdx != null && cursorIdx < n ? cursorIdx : n - 1;
    const up = data[4][i] >= data[1][i];
    this.info.replaceChildren();
    for (const [k, v] of [["O", data[1][i]], ["H", data[2][i]], ["L", data[3][i]], ["C", data[4][i]]]) {
      const span = el("span", "", `${k} `);
      span.append(el("b", up ? "up" : "down", axisValue(v, this.unit)));
      this.info.append(span);
    }
    const at = cursorIdx != null && cursorIdx < n ? formatTime((data[0][i] - this.step / 2) * 1000) + " · " : "";
    this.info.append(el("span", "muted", `${at}${formatStep(this.step)} candles`));
  }

  drawCandles(u) {
    const [t, o, h, l, c] = u.data;
    if (!t || !t.length) return;
    const ctx = u.ctx;
    const dpr = devicePixelRatio;
    const bw = Math.max(1, (u.valToPos(t[0] + this.step, "x", true) - u.valToPos(t[0], "x", true)) * 0.7);
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    for (let i = 0; i < t.length; i++) {
      if (o[i] == null) continue;
      const x = u.valToPos(t[i], "x", true);
      const up = c[i] >= o[i];
      ctx.strokeStyle = ctx.fillStyle = up ? "#3ccf91" : "#f3616d";
      ctx.lineWidth = dpr;
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, u.valToPos(h[i], "y", true));
      ctx.lineTo(Math.round(x) + 0.5, u.valToPos(l[i], "y", true));
      ctx.stroke();
      const y0 = u.valToPos(Math.max(o[i], c[i]), "y", true), y1 = u.valToPos(Math.min(o[i], c[i]), "y", true);
      ctx.fillRect(x - bw / 2, y0, bw, Math.max(dpr, y1 - y0));
    }
    ctx.restore();
  }
}

function formatStep(s) {
  if (s >= 86400) return `${s / 86400} d`;
  if (s >= 3600) return `${s / 3600} h`;
  if (s >= 60) return `${s / 60} min`;
  return `${s} s`;
}

// A panel that cannot be drawn (it breaks the layout schema, or its code threw): one panel-level
// error in its grid cell; the board around it stays live. It depends on nothing in its config.
export class BrokenPanel {
  constructor(root, cfg, message) {
    this.cfg = { ...(cfg && typeof cfg === "object" ? cfg : {}), kind: "broken" };
    this.root = root;
    this.keys = [];
    this.error = String(message || "this panel cannot be drawn");
    root.replaceChildren();
    root.className = "panel panel-broken";
    root.dataset.kind = "broken";
    root.dataset.panelId = this.cfg.id ?? "";
    const head = el("header", "panel-head");
    head.append(el("h2", "panel-title", typeof this.cfg.title === "string" ? this.cfg.title : "Untitled panel"));
    this.status = el("span", "panel-status", "error");
    this.status.dataset.state = "error";
    head.append(this.status);
    const body = el("div", "panel-body");
    body.append(el("p", "panel-error", "This panel is broken: " + this.error), el("p", "muted", "Fix it in the editor or the admin; the rest of the board is unaffected."));
    root.append(head, body);
  }

  showStatus() {}
  annotate() { return false; }
  setRange() {}
  drawLive() {}
  drawHistory() {}
  destroy() {}
}

// Build a panel of its kind; one whose config or code is broken becomes a BrokenPanel instead.
export function makePanel(root, cfg, page) {
  if (!cfg || typeof cfg !== "object" || cfg.error || cfg.kind === "broken") return new BrokenPanel(root, cfg, cfg && cfg.error);
  const Kind = PANEL_KINDS[cfg.kind] || TimeSeriesPanel;
  try {
    return new Kind(root, cfg, page);
  } catch (err) {
    console.error("pulseboard: panel", cfg.title, err);
    return new BrokenPanel(root, cfg, err.message);
  }
}

export const PANEL_KINDS = { timeseries: TimeSeriesPanel, stat: StatPanel, table: TablePanel, candlestick: CandlestickPanel };
