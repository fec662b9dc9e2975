// Number and time formatting in the viewer's terms.

const CURRENCIES = new Set(["USD", "EUR", "GBP", "JPY", "CHF", "USDT"]);
const SI = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];

// `decimals` (a panel's option) fixes the digits after the point; otherwise they follow the magnitude.
export function formatValue(value, unit = "", decimals = null) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const fixed = Number.isInteger(decimals) && decimals >= 0;
  if (value === 0 && !fixed) return unit ? `0 ${unit}` : "0";
  if (unit === "B" || unit === "B/s") {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Math.abs(value), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    const suffix = unit === "B/s" ? "/s" : "";
    return `${(Math.sign(value) * v).toFixed(fixed ? decimals : v < 10 ? 2 : 1)} ${units[i]}${suffix}`;
  }
  const abs = Math.abs(value);
  if (CURRENCIES.has(unit) && abs < 1e9) {
    // Prices read best in full: 65,012.34 USD, not 65.01k USD.
    const digits = fixed ? decimals : abs >= 100 ? 2 : abs >= 1 ? 4 : 6;
    return `${value.toLocaleString("en-US", { minimumFractionDigits: fixed ? decimals : Math.min(2, digits), maximumFractionDigits: digits })} ${unit}`;
  }
  if (abs >= 1e4) for (const [n, s] of SI) if (abs >= n) return `${(value / n).toFixed(fixed ? decimals : 2)}${s}${unit ? " " + unit : ""}`;
  const digits = fixed ? decimals : abs >= 100 ? 1 : abs >= 1 ? 2 : 4;
  return `${value.toFixed(digits)}${unit ? " " + unit : ""}`;
}

// The viewer's chosen zone ("browser", "UTC" or an IANA name); stored per user server-side later.
export function viewerTimeZone() {
  const zone = typeof document !== "undefined" && document.body ? document.body.dataset.timezone : "";
  return zone && zone !== "browser" ? zone : Intl.DateTimeFormat().resolvedOptions().timeZone;
}

export function formatTime(ms, zone = viewerTimeZone()) {
  const p = partsIn(ms, zone); // hourCycle h23: never "24:05" past midnight, never AM/PM
  return `${p.hour}:${p.minute}:${p.second}`;
}

// Date and time in the viewer's zone, 24-hour: "2026-12-06 01:02:03".
export function formatDateTime(ms, zone = viewerTimeZone()) {
  const p = partsIn(ms, zone);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

// The wall-clock fields of a time in a zone, 24-hour.
function partsIn(ms, zone) {
  const f = new Intl.DateTimeFormat("en-GB", {
    timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  const out = {};
  for (const p of f.formatToParts(new Date(ms))) out[p.type] = p.value;
  return out;
}

// "YYYY-MM-DD HH:MM" in the chosen zone, 24-hour: what the custom-range inputs show.
export function formatInputTime(ms, zone = viewerTimeZone()) {
  const p = partsIn(ms, zone);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}`;
}

// The zone's offset from UTC at a moment, in ms (Europe/Berlin in summer: +7,200,000).
function offsetMs(ms, zone) {
  const p = partsIn(ms, zone);
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) - Math.floor(ms / 1000) * 1000;
}

// ms since the epoch of "YYYY-MM-DD HH:MM[:SS]" read as wall-clock time in the zone; null if it is not one.
export function parseInputTime(text, zone = viewerTimeZone()) {
  const m = /^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?\s*$/.exec(String(text));
  if (!m) return null;
  const [y, mo, d, h, mi] = m.slice(1, 6).map(Number);
  const s = Number(m[6] || 0);
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59) return null;
  const wall = Date.UTC(y, mo - 1, d, h, mi, s);
  let t = wall - offsetMs(wall, zone);
  t = wall - offsetMs(t, zone); // again at the found moment: right across a daylight-saving change
  const back = partsIn(t, zone);
  if (+back.day !== d || +back.month !== mo) return null; // 31 February and the like
  return t;
}
