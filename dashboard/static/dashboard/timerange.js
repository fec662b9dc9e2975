// The time state of a dashboard page, kept in the URL so a link shows the same view:
//   ?range=5m|15m|1h          live, following now
//   ?range=24h|7d|30d         history up to now
//   ?from=<ms>&to=<ms>        a fixed history range (custom, drag-zoom, pan)
//   &paused=1                 a live view frozen where it was
//   &tz=Europe/Berlin         draw in this zone (overrides the saved preference for this link)

export const LIVE_RANGES = { "5m": 300, "15m": 900, "1h": 3600 };
export const HISTORY_RANGES = { "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
export const MAX_LIVE_S = 3600;

export function readTimeState(search = location.search) {
  const p = new URLSearchParams(search);
  const from = Number(p.get("from")), to = Number(p.get("to"));
  if (from > 0 && to > from) return { mode: "history", range: "custom", fromMs: from, toMs: to, paused: false };
  const range = p.get("range") || "15m";
  if (HISTORY_RANGES[range]) return { mode: "history", range, spanS: HISTORY_RANGES[range], paused: false };
  const windowS = LIVE_RANGES[range] || 900;
  return { mode: "live", range: LIVE_RANGES[range] ? range : "15m", windowS, paused: p.get("paused") === "1" };
}

export function writeTimeState(state) {
  const p = new URLSearchParams(location.search);
  for (const k of ["range", "from", "to", "paused"]) p.delete(k);
  if (state.range === "custom") { p.set("from", String(Math.round(state.fromMs))); p.set("to", String(Math.round(state.toMs))); }
  else p.set("range", state.range);
  if (state.mode === "live" && state.paused) p.set("paused", "1");
  history.replaceState(null, "", location.pathname + "?" + p.toString());
}

// [fromMs, toMs] the state covers now.
export function bounds(state, nowMs = Date.now()) {
  if (state.range === "custom") return [state.fromMs, state.toMs];
  if (state.mode === "history") return [nowMs - state.spanS * 1000, nowMs];
  return [nowMs - state.windowS * 1000, nowMs];
}

export function describe(state, zone) {
  if (state.mode === "live") return state.paused ? `paused · last ${state.range}` : `live · last ${state.range}`;
  if (state.range !== "custom") return `last ${state.range}`;
  const fmt = new Intl.DateTimeFormat([], { timeZone: zone, month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  return `${fmt.format(new Date(state.fromMs))} – ${fmt.format(new Date(state.toMs))}`;
}
